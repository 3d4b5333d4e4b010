package auth

import (
	"strings"
	"testing"
)

// FuzzParseHash: parseHash never panics and its errors never contain the
// hash body.
func FuzzParseHash(f *testing.F) {
	for _, s := range []string{
		"{PLAIN}x", "$2y$05$abcdefghijklmnopqrstuuFJWqsdsV2hbyyTTbbMSWbwlaYvsgQY.",
		"$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		sha512CryptSpecVectors[1].want, "{SHA512-CRYPT}$6$rounds=99999999999$x$y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		v, err := parseHash(h)
		if err == nil {
			if v == nil {
				t.Fatal("nil verifier without error")
			}
			return
		}
		if secret := secretPart(h); len(secret) >= 8 && strings.Contains(err.Error(), secret) {
			t.Fatalf("error %q echoes %q", err, secret)
		}
	})
}

// FuzzSASL: neither server panics, and authenticate only ever sees
// well-formed fields.
func FuzzSASL(f *testing.F) {
	f.Add([]byte("\x00u\x00p"), []byte("u"), []byte("p"))
	f.Add([]byte("a\x00b\x00c\x00"), []byte{}, []byte{0xff})
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		check := func(user, pass string) error {
			if !validField([]byte(user)) || !validField([]byte(pass)) {
				t.Fatalf("authenticate got invalid fields %q %q", user, pass)
			}
			return ErrAuthFailed
		}
		p := NewPlainServer(func(_, u, pw string) error { return check(u, pw) })
		l := NewLoginServer(check)
		for _, r := range [][]byte{a, b, c} {
			p.Next(r)
			l.Next(r)
		}
	})
}
