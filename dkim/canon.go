package dkim

// Mailgate's own DKIM signing core (RFC 6376, RFC 8463): streaming body
// canonicalization into SHA-256, header selection and canonicalization,
// and the DKIM-Signature field in exactly the form go-msgauth v0.7.0
// writes it (same tags, order and folding), without go-msgauth's
// per-signature goroutine, pipe and allocations. canon_test.go checks it
// byte for byte against go-msgauth.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"strconv"
	"sync"
	"time"
)

// canonicalization is a DKIM canonicalization algorithm (RFC 6376 section
// 3.4).
type canonicalization uint8

const (
	canonSimple  canonicalization = iota // section 3.4.1 and 3.4.3
	canonRelaxed                         // section 3.4.2 and 3.4.4
)

// String returns the name used in c=.
func (c canonicalization) String() string {
	if c == canonRelaxed {
		return "relaxed"
	}
	return "simple"
}

// cTag returns the value of c= without building a string per message.
func cTag(header, body canonicalization) string {
	switch {
	case header == canonRelaxed && body == canonRelaxed:
		return "relaxed/relaxed"
	case header == canonRelaxed:
		return "relaxed/simple"
	case body == canonRelaxed:
		return "simple/relaxed"
	}
	return "simple/simple"
}

// bodyBufSize is the staging buffer between the canonicalizer and the
// hash: large enough that SHA-256 sees few, long writes.
const bodyBufSize = 4096

// bodyCanon canonicalizes a message body and hashes the result, for any
// chunking of the input (all state is kept across Writes). It also
// enforces CRLF: a bare CR or bare LF makes Write (or, for a CR at the very
// end, sum) fail with ErrLineEnding, since a later hop would "fix" those
// bytes and break the signature.
//
// Both canonicalizations hold line ends back until a later line has
// content, which removes trailing empty lines (RFC 6376 section 3.4.3 and
// 3.4.4). Relaxed also holds a WSP run back until a non-WSP byte follows
// on the same line: the run becomes one SP, or vanishes at the end of the
// line.
type bodyCanon struct {
	h       hash.Hash
	relaxed bool
	cr      bool // the previous byte was CR
	wsp     bool // relaxed: a WSP run is pending on this line
	content bool // something other than line ends was hashed
	lines   int  // line ends pending (empty lines so far)
	buf     []byte
}

// reset prepares c for a new body hashed into h.
func (c *bodyCanon) reset(h hash.Hash, canon canonicalization) {
	h.Reset()
	*c = bodyCanon{h: h, relaxed: canon == canonRelaxed, buf: c.buf[:0]}
	if cap(c.buf) < bodyBufSize {
		c.buf = make([]byte, 0, bodyBufSize)
	}
}

// special marks the bytes the canonicalizer looks at; every other byte is
// copied as is. Bit 0: simple (CR, LF), bit 1: relaxed (CR, LF, SP, HTAB).
var special = func() (t [256]uint8) {
	t['\r'], t['\n'] = 3, 3
	t[' '], t['\t'] = 2, 2
	return t
}()

// emit appends b to the staging buffer, hashing what is there when full.
func (c *bodyCanon) emit(b []byte) {
	if len(c.buf)+len(b) > cap(c.buf) {
		c.flush()
		if len(b) > cap(c.buf)/2 {
			c.h.Write(b) // hash.Hash.Write never fails
			return
		}
	}
	c.buf = append(c.buf, b...)
}

func (c *bodyCanon) flush() {
	if len(c.buf) > 0 {
		c.h.Write(c.buf)
		c.buf = c.buf[:0]
	}
}

// pending writes the held-back line ends: a byte with content follows.
func (c *bodyCanon) pending() {
	for ; c.lines > 0; c.lines-- {
		c.emit(crlfBytes)
	}
}

var (
	crlfBytes = []byte("\r\n")
	twoSP     = []byte("  ")
)

// Write canonicalizes p. It fails with ErrLineEnding on a bare CR or LF;
// the body hash is then meaningless.
func (c *bodyCanon) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		m := min(len(p), bodyBufSize/2)
		if err := c.write(p[:m]); err != nil {
			return 0, err
		}
		p = p[m:]
	}
	return n, nil
}

