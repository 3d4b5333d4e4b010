package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// MaxHeaderBytes bounds the header block Sign reads before it starts
// streaming; the proxy enforces a smaller limit before DKIM ever runs.
const MaxHeaderBytes = 1 << 20

var (
	// ErrFromHeader is wrapped when the message does not have exactly one
	// From field holding exactly one address with a domain (RFC 5322
	// section 3.6 requires one From field; DMARC (RFC 7489 section 6.6.1)
	// cannot align a message with several authors).
	ErrFromHeader = errors.New("dkim: message needs exactly one From address")
	// ErrHeader is wrapped when the header block cannot be parsed.
	ErrHeader = errors.New("dkim: malformed header")
	// ErrLineEnding is wrapped when the message holds a bare LF or bare CR.
	// The proxy hands over CRLF only (its DATA reader refuses anything
	// else), so this is a programming error, and signing a message whose
	// line endings a later hop will "fix" would produce a signature that
	// does not verify.
	ErrLineEnding = errors.New("dkim: bare CR or LF in message")
)

// field is one header field as it appears in the message.
type field struct {
	name  string // as written, without surrounding space
	value string // unfolded (CRLF removed), leading space trimmed
}

// readHeader reads the header block from br: every line up to and
// including the empty line that separates it from the body. sep is false
// when the message ends without that empty line (a message with no body).
// Every line must end in CRLF.
func readHeader(br *bufio.Reader, limit int) (raw []byte, sep bool, err error) {
	return appendHeader(nil, br, limit)
}

// appendHeader is readHeader appending the header block to dst (which
// Sign reuses across messages); raw is dst with the block appended.
func appendHeader(dst []byte, br *bufio.Reader, limit int) (raw []byte, sep bool, err error) {
	base := len(dst)
	for {
		start := len(dst)
		dst, err = appendLine(dst, br, limit-(start-base))
		line := dst[start:]
		if err == io.EOF {
			if len(line) > 0 {
				return nil, false, fmt.Errorf("%w: header ends without CRLF", ErrLineEnding)
			}
			return dst, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if err := checkLine(line); err != nil {
			return nil, false, err
		}
		if len(line) == 2 {
			return dst, true, nil
		}
	}
}

// appendLine appends one line including its LF, or what is left before
// EOF, to dst.
func appendLine(dst []byte, br *bufio.Reader, limit int) ([]byte, error) {
	n := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if n+len(chunk) > limit {
			return dst, fmt.Errorf("%w: header larger than %d bytes", ErrHeader, MaxHeaderBytes)
		}
		dst = append(dst, chunk...)
		n += len(chunk)
		if err == bufio.ErrBufferFull {
			continue
		}
		return dst, err
	}
}

// checkLine verifies that line ends in CRLF and holds no other CR or LF.
func checkLine(line []byte) error {
	n := len(line)
	if n < 2 || line[n-2] != '\r' {
		return fmt.Errorf("%w: in header", ErrLineEnding)
	}
	if bytes.IndexByte(line[:n-2], '\r') >= 0 {
		return fmt.Errorf("%w: in header", ErrLineEnding)
	}
	return nil
}

// parseHeader splits a raw CRLF header block into fields (RFC 5322 section
// 2.2: a line starting with WSP continues the previous field).
func parseHeader(raw []byte) ([]field, error) {
	// One string for the whole block: names and unfolded single-line
	// values are substrings of it.
	rest := string(raw)
	fields := make([]field, 0, bytes.Count(raw, []byte("\n")))
	for len(rest) > 0 {
		i := strings.Index(rest, "\r\n")
		if i < 0 {
			i = len(rest)
		}
		line := rest[:i]
		rest = rest[min(i+2, len(rest)):]
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				return nil, fmt.Errorf("%w: continuation line before the first field", ErrHeader)
			}
			fields[len(fields)-1].value += line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimRight(name, " \t") // RFC 5322 section 4.5.3 obsolete WSP before colon
		if !ok || checkFieldName(name) != nil {
			return nil, fmt.Errorf("%w: line %q is not a header field", ErrHeader, truncate(line, 40))
		}
		fields = append(fields, field{name: name, value: strings.TrimLeft(value, " \t")})
	}
	return fields, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// addressParser ignores the charset of RFC 2047 display names: only the
