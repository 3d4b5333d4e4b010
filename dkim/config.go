package dkim

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Defaults applied when the corresponding Config attribute is absent.
const (
	// DefaultExpiration is the signature lifetime (x= minus t=) when
	// Config.Expiration is nil. Five days outlives any sane retry schedule
	// (RFC 5321 section 4.5.4.1 suggests giving up after 4-5 days) while
	// limiting replay of old signed messages.
	DefaultExpiration = 120 * time.Hour

	// UnsignedRelay relays mail whose From domain has no key without a
	// signature. It is the default.
	UnsignedRelay = "relay"
	// UnsignedReject refuses mail whose From domain has no key (ErrNoKey).
	UnsignedReject = "reject"
)

// DefaultHeaders returns the list of header fields signed when
// Config.Headers is nil, following RFC 6376 section 5.4.1 and adding the
// list headers of RFC 2919 and RFC 8058 (List-Unsubscribe-Post must be
// signed for one-click unsubscribe to be honoured). Every one of them is
// oversigned by default. The slice is a copy the caller may modify.
func DefaultHeaders() []string { return slices.Clone(defaultHeaders) }

// defaultHeaders is DefaultHeaders' list; never modified.
var defaultHeaders = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Id", "List-Unsubscribe",
	"List-Unsubscribe-Post",
}

// forbiddenHeaders are never signed: Received and Return-Path are added or
// rewritten in transit (RFC 6376 section 5.4.1 "trace" fields) and would
// break the signature; Bcc must not exist on the wire at all and is removed
// by the proxy's header hygiene.
var forbiddenHeaders = []string{"Received", "Return-Path", "Bcc"}

// Config is the dkim block of the mailgate configuration file, decoded with
// gohcl:
//
//	dkim {
//	  key "example.com" "mg2026r" { file = "/etc/mailgate/dkim/example.com.mg2026r.pem" }
//	  key "example.com" "mg2026e" { file = "/etc/mailgate/dkim/example.com.mg2026e.pem" subdomains = true }
//	  expiration = "120h"
//	  unsigned   = "relay"
//	  rsa_backend = "auto"
//	}
//
// The zero Config is valid: no keys, every message relayed unsigned.
type Config struct {
	// Keys are the signing keys; several keys for one domain sign every
	// message once each (RSA + Ed25519, or old + new during a rotation).
	Keys []KeyConfig `hcl:"key,block"`
	// Expiration is a Go duration ("120h") added to the signing time to form
	// x=; "0" disables x=. Nil means DefaultExpiration.
	Expiration *string `hcl:"expiration,optional"`
	// Unsigned says what to do with a message whose From domain has no key:
	// "relay" (default) or "reject".
	Unsigned *string `hcl:"unsigned,optional"`
	// Headers overrides DefaultHeaders(). It must contain From and must not
	// contain Received, Return-Path or Bcc.
	Headers []string `hcl:"headers,optional"`
	// Oversign overrides the set of oversigned headers (by default every
	// signed header). Every entry must also be a signed header.
	Oversign []string `hcl:"oversign,optional"`
	// RSABackend chooses what signs with RSA keys: "auto" (default:
	// OpenSSL when built with -tags openssl, else Go), "go" or "openssl"
	// (an error in a build without it). Ed25519 always signs in Go.
	RSABackend *string `hcl:"rsa_backend,optional"`
}

