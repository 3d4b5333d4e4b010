package peertest

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const unsignedMsg = "From: a@example.com\r\nTo: b@example.net\r\nSubject: dkim test\r\n\r\nHello.\r\n"

// signWithDkimpy makes an RSA key with openssl and signs msg with dkimpy,
// returning the signed message and the TXT record for the key.
func signWithDkimpy(t *testing.T, domain, selector, msg string) ([]byte, string) {
	t.Helper()
	Require(t, "openssl", "python3-dkim")
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if out, code := RunTool(t, DefaultTimeout, nil, "openssl", "genrsa", "-out", key, "2048"); code != 0 {
		t.Fatalf("openssl genrsa: %s", out)
	}
	pub := filepath.Join(dir, "pub.pem")
	if out, code := RunTool(t, DefaultTimeout, nil, "openssl", "rsa", "-in", key, "-pubout", "-out", pub); code != 0 {
		t.Fatalf("openssl rsa -pubout: %s", out)
	}
	pemBytes, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	pem := string(pemBytes)
	script := `
import sys
import dkim
key = open(sys.argv[1], "rb").read()
msg = sys.stdin.buffer.read()
sig = dkim.sign(msg, sys.argv[3].encode(), sys.argv[2].encode(), key, include_headers=[b"from", b"to", b"subject"])
sys.stdout.buffer.write(sig + msg)
`
	signed, code := run(t, DefaultTimeout, []byte(msg), nil, pythonPath, "-c", script, key, domain, selector)
	if code != 0 {
		t.Fatalf("dkim.sign: %s", signed)
	}
	// The TXT p= value is the base64 DER SubjectPublicKeyInfo: the PEM body.
	var b64 strings.Builder
	for line := range strings.Lines(pem) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "-----") {
			b64.WriteString(line)
		}
	}
	return []byte(signed), "v=DKIM1; k=rsa; p=" + b64.String()
}

func TestDKIMVerify(t *testing.T) {
	t.Parallel()
	Require(t, "python3-dkim", "openssl")
	signed, record := signWithDkimpy(t, "example.com", "sel1", unsignedMsg)
	txt := map[string]string{"sel1._domainkey.example.com.": record}

	t.Run("valid signature passes", func(t *testing.T) {
		ok, out := DKIMVerify(t, signed, txt)
		if !ok || !strings.Contains(out, "signature 0 d=example.com s=sel1 a=rsa-sha256: pass") {
			t.Errorf("ok=%v\n%s", ok, out)
		}
	})
	t.Run("bogus signature fails", func(t *testing.T) {
		bogus := "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=sel1;\r\n" +
			" h=from:to:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAAAAAA\r\n" + unsignedMsg
		if ok, out := DKIMVerify(t, []byte(bogus), txt); ok {
			t.Errorf("bogus signature verified:\n%s", out)
		}
	})
	t.Run("tampered body fails", func(t *testing.T) {
		tampered := bytes.Replace(signed, []byte("Hello."), []byte("Hellp."), 1)
		if ok, out := DKIMVerify(t, tampered, txt); ok || !strings.Contains(out, "FAIL") {
			t.Errorf("tampered body verified:\n%s", out)
		}
	})
	t.Run("tampered signed header fails", func(t *testing.T) {
		tampered := bytes.Replace(signed, []byte("Subject: dkim test"), []byte("Subject: dkim best"), 1)
		if ok, out := DKIMVerify(t, tampered, txt); ok {
			t.Errorf("tampered header verified:\n%s", out)
		}
	})
	t.Run("unknown key fails without DNS", func(t *testing.T) {
		if ok, out := DKIMVerify(t, signed, map[string]string{}); ok || !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("verified with no key:\n%s", out)
		}
	})
	t.Run("wrong key fails", func(t *testing.T) {
		_, other := signWithDkimpy(t, "example.com", "sel1", unsignedMsg)
		if ok, out := DKIMVerify(t, signed, map[string]string{"sel1._domainkey.example.com": other}); ok {
			t.Errorf("verified with another key:\n%s", out)
		}
	})
	t.Run("unsigned fails", func(t *testing.T) {
		if ok, out := DKIMVerify(t, []byte(unsignedMsg), txt); ok || !strings.Contains(out, "no DKIM-Signature") {
			t.Errorf("unsigned message verified:\n%s", out)
		}
	})
	t.Run("two signatures each verified", func(t *testing.T) {
		// Sign the signed message again for a second domain: both verify.
		double, record2 := signWithDkimpy(t, "example.org", "sel2", string(signed))
		both := map[string]string{"sel1._domainkey.example.com": record, "SEL2._domainkey.example.org": record2}
		ok, out := DKIMVerify(t, double, both)
		if !ok || len(regexp.MustCompile(`: pass`).FindAllString(out, -1)) != 2 {
			t.Errorf("ok=%v\n%s", ok, out)
		}
		// Without the second key, the second signature (index 0, the
		// newest) fails even though the first still passes.
		ok, out = DKIMVerify(t, double, txt)
		if ok || !strings.Contains(out, "d=example.org s=sel2 a=rsa-sha256: FAIL") || !strings.Contains(out, "d=example.com s=sel1 a=rsa-sha256: pass") {
			t.Errorf("one bad signature of two: ok=%v\n%s", ok, out)
		}
	})
}

// TestOpenDKIMVerify: OpenDKIM passes a dkimpy signature with the right
// record and fails it with another key.
func TestOpenDKIMVerify(t *testing.T) {
	Require(t, "opendkim")
	signed, txt := signWithDkimpy(t, "example.com", "sel", unsignedMsg)
	ok, res, out := OpenDKIMVerify(t, signed, map[string]string{"sel._domainkey.example.com.": txt})
	if !ok || res["sel"] != "pass" {
		t.Fatalf("want pass, got %v:\n%s", res, out)
	}
	_, other := signWithDkimpy(t, "example.com", "sel", unsignedMsg)
	if ok, res, out := OpenDKIMVerify(t, signed, map[string]string{"sel._domainkey.example.com": other}); ok || res["sel"] == "pass" {
		t.Fatalf("a signature passed with another key: %v:\n%s", res, out)
	}
}
