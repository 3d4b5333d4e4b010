package dkim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/internal/peertest"
)

// Independent verifiers: every message signed here is verified by dkimpy
// (python3-dkim) and by OpenDKIM in test mode, neither of which shares
// code with go-msgauth. DNS comes from files (no network).

type integrationCase struct {
	name string
	keys []KeyConfig
	msg  string
}

func integrationCases(t *testing.T) []integrationCase {
	utf8 := readMessage(t, "utf8.eml")
	eightBit := "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"caf\xe9 na\xefve \xa0nbsp\r\n\xff\xfe raw high bytes \x80\r\n"
	return []integrationCase{
		{"rsa", []KeyConfig{rsaKey("example.com", "rsa")}, readMessage(t, "basic.eml")},
		{"rsa1024-pkcs1", []KeyConfig{{Domain: "example.com", Selector: "old", File: keyPath("rsa1024.pkcs1.pem")}}, readMessage(t, "basic.eml")},
		{"ed25519", []KeyConfig{edKey("example.com", "ed")}, readMessage(t, "basic.eml")},
		{"dual", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, readMessage(t, "basic.eml")},
		{"8bit-body", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, eightBit},
		{"smtputf8", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, utf8},
		{"long-folded-headers", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, readMessage(t, "folded.eml")},
		{"empty-body", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, readMessage(t, "empty-body.eml")},
		{"no-body-no-separator", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, readMessage(t, "no-separator.eml")},
		{"bcc-return-path-received", []KeyConfig{rsaKey("example.com", "rsa"), edKey("example.com", "ed")}, readMessage(t, "hygiene.eml")},
		{"rfc8463-message", []KeyConfig{{Domain: "football.example.com", Selector: "brisbane", File: keyPath("rfc8463-ed25519.pem")}}, readMessage(t, "rfc8463.eml")},
		{"subdomain-key", []KeyConfig{{Domain: "example.org", Selector: "wild", File: keyPath("ed25519.pem"), Subdomains: true}}, strings.Replace(readMessage(t, "basic.eml"), "alice@example.com", "alice@news.example.org", 1)},
	}
}

// signToFile signs tc.msg and writes the signed message to a temp file.
func signToFile(t *testing.T, tc integrationCase) (path string, cfg Config, nsigs int) {
	t.Helper()
	cfg = Config{Keys: tc.keys}
	s := newTestSigner(t, cfg)
	signed, sigs := sign(t, s, "", tc.msg)
	if len(sigs) != len(tc.keys) {
		t.Fatalf("%d signatures for %d keys", len(sigs), len(tc.keys))
	}
	path = filepath.Join(t.TempDir(), tc.name+".eml")
	if err := os.WriteFile(path, []byte(signed), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, cfg, len(sigs)
}

func TestVerifyDkimpy(t *testing.T) {
	peertest.Require(t, "python3-dkim")
	for _, tc := range integrationCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			path, cfg, n := signToFile(t, tc)
			ok, out := peertest.DKIMVerify(t, readFile(t, path), recordsFor(t, cfg))
			t.Logf("dkimpy:\n%s", out)
			if got := strings.Count(out, ": pass"); !ok || got != n {
				t.Fatalf("dkimpy passed %d of %d signatures:\n%s", got, n, out)
			}
		})
	}
	for _, tm := range tamperings {
		t.Run("fails: "+tm.name, func(t *testing.T) {
			tc := integrationCases(t)[3]
			path, cfg, _ := signToFile(t, tc)
			tamper(t, path, tm.old, tm.new)
			ok, out := peertest.DKIMVerify(t, readFile(t, path), recordsFor(t, cfg))
			t.Logf("dkimpy:\n%s", out)
			if ok || strings.Contains(out, ": pass") {
				t.Fatal("dkimpy accepted a tampered message")
			}
		})
	}
}

// opendkim verifies path with OpenDKIM in test mode (no DNS) and returns
// selector → result ("pass", "fail", ...).
func opendkim(t *testing.T, path string, cfg Config) map[string]string {
	t.Helper()
	_, res, out := peertest.OpenDKIMVerify(t, readFile(t, path), recordsFor(t, cfg))
	t.Logf("opendkim:\n%s", out)
	return res
}

// readFile returns the contents of path.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyOpenDKIM(t *testing.T) {
	peertest.Require(t, "opendkim")
	for _, tc := range integrationCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			path, cfg, _ := signToFile(t, tc)
			res := opendkim(t, path, cfg)
			for _, k := range tc.keys {
				if res[k.Selector] != "pass" {
					t.Errorf("selector %s: opendkim says %q, want pass", k.Selector, res[k.Selector])
				}
			}
		})
	}
	for _, tm := range tamperings {
		t.Run("fails: "+tm.name, func(t *testing.T) {
			tc := integrationCases(t)[3]
			path, cfg, _ := signToFile(t, tc)
			tamper(t, path, tm.old, tm.new)
			res := opendkim(t, path, cfg)
			if len(res) != 2 || res["rsa"] != "fail" || res["ed"] != "fail" {
				t.Fatalf("opendkim results %v, want two fails", res)
			}
		})
	}
}

// tamperings change a signed copy of basic.eml (dual-signed) after signing.
var tamperings = []struct{ name, old, new string }{
	{"subject edited", "Subject: Quarterly report\r\n", "Subject: Quarterly reporT\r\n"},
	{"second Subject added (oversigning)", "From: Alice", "Subject: You won\r\nFrom: Alice"},
	{"Reply-To added (oversigning of an absent header)", "From: Alice", "Reply-To: <phish@example.net>\r\nFrom: Alice"},
	{"body edited", "Hello Bob,", "Hello Eve,"},
}

func tamper(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := bytes.Replace(b, []byte(old), []byte(new), 1)
	if bytes.Equal(b, c) {
		t.Fatalf("%q not found", old)
	}
	if err := os.WriteFile(path, c, 0o600); err != nil {
		t.Fatal(err)
	}
}
