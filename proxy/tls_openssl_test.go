package proxy_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/tlspolicy"
)

// TestTLSOfferedSuites asks a real OpenSSL client, suite by suite, what the
// listeners offer (what testssl.sh does, faster): TLS 1.2 with ECDHE and
// AES-GCM or ChaCha20-Poly1305, TLS 1.3; never a CBC suite (LUCKY13),
// never TLS 1.1. Both certificate types, both TLS listeners.
func TestTLSOfferedSuites(t *testing.T) {
	peertest.Require(t, "openssl")
	t.Parallel()
	ecdsaCert, err := proxy.SelfSigned("mailgate.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, kt := range []struct {
		name string
		cert tls.Certificate
		alg  string // OpenSSL's name for the authentication in a suite
	}{
		{"rsa", rsaSelfSigned(t), "RSA"},
		{"ecdsa", ecdsaCert, "ECDSA"},
	} {
		t.Run(kt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) {
				d.TLS = proxy.NewStaticCertStore(kt.cert).Config()
			})
			cases := []struct {
				name string
				args []string
				ok   bool
			}{
				{"tls12_cbc_sha_refused", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-AES128-SHA"}, false},
				{"tls12_cbc_sha256_refused", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-AES128-SHA256"}, false},
				{"tls12_aes256_cbc_refused", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-AES256-SHA"}, false},
				{"tls12_rsa_kex_refused", []string{"-tls1_2", "-cipher", "AES128-GCM-SHA256"}, false},
				{"tls12_aes128_gcm", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-AES128-GCM-SHA256"}, true},
				{"tls12_aes256_gcm", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-AES256-GCM-SHA384"}, true},
				{"tls12_chacha20", []string{"-tls1_2", "-cipher", "ECDHE-" + kt.alg + "-CHACHA20-POLY1305"}, true},
				{"tls13", []string{"-tls1_3"}, true},
				// SECLEVEL=0: Debian's OpenSSL would not offer TLS 1.1 at all.
				{"tls11_refused", []string{"-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"}, false},
			}
			for _, l := range []struct{ name, listener, starttls string }{
				{"implicit", "smtps", ""},
				{"starttls", "sub", "smtp"},
			} {
				for _, tc := range cases {
					t.Run(l.name+"/"+tc.name, func(t *testing.T) {
						t.Parallel()
						args := append([]string{"s_client", "-connect", e.addr[l.listener], "-brief"}, tc.args...)
						if l.starttls != "" {
							args = append(args, "-starttls", l.starttls)
						}
						out, ok := openssl(t, args...)
						if ok != tc.ok {
							t.Fatalf("openssl %s: handshake ok = %v, want %v\n%s", strings.Join(args, " "), ok, tc.ok, out)
						}
					})
				}
			}
		})
	}
}

// TestTLSPolicyOptions: a listener's min_version and cipher_suites take
// effect (checked with OpenSSL).
func TestTLSPolicyOptions(t *testing.T) {
	peertest.Require(t, "openssl")
	t.Parallel()
	cert := rsaSelfSigned(t)
	t.Run("min_version_1.3", func(t *testing.T) {
		t.Parallel()
		pol, err := (&proxy.TLSConfig{MinVersion: "1.3"}).Policy()
		if err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.TLS = proxy.NewStaticCertStore(cert).ServerConfig(pol) })
		if out, ok := openssl(t, "s_client", "-connect", e.addr["smtps"], "-brief", "-tls1_2"); ok {
			t.Fatalf("TLS 1.2 accepted with min_version = 1.3:\n%s", out)
		}
		if out, ok := openssl(t, "s_client", "-connect", e.addr["smtps"], "-brief", "-tls1_3"); !ok {
			t.Fatalf("TLS 1.3 refused:\n%s", out)
		}
	})
	t.Run("cipher_suites_cbc_for_old_clients", func(t *testing.T) {
		t.Parallel()
		pol, err := (&proxy.TLSConfig{CipherSuites: []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}}).Policy()
		if err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.TLS = proxy.NewStaticCertStore(cert).ServerConfig(pol) })
		if out, ok := openssl(t, "s_client", "-connect", e.addr["smtps"], "-brief", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"); !ok {
			t.Fatalf("configured CBC suite refused:\n%s", out)
		}
		if out, ok := openssl(t, "s_client", "-connect", e.addr["smtps"], "-brief", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"); ok {
			t.Fatalf("a suite left out of cipher_suites was negotiated:\n%s", out)
		}
	})
	if _, err := tlspolicy.Parse("min_version", "", "cipher_suites", []string{"bogus"}); err == nil {
		t.Error("unknown suite accepted")
	}
}

// openssl runs the openssl command with stdin closed and reports whether
// a handshake completed.
func openssl(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", args...)
	out, err := cmd.CombinedOutput()
	s := string(out)
	ok := err == nil && (strings.Contains(s, "Ciphersuite:") || strings.Contains(s, "Cipher is"))
	return s, ok
}

// rsaSelfSigned makes an RSA-2048 certificate, for the ECDHE-RSA suites.
func rsaSelfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mailgate.test"},
		DNSNames:     []string{"mailgate.test", "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
