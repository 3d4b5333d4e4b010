// Package dkim signs outgoing mail with DKIM (RFC 6376) for mailgate.
//
// It owns the keys (RSA and Ed25519 (RFC 8463), loaded from PEM files and
// reloadable), the choice of signing domain (the From domain, or the one a
// policy names), and the defaults around github.com/emersion/go-msgauth,
// which does the canonicalization and the cryptography: relaxed/relaxed,
// SHA-256, no l=, an explicit oversigned header list, t= and x=. It also
// provides the operator tools behind "mailgate dkim": key generation, DNS
// records and a check of published records.
//
// Data flows one way: the proxy hands Sign a complete CRLF message after
// its header hygiene, and prepends the returned fields before relaying.
package dkim

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// ErrNoKey is wrapped when no key may sign for the domain: the policy
// named a domain without a key, or unsigned = "reject" and the From domain
// has none.
var ErrNoKey = errors.New("dkim: no key for domain")

// Option configures a Signer.
type Option func(*Signer)

// WithClock sets the clock x= is computed from (default time.Now).
//
// go-msgauth v0.7.0 stamps t= from its own time.Now and offers no hook, so
// a clock far from the real time yields an x= inconsistent with t=; the
// option exists for tests of x= and for a clock adjusted by the caller.
func WithClock(now func() time.Time) Option {
	return func(s *Signer) { s.now = now }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Signer) { s.log = l }
}

// Signer signs messages. It is safe for concurrent use, including with
// Reload.
type Signer struct {
	cfg        Config
	now        func() time.Time
	log        *slog.Logger
	expiration time.Duration
	reject     bool
	signed     []string
	oversign   map[string]bool
	keys       atomic.Pointer[keyring]

	// Canonicalizations; always relaxed/relaxed outside tests (relaxed
	// survives the header re-folding and trailing-space stripping that
	// relays do; RFC 6376 section 3.4).
	headerCanon, bodyCanon msgauth.Canonicalization
}

// key is one loaded signing key.
type key struct {
	domain     string // normalized A-labels
	selector   string
	file       string
	subdomains bool
	signer     crypto.Signer
	algorithm  string
}

// keyring maps a normalized domain to its keys, in configuration order.
type keyring map[string][]*key

// New validates cfg, loads every key file and returns a Signer.
func New(cfg Config, opts ...Option) (*Signer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	exp, _ := cfg.expiration() // checked by Validate
	s := &Signer{
		cfg:         cfg,
		now:         time.Now,
		log:         slog.Default(),
		expiration:  exp,
		reject:      cfg.unsignedReject(),
		signed:      cfg.signedHeaders(),
		oversign:    cfg.oversigned(),
		headerCanon: msgauth.CanonicalizationRelaxed,
		bodyCanon:   msgauth.CanonicalizationRelaxed,
	}
	for _, o := range opts {
		o(s)
	}
	kr, err := s.loadKeyring()
	if err != nil {
		return nil, err
	}
	s.keys.Store(&kr)
	return s, nil
}

// Reload re-reads every key file. On any error the keyring in use is kept
// and the error returned (the caller logs it); on success the new keyring
// replaces the old one atomically: a Sign in progress finishes with the
// keys it started with.
func (s *Signer) Reload() error {
	kr, err := s.loadKeyring()
	if err != nil {
		return fmt.Errorf("dkim: reload (keeping the previous keys): %w", err)
	}
	s.keys.Store(&kr)
	s.log.Info("dkim keys reloaded", "keys", len(s.cfg.Keys))
	return nil
}

