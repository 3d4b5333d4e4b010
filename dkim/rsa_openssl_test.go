//go:build openssl && cgo

package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	mrand "math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// PKCS#1 v1.5 signatures are deterministic: for the same key and digest,
// OpenSSL and crypto/rsa must produce the same bytes. That is the whole
// correctness argument for the OpenSSL backend.

// rsaKeyFiles are every committed RSA test key MinRSABits or longer:
// 1024 to 4096 bits, PKCS#1 and PKCS#8, from Go and from openssl genpkey
// (one with e = 3).
func rsaKeyFiles(t testing.TB) []string {
	t.Helper()
	files := []string{keyPath("rsa1024.pkcs1.pem"), keyPath("rsa2048.pkcs8.pem")}
	more, err := filepath.Glob(filepath.Join("testdata", "keys", "equiv", "rsa*.pem"))
	if err != nil || len(more) < 9 {
		t.Fatalf("testdata/keys/equiv: %d keys, %v", len(more), err)
	}
	return append(files, more...)
}

func loadBoth(t testing.TB, file string) (*rsa.PrivateKey, *opensslKey) {
	t.Helper()
	k, err := LoadKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	gk := k.(*rsa.PrivateKey)
	ok, err := newOpenSSLKey(gk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ok.(*opensslKey).Close)
	return gk, ok.(*opensslKey)
}

func TestOpenSSLIdenticalSignatures(t *testing.T) {
	rnd := mrand.New(mrand.NewPCG(13, 2026))
	for _, file := range rsaKeyFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			gk, ok := loadBoth(t, file)
			digests := [][]byte{make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)}
			for range 100 {
				d := make([]byte, 32)
				for i := range d {
					d[i] = byte(rnd.Uint32())
				}
				digests = append(digests, d)
			}
			for _, d := range digests {
				want, err := gk.Sign(rand.Reader, d, crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				got, err := ok.Sign(nil, d, crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("digest %x: OpenSSL and crypto/rsa signatures differ\nopenssl: %x\ngo:      %x", d, got, want)
				}
			}
		})
	}
}

// TestOpenSSLIdenticalFields signs every test message with two Signers,
// one per backend, and requires identical DKIM-Signature fields.
func TestOpenSSLIdenticalFields(t *testing.T) {
	msgs := []string{}
	for _, name := range []string{"basic.eml", "empty-body.eml", "folded.eml", "hygiene.eml", "no-separator.eml", "rfc8463.eml", "utf8.eml"} {
		msgs = append(msgs, readMessage(t, name))
	}
	for _, m := range diffMessages {
		msgs = append(msgs, m)
	}
	for _, file := range rsaKeyFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			goS, osS := backendPair(t, file)
			for _, m := range msgs {
				want, werr := goS.Sign(context.Background(), "example.com", strings.NewReader(m))
				got, gerr := osS.Sign(context.Background(), "example.com", strings.NewReader(m))
				if (werr == nil) != (gerr == nil) || strings.Join(got, "") != strings.Join(want, "") {
					t.Fatalf("message %q:\nopenssl: %q %v\ngo:      %q %v", m, got, gerr, want, werr)
				}
			}
		})
	}
}

// backendPair returns a Signer per backend for file, on one fixed clock.
func backendPair(t testing.TB, file string) (goS, osS *Signer) {
	t.Helper()
	clock := WithClock(func() time.Time { return time.Unix(1800000000, 0) })
	g, o := RSABackendGo, RSABackendOpenSSL
	keys := []KeyConfig{{Domain: "example.com", Selector: "s", File: file}}
	goS = newTestSigner(t, Config{Keys: keys, RSABackend: &g}, clock)
	osS = newTestSigner(t, Config{Keys: keys, RSABackend: &o}, clock)
	t.Cleanup(goS.Close)
	t.Cleanup(osS.Close)
	if goS.RSABackend() != g || osS.RSABackend() != o {
		t.Fatalf("backends %q, %q", goS.RSABackend(), osS.RSABackend())
	}
	return goS, osS
}

