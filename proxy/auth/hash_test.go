package auth

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// mustBcrypt returns a bcrypt hash of pw at the minimum cost (fast tests)
// with the given variant ("2a", "2b", "2y").
func mustBcrypt(t testing.TB, pw, variant string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return "$" + variant + string(h[3:]) // x/crypto writes $2a$
}

// mustArgon2id returns a PHC argon2id hash of pw with small parameters.
func mustArgon2id(t testing.TB, pw string) string {
	t.Helper()
	a := &argon2idHash{memory: 64, time: 1, threads: 1, salt: randomBytes(16)}
	a.key = argon2.IDKey([]byte(pw), a.salt, a.time, a.memory, a.threads, 32)
	return a.String()
}

func TestHashSchemesVerify(t *testing.T) {
	const pw = "correct horse battery staple"
	spec := sha512CryptSpecVectors[0]
	hashed, err := Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, hash, right string
	}{
		{"bcrypt_2a", mustBcrypt(t, pw, "2a"), pw},
		{"bcrypt_2b", mustBcrypt(t, pw, "2b"), pw},
		{"bcrypt_2y", mustBcrypt(t, pw, "2y"), pw},
		{"blf_crypt_prefix", "{BLF-CRYPT}" + mustBcrypt(t, pw, "2y"), pw},
		{"blf_crypt_prefix_lower_case", "{blf-crypt}" + mustBcrypt(t, pw, "2y"), pw},
		{"argon2id", mustArgon2id(t, pw), pw},
		{"argon2id_default_params_from_Hash", hashed, pw},
		{"argon2id_prefix", "{ARGON2ID}" + mustArgon2id(t, pw), pw},
		{"sha512_crypt_bare", spec.want, spec.password},
		{"sha512_crypt_prefix", "{SHA512-CRYPT}" + spec.want, spec.password},
		{"sha512_crypt_rounds", "{SHA512-CRYPT}" + sha512CryptSpecVectors[1].want, sha512CryptSpecVectors[1].password},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := parseHash(c.hash)
			if err != nil {
				t.Fatalf("parseHash: %v", err)
			}
			if !v.verify([]byte(c.right)) {
				t.Error("right password refused")
			}
			for _, wrong := range []string{"", c.right + "!", strings.ToUpper(c.right), c.right[:len(c.right)-1]} {
				if v.verify([]byte(wrong)) {
					t.Errorf("wrong password %q accepted", wrong)
				}
			}
			d, err := v.dummy()
			if err != nil {
				t.Fatalf("dummy: %v", err)
			}
			if d.params() != v.params() {
				t.Errorf("dummy params %q, want %q", d.params(), v.params())
			}
			if d.verify([]byte(c.right)) {
				t.Error("dummy hash accepted the real password")
			}
		})
	}
}

func TestHashSecurity(t *testing.T) {
	t.Run("bcrypt_72_byte_truncation", func(t *testing.T) {
		// The real password is 80 bytes. bcrypt only ever sees 72, so a
		// hash of it made by a tool that truncates silently matches any
		// password sharing the first 72 bytes. Neither the real password
		// nor the 72-byte prefix attack may log in.
		real := strings.Repeat("A", 72) + "-secret!"
		prefix := real[:72]
		h, err := bcrypt.GenerateFromPassword([]byte(prefix), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		v, err := parseHash("$2y" + string(h[3:]))
		if err != nil {
			t.Fatal(err)
		}
		if !v.verify([]byte(prefix)) {
			t.Fatal("72-byte password refused; it is within bcrypt's limit")
		}
		for _, attack := range []string{real, prefix + "X", prefix + "anything at all"} {
			if v.verify([]byte(attack)) {
				t.Errorf("%d-byte password matching only the first 72 bytes accepted", len(attack))
			}
		}
	})
	t.Run("hash_refuses_empty_and_huge", func(t *testing.T) {
		if _, err := Hash(""); !errors.Is(err, ErrEmptyPassword) {
			t.Errorf("Hash(\"\") error = %v, want ErrEmptyPassword", err)
		}
		if _, err := Hash(strings.Repeat("x", MaxPasswordLen+1)); !errors.Is(err, ErrPasswordTooLong) {
			t.Errorf("Hash(huge) error = %v, want ErrPasswordTooLong", err)
		}
	})
	t.Run("hash_is_salted", func(t *testing.T) {
		a, _ := Hash("same")
		b, _ := Hash("same")
		if a == b {
			t.Error("two hashes of one password are equal: salt not random")
		}
	})
	t.Run("hash_params", func(t *testing.T) {
		h, err := Hash("pw")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
			t.Errorf("Hash = %s, want OWASP argon2id parameters", h)
		}
	})
}

