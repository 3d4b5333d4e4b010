package dkim

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"
)

// benchMessage returns a CRLF message of about size bytes.
func benchMessage(size int) string {
	head := "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: benchmark\r\n" +
		"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
	line := "The quick brown fox jumps over the lazy dog, again and again.  \r\n"
	var b strings.Builder
	b.WriteString(head)
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

func BenchmarkSign(b *testing.B) {
	for _, key := range []struct{ name, file string }{{"RSA2048", "rsa2048.pkcs8.pem"}, {"Ed25519", "ed25519.pem"}} {
		for _, size := range []struct {
			name string
			n    int
		}{{"4KB", 4 << 10}, {"1MB", 1 << 20}} {
			b.Run(key.name+"/"+size.name, func(b *testing.B) {
				s := newTestSigner(b, Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s", File: keyPath(key.file)}}})
				msg := benchMessage(size.n)
				ctx := context.Background()
				b.ReportAllocs()
				b.SetBytes(int64(len(msg)))
				for b.Loop() {
					if _, err := s.Sign(ctx, "", strings.NewReader(msg)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRawRSA2048 is the bare PKCS#1 v1.5 signature of a SHA-256 hash:
// the floor under BenchmarkSign/RSA2048.
func BenchmarkRawRSA2048(b *testing.B) {
	k, err := LoadKeyFile(keyPath("rsa2048.pkcs8.pem"))
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.Sum256([]byte("hash"))
	b.ReportAllocs()
	b.SetBytes(int64(len(h)))
	for b.Loop() {
		if _, err := k.Sign(rand.Reader, h[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawEd25519 is the bare Ed25519 signature of a 32-byte hash (as
// RFC 8463 signs the SHA-256 of the header).
func BenchmarkRawEd25519(b *testing.B) {
	k, err := LoadKeyFile(keyPath("ed25519.pem"))
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.Sum256([]byte("hash"))
	b.ReportAllocs()
	b.SetBytes(int64(len(h)))
	for b.Loop() {
		if _, err := k.Sign(rand.Reader, h[:], crypto.Hash(0)); err != nil {
			b.Fatal(err)
		}
	}
}