// FuzzOpenSSLIdentical compares both backends on fuzzed digests (the raw
// signature) and on fuzzed messages (the whole field); run with
// go test -tags openssl -run XXX -fuzz FuzzOpenSSLIdentical ./dkim.
func FuzzOpenSSLIdentical(f *testing.F) {
	for _, m := range diffMessages {
		f.Add([]byte(m))
	}
	f.Add([]byte("From: a@example.com\r\n\r\nbody\r\n"))
	gk, ok := loadBoth(f, keyPath("rsa2048.pkcs8.pem"))
	goS, osS := backendPair(f, keyPath("rsa2048.pkcs8.pem"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		d := sha256.Sum256(msg)
		want, err := gk.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ok.Sign(nil, d[:], crypto.SHA256)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("digest %x: openssl %x (%v), go %x", d, got, err, want)
		}
		msg = bytes.ReplaceAll(msg, []byte("\r"), nil)
		msg = bytes.ReplaceAll(msg, []byte("\n"), []byte("\r\n"))
		wf, werr := goS.Sign(context.Background(), "example.com", bytes.NewReader(msg))
		gf, gerr := osS.Sign(context.Background(), "example.com", bytes.NewReader(msg))
		if (werr == nil) != (gerr == nil) || strings.Join(gf, "") != strings.Join(wf, "") {
			t.Fatalf("message %q:\nopenssl: %q %v\ngo:      %q %v", msg, gf, gerr, wf, werr)
		}
	})
}

func TestOpenSSLRefuses(t *testing.T) {
	_, ok := loadBoth(t, keyPath("rsa2048.pkcs8.pem"))
	d := sha256.Sum256([]byte("x"))
	d1 := sha1.Sum([]byte("x"))
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"SHA-1", d1[:], crypto.SHA1},
		{"PSS", d[:], &rsa.PSSOptions{Hash: crypto.SHA256}},
		{"short digest", d[:31], crypto.SHA256},
		{"empty digest", nil, crypto.SHA256},
		{"no hash", d[:], crypto.Hash(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sig, err := ok.Sign(nil, tc.digest, tc.opts); !errors.Is(err, ErrRSABackend) {
				t.Fatalf("Sign = %x, %v; want an error wrapping ErrRSABackend", sig, err)
			}
		})
	}
	ok.Close()
	if _, err := ok.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, errOpenSSLClosed) {
		t.Fatalf("Sign after Close: %v", err)
	}
}