// write canonicalizes p, len(p) <= bodyBufSize/2, into the staging buffer.
// Apart from held-back line ends (written by pending, which makes room
// itself), the output is at most len(p)+1 bytes (one SP held back from an
// earlier write), so the loop copies without checks.
func (c *bodyCanon) write(p []byte) error {
	var mask uint8 = 1
	if c.relaxed {
		mask = 2
	}
	if cap(c.buf)-len(c.buf) < len(p)+1 {
		c.flush()
	}
	out, o := c.buf[:cap(c.buf)], len(c.buf)
	for i := 0; i < len(p); {
		b := p[i]
		if c.cr {
			if b != '\n' {
				c.buf = out[:o]
				return fmt.Errorf("%w: in body", ErrLineEnding)
			}
			c.cr = false
			c.wsp = false // WSP at the end of a line is removed
			c.lines++
			i++
			continue
		}
		if special[b]&mask == 0 {
			if c.lines > 0 {
				c.buf = out[:o]
				c.pending()
				if cap(c.buf)-len(c.buf) < len(p)-i+1 {
					c.flush()
				}
				out, o = c.buf[:cap(c.buf)], len(c.buf)
			}
			// Fast path with SIMD searches: the rest of the line (up to
			// CR or the end of p) is canonical already once WSP at its
			// end is held back: no LF, and in relaxed no HTAB and no two
			// SP in a row. Most lines of text are.
			k := bytes.IndexByte(p[i:], '\r')
			if k < 0 {
				k = len(p)
			} else {
				k += i
			}
			end := k
			if c.relaxed {
				for end > i && (p[end-1] == ' ' || p[end-1] == '\t') {
					end--
				}
			}
			core := p[i:end]
			if bytes.IndexByte(core, '\n') < 0 && (!c.relaxed || bytes.IndexByte(core, '\t') < 0 && !bytes.Contains(core, twoSP)) {
				if c.wsp {
					out[o] = ' '
					o++
				}
				c.content = true
				o += copy(out[o:], core)
				c.wsp = end < k
				i = k
				continue
			}
			// The run of bytes copied as they are. In relaxed, a
			// single SP between two such bytes is canonical already:
			// most lines of text are one run.
			j := i + 1
			for j < len(p) {
				if special[p[j]]&mask == 0 {
					j++
				} else if p[j] == ' ' && mask == 2 && j+1 < len(p) && special[p[j+1]]&mask == 0 {
					j += 2
				} else {
					break
				}
			}
			if c.wsp {
				out[o] = ' '
				o++
				c.wsp = false
			}
			c.content = true
			o += copy(out[o:], p[i:j])
			i = j
			continue
		}
		switch b {
		case '\r':
			c.cr = true
		case '\n':
			c.buf = out[:o]
			return fmt.Errorf("%w: in body", ErrLineEnding)
		default: // relaxed WSP
			c.wsp = true
		}
		i++
	}
	c.buf = out[:o]
	return nil
}

// sum ends the body and appends its hash to dst. Simple ends a body with
// exactly one CRLF (an empty body is one CRLF); relaxed ends a non-empty
// body with one CRLF and hashes nothing for an empty one.
func (c *bodyCanon) sum(dst []byte) ([]byte, error) {
	if c.cr {
		return nil, fmt.Errorf("%w: in body", ErrLineEnding)
	}
	if !c.relaxed || c.content {
		c.emit(crlfBytes)
	}
	c.flush()
	return c.h.Sum(dst), nil
}

// fieldSpan is one header field in the raw header block: raw[start:end]
// is the whole field with its folding and final CRLF, raw[start:colon]
// its name with any WSP before the colon.
type fieldSpan struct {
	start, colon, end int
	used              bool
}

// splitFields appends the fields of raw (a header block checked by
// readHeader and parseHeader) to spans.
func splitFields(spans []fieldSpan, raw []byte) []fieldSpan {
	for i := 0; i < len(raw); {
		if raw[i] == '\r' { // the empty line
			break
		}
		f := fieldSpan{start: i, colon: -1}
		for {
			j := i
			for j < len(raw) && raw[j] != '\n' {
				if raw[j] == ':' && f.colon < 0 {
					f.colon = j
				}
				j++
			}
			i = j + 1
			if i >= len(raw) || (raw[i] != ' ' && raw[i] != '\t') {
				break
			}
		}
		f.end = min(i, len(raw))
		spans = append(spans, f)
	}
	return spans
}