func (s *Signer) loadKeyring() (keyring, error) {
	kr := keyring{}
	var errs []error
	for _, kc := range s.cfg.Keys {
		d, _ := normalizeDomain(kc.Domain) // checked by Validate
		signer, err := LoadKeyFile(kc.File)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if fi, err := os.Stat(kc.File); err == nil && fi.Mode().Perm()&0o077 != 0 {
			s.log.Warn("dkim key file readable by group or others", "file", kc.File, "mode", fi.Mode().Perm().String())
		}
		alg, _ := keyAlgorithm(signer.Public())
		kr[d] = append(kr[d], &key{
			domain:     d,
			selector:   kc.Selector,
			file:       kc.File,
			subdomains: kc.Subdomains,
			signer:     signer,
			algorithm:  alg,
		})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return kr, nil
}

// forFromDomain returns the keys that sign mail from domain d: d's own keys
// if it has any, else the subdomains keys of its closest parent that has
// some.
func (kr keyring) forFromDomain(d string) []*key {
	if ks := kr[d]; len(ks) > 0 {
		return ks
	}
	for parent := d; ; {
		_, rest, ok := strings.Cut(parent, ".")
		if !ok {
			return nil
		}
		parent = rest
		var ks []*key
		for _, k := range kr[parent] {
			if k.subdomains {
				ks = append(ks, k)
			}
		}
		if len(ks) > 0 {
			return ks
		}
	}
}

// Sign reads the whole message from msg (header and body, CRLF line
// endings) and returns the DKIM-Signature header fields to prepend, in key
// configuration order, each folded and ending in CRLF: one per selector of
// the signing domain. msg is read once, streaming; only the header block is
// held in memory.
//
// domain == "" signs for the domain of the single From address (what
// DMARC aligns with); a message without exactly one From address gives an
// error wrapping ErrFromHeader. If that domain has no key, Sign returns
// (nil, nil) with unsigned = "relay" and an error wrapping ErrNoKey with
// unsigned = "reject". A non-empty domain (chosen by policy) must have a
// key, else the error wraps ErrNoKey.
//
// Any other error (I/O, bare CR or LF (ErrLineEnding), a signing failure,
// ctx done) means the message must not be relayed unsigned: fail closed.
func (s *Signer) Sign(ctx context.Context, domain string, msg io.Reader) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dkim: sign: %w", err)
	}
	br := bufio.NewReaderSize(ctxReader{ctx, msg}, 32<<10)
	raw, sep, err := readHeader(br, MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("dkim: sign: read header: %w", err)
	}
	fields, err := parseHeader(raw)
	if err != nil {
		return nil, fmt.Errorf("dkim: sign: %w", err)
	}

	kr := *s.keys.Load()
	var keys []*key
	if domain == "" {
		from, err := fromDomain(fields)
		if err != nil {
			return nil, fmt.Errorf("dkim: sign: %w", err)
		}
		keys = kr.forFromDomain(from)
		if len(keys) == 0 {
			if s.reject {
				return nil, fmt.Errorf("dkim: sign: From domain %s: %w", from, ErrNoKey)
			}
			s.log.DebugContext(ctx, "dkim: no key, relaying unsigned", "domain", from)
			return nil, nil
		}
	} else {
		// Whoever chose the domain, RFC 6376 section 5.4 requires a From
		// field to sign.
		if !hasField(fields, "From") {
			return nil, fmt.Errorf("dkim: sign: %w: no From field", ErrFromHeader)
		}
		d, err := normalizeDomain(domain)
		if err != nil {
			return nil, fmt.Errorf("dkim: sign: domain %q: %w: %v", domain, ErrNoKey, err)
		}
		keys = kr[d]
		if len(keys) == 0 {
			return nil, fmt.Errorf("dkim: sign: domain %s: %w", d, ErrNoKey)
		}
	}

	headerKeys := s.headerKeys(fields)
	if len(headerKeys) == 0 {
		// Unreachable (From is present and always in the list), but a nil
		// list would make go-msgauth sign every field, trace fields
		// included.
		return nil, fmt.Errorf("dkim: sign: %w: no header field to sign", ErrFromHeader)
	}
	sigs, err := s.sign(keys, headerKeys, raw, sep, br)
	if err != nil {
		return nil, err
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		sel := make([]string, len(keys))
		for i, k := range keys {
			sel[i] = k.selector
		}
		s.log.DebugContext(ctx, "dkim signed", "domain", keys[0].domain, "selectors", sel)
	}
	return sigs, nil
}

