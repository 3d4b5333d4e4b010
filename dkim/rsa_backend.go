package dkim

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
)

// RSA signing backends, the values of Config.RSABackend. Ed25519 always
// signs with crypto/ed25519.
const (
	// RSABackendAuto picks OpenSSL when this binary was built with it
	// (go build -tags openssl), else Go. It is the default.
	RSABackendAuto = "auto"
	// RSABackendGo signs with crypto/rsa (constant time, pure Go).
	RSABackendGo = "go"
	// RSABackendOpenSSL signs with libcrypto's EVP_PKEY_sign; only in a
	// binary built with -tags openssl (and cgo).
	RSABackendOpenSSL = "openssl"
)

// OpenSSLBuildTag is the build tag that links the OpenSSL backend in.
const OpenSSLBuildTag = "openssl"

// ErrRSABackend is wrapped when the configured RSA backend is not built
// into this binary, or the backend failed to load a key.
var ErrRSABackend = errors.New("dkim: RSA backend")

// RSABackends lists the RSA backends built into this binary: always "go",
// then "openssl" in a build with -tags openssl.
func RSABackends() []string {
	if opensslBuilt {
		return []string{RSABackendGo, RSABackendOpenSSL}
	}
	return []string{RSABackendGo}
}

// DefaultRSABackend is the backend rsa_backend = "auto" (the default)
// selects in this binary: "openssl" when built in, else "go".
func DefaultRSABackend() string {
	if opensslBuilt {
		return RSABackendOpenSSL
	}
	return RSABackendGo
}

// OpenSSLVersion is the version of the libcrypto linked at run time
// (OpenSSL_version(OPENSSL_VERSION), e.g. "OpenSSL 3.0.17 1 Jul 2025"), or
// "" in a build without OpenSSL.
func OpenSSLVersion() string { return opensslVersion() }

// ResolveRSABackend maps an rsa_backend setting ("" means "auto") to the
// backend it selects in this binary. A backend not built in is an error
// wrapping ErrRSABackend that names the build tag.
func ResolveRSABackend(setting string) (string, error) {
	switch setting {
	case "", RSABackendAuto:
		return DefaultRSABackend(), nil
	case RSABackendGo:
		return RSABackendGo, nil
	case RSABackendOpenSSL:
		if !opensslBuilt {
			return "", fmt.Errorf("%w %q: this mailgate was built without it (build with go build -tags %s, cgo and libssl-dev)",
				ErrRSABackend, setting, OpenSSLBuildTag)
		}
		return RSABackendOpenSSL, nil
	}
	return "", fmt.Errorf("%w %q: want %q, %q or %q", ErrRSABackend, setting, RSABackendAuto, RSABackendGo, RSABackendOpenSSL)
}

// rsaSigner returns the crypto.Signer that signs with k on backend (a
// value ResolveRSABackend returned).
func rsaSigner(backend string, k *rsa.PrivateKey) (crypto.Signer, error) {
	if backend == RSABackendOpenSSL {
		return newOpenSSLKey(k)
	}
	return k, nil
}

// closeSigner frees what a signer holds outside the Go heap (an OpenSSL
// EVP_PKEY); other signers are left to the garbage collector.
func closeSigner(s crypto.Signer) {
	if c, ok := s.(interface{ Close() }); ok {
		c.Close()
	}
}