// TestOpenSSLErrors: what libcrypto refuses comes back as a Go error with
// OpenSSL's own text (ERR_error_string_n), and nothing is kept.
func TestOpenSSLErrors(t *testing.T) {
	gk, _ := loadBoth(t, keyPath("rsa2048.pkcs8.pem"))
	other, _ := loadBoth(t, keyPath("rsa1024.pkcs1.pem"))
	made, freed, _, _ := opensslCounts()
	ed, err := LoadKeyFile(keyPath("ed25519.pem"))
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(ed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		der  []byte
		want string
	}{
		{"garbage DER", []byte("\x30\x03\x02\x01\x00 not a key"), "error:"},
		{"truncated DER", x509.MarshalPKCS1PrivateKey(gk)[:100], "error:"},
		{"Ed25519 key", edDER, "not an RSA key"},
		{"key and public key differ", x509.MarshalPKCS1PrivateKey(other), "self-test"},
		{"empty", nil, "empty DER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newOpenSSLKeyDER(tc.der, &gk.PublicKey)
			if !errors.Is(err, ErrRSABackend) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrRSABackend with %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	m2, f2, _, _ := opensslCounts()
	if m2-made != f2-freed {
		t.Fatalf("refused keys leaked: %d EVP_PKEYs made, %d freed", m2-made, f2-freed)
	}
}

func TestOpenSSLConcurrent(t *testing.T) {
	gk, ok := loadBoth(t, keyPath("rsa2048.pkcs8.pem"))
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				want, _ := gk.Sign(rand.Reader, d[:], crypto.SHA256)
				got, err := ok.Sign(nil, d[:], crypto.SHA256)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("goroutine %d sig %d: %v, equal %v", g, i, err, bytes.Equal(got, want))
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestOpenSSLNoLeak signs in a loop, with reloads and concurrent signers,
// and checks that every EVP object made was freed and that the C heap
// stays flat. No timing: counts and generous byte bounds.
func TestOpenSSLNoLeak(t *testing.T) {
	file := filepath.Join(t.TempDir(), "k.pem")
	copyFile(t, keyPath("rsa2048.pkcs8.pem"), file)
	cfg := Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s", File: file}, edKey("example.com", "e")}}
	msg := readMessage(t, "basic.eml")
	pm0, pf0, cm0, cf0 := opensslCounts()

	s := newTestSigner(t, cfg)
	signN := func(n int) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range n / 4 {
					if _, err := s.Sign(context.Background(), "", strings.NewReader(msg)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			for range 5 {
				if err := s.Reload(); err != nil {
					t.Error(err)
				}
			}
		})
		wg.Wait()
	}
	signN(400) // warm up libcrypto's caches and the allocator
	heap0 := cHeapInUse()
	signN(4000)
	grew := cHeapInUse() - heap0
	s.Close()

	pm, pf, cm, cf := opensslCounts()
	t.Logf("EVP_PKEY made %d freed %d; EVP_PKEY_CTX made %d freed %d; C heap grew %d bytes over 4000 signatures",
		pm-pm0, pf-pf0, cm-cm0, cf-cf0, grew)
	if pm-pm0 != 11 || pf-pf0 != 11 { // 1 + 10 reloads, every one freed
		t.Errorf("EVP_PKEYs: %d made, %d freed; want 11 and 11", pm-pm0, pf-pf0)
	}
	if cm-cm0 != cf-cf0 || cm-cm0 < 4400 {
		t.Errorf("EVP_PKEY_CTXs: %d made, %d freed; want equal, at least 4400", cm-cm0, cf-cf0)
	}
	// A leak of even one 256-byte signature per message would be 1 MB;
	// an EVP_PKEY_CTX leak far more.
	if heap0 < 0 {
		t.Log("no mallinfo2 in this C library: C heap not measured (the EVP counts still are)")
	} else if grew > 512<<10 {
		t.Errorf("C heap grew %d bytes over 4000 signatures", grew)
	}
}

// TestOpenSSLCleanup: a key nobody closed is freed by the garbage
// collector (the safety net behind the keyring's explicit release).
func TestOpenSSLCleanup(t *testing.T) {
	k, err := LoadKeyFile(keyPath("rsa2048.pkcs8.pem"))
	if err != nil {
		t.Fatal(err)
	}
	_, freed0, _, _ := opensslCounts()
	func() {
		if _, err := newOpenSSLKey(k.(*rsa.PrivateKey)); err != nil {
			t.Fatal(err)
		}
	}()
	for i := 0; ; i++ {
		runtime.GC()
		if _, freed, _, _ := opensslCounts(); freed > freed0 {
			return
		}
		if i == 1000 {
			t.Fatal("an unreachable key was never freed")
		}
		time.Sleep(time.Millisecond) // cleanups run on their own goroutine
	}
}

func TestAutoIsOpenSSL(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{rsaKey("example.com", "r")}})
	defer s.Close()
	if s.RSABackend() != RSABackendOpenSSL {
		t.Fatalf("auto chose %q in an openssl build", s.RSABackend())
	}
	if _, ok := s.keys.Load().kr["example.com"][0].signer.(*opensslKey); !ok {
		t.Fatal("the RSA key does not sign with OpenSSL")
	}
	t.Log(OpenSSLVersion())
}
