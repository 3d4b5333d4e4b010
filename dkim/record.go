package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Record is the DNS TXT record that publishes a DKIM public key (RFC 6376
// section 3.6.1).
type Record struct {
	// Name is the fully qualified owner name, "selector._domainkey.domain.".
	Name string
	// Value is the unsplit record value, "v=DKIM1; k=rsa; p=...".
	Value string
}

// NewRecord returns the record for pub published under selector and
// domain. RSA keys are published as SubjectPublicKeyInfo DER (RFC 6376
// section 3.6.1), Ed25519 keys as the raw 32 bytes (RFC 8463 section 4.2).
func NewRecord(domain, selector string, pub crypto.PublicKey) (Record, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return Record{}, fmt.Errorf("dkim: record: %w", err)
	}
	if err := checkSelector(selector); err != nil {
		return Record{}, fmt.Errorf("dkim: record: selector: %w", err)
	}
	p, alg, err := publicKeyData(pub)
	if err != nil {
		return Record{}, fmt.Errorf("dkim: record: %w", err)
	}
	return Record{
		Name:  selector + "._domainkey." + d + ".",
		Value: "v=DKIM1; k=" + alg + "; p=" + base64.StdEncoding.EncodeToString(p),
	}, nil
}

// publicKeyData returns the bytes that p= carries, base64-decoded.
func publicKeyData(pub crypto.PublicKey) ([]byte, string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		return der, AlgorithmRSA, err
	case ed25519.PublicKey:
		return []byte(k), AlgorithmEd25519, nil
	}
	return nil, "", fmt.Errorf("%w: %T", ErrKeyFormat, pub)
}

// Strings splits Value into the character-strings of a TXT record, none
// longer than 255 bytes (RFC 1035 section 3.3.14; RFC 6376 section 3.6.2.2
// lets verifiers concatenate them).
func (r Record) Strings() []string {
	var out []string
	v := r.Value
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

// ZoneLine returns the record as a zone-file line:
//
//	sel._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=..." "..." )
func (r Record) ZoneLine() string {
	var b strings.Builder
	b.WriteString(r.Name)
	b.WriteString(" IN TXT (")
	for _, s := range r.Strings() {
		b.WriteString(" \"")
		b.WriteString(s) // base64, ';', '=' and spaces: nothing to escape
		b.WriteString("\"")
	}
	b.WriteString(" )")
	return b.String()
}

var _ Resolver = (*net.Resolver)(nil)

// Resolver looks up TXT records; *net.Resolver satisfies it. Each returned
// string is one record, its character-strings already concatenated.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// CheckStatus is the outcome of checking one key against DNS.
type CheckStatus string

// Check outcomes.
const (
	// CheckMatch: exactly one DKIM record, carrying this key.
	CheckMatch CheckStatus = "match"
	// CheckMismatch: the published record carries another key, another
	// algorithm, a revoked (empty) key, or there are several records.
	CheckMismatch CheckStatus = "mismatch"
	// CheckMissing: no DKIM record at the name (NXDOMAIN or no record with
	// p=).
	CheckMissing CheckStatus = "missing"
	// CheckLookupError: DNS failed (timeout, SERVFAIL, ...).
	CheckLookupError CheckStatus = "lookup-error"
	// CheckKeyError: the key file could not be loaded.
	CheckKeyError CheckStatus = "key-error"
)

// CheckResult is the state of one configured key in DNS.
type CheckResult struct {
	Domain   string
	Selector string
	// Name is the record name looked up.
	Name   string
	Status CheckStatus
	// Detail explains a status other than CheckMatch, or notes the test
	// flag (t=y) on a match.
	Detail string
	// Expected is the record that should be published (empty when the key
	// could not be loaded).
	Expected Record
}

// OK reports whether the published key matches.
func (r CheckResult) OK() bool { return r.Status == CheckMatch }

// Check loads every key of cfg and compares it with the record published
// in DNS, returning one result per key in configuration order. It never
// stops early: every key gets a result.
func Check(ctx context.Context, cfg Config, r Resolver) []CheckResult {
	results := make([]CheckResult, 0, len(cfg.Keys))
	for _, kc := range cfg.Keys {
		res := CheckResult{Domain: kc.Domain, Selector: kc.Selector}
		results = append(results, checkKey(ctx, kc, r, res))
	}
	return results
}

func checkKey(ctx context.Context, kc KeyConfig, r Resolver, res CheckResult) CheckResult {
	signer, err := LoadKeyFile(kc.File)
	if err != nil {
		res.Status, res.Detail = CheckKeyError, err.Error()
		return res
	}
	rec, err := NewRecord(kc.Domain, kc.Selector, signer.Public())
	if err != nil {
		res.Status, res.Detail = CheckKeyError, err.Error()
		return res
	}
	res.Expected, res.Name = rec, rec.Name
	want, alg, _ := publicKeyData(signer.Public())

	txts, err := r.LookupTXT(ctx, rec.Name)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		res.Status, res.Detail = CheckMissing, "no TXT record at "+rec.Name
		return res
	}
	if err != nil {
		res.Status, res.Detail = CheckLookupError, err.Error()
		return res
	}
	var recs []map[string]string
	for _, t := range txts {
		if tags, ok := parseKeyRecord(t); ok {
			recs = append(recs, tags)
		}
	}
	switch len(recs) {
	case 0:
		res.Status, res.Detail = CheckMissing, "no DKIM key record among the TXT records at "+rec.Name
		return res
	case 1:
	default:
		res.Status, res.Detail = CheckMismatch, fmt.Sprintf("%d DKIM records at %s; verifiers need exactly one", len(recs), rec.Name)
		return res
	}
	tags := recs[0]
	k := tags["k"]
	if k == "" {
		k = AlgorithmRSA // RFC 6376 section 3.6.1 default
	}
	if !strings.EqualFold(k, alg) {
		res.Status, res.Detail = CheckMismatch, fmt.Sprintf("published k=%s, key is %s", k, alg)
		return res
	}
	p := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, tags["p"])
	if p == "" {
		res.Status, res.Detail = CheckMismatch, "published key is revoked (empty p=)"
		return res
	}
	got, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		res.Status, res.Detail = CheckMismatch, "published p= is not base64: "+err.Error()
		return res
	}
	if alg == AlgorithmRSA {
		// Some publish PKCS#1 RSAPublicKey instead of SPKI; compare keys.
		if pub, err := x509.ParsePKIXPublicKey(got); err == nil {
			if rp, ok := pub.(*rsa.PublicKey); ok && rp.Equal(signer.Public()) {
				got = want
			}
		} else if rp, err := x509.ParsePKCS1PublicKey(got); err == nil && rp.Equal(signer.Public()) {
			got = want
		}
	}
	if !bytes.Equal(got, want) {
		res.Status, res.Detail = CheckMismatch, "published key differs from "+kc.File
		return res
	}
	res.Status = CheckMatch
	if strings.Contains(tags["t"], "y") {
		res.Detail = "record is in test mode (t=y): verifiers may ignore failures"
	}
	return res
}

// parseKeyRecord parses a DKIM key record's tag list (RFC 6376 section
// 3.6.1). ok is false for a TXT record that is not a DKIM key record (v=
// other than DKIM1, or no p= tag).
func parseKeyRecord(txt string) (map[string]string, bool) {
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, false
	}
	if _, ok := tags["p"]; !ok {
		return nil, false
	}
	return tags, true
}
