//go:build openssl && cgo

package dkim

import (
	"crypto"
	"crypto/sha256"
	"testing"
)

// BenchmarkRawRSA2048OpenSSL is BenchmarkRawRSA2048 through libcrypto:
// the floor under BenchmarkSign/RSA2048 in an openssl build, to compare
// with `openssl speed -seconds 3 rsa2048` (what the binding costs).
func BenchmarkRawRSA2048OpenSSL(b *testing.B) {
	_, k := loadBoth(b, keyPath("rsa2048.pkcs8.pem"))
	h := sha256.Sum256([]byte("hash"))
	b.ReportAllocs()
	b.SetBytes(int64(len(h)))
	for b.Loop() {
		if _, err := k.Sign(nil, h[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}
