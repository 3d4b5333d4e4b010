package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/dkim"
)

// TestCheckRSABackend: rsa_backend = "openssl" loads only in a binary
// built with it; elsewhere `mailgate check` refuses it and names the build
// tag.
func TestCheckRSABackend(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, cfg, `hostname = "x"
listener "relay" {
  address          = "127.0.0.1:2525"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
outbox { maildir = "out" }
dkim { rsa_backend = "openssl" }
`)
	var out, errOut bytes.Buffer
	code := checkMain([]string{"-config", cfg}, &out, &errOut)
	built := slices.Contains(dkim.RSABackends(), dkim.RSABackendOpenSSL)
	mentions := strings.Contains(errOut.String(), "rsa_backend")
	switch {
	case built && (code != 0 || mentions):
		t.Fatalf("openssl build: exit %d\n%s%s", code, out.String(), errOut.String())
	case !built && (code != 1 || !mentions || !strings.Contains(errOut.String(), "-tags openssl")):
		t.Fatalf("default build: exit %d, want 1 and an error naming the build tag:\n%s", code, errOut.String())
	}
}
