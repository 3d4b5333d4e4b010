package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/dkim"
)

// dkimMapResolver serves TXT records from a map: the only fake, DNS.
type dkimMapResolver map[string][]string

func (m dkimMapResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if v, ok := m[name]; ok {
		return v, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func dkimNoConfig(string) (dkim.Config, error) {
	return dkim.Config{}, errors.New("no config in this test")
}

func runDKIMCmd(t *testing.T, load func(string) (dkim.Config, error), dns dkimMapResolver, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = runDKIM(args, &o, &e, load, dns)
	return code, o.String(), e.String()
}

var dkimZoneRe = regexp.MustCompile(`(?m)^(\S+) IN TXT \( (.*) \)$`)

// dkimZoneValue extracts the record name and the concatenated value of the
// zone line in out.
func dkimZoneValue(t *testing.T, out string) (string, string) {
	t.Helper()
	m := dkimZoneRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no zone line in:\n%s", out)
	}
	var v strings.Builder
	for _, s := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[2], -1) {
		if len(s[1]) > 255 {
			t.Errorf("TXT string of %d bytes", len(s[1]))
		}
		v.WriteString(s[1])
	}
	return m[1], v.String()
}

func TestDKIMKeygenRecordCheck(t *testing.T) {
	for _, alg := range []string{"rsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			dir := t.TempDir()
			keyFile := filepath.Join(dir, "k.pem")
			code, out, errOut := runDKIMCmd(t, dkimNoConfig, nil, "keygen", "-domain", "Example.com", "-selector", "mg2026", "-algorithm", alg, "-out", keyFile)
			if code != 0 {
				t.Fatalf("keygen exit %d: %s", code, errOut)
			}
			name, value := dkimZoneValue(t, out)
			if name != "mg2026._domainkey.example.com." || !strings.HasPrefix(value, "v=DKIM1; k="+alg+"; p=") {
				t.Fatalf("record %s %q", name, value)
			}
			if !strings.Contains(out, "\n; "+value+"\n") {
				t.Errorf("unsplit value not printed:\n%s", out)
			}
			fi, err := os.Stat(keyFile)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file: %v %v", fi, err)
			}

			t.Run("keygen refuses to overwrite", func(t *testing.T) {
				before, _ := os.ReadFile(keyFile)
				code, _, errOut := runDKIMCmd(t, dkimNoConfig, nil, "keygen", "-domain", "example.com", "-selector", "x", "-algorithm", alg, "-out", keyFile)
				after, _ := os.ReadFile(keyFile)
				if code != 1 || !strings.Contains(errOut, "exists") || !bytes.Equal(before, after) {
					t.Fatalf("exit %d, %q; file changed: %v", code, errOut, !bytes.Equal(before, after))
				}
			})
			t.Run("record prints the same record", func(t *testing.T) {
				code, out, errOut := runDKIMCmd(t, dkimNoConfig, nil, "record", "-key", keyFile, "-domain", "example.com", "-selector", "mg2026")
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				if n, v := dkimZoneValue(t, out); n != name || v != value {
					t.Fatalf("record %s %q, keygen said %s %q", n, v, name, value)
				}
				code, out, _ = runDKIMCmd(t, dkimNoConfig, nil, "record", "-key", keyFile)
				if code != 0 || !strings.Contains(out, "\n"+value+"\n") {
					t.Fatalf("exit %d, value only:\n%s", code, out)
				}
			})
			load := func(path string) (dkim.Config, error) {
				if path != "mailgate.hcl" {
					t.Errorf("loader got %q", path)
				}
				return dkim.Config{Keys: []dkim.KeyConfig{{Domain: "example.com", Selector: "mg2026", File: keyFile}}}, nil
			}
			t.Run("check: published", func(t *testing.T) {
				code, out, _ := runDKIMCmd(t, load, dkimMapResolver{name: {value}}, "check", "-config", "mailgate.hcl")
				if code != 0 || !strings.HasPrefix(out, "OK   example.com mg2026: match") {
					t.Fatalf("exit %d:\n%s", code, out)
				}
			})
			t.Run("check: missing", func(t *testing.T) {
				code, out, _ := runDKIMCmd(t, load, dkimMapResolver{}, "check", "-config", "mailgate.hcl")
				if code != 1 || !strings.Contains(out, "FAIL example.com mg2026: missing") || !strings.Contains(out, "publish: "+name) {
					t.Fatalf("exit %d:\n%s", code, out)
				}
			})
			t.Run("check: mismatch", func(t *testing.T) {
				other := strings.Replace(value, "p=", "p=AAAA", 1)
				code, out, _ := runDKIMCmd(t, load, dkimMapResolver{name: {other}}, "check", "-config", "mailgate.hcl")
				if code != 1 || !strings.Contains(out, "mismatch") {
					t.Fatalf("exit %d:\n%s", code, out)
				}
			})
		})
	}
}

func TestDKIMUsage(t *testing.T) {
	key := filepath.Join("..", "..", "dkim", "testdata", "keys", "ed25519.pem")
	tests := []struct {
		name string
		args []string
		code int
		out  string // substring of stdout+stderr
	}{
		{"no command", nil, 2, "usage: mailgate dkim"},
		{"unknown command", []string{"sign"}, 2, "unknown command"},
		{"help", []string{"help"}, 0, "keygen"},
		{"keygen -h", []string{"keygen", "-h"}, 0, "-selector"},
		{"keygen missing flags", []string{"keygen", "-domain", "example.com"}, 2, "required"},
		{"keygen bad algorithm", []string{"keygen", "-domain", "d.test", "-selector", "s", "-algorithm", "dsa", "-out", "x"}, 2, "rsa or ed25519"},
		{"keygen weak", []string{"keygen", "-domain", "d.test", "-selector", "s", "-bits", "512", "-out", "x"}, 2, "at least 1024"},
		{"keygen bad selector", []string{"keygen", "-domain", "d.test", "-selector", "a b", "-out", filepath.Join(t.TempDir(), "k")}, 2, "selector"},
		{"keygen unknown flag", []string{"keygen", "-size", "2"}, 2, "flag provided but not defined"},
		{"keygen extra args", []string{"keygen", "-domain", "d.test", "-selector", "s", "-out", "x", "extra"}, 2, "unexpected arguments"},
		{"record no key", []string{"record"}, 2, "-key is required"},
		{"record domain without selector", []string{"record", "-key", key, "-domain", "d.test"}, 2, "go together"},
		{"record unreadable key", []string{"record", "-key", filepath.Join(t.TempDir(), "none.pem")}, 1, "none.pem"},
		{"check no config", []string{"check"}, 2, "-config is required"},
		{"check config error", []string{"check", "-config", "x.hcl"}, 1, "no config in this test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runDKIMCmd(t, dkimNoConfig, nil, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.out) {
				t.Fatalf("exit %d (want %d), output:\n%s%s\nwant %q", code, tc.code, out, errOut, tc.out)
			}
		})
	}
	t.Run("keygen bad selector writes no file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "k.pem")
		runDKIMCmd(t, dkimNoConfig, nil, "keygen", "-domain", "d.test", "-selector", "a b", "-out", f)
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatal("key written despite the usage error")
		}
	})
}