// sign feeds header and body to one go-msgauth signer per key in a single
// pass.
func (s *Signer) sign(keys []*key, headerKeys []string, raw []byte, sep bool, body io.Reader) (sigs []string, err error) {
	var exp time.Time
	if s.expiration > 0 {
		exp = s.now().Add(s.expiration)
	}
	signers := make([]*msgauth.Signer, 0, len(keys))
	writers := make([]io.Writer, 0, len(keys))
	closed := false
	defer func() {
		// A go-msgauth Signer runs a goroutine until Close.
		if !closed {
			for _, sg := range signers {
				sg.Close()
			}
		}
	}()
	for _, k := range keys {
		sg, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain:                 k.domain,
			Selector:               k.selector,
			Signer:                 k.signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: s.headerCanon,
			BodyCanonicalization:   s.bodyCanon,
			HeaderKeys:             headerKeys,
			Expiration:             exp,
		})
		if err != nil {
			return nil, fmt.Errorf("dkim: sign %s/%s: %w", k.domain, k.selector, err)
		}
		signers = append(signers, sg)
		writers = append(writers, sg)
	}
	w := io.MultiWriter(writers...)
	if _, err := w.Write(raw); err != nil {
		return nil, fmt.Errorf("dkim: sign: %w", err)
	}
	if !sep {
		// No body: RFC 5322 makes it optional; go-msgauth needs the
		// empty line, and the body hash of "" is what any verifier computes.
		if _, err := io.WriteString(w, "\r\n"); err != nil {
			return nil, fmt.Errorf("dkim: sign: %w", err)
		}
	} else {
		cw := &crlfWriter{w: w, prevCR: false}
		if _, err := io.Copy(cw, body); err != nil {
			return nil, fmt.Errorf("dkim: sign: body: %w", err)
		}
		if cw.prevCR {
			return nil, fmt.Errorf("dkim: sign: body: %w", ErrLineEnding)
		}
	}
	closed = true
	var errs []error
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("dkim: sign %s/%s: %w", keys[i].domain, keys[i].selector, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sigs = make([]string, len(signers))
	for i, sg := range signers {
		sigs[i] = sg.Signature()
	}
	return sigs, nil
}

// headerKeys computes h=: each configured header as many times as it is
// present, plus once more if it is oversigned (RFC 6376 section 8.15), so
// that a field of that name added later breaks the signature. A header
// neither present nor oversigned is left out.
func (s *Signer) headerKeys(fields []field) []string {
	count := make(map[string]int, len(fields))
	for _, f := range fields {
		count[strings.ToLower(f.name)]++
	}
	var keys []string
	for _, h := range s.signed {
		lh := strings.ToLower(h)
		n := count[lh]
		if s.oversign[lh] {
			n++
		}
		for range n {
			keys = append(keys, h)
		}
	}
	return keys
}

func hasField(fields []field, name string) bool {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return true
		}
	}
	return false
}

// crlfWriter passes p on to w after checking that every LF is preceded by
// CR and every CR followed by LF (across writes).
type crlfWriter struct {
	w      io.Writer
	prevCR bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.prevCR && p[0] != '\n' {
		return 0, ErrLineEnding
	}
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if j == 0 && !c.prevCR || j > 0 && p[j-1] != '\r' {
			return 0, ErrLineEnding
		}
		i = j + 1
	}
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\r')
		if j < 0 {
			break
		}
		j += i
		if j+1 < len(p) && p[j+1] != '\n' {
			return 0, ErrLineEnding
		}
		i = j + 1
	}
	c.prevCR = p[len(p)-1] == '\r'
	return c.w.Write(p)
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