// KeyConfig is one key "domain" "selector" { ... } block.
type KeyConfig struct {
	Domain   string `hcl:"domain,label"`
	Selector string `hcl:"selector,label"`
	// File is a PEM private key: PKCS#1 or PKCS#8 RSA (>= 1024 bits) or
	// PKCS#8 Ed25519.
	File string `hcl:"file"`
	// Subdomains lets this key sign mail whose From domain is a subdomain of
	// Domain (d= stays Domain, which DMARC relaxed alignment accepts).
	Subdomains bool `hcl:"subdomains,optional"`
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("dkim: invalid config")

// Validate checks every value of c without touching the key files (New
// loads them). It returns all problems joined, each wrapping ErrConfig.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	seen := map[string]bool{}
	for _, k := range c.Keys {
		d, err := normalizeDomain(k.Domain)
		if err != nil {
			bad("key %q %q: domain: %v", k.Domain, k.Selector, err)
		}
		if err := checkSelector(k.Selector); err != nil {
			bad("key %q %q: selector: %v", k.Domain, k.Selector, err)
		}
		if strings.TrimSpace(k.File) == "" {
			bad("key %q %q: file is empty", k.Domain, k.Selector)
		}
		id := d + "\x00" + strings.ToLower(k.Selector)
		if seen[id] {
			bad("key %q %q: duplicate domain and selector", k.Domain, k.Selector)
		}
		seen[id] = true
	}
	if _, err := c.expiration(); err != nil {
		bad("expiration: %v", err)
	}
	if c.Unsigned != nil && *c.Unsigned != UnsignedRelay && *c.Unsigned != UnsignedReject {
		bad("unsigned = %q: want %q or %q", *c.Unsigned, UnsignedRelay, UnsignedReject)
	}
	if _, err := c.rsaBackend(); err != nil {
		bad("rsa_backend: %v", err)
	}
	if c.Headers != nil {
		hasFrom := false
		dup := map[string]bool{}
		for _, h := range c.Headers {
			if err := checkFieldName(h); err != nil {
				bad("headers: %v", err)
				continue
			}
			lh := strings.ToLower(h)
			if dup[lh] {
				bad("headers: %q listed twice", h)
			}
			dup[lh] = true
			if lh == "from" {
				hasFrom = true
			}
			for _, f := range forbiddenHeaders {
				if strings.EqualFold(h, f) {
					bad("headers: %q must never be signed", h)
				}
			}
		}
		if !hasFrom {
			bad("headers: From must be signed (RFC 6376 section 5.4)")
		}
	}
	signed := c.signedHeaders()
	for _, h := range c.Oversign {
		if err := checkFieldName(h); err != nil {
			bad("oversign: %v", err)
			continue
		}
		found := false
		for _, s := range signed {
			if strings.EqualFold(s, h) {
				found = true
			}
		}
		if !found {
			bad("oversign: %q is not a signed header", h)
		}
	}
	return errors.Join(errs...)
}

// expiration returns the configured signature lifetime; 0 means no x=.
func (c *Config) expiration() (time.Duration, error) {
	if c.Expiration == nil {
		return DefaultExpiration, nil
	}
	s := strings.TrimSpace(*c.Expiration)
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	if d < time.Second {
		return 0, fmt.Errorf("%q: must be at least 1s, or \"0\" to disable", s)
	}
	return d, nil
}

// rsaBackend returns the RSA backend c selects in this binary.
func (c *Config) rsaBackend() (string, error) {
	if c.RSABackend == nil {
		return ResolveRSABackend("")
	}
	return ResolveRSABackend(*c.RSABackend)
}

func (c *Config) unsignedReject() bool {
	return c.Unsigned != nil && *c.Unsigned == UnsignedReject
}

func (c *Config) signedHeaders() []string {
	if c.Headers != nil {
		return c.Headers
	}
	return defaultHeaders
}

// oversigned reports, by lower-case name, which signed headers are
// oversigned.
func (c *Config) oversigned() map[string]bool {
	list := c.Oversign
	if list == nil {
		list = c.signedHeaders()
	}
	m := make(map[string]bool, len(list))
	for _, h := range list {
		m[strings.ToLower(h)] = true
	}
	return m
}

// checkFieldName enforces RFC 5322 section 3.6.8 ftext: printable ASCII
// except colon.
func checkFieldName(h string) error {
	if h == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(h); i++ {
		if h[i] < 33 || h[i] > 126 || h[i] == ':' {
			return fmt.Errorf("header name %q: invalid character", h)
		}
	}
	return nil
}

// checkSelector enforces RFC 6376 section 3.1: a selector is one or more
// dot-separated DNS labels.
func checkSelector(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	for _, label := range strings.Split(s, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	return nil
}

func checkLabel(l string) error {
	if l == "" || len(l) > 63 {
		return errors.New("label length must be 1-63")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			return fmt.Errorf("label %q: invalid character %q", l, c)
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q: leading or trailing hyphen", l)
	}
	return nil
}
