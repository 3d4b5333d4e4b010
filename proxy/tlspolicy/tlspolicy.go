// Package tlspolicy is mailgate's TLS baseline: the protocol versions and
// TLS 1.2 cipher suites its listeners offer (the tls block) and its
// upstream client accepts (each upstream's tls_min_version and
// tls_cipher_suites). One package so that both sides read the same names
// the same way.
//
// The default is Mozilla's "intermediate" profile as far as Go implements
// it: TLS 1.2 or 1.3, and in TLS 1.2 only ECDHE key exchange with AEAD
// ciphers (AES-GCM, ChaCha20-Poly1305). The CBC suites Go would otherwise
// offer in TLS 1.2 (ECDHE-*-AES*-SHA) are left out: they are what
// testssl.sh flags as LUCKY13-prone. TLS 1.3 suites are all AEAD and Go
// does not let them be chosen; cipher_suites applies to TLS 1.2 only.
package tlspolicy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DefaultCipherSuites are the TLS 1.2 suites used when none are
// configured, in Go's preference order.
var DefaultCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Policy is a parsed TLS policy.
type Policy struct {
	MinVersion   uint16   // tls.VersionTLS12 or tls.VersionTLS13
	CipherSuites []uint16 // TLS 1.2 suites
}

// Default returns the default policy: TLS 1.2+, DefaultCipherSuites.
func Default() Policy {
	return Policy{MinVersion: tls.VersionTLS12, CipherSuites: slices.Clone(DefaultCipherSuites)}
}

// Parse reads a minimum version ("1.2", the default when empty, or "1.3")
// and a list of TLS 1.2 cipher suites by Go name (crypto/tls
// CipherSuiteName, e.g. "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"; nil: the
// default). Names Go lists as insecure (RC4, 3DES, RSA key exchange,
// CBC-SHA256), TLS 1.3 suites and unknown names are errors that say why;
// minName and suitesName name the options in them.
func Parse(minName, minVersion, suitesName string, suites []string) (Policy, error) {
	p := Default()
	var errs []error
	switch strings.TrimPrefix(strings.ToUpper(minVersion), "TLS") {
	case "", "1.2":
	case "1.3":
		p.MinVersion = tls.VersionTLS13
	case "1.0", "1.1":
		errs = append(errs, fmt.Errorf("%s = %q: TLS 1.0 and 1.1 are not allowed (RFC 8996); want \"1.2\" or \"1.3\"", minName, minVersion))
	default:
		errs = append(errs, fmt.Errorf("%s = %q: want \"1.2\" or \"1.3\"", minName, minVersion))
	}
	if suites != nil {
		if p.MinVersion == tls.VersionTLS13 {
			errs = append(errs, fmt.Errorf("%s: has no effect with %s = \"1.3\" (TLS 1.3 suites are not configurable)", suitesName, minName))
		}
		if len(suites) == 0 {
			errs = append(errs, fmt.Errorf("%s: empty; leave it out for the default", suitesName))
		}
		p.CipherSuites = nil
		for _, name := range suites {
			id, err := lookup(name)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", suitesName, err))
				continue
			}
			if !slices.Contains(p.CipherSuites, id) {
				p.CipherSuites = append(p.CipherSuites, id)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, err
	}
	return p, nil
}

func lookup(name string) (uint16, error) {
	for _, cs := range tls.CipherSuites() {
		if cs.Name != name {
			continue
		}
		if !slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			return 0, fmt.Errorf("%q is a TLS 1.3 suite: Go always enables all of them and lets none be chosen", name)
		}
		return cs.ID, nil
	}
	for _, cs := range tls.InsecureCipherSuites() {
		if cs.Name == name {
			return 0, fmt.Errorf("%q is insecure (Go's tls.InsecureCipherSuites: RC4, 3DES, RSA key exchange or CBC-SHA256) and not allowed", name)
		}
	}
	return 0, fmt.Errorf("unknown cipher suite %q; TLS 1.2 suites Go offers: %s", name, strings.Join(Names(), ", "))
}

// Names lists the TLS 1.2 suite names Parse accepts.
func Names() []string {
	var names []string
	for _, cs := range tls.CipherSuites() {
		if slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			names = append(names, cs.Name)
		}
	}
	return names
}

// Apply sets c's minimum version and TLS 1.2 cipher suites.
func (p Policy) Apply(c *tls.Config) {
	c.MinVersion = p.MinVersion
	c.CipherSuites = slices.Clone(p.CipherSuites)
}
