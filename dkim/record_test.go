package dkim

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"net"
	"strings"
	"testing"
)

func TestRecord(t *testing.T) {
	t.Run("Ed25519 as in RFC 8463 appendix A.2", func(t *testing.T) {
		k, err := LoadKeyFile(keyPath("rfc8463-ed25519.pem"))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := NewRecord("Football.Example.com", "brisbane", k.Public())
		if err != nil {
			t.Fatal(err)
		}
		if rec.Name != "brisbane._domainkey.football.example.com." {
			t.Errorf("name %q", rec.Name)
		}
		if want := "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="; rec.Value != want {
			t.Errorf("value %q, want %q", rec.Value, want)
		}
		if want := `brisbane._domainkey.football.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=" )`; rec.ZoneLine() != want {
			t.Errorf("zone line %q", rec.ZoneLine())
		}
	})
	t.Run("RSA 2048 split into 255-byte strings", func(t *testing.T) {
		k, err := LoadKeyFile(keyPath("rsa2048.pkcs8.pem"))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := NewRecord("example.com", "mg2026r", k.Public())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(rec.Value, "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA") {
			t.Errorf("value %q is not an SPKI RSA 2048 key", rec.Value)
		}
		ss := rec.Strings()
		if len(ss) < 2 {
			t.Fatalf("%d strings, a 2048-bit key needs 2", len(ss))
		}
		for _, s := range ss {
			if len(s) > 255 {
				t.Errorf("string of %d bytes", len(s))
			}
		}
		if strings.Join(ss, "") != rec.Value {
			t.Error("strings do not concatenate to the value")
		}
		z := rec.ZoneLine()
		if !strings.HasPrefix(z, "mg2026r._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p=") || !strings.HasSuffix(z, "\" )") || strings.Count(z, "\"") != 2*len(ss) {
			t.Errorf("zone line %q", z)
		}
	})
	t.Run("bad selector", func(t *testing.T) {
		k, _ := LoadKeyFile(keyPath("ed25519.pem"))
		if _, err := NewRecord("example.com", "a b", k.Public()); err == nil {
			t.Fatal("accepted")
		}
	})
}

// mapResolver is the one fake allowed: DNS. A value of "!servfail" makes
// the lookup fail temporarily.
type mapResolver map[string][]string

func (m mapResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	v, ok := m[name]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	if len(v) == 1 && v[0] == "!servfail" {
		return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	return v, nil
}

func TestCheck(t *testing.T) {
	rsaPub := func(t *testing.T) *rsa.PublicKey {
		k, err := LoadKeyFile(keyPath("rsa2048.pkcs8.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return k.Public().(*rsa.PublicKey)
	}
	rsaRec, _ := NewRecord("example.com", "r", rsaPub(t))
	edK, _ := LoadKeyFile(keyPath("ed25519.pem"))
	edRec, _ := NewRecord("example.com", "e", edK.Public())
	otherK, _ := LoadKeyFile(keyPath("rfc8463-ed25519.pem"))
	otherRec, _ := NewRecord("example.com", "e", otherK.Public())
	pkcs1 := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PublicKey(rsaPub(t)))

	rsaCfg := Config{Keys: []KeyConfig{rsaKey("example.com", "r")}}
	edCfg := Config{Keys: []KeyConfig{edKey("example.com", "e")}}
	const rName, eName = "r._domainkey.example.com.", "e._domainkey.example.com."
	tests := []struct {
		name string
		cfg  Config
		dns  mapResolver
		want CheckStatus
	}{
		{"RSA match", rsaCfg, mapResolver{rName: {rsaRec.Value}}, CheckMatch},
		{"RSA published as PKCS#1 matches", rsaCfg, mapResolver{rName: {pkcs1}}, CheckMatch},
		{"Ed25519 match", edCfg, mapResolver{eName: {edRec.Value}}, CheckMatch},
		{"match among unrelated TXT records", edCfg, mapResolver{eName: {"google-site-verification=abc", edRec.Value}}, CheckMatch},
		{"without v= and with spaces in p=", edCfg, mapResolver{eName: {"k=ed25519; p=" + strings.TrimPrefix(edRec.Value, "v=DKIM1; k=ed25519; p=")[:20] + " " + strings.TrimPrefix(edRec.Value, "v=DKIM1; k=ed25519; p=")[20:]}}, CheckMatch},
		{"other key", edCfg, mapResolver{eName: {otherRec.Value}}, CheckMismatch},
		{"wrong algorithm", edCfg, mapResolver{eName: {strings.Replace(edRec.Value, "k=ed25519", "k=rsa", 1)}}, CheckMismatch},
		{"k= missing means rsa", edCfg, mapResolver{eName: {strings.Replace(edRec.Value, "k=ed25519; ", "", 1)}}, CheckMismatch},
		{"revoked", edCfg, mapResolver{eName: {"v=DKIM1; k=ed25519; p="}}, CheckMismatch},
		{"not base64", edCfg, mapResolver{eName: {"v=DKIM1; k=ed25519; p=!!!"}}, CheckMismatch},
		{"two records", edCfg, mapResolver{eName: {edRec.Value, edRec.Value}}, CheckMismatch},
		{"NXDOMAIN", edCfg, mapResolver{}, CheckMissing},
		{"only other TXT", edCfg, mapResolver{eName: {"v=spf1 -all"}}, CheckMissing},
		{"SERVFAIL", edCfg, mapResolver{eName: {"!servfail"}}, CheckLookupError},
		{"key file broken", Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "e", File: keyPath("garbage.pem")}}}, mapResolver{eName: {edRec.Value}}, CheckKeyError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Check(context.Background(), tc.cfg, tc.dns)
			if len(res) != 1 {
				t.Fatalf("%d results", len(res))
			}
			if res[0].Status != tc.want {
				t.Fatalf("status %s (%s), want %s", res[0].Status, res[0].Detail, tc.want)
			}
			if res[0].OK() != (tc.want == CheckMatch) {
				t.Error("OK() disagrees with Status")
			}
			if tc.want != CheckMatch && res[0].Detail == "" {
				t.Error("no detail for a problem")
			}
		})
	}
	t.Run("one result per key, in order", func(t *testing.T) {
		cfg := Config{Keys: []KeyConfig{rsaKey("example.com", "r"), edKey("example.com", "e")}}
		res := Check(context.Background(), cfg, mapResolver{rName: {rsaRec.Value}})
		if len(res) != 2 || res[0].Selector != "r" || res[0].Status != CheckMatch || res[1].Selector != "e" || res[1].Status != CheckMissing {
			t.Fatalf("%+v", res)
		}
		if res[1].Expected.Value != edRec.Value {
			t.Error("Expected record missing on a missing result")
		}
	})
}