// address matters here, and an unknown charset must not turn a valid From
// into ErrFromHeader.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// fromDomain returns the normalized domain of the single From address.
func fromDomain(fields []field) (string, error) {
	var from string
	n := 0
	for _, f := range fields {
		if strings.EqualFold(f.name, "From") {
			if n == 0 {
				from = f.value
			}
			n++
		}
	}
	switch n {
	case 0:
		return "", fmt.Errorf("%w: no From field", ErrFromHeader)
	case 1:
	default:
		return "", fmt.Errorf("%w: %d From fields", ErrFromHeader, n)
	}
	domain, ok := plainFromDomain(from)
	if !ok {
		var err error
		if domain, err = parsedFromDomain(from); err != nil {
			return "", err
		}
	}
	d, err := normalizeDomain(domain)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrFromHeader, err)
	}
	return d, nil
}

// parsedFromDomain returns the domain of the single address of a From
// value as net/mail parses it (RFC 5322 section 3.4), not normalized.
func parsedFromDomain(from string) (string, error) {
	addrs, err := addressParser.ParseList(from)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrFromHeader, err)
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("%w: %d From addresses", ErrFromHeader, len(addrs))
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("%w: address has no domain", ErrFromHeader)
	}
	return addrs[0].Address[at+1:], nil
}

// plainFromDomain returns what parsedFromDomain would, without its
// allocations, for the two plainest forms of a From value:
// "local@domain" and "Display Name <local@domain>", where the display
// name is words of letters, digits, ".", "-" and "_" separated by single
// spaces, the local part a dot-atom of letters, digits and ".+-_", and the
// domain a dot-atom of letters, digits, "." and "-". ok is false for
// anything else (quoted strings, comments, RFC 2047 words, groups,
// several addresses, 8-bit...), which is left to net/mail.
// FuzzPlainFromDomain checks it against net/mail.
func plainFromDomain(v string) (domain string, ok bool) {
	v = strings.TrimRight(v, " \t")
	if strings.HasSuffix(v, ">") {
		i := strings.IndexByte(v, '<')
		if i < 0 || !plainPhrase(v[:i]) {
			return "", false
		}
		v = v[i+1 : len(v)-1]
	}
	at := strings.IndexByte(v, '@')
	if at < 0 || !plainDotAtom(v[:at], true) || !plainDotAtom(v[at+1:], false) {
		return "", false
	}
	return v[at+1:], true
}

// plainPhrase accepts "" or words of [A-Za-z0-9._-] each followed by one
// SP.
func plainPhrase(s string) bool {
	word := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ':
			if !word {
				return false
			}
			word = false
		case isAlnum(c) || c == '.' || c == '-' || c == '_':
			word = true
		default:
			return false
		}
	}
	return !word // ends with the SP before "<"
}

// plainDotAtom accepts a non-empty dot-atom (RFC 5322 section 3.2.3) of
// letters, digits and "-" (and "+" and "_" in a local part).
func plainDotAtom(s string, local bool) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlnum(c) || c == '-':
		case c == '.':
			if s[i-1] == '.' {
				return false
			}
		case local && (c == '+' || c == '_'):
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// SigningDomain returns the domain Sign would sign for when the policy
// names none: the domain of the single From address of header (a raw CRLF
// header block, with or without the empty line that ends it), lower-case
// A-labels. Errors wrap ErrFromHeader, ErrHeader or ErrLineEnding.
func SigningDomain(header []byte) (string, error) {
	raw, _, err := readHeader(bufio.NewReader(bytes.NewReader(header)), MaxHeaderBytes)
	if err != nil {
		return "", err
	}
	fields, err := parseHeader(raw)
	if err != nil {
		return "", err
	}
	return fromDomain(fields)
}