func TestParseHashRefused(t *testing.T) {
	cases := []struct {
		name string
		hash string
		want error
	}{
		{"plain_prefix", "{PLAIN}hunter2", ErrUnsupportedScheme},
		{"cleartext_prefix", "{CLEARTEXT}hunter2", ErrUnsupportedScheme},
		{"md5_prefix", "{MD5}5f4dcc3b5aa765d61d8327deb882cf99", ErrUnsupportedScheme},
		{"sha_prefix", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", ErrUnsupportedScheme},
		{"md5_crypt", "$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0", ErrUnsupportedScheme},
		{"sha256_crypt", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF/pQ4Cq6", ErrUnsupportedScheme},
		{"bcrypt_2x", "$2x$05$abcdefghijklmnopqrstuuFJWqsdsV2hbyyTTbbMSWbwlaYvsgQY.", ErrUnsupportedScheme},
		{"argon2i", "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrUnsupportedScheme},
		{"no_prefix_plaintext", "hunter2", ErrUnsupportedScheme},
		{"empty", "", ErrUnsupportedScheme},
		{"unterminated_prefix", "{BLF-CRYPThunter2", ErrUnsupportedScheme},
		{"blf_crypt_wrong_body", "{BLF-CRYPT}hunter2", ErrMalformedHash},
		{"bcrypt_truncated", "$2y$05$abcdef", ErrMalformedHash},
		{"argon2id_v16", "$argon2id$v=16$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_memory_bomb", "$argon2id$v=19$m=4294967295,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_time_bomb", "$argon2id$v=19$m=64,t=100000,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_zero_threads", "$argon2id$v=19$m=64,t=1,p=0$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_short_salt", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_missing_param", "$argon2id$v=19$m=64,t=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"argon2id_repeated_param", "$argon2id$v=19$m=64,m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", ErrMalformedHash},
		{"sha512_crypt_short", "$6$salt$tooshort", ErrMalformedHash},
		{"sha512_crypt_bad_rounds", "$6$rounds=x$salt$" + strings.Repeat(".", 86), ErrMalformedHash},
		{"sha512_crypt_bad_alphabet", "$6$salt$" + strings.Repeat("*", 86), ErrMalformedHash},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := parseHash(c.hash)
			if !errors.Is(err, c.want) {
				t.Fatalf("parseHash error = %v (verifier %v), want %v", err, v, c.want)
			}
			// The error must not echo the secret part.
			if secret := secretPart(c.hash); len(secret) >= 4 && strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the hash text %q", err, secret)
			}
		})
	}
}

// secretPart strips a {SCHEME} prefix and a crypt id: what remains is what
// an error must never show.
func secretPart(h string) string {
	if i := strings.IndexByte(h, '}'); strings.HasPrefix(h, "{") && i > 0 {
		h = h[i+1:]
	}
	if strings.HasPrefix(h, "$") {
		if i := strings.IndexByte(h[1:], '$'); i >= 0 {
			h = h[i+2:]
		}
	}
	return h
}

// TestInteropVectors verifies hashes written by the argon2 reference CLI
// and Apache's htpasswd, kept in testdata so the test needs no tool, also
// behind the Dovecot prefixes.
func TestInteropVectors(t *testing.T) {
	data, err := os.ReadFile("testdata/interop_vectors.txt")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			t.Fatalf("bad line %q", line)
		}
		tool, pw, hash := f[0], f[1], f[2]
		prefix := "{ARGON2ID}"
		if tool == "htpasswd" {
			prefix = "{BLF-CRYPT}"
		}
		for _, h := range []string{hash, prefix + hash} {
			n++
			t.Run(tool+"/"+h[:14], func(t *testing.T) {
				v, err := parseHash(h)
				if err != nil {
					t.Fatal(err)
				}
				if !v.verify([]byte(pw)) {
					t.Error("right password refused")
				}
				if v.verify([]byte(strings.ToUpper(pw))) {
					t.Error("wrong password accepted")
				}
			})
		}
	}
	if n < 12 {
		t.Fatalf("only %d vectors", n)
	}
}
