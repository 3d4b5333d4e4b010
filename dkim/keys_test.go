package dkim

import (
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadKeyFile(t *testing.T) {
	tests := []struct {
		file    string
		wantAlg string
		wantErr error
	}{
		{"rsa2048.pkcs8.pem", AlgorithmRSA, nil},
		{"rsa1024.pkcs1.pem", AlgorithmRSA, nil},
		{"ed25519.pem", AlgorithmEd25519, nil},
		{"rfc8463-ed25519.pem", AlgorithmEd25519, nil},
		{"rsa512.pkcs1.pem", "", ErrWeakKey},
		{"rsa512.pkcs8.pem", "", ErrWeakKey},
		{"garbage.pem", "", ErrKeyFormat},
		{"ec-p256.pem", "", ErrKeyFormat},
		{"does-not-exist.pem", "", fs.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := keyPath(tc.file)
			k, err := LoadKeyFile(path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			alg, err := keyAlgorithm(k.Public())
			if err != nil || alg != tc.wantAlg {
				t.Fatalf("algorithm %q, %v; want %q", alg, err, tc.wantAlg)
			}
		})
	}
}

func TestNewRefusesBadKeys(t *testing.T) {
	for _, f := range []string{"rsa512.pkcs1.pem", "garbage.pem", "missing.pem"} {
		t.Run(f, func(t *testing.T) {
			_, err := New(Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s", File: keyPath(f)}}}, WithLogger(quietLogger()))
			if err == nil || !strings.Contains(err.Error(), f) {
				t.Fatalf("err = %v, want an error naming %s", err, f)
			}
		})
	}
}

func TestAlgorithmFollowsKey(t *testing.T) {
	for file, want := range map[string]string{"rsa1024.pkcs1.pem": "rsa-sha256", "ed25519.pem": "ed25519-sha256"} {
		t.Run(file, func(t *testing.T) {
			s := newTestSigner(t, Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s", File: keyPath(file)}}})
			_, sigs := sign(t, s, "", readMessage(t, "basic.eml"))
			if got := tags(t, sigs[0])["a"]; got != want {
				t.Fatalf("a=%s, want %s", got, want)
			}
		})
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "example.com.s.pem")
	copyFile(t, keyPath("ed25519.pem"), file)
	cfg := Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s", File: file}}}
	oldRecords := recordsFor(t, cfg)
	s := newTestSigner(t, cfg)
	msg := readMessage(t, "basic.eml")

	verifies := func(t *testing.T, records map[string]string) bool {
		t.Helper()
		signed, _ := sign(t, s, "", msg)
		return verifyGo(t, signed, records)[0].Err == nil
	}

	for _, broken := range []struct{ name, src string }{{"garbage", "garbage.pem"}, {"weak", "rsa512.pkcs1.pem"}, {"missing", ""}} {
		t.Run("broken file keeps the old keyring: "+broken.name, func(t *testing.T) {
			if broken.src == "" {
				if err := os.Remove(file); err != nil {
					t.Fatal(err)
				}
			} else {
				copyFile(t, keyPath(broken.src), file)
			}
			t.Cleanup(func() { copyFile(t, keyPath("ed25519.pem"), file) })
			err := s.Reload()
			if err == nil || !strings.Contains(err.Error(), file) {
				t.Fatalf("Reload err = %v, want an error naming the file", err)
			}
			if !verifies(t, oldRecords) {
				t.Fatal("old key no longer used after a failed reload")
			}
		})
	}

	t.Run("good file replaces the keyring", func(t *testing.T) {
		copyFile(t, keyPath("rsa2048.pkcs8.pem"), file)
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		if verifies(t, oldRecords) {
			t.Fatal("still signing with the old key")
		}
		if !verifies(t, recordsFor(t, cfg)) {
			t.Fatal("new key does not verify")
		}
	})
}

func TestGenerateAndWriteKey(t *testing.T) {
	msg := readMessage(t, "basic.eml")
	for _, tc := range []struct {
		alg  string
		bits int
	}{{AlgorithmRSA, 0}, {AlgorithmRSA, 1024}, {AlgorithmEd25519, 0}} {
		t.Run(tc.alg, func(t *testing.T) {
			k, err := GenerateKey(tc.alg, tc.bits)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := k.Public().(type) {
			case *rsa.PublicKey:
				want := tc.bits
				if want == 0 {
					want = 2048
				}
				if pub.N.BitLen() != want {
					t.Errorf("%d bits, want %d", pub.N.BitLen(), want)
				}
			case ed25519.PublicKey:
			default:
				t.Fatalf("%T", pub)
			}
			path := filepath.Join(t.TempDir(), "k.pem")
			if err := WriteKeyFile(path, k); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			b, _ := os.ReadFile(path)
			if !strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----\n") {
				t.Errorf("not PKCS#8 PEM: %.40q", b)
			}
			t.Run("refuses to overwrite", func(t *testing.T) {
				if err := WriteKeyFile(path, k); !errors.Is(err, fs.ErrExist) {
					t.Fatalf("err = %v, want fs.ErrExist", err)
				}
				if after, _ := os.ReadFile(path); string(after) != string(b) {
					t.Fatal("file changed")
				}
			})
			t.Run("signs and its record verifies", func(t *testing.T) {
				cfg := Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "gen", File: path}}}
				s := newTestSigner(t, cfg)
				signed, _ := sign(t, s, "", msg)
				if v := verifyGo(t, signed, recordsFor(t, cfg))[0]; v.Err != nil {
					t.Fatal(v.Err)
				}
			})
		})
	}
	t.Run("weak RSA refused", func(t *testing.T) {
		if _, err := GenerateKey(AlgorithmRSA, 512); !errors.Is(err, ErrWeakKey) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown algorithm", func(t *testing.T) {
		if _, err := GenerateKey("ecdsa", 0); !errors.Is(err, ErrKeyFormat) {
			t.Fatalf("err = %v", err)
		}
	})
}