// fieldName returns the name of f, without WSP before the colon.
func fieldName(raw []byte, f fieldSpan) []byte {
	n := raw[f.start:f.colon]
	for len(n) > 0 && (n[len(n)-1] == ' ' || n[len(n)-1] == '\t') {
		n = n[:len(n)-1]
	}
	return n
}

// equalFoldASCII compares a field name with a configured header name
// (both ASCII, checkFieldName) ignoring case.
func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// appendSelectedHeader appends to dst the canonicalized header fields
// that h= names, in h= order. RFC 6376 section 5.4.2: each name takes the
// next instance of that field from the bottom; a name listed more times
// than the field is present (oversigning, section 8.15) contributes
// nothing. The spans' used marks are consumed.
func appendSelectedHeader(dst, raw []byte, spans []fieldSpan, headerKeys []string, canon canonicalization) []byte {
	for _, k := range headerKeys {
		for i := len(spans) - 1; i >= 0; i-- {
			f := &spans[i]
			if f.used || !equalFoldASCII(fieldName(raw, *f), k) {
				continue
			}
			f.used = true
			if canon == canonRelaxed {
				dst = appendRelaxedField(dst, fieldName(raw, *f), raw[f.colon+1:f.end])
			} else {
				dst = append(dst, raw[f.start:f.end]...)
			}
			break
		}
	}
	return dst
}

// appendRelaxedField appends one field in relaxed header canonicalization
// (RFC 6376 section 3.4.2): name in lower case, then ":", then the value
// unfolded with every run of WSP made one SP and WSP at both ends removed,
// then CRLF.
func appendRelaxedField(dst, name, value []byte) []byte {
	for _, b := range name {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		dst = append(dst, b)
	}
	dst = append(dst, ':')
	sp := false
	start := len(dst)
	for _, b := range value {
		switch b {
		case ' ', '\t', '\r', '\n':
			sp = true
		default:
			if sp && len(dst) > start {
				dst = append(dst, ' ')
			}
			sp = false
			dst = append(dst, b)
		}
	}
	return append(dst, '\r', '\n')
}

// sigParams are the tags of one DKIM-Signature field.
type sigParams struct {
	algorithm string // key algorithm: AlgorithmRSA or AlgorithmEd25519
	canon     string // c=
	domain    string
	selector  string
	headers   []string
	bodyHash  []byte
	t, x      time.Time // x zero: no x=
}

// appendTags and appendB append the DKIM-Signature field as go-msgauth
// v0.7.0 formats it: the tags other than b= sorted by name (a, bh, c, d, h,
// s, t, v, x), each " k=v;", a new line whenever the next tag would take the
// line past 75 octets, then b= on lines of its own cut every 75 octets;
// CRLF at the end. An empty b (the field as hashed, RFC 6376 section 3.7)
// gives " b=".
//
// appendTags appends the field up to, not including, the line break
// before b=; appendB appends the rest.
func appendTags(dst []byte, p *sigParams) []byte {
	dst = append(dst, "DKIM-Signature:"...)
	line := len(dst) // start of the current line
	// brk starts a new line if a tag of name length kl and value length
	// vl would make it longer than go-msgauth allows.
	brk := func(dst []byte, line, kl, vl int) ([]byte, int) {
		if 3+len(dst)-line+kl+vl > 75 {
			dst = append(dst, '\r', '\n')
			line = len(dst)
		}
		return dst, line
	}
	var scratch [64]byte

	dst, line = brk(dst, line, 1, len(p.algorithm)+len("-sha256"))
	dst = append(dst, " a="...)
	dst = append(dst, p.algorithm...)
	dst = append(dst, "-sha256;"...)

	v := base64.StdEncoding.AppendEncode(scratch[:0], p.bodyHash)
	dst, line = brk(dst, line, 2, len(v))
	dst = append(dst, " bh="...)
	dst = append(dst, v...)
	dst = append(dst, ';')

	dst, line = brk(dst, line, 1, len(p.canon))
	dst = append(dst, " c="...)
	dst = append(dst, p.canon...)
	dst = append(dst, ';')

	dst, line = brk(dst, line, 1, len(p.domain))
	dst = append(dst, " d="...)
	dst = append(dst, p.domain...)
	dst = append(dst, ';')

	hl := 0
	for i, h := range p.headers {
		if i > 0 {
			hl++
		}
		hl += len(h)
	}
	dst, line = brk(dst, line, 1, hl)
	dst = append(dst, " h="...)
	for i, h := range p.headers {
		if i > 0 {
			dst = append(dst, ':')
		}
		dst = append(dst, h...)
	}
	dst = append(dst, ';')

	dst, line = brk(dst, line, 1, len(p.selector))
	dst = append(dst, " s="...)
	dst = append(dst, p.selector...)
	dst = append(dst, ';')

	v = strconv.AppendInt(scratch[:0], p.t.Unix(), 10)
	dst, line = brk(dst, line, 1, len(v))
	dst = append(dst, " t="...)
	dst = append(dst, v...)
	dst = append(dst, ';')

	dst, line = brk(dst, line, 1, 1)
	dst = append(dst, " v=1;"...)

	if !p.x.IsZero() {
		v = strconv.AppendInt(scratch[:0], p.x.Unix(), 10)
		dst, _ = brk(dst, line, 1, len(v))
		dst = append(dst, " x="...)
		dst = append(dst, v...)
		dst = append(dst, ';')
	}
	return dst
}

