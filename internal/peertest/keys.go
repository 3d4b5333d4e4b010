package peertest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// RSAKeyPair writes a new RSA-2048 private key (PKCS#1 PEM) to dir/name.pem
// and its public key (PKIX PEM) to dir/name.pub, and returns both paths:
// the key pair a signed policy bundle is made and verified with.
func RSAKeyPair(t testing.TB, dir, name string) (priv, pub string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkix, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".pub")
	for path, b := range map[string]*pem.Block{
		priv: {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)},
		pub:  {Type: "PUBLIC KEY", Bytes: pkix},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return priv, pub
}
