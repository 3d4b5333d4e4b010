package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/net/idna"
)

// MinRSABits is the smallest RSA modulus accepted (RFC 8301 section 3.2:
// signers MUST use at least 1024 bits; 2048 is what keygen writes).
const MinRSABits = 1024

// Key algorithms, as written in the k= tag of the DNS record and accepted
// by GenerateKey.
const (
	AlgorithmRSA     = "rsa"
	AlgorithmEd25519 = "ed25519"
)

var (
	// ErrWeakKey is wrapped when an RSA key is shorter than MinRSABits.
	ErrWeakKey = errors.New("dkim: RSA key too short")
	// ErrKeyFormat is wrapped when a key file is not a PEM RSA or Ed25519
	// private key.
	ErrKeyFormat = errors.New("dkim: unsupported key format")
)

// LoadKeyFile reads a PEM private key from path: PKCS#1 ("RSA PRIVATE
// KEY") or PKCS#8 ("PRIVATE KEY") RSA of at least MinRSABits, or PKCS#8
// Ed25519. Errors name the file.
func LoadKeyFile(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim: key file %s: %w", path, err)
	}
	k, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim: key file %s: %w", path, err)
	}
	return k, nil
}

// ParseKey parses a PEM private key; see LoadKeyFile. Only the first PEM
// block is considered; text around it is ignored.
func ParseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyFormat)
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM type %q (want \"PRIVATE KEY\" or \"RSA PRIVATE KEY\")", ErrKeyFormat, block.Type)
	}
	if err != nil {
		// Go's x509 refuses RSA keys under 1024 bits itself; keep the
		// sentinel so callers can tell "weak" from "garbage".
		if strings.Contains(err.Error(), "insecure") || strings.Contains(err.Error(), "too small") {
			return nil, fmt.Errorf("%w (minimum %d bits): %v", ErrWeakKey, MinRSABits, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrKeyFormat, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return nil, fmt.Errorf("%w: %d bits, minimum %d", ErrWeakKey, bits, MinRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("%w: %T (DKIM knows RSA and Ed25519 only)", ErrKeyFormat, key)
	}
}

// keyAlgorithm returns the k= value for pub.
func keyAlgorithm(pub crypto.PublicKey) (string, error) {
	switch pub.(type) {
	case *rsa.PublicKey:
		return AlgorithmRSA, nil
	case ed25519.PublicKey:
		return AlgorithmEd25519, nil
	}
	return "", fmt.Errorf("%w: %T", ErrKeyFormat, pub)
}

// GenerateKey creates a new signing key. algorithm is AlgorithmRSA or
// AlgorithmEd25519; bits is the RSA modulus size (0 means 2048) and is
// ignored for Ed25519.
func GenerateKey(algorithm string, bits int) (crypto.Signer, error) {
	switch algorithm {
	case AlgorithmRSA:
		if bits == 0 {
			bits = 2048
		}
		if bits < MinRSABits {
			return nil, fmt.Errorf("%w: %d bits, minimum %d", ErrWeakKey, bits, MinRSABits)
		}
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate RSA key: %w", err)
		}
		return k, nil
	case AlgorithmEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate Ed25519 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: algorithm %q (want %q or %q)", ErrKeyFormat, algorithm, AlgorithmRSA, AlgorithmEd25519)
}

// WriteKeyFile writes key to path as PKCS#8 PEM with mode 0600. It refuses
// to overwrite an existing file (the error wraps fs.ErrExist).
func WriteKeyFile(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("dkim: marshal key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("dkim: write key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("dkim: write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("dkim: write key %s: %w", path, err)
	}
	return nil
}

// normalizeDomain lower-cases d, drops a trailing dot and converts an IDN
// to A-labels: d= carries A-labels (RFC 8616 section 4) and that is what
// is compared.
func normalizeDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	a = strings.ToLower(a)
	for l := range strings.SplitSeq(a, ".") {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("domain %q: %w", d, err)
		}
	}
	return a, nil
}
