//go:build !(openssl && cgo)

package dkim

import (
	"crypto"
	"crypto/rsa"
	"fmt"
)

// This is the default, pure-Go build: RSA signs with crypto/rsa only.
// rsa_openssl.go replaces it under -tags openssl with cgo.

const opensslBuilt = false

func opensslVersion() string { return "" }

func newOpenSSLKey(*rsa.PrivateKey) (crypto.Signer, error) {
	return nil, fmt.Errorf("%w %q: not built in (go build -tags %s)", ErrRSABackend, RSABackendOpenSSL, OpenSSLBuildTag)
}