// appendB appends b= and the end of the field.
func appendB(dst, b []byte) []byte {
	var scratch [64]byte
	// b=: "\r\n" + go-msgauth's foldHeaderField(" b=" + base64(b)): the
	// string cut into 75-octet pieces joined by "\r\n ", then "\r\n".
	dst = append(dst, "\r\n b="...)
	n := len(" b=") // octets of the string on the current line
	enc := base64.StdEncoding
	for len(b) > 0 {
		m := min(len(b), 48) // 48 bytes → 64 characters, no padding inside
		chunk := scratch[:enc.EncodedLen(m)]
		enc.Encode(chunk, b[:m])
		b = b[m:]
		for len(chunk) > 0 {
			if n == 75 {
				dst = append(dst, "\r\n "...)
				n = 0
			}
			c := min(len(chunk), 75-n)
			dst = append(dst, chunk[:c]...)
			chunk = chunk[c:]
			n += c
		}
	}
	return append(dst, '\r', '\n')
}

// signState is the reusable per-message state of Signer.sign.
type signState struct {
	body    bodyCanon
	bodyH   hash.Hash
	headH   hash.Hash
	spans   []fieldSpan
	header  []byte // canonicalized selected fields
	field   []byte // a DKIM-Signature field
	canonSF []byte // the field canonicalized for hashing
	bh      []byte
	digest  []byte
}

var signStates = sync.Pool{New: func() any {
	return &signState{bodyH: sha256.New(), headH: sha256.New()}
}}

// maxPooledBytes keeps an unusually large header from pinning memory in
// the pool.
const maxPooledBytes = 64 << 10

func putSignState(st *signState) {
	if cap(st.header) > maxPooledBytes || cap(st.field) > maxPooledBytes || cap(st.canonSF) > maxPooledBytes || cap(st.spans) > 4096 {
		return
	}
	signStates.Put(st)
}

// signHeader computes b= for one key over the selected header (already
// canonicalized in st.header) and the DKIM-Signature field p with an empty
// b=, and returns the complete field.
func (st *signState) signHeader(k *key, p *sigParams, canon canonicalization) (string, error) {
	st.field = appendTags(st.field[:0], p)
	tags := len(st.field)
	st.field = appendB(st.field, nil)
	// The field as hashed: canonicalized, without its final CRLF (RFC
	// 6376 section 3.7).
	f := st.field
	if canon == canonRelaxed {
		colon := len("DKIM-Signature")
		st.canonSF = appendRelaxedField(st.canonSF[:0], f[:colon], f[colon+1:])
		f = st.canonSF
	}
	f = f[:len(f)-2]

	st.headH.Reset()
	st.headH.Write(st.header)
	st.headH.Write(f)
	st.digest = st.headH.Sum(st.digest[:0])

	// RSA signs the SHA-256 digest with PKCS#1 v1.5; Ed25519 signs the
	// digest itself (RFC 8463 section 3: "PureEdDSA" of the hash), which
	// crypto.Signer expresses as crypto.Hash(0).
	opts := crypto.Hash(crypto.SHA256)
	if k.algorithm == AlgorithmEd25519 {
		opts = crypto.Hash(0)
	}
	sig, err := k.signer.Sign(rand.Reader, st.digest, opts)
	if err != nil {
		return "", fmt.Errorf("dkim: sign %s/%s: %w", k.domain, k.selector, err)
	}
	st.field = appendB(st.field[:tags], sig)
	return string(st.field), nil
}
