// Package dkim signs outgoing mail with DKIM (RFC 6376) for mailgate.
//
// It owns the keys (RSA and Ed25519 (RFC 8463), loaded from PEM files and
// reloadable), the choice of signing domain (the From domain, or the one a
// policy names), and the signing itself: relaxed/relaxed canonicalization
// streamed straight into SHA-256 (one pass over the body for every key),
// no l=, an explicit oversigned header list, t= and x=, and a
// DKIM-Signature field byte-identical to what github.com/emersion/go-msgauth
// v0.7.0 produces (the tests check it against go-msgauth).
// RSA signs with crypto/rsa, or with OpenSSL's libcrypto in a build with
// -tags openssl (rsa_openssl.go; Config.RSABackend chooses); both give the
// same bytes. It also
// provides the operator tools behind "mailgate dkim": key generation, DNS
// records and a check of published records.
//
// Data flows one way: the proxy hands Sign a complete CRLF message after
// its header hygiene, and prepends the returned fields before relaying.
package dkim

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoKey is wrapped when no key may sign for the domain: the policy
// named a domain without a key, or unsigned = "reject" and the From domain
// has none.
var ErrNoKey = errors.New("dkim: no key for domain")

// Option configures a Signer.
type Option func(*Signer)

// WithClock sets the clock t= is read from (default time.Now); x= is t=
// plus the configured expiration. Sign reads the clock once per message.
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
	oversign   []bool // oversign[i]: signed[i] is oversigned
	rsaBackend string // RSABackendGo or RSABackendOpenSSL
	keys       atomic.Pointer[loadedKeys]

	// Canonicalizations; always relaxed/relaxed outside tests (relaxed
	// survives the header re-folding and trailing-space stripping that
	// relays do; RFC 6376 section 3.4).
	headerCanon, bodyCanon canonicalization
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

// loadedKeys is a keyring in use, reference counted because a key may
// hold memory outside the Go heap (an OpenSSL EVP_PKEY): the Signer holds
// one reference until Reload replaces the keyring or Close, every Sign
// one while it runs, and the last to let go frees the keys. A Sign in
// progress during a Reload finishes with the keys it started with.
type loadedKeys struct {
	kr   keyring
	refs atomic.Int64
}

func newLoadedKeys(kr keyring) *loadedKeys {
	lk := &loadedKeys{kr: kr}
	lk.refs.Store(1)
	return lk
}

// release drops a reference; the last one closes every key.
func (lk *loadedKeys) release() {
	if lk.refs.Add(-1) == 0 {
		lk.kr.close()
	}
}

func (kr keyring) close() {
	for _, ks := range kr {
		for _, k := range ks {
			closeSigner(k.signer)
		}
	}
}

// ErrClosed is returned by Sign after Close.
var ErrClosed = errors.New("dkim: signer closed")

// acquire returns the keyring in use with a reference taken, or nil after
// Close. A keyring whose count reached zero is being freed and is never
// used: by then Reload or Close has stored its successor, so the loop
// only retries across a swap.
func (s *Signer) acquire() *loadedKeys {
	for {
		lk := s.keys.Load()
		if lk == nil {
			return nil
		}
		n := lk.refs.Load()
		if n > 0 && lk.refs.CompareAndSwap(n, n+1) {
			return lk
		}
	}
}

// New validates cfg, loads every key file and returns a Signer.
func New(cfg Config, opts ...Option) (*Signer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	exp, _ := cfg.expiration()     // checked by Validate
	backend, _ := cfg.rsaBackend() // checked by Validate
	s := &Signer{
		cfg:         cfg,
		now:         time.Now,
		log:         slog.Default(),
		expiration:  exp,
		rsaBackend:  backend,
		reject:      cfg.unsignedReject(),
		signed:      cfg.signedHeaders(),
		headerCanon: canonRelaxed,
		bodyCanon:   canonRelaxed,
	}
	over := cfg.oversigned()
	s.oversign = make([]bool, len(s.signed))
	for i, h := range s.signed {
		s.oversign[i] = over[strings.ToLower(h)]
	}
	for _, o := range opts {
		o(s)
	}
	kr, err := s.loadKeyring()
	if err != nil {
		return nil, err
	}
	s.keys.Store(newLoadedKeys(kr))
	return s, nil
}

// RSABackend is the backend that signs with this Signer's RSA keys:
// RSABackendGo or RSABackendOpenSSL.
func (s *Signer) RSABackend() string { return s.rsaBackend }

