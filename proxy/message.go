package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/replies"
)

// field is one header field exactly as received: raw includes the name,
// the folded value and the final CRLF.
type field struct {
	name string // as written
	raw  []byte
}

func (f field) lowerName() string { return strings.ToLower(f.name) }

// value returns the unfolded value with surrounding space trimmed.
func (f field) value() string {
	v := f.raw[len(f.name)+1:]
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

// header is the header section of a message.
type header struct {
	fields []field
	size   int
}

// readHeader reads the header section from br, up to and including the
// empty line that ends it (or EOF: a message may have no body). max bounds
// its size. The body is what remains in br.
func readHeader(br *bufio.Reader, max int) (*header, error) {
	h := &header{}
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, replies.HeaderTooBig
		}
		if err != nil && !(errors.Is(err, io.EOF) && len(line) == 0) {
			if errors.Is(err, io.EOF) {
				// Last header line without CRLF cannot happen: the
				// DATA reader always ends with CRLF.
				return nil, replies.BadHeader
			}
			return nil, err
		}
		if len(line) == 0 { // EOF
			return h, nil
		}
		h.size += len(line)
		if h.size > max {
			return nil, replies.HeaderTooBig
		}
		// The connection already refuses bare CR and LF; checked again
		// here so the header code never depends on it.
		if len(line) < 2 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
			return nil, replies.BadHeader
		}
		if len(line) == 2 { // the empty line ending the header
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(h.fields) == 0 {
				return nil, replies.BadHeader
			}
			last := &h.fields[len(h.fields)-1]
			last.raw = append(last.raw, line...)
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return nil, replies.BadHeader
		}
		h.fields = append(h.fields, field{name: string(line[:colon]), raw: append([]byte(nil), line...)})
	}
}

// validFieldName: RFC 5322 §2.2 printable US-ASCII except colon and space.
func validFieldName(b []byte) bool {
	for _, c := range b {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

func (h *header) has(name string) bool {
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			return true
		}
	}
	return false
}

func (h *header) remove(name string) int {
	kept := h.fields[:0]
	n := 0
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			n++
			continue
		}
		kept = append(kept, f)
	}
	h.fields = kept
	return n
}

func (h *header) add(name, value string) {
	h.fields = append(h.fields, field{name: name, raw: []byte(name + ": " + value + "\r\n")})
}

func (h *header) prepend(name, value string) {
	h.fields = append([]field{{name: name, raw: []byte(name + ": " + value + "\r\n")}}, h.fields...)
}

// nonASCIIField returns the name of the first field with a byte outside
// US-ASCII, or "" when the header is all ASCII.
func (h *header) nonASCIIField() string {
	for _, f := range h.fields {
		if !isASCII(string(f.raw)) {
			return sanitize(f.name)
		}
	}
	return ""
}

// isASCII reports whether s is all US-ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// bytes serializes the header section including the empty line.
func (h *header) bytes() []byte {
	var b bytes.Buffer
	for _, f := range h.fields {
		b.Write(f.raw)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// policyView is the data-stage view of the message.
func (h *header) policyView(size int64) *policy.Message {
	m := &policy.Message{Headers: make(map[string][]string, len(h.fields)), Size: size}
	for _, f := range h.fields {
		n := f.lowerName()
		m.Headers[n] = append(m.Headers[n], f.value())
	}
	m.FromAddresses = []string{}
	for _, v := range m.Headers["from"] {
		list, err := mail.ParseAddressList(v)
		if err != nil {
			continue
		}
		for _, a := range list {
			m.FromAddresses = append(m.FromAddresses, a.Address)
		}
	}
	return m
}

// hygiene applies RFC 6409 §8 submission fix-ups before signing: Date and
// Message-ID are added when missing, Bcc and Return-Path are dropped, and
// a message without From is refused.
func (h *header) hygiene(hostname string, now time.Time) error {
	if !h.has("From") {
		return replies.NoFrom
	}
	h.remove("Bcc")         // RFC 6409 §8.1 / RFC 5322 §3.6.3: never relayed
	h.remove("Return-Path") // added at final delivery only (RFC 5321 §4.4)
	if !h.has("Date") {
		h.add("Date", now.Format(time.RFC1123Z))
	}
	if !h.has("Message-ID") {
		h.add("Message-ID", newMessageID(hostname))
	}
	return nil
}

// applyActions removes then adds the header fields a policy asked for.
func (h *header) applyActions(a policy.Actions) error {
	for _, n := range a.RemoveHeaders {
		h.remove(n)
	}
	for _, f := range a.AddHeaders {
		if f.Name == "" || !validFieldName([]byte(f.Name)) || strings.ContainsAny(f.Name, ":") ||
			strings.ContainsAny(f.Value, "\r\n\x00") {
			return fmt.Errorf("proxy: policy asked to add an invalid header %q", f.Name)
		}
		h.add(f.Name, f.Value)
	}
	return nil
}

func newMessageID(hostname string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "<" + hex.EncodeToString(b[:]) + "@" + hostname + ">"
}
