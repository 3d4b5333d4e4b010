package proxy

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

func writeCert(t *testing.T, dir, host string) {
	t.Helper()
	c, err := SelfSigned(host)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func leafName(t *testing.T, s *CertStore) string {
	t.Helper()
	c, err := s.Config().GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

// TestCertStoreReload: SIGHUP picks up a renewed certificate; a broken
// file keeps the one in use.
func TestCertStoreReload(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "old.example")
	s, err := LoadCertStore(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := leafName(t, s); got != "old.example" {
		t.Fatalf("serving %q", got)
	}
	writeCert(t, dir, "new.example")
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := leafName(t, s); got != "new.example" {
		t.Fatalf("after reload serving %q", got)
	}
	os.WriteFile(filepath.Join(dir, "key.pem"), []byte("garbage"), 0o600)
	if err := s.Reload(); err == nil {
		t.Fatal("broken key accepted")
	}
	if got := leafName(t, s); got != "new.example" {
		t.Fatalf("after a failed reload serving %q", got)
	}
}