// Close frees the keys once no Sign uses them any more; Sign then fails
// with ErrClosed and Reload does nothing. Keys not closed are freed by
// the garbage collector; Close makes it prompt.
func (s *Signer) Close() {
	if lk := s.keys.Swap(nil); lk != nil {
		lk.release()
	}
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
	old := s.keys.Swap(newLoadedKeys(kr))
	if old == nil { // closed meanwhile
		s.Close()
		return ErrClosed
	}
	old.release()
	s.log.Info("dkim keys reloaded", "keys", len(s.cfg.Keys), "rsa_backend", s.rsaBackend)
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
		if rk, ok := signer.(*rsa.PrivateKey); ok {
			if signer, err = rsaSigner(s.rsaBackend, rk); err != nil {
				errs = append(errs, fmt.Errorf("dkim: key file %s: %w", kc.File, err))
				continue
			}
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
		kr.close()
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
	rd := readers.Get().(*reader)
	rd.cr = ctxReader{ctx, msg}
	rd.br.Reset(&rd.cr)
	br := rd.br
	defer func() {
		rd.cr = ctxReader{} // drop ctx and msg
		rd.br.Reset(nil)
		readers.Put(rd)
	}()
	hb := headerBufs.Get().(*[]byte)
	defer func() {
		if cap(*hb) <= maxPooledBytes {
			headerBufs.Put(hb)
		}
	}()
	raw, sep, err := appendHeader((*hb)[:0], br, MaxHeaderBytes)
	if raw != nil {
		*hb = raw
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: sign: read header: %w", err)
	}
	fields, err := parseHeader(raw)
	if err != nil {
		return nil, fmt.Errorf("dkim: sign: %w", err)
	}

	lk := s.acquire()
	if lk == nil {
		return nil, ErrClosed
	}
	defer lk.release()
	kr := lk.kr
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
		// Unreachable (From is present and always in the list), but RFC
		// 6376 section 5.4 requires From to be signed: an empty h= would
		// make a signature any header could be added to.
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

// sign hashes the body once, streaming, for every key (they share the
// canonicalization, hence the body hash), then signs the selected header
// fields for each key. raw is the header block (with the empty line if sep)
// and body the rest of the message.
func (s *Signer) sign(keys []*key, headerKeys []string, raw []byte, sep bool, body io.Reader) (sigs []string, err error) {
	st := signStates.Get().(*signState)
	defer putSignState(st)

	st.body.reset(st.bodyH, s.bodyCanon)
	if sep {
		// No separator means no body: RFC 5322 makes it optional, and the
		// body hash of "" is what any verifier computes.
		if _, err := io.Copy(&st.body, body); err != nil {
			return nil, fmt.Errorf("dkim: sign: body: %w", err)
		}
	}
	st.bh, err = st.body.sum(st.bh[:0])
	if err != nil {
		return nil, fmt.Errorf("dkim: sign: body: %w", err)
	}

	st.spans = splitFields(st.spans[:0], raw)
	st.header = appendSelectedHeader(st.header[:0], raw, st.spans, headerKeys, s.headerCanon)

	p := sigParams{
		canon:    cTag(s.headerCanon, s.bodyCanon),
		headers:  headerKeys,
		bodyHash: st.bh,
		t:        s.now(),
	}
	if s.expiration > 0 {
		p.x = p.t.Add(s.expiration)
	}
	sigs = make([]string, len(keys))
	for i, k := range keys {
		p.algorithm, p.domain, p.selector = k.algorithm, k.domain, k.selector
		if sigs[i], err = st.signHeader(k, &p, s.headerCanon); err != nil {
			return nil, err
		}
	}
	return sigs, nil
}

// headerKeys computes h=: each configured header as many times as it is
// present, plus once more if it is oversigned (RFC 6376 section 8.15), so
// that a field of that name added later breaks the signature. A header
// neither present nor oversigned is left out.
func (s *Signer) headerKeys(fields []field) []string {
	n := 0
	count := func(h string) int {
		c := 0
		for _, f := range fields {
			if strings.EqualFold(f.name, h) {
				c++
			}
		}
		return c
	}
	var counts [32]int // without a map: a few dozen names at most
	cs := counts[:0]
	for i, h := range s.signed {
		c := count(h)
		if s.oversign[i] {
			c++
		}
		cs = append(cs, c)
		n += c
	}
	keys := make([]string, 0, n)
	for i, h := range s.signed {
		for range cs[i] {
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

// headerBufs holds the buffers Sign reads header blocks into.
var headerBufs = sync.Pool{New: func() any { return new([]byte) }}

// reader is what Sign reads a message with, kept in a pool.
type reader struct {
	cr ctxReader
	br *bufio.Reader // reads cr
}

var readers = sync.Pool{New: func() any { return &reader{br: bufio.NewReaderSize(nil, 32<<10)} }}

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
