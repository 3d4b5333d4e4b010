package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"sync/atomic"
	"time"

	"github.com/mailgate/mailgate/proxy/tlspolicy"
)

// TLSConfig is the `tls { … }` block: the listeners' certificate and
// the TLS policy they offer (see package tlspolicy for the defaults and
// why).
type TLSConfig struct {
	CertFile string `hcl:"cert_file"` // PEM chain, reloaded on SIGHUP
	KeyFile  string `hcl:"key_file"`  // PEM key
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `hcl:"min_version,optional"`
	// CipherSuites are TLS 1.2 suites by Go name; default ECDHE with
	// AES-GCM or ChaCha20-Poly1305 only (tlspolicy.DefaultCipherSuites).
	CipherSuites []string `hcl:"cipher_suites,optional"`
}

// Policy parses the block's min_version and cipher_suites; the error names
// the option and says what is wrong.
func (c *TLSConfig) Policy() (tlspolicy.Policy, error) {
	return tlspolicy.Parse("min_version", c.MinVersion, "cipher_suites", c.CipherSuites)
}

// CertStore serves the listener certificate and reloads it on demand
// (SIGHUP). A failed reload keeps the certificate in use.
type CertStore struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

// LoadCertStore reads a PEM certificate chain and key.
func LoadCertStore(certFile, keyFile string) (*CertStore, error) {
	s := &CertStore{certFile: certFile, keyFile: keyFile}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// NewStaticCertStore serves one certificate forever (the demo's).
func NewStaticCertStore(c tls.Certificate) *CertStore {
	s := &CertStore{}
	s.cert.Store(&c)
	return s
}

// Reload re-reads the files; on error the old certificate stays.
func (s *CertStore) Reload() error {
	if s.certFile == "" {
		return nil
	}
	c, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return fmt.Errorf("proxy: tls: %w", err)
	}
	s.cert.Store(&c)
	return nil
}

// Config returns the server TLS configuration under the default policy
// (TLS 1.2 minimum, AEAD suites only; see package tlspolicy).
func (s *CertStore) Config() *tls.Config { return s.ServerConfig(tlspolicy.Default()) }

// ServerConfig returns the server TLS configuration under p.
func (s *CertStore) ServerConfig(p tlspolicy.Policy) *tls.Config {
	c := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
	p.Apply(c)
	return c
}

// SelfSigned makes a throwaway ECDSA certificate for hostname, valid for a
// year: for the demo and tests only.
func SelfSigned(hostname string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname},
		DNSNames:     []string{hostname, "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLS1.3"
	case tls.VersionTLS12:
		return "TLS1.2"
	case tls.VersionTLS11:
		return "TLS1.1"
	case tls.VersionTLS10:
		return "TLS1.0"
	}
	return fmt.Sprintf("0x%04x", v)
}

func tlsCipherName(c uint16) string { return tls.CipherSuiteName(c) }
