package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"testing"
	"time"
)

// chunkConn hands out data at most k bytes per Read, then io.EOF.
type chunkConn struct {
	net.Conn
	data []byte
	k    int
}

func (c *chunkConn) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), c.k)], c.data)
	c.data = c.data[n:]
	return n, nil
}

// refBody is the reference reading of a DATA body (RFC 5321 section
// 4.5.2): up to the line ".", each line's leading dot removed. ok is false
// when there is no end-of-data line.
func refBody(in []byte) (body, rest []byte, ok bool) {
	body = []byte{}
	for p := 0; p < len(in); {
		q := len(in)
		if i := bytes.IndexByte(in[p:], '\n'); i >= 0 {
			q = p + i + 1
		}
		line := in[p:q]
		if string(line) == ".\r\n" {
			return body, in[q:], true
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		body = append(body, line...)
		p = q
	}
	return nil, nil, false
}

// strict reports whether b has only CRLF line endings, no NUL and no line
// longer than max bytes (CRLF included).
func strict(b []byte, max int) bool {
	lines := bytes.SplitAfter(b, []byte("\n"))
	for i, l := range lines {
		if bytes.IndexByte(l, 0) >= 0 || len(l) > max {
			return false
		}
		trimmed := bytes.TrimSuffix(l, []byte("\r\n"))
		if i < len(lines)-1 && len(trimmed) == len(l) { // ends in a bare LF
			return false
		}
		if bytes.ContainsAny(trimmed, "\r\n") {
			return false
		}
	}
	return true
}

// FuzzBodyReader checks the bulk body reader against refBody for every
// input and chunk size: a strict body comes out exactly, with ".\r\n" and
// the bytes after the end-of-data line left for go-smtp; anything else is
// refused.
func FuzzBodyReader(f *testing.F) {
	for _, s := range []string{
		"a\r\n.\r\n", "..x\r\n.\r\nQUIT\r\n", ".\r\n", "a\r\n.", "a\n.\r\n", "a\r\n.\n", ".\r.\r\n",
		"x\r\n..\r\n.\r\n", "a\rb\r\n.\r\n", "\x00\r\n.\r\n", "a\r\n.\r\nb\nc",
	} {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, k uint8) {
		const maxLine = 80
		cc := &chunkConn{data: append([]byte(nil), in...), k: int(k%64) + 1}
		c := newClientConn(cc, netip.Addr{}, maxLine, 0, 0)
		br := c.body(0)
		got, err := io.ReadAll(br)
		br.finish()
		body, rest, ok := refBody(in)
		end := len(in)
		if ok {
			end = len(in) - len(rest)
		}
		switch {
		case !strict(in[:end], maxLine):
			if err == nil {
				t.Fatalf("%q: accepted %q, want an error", in, got)
			}
		case !ok:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%q: err = %v, want unexpected EOF", in, err)
			}
		default:
			if err != nil {
				t.Fatalf("%q: err = %v", in, err)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("%q: body %q, want %q", in, got, body)
			}
			// What go-smtp reads next: held bytes, then the connection.
			next := append(append([]byte(nil), c.held...), cc.data...)
			if want := append([]byte(".\r\n"), rest...); !bytes.Equal(next, want) {
				t.Fatalf("%q: left %q for go-smtp, want %q", in, next, want)
			}
		}
	})
}

// benchBody is a dot-stuffed DATA body of about size bytes plus its
// end-of-data line.
func benchBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: app@example.com\r\nSubject: bench\r\n\r\n")
	for b.Len() < size {
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n")
		b.WriteString("..a dot-stuffed line\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// BenchmarkBodyReader is mailgate's DATA body reader; BenchmarkDotReader
// the byte-at-a-time state machine go-smtp's dataReader copies from
// net/textproto (textproto's DotReader, which also rewrites CRLF to LF),
// on the same bytes: what reading a body in bulk saves.
func BenchmarkBodyReader(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		in := benchBody(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				c := newClientConn(&chunkConn{data: in, k: 32 << 10}, netip.Addr{}, 1000, 0, 0)
				br := c.body(0)
				if _, err := io.Copy(io.Discard, br); err != nil {
					b.Fatal(err)
				}
				br.finish()
			}
		})
	}
}

func BenchmarkDotReader(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		in := benchBody(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				r := textproto.NewReader(bufio.NewReader(bytes.NewReader(in))).DotReader()
				if _, err := io.Copy(io.Discard, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// streamConn is a chunkConn that also takes writes (a refusal) and Close.
type streamConn struct {
	*chunkConn
	wrote []byte
}

func (c *streamConn) Write(b []byte) (int, error) {
	c.wrote = append(c.wrote, b...)
	return len(b), nil
}
func (c *streamConn) Close() error                       { return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return nil }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return nil }

// bdatStream cuts msg into BDAT chunks of the sizes in sizes (each byte
// mod 32; 0 is an empty chunk), the rest in the LAST chunk, followed by
// QUIT. end is the index just past the LAST chunk (the message's end).
func bdatStream(msg, sizes []byte) (stream []byte, end int) {
	p := 0
	for _, s := range sizes {
		n := min(int(s%32), len(msg)-p)
		stream = fmt.Appendf(stream, "BDAT %d\r\n", n)
		stream = append(stream, msg[p:p+n]...)
		p += n
	}
	stream = fmt.Appendf(stream, "BDAT %d LAST\r\n", len(msg)-p)
	stream = append(stream, msg[p:]...)
	end = len(stream)
	return append(stream, "QUIT\r\n"...), end
}

// FuzzBDATScan is FuzzBodyReader's sibling for BDAT: a message cut into
// chunks at any points (a CRLF split between two chunks included), read
// in pieces of any size, is handed on in full when the message is strict,
// and otherwise refused before its LAST chunk is complete, so go-smtp
// never finishes it.
func FuzzBDATScan(f *testing.F) {
	for _, s := range []struct{ msg, sizes string }{
		{"From: <a@src.test>\r\n\r\nhello\r\n", "\x1c"}, // the issue 10 split: CR | LF
		{"a\r\nb\r\n", "\x02\x00\x01"},
		{"a\r\nb\r", ""},     // the message ends in a bare CR
		{"a\r", "\x02"},      // CR, then BDAT 0 LAST
		{"a\rb\r\n", "\x02"}, // bare CR across a boundary
		{"a\nb\r\n", "\x01"}, // bare LF at the start of a chunk
		{"x\r\n.\r\nMAIL FROM:<@a:b@c>\r\nBDAT 3 LAST\r\n", "\x03\x05"},
		{"\r\n", "\x01"},
		{"\x00", ""},
	} {
		f.Add([]byte(s.msg), []byte(s.sizes), uint8(1))
		f.Add([]byte(s.msg), []byte(s.sizes), uint8(7))
	}
	f.Fuzz(func(t *testing.T, msg, sizes []byte, k uint8) {
		const maxLine = 80
		if len(sizes) > 64 {
			sizes = sizes[:64]
		}
		stream, end := bdatStream(msg, sizes)
		sc := &streamConn{chunkConn: &chunkConn{data: append([]byte(nil), stream...), k: int(k%64) + 1}}
		c := newClientConn(sc, netip.Addr{}, maxLine, 0, 0)
		var handed []byte
		buf := make([]byte, 128)
		var err error
		for err == nil {
			var n int
			n, err = c.Read(buf)
			handed = append(handed, buf[:n]...)
		}
		if strict(msg, maxLine) {
			if !errors.Is(err, io.EOF) || !bytes.Equal(handed, stream) {
				t.Fatalf("strict %q in chunks %v: handed %q, err %v", msg, sizes, handed, err)
			}
			return
		}
		if len(handed) >= end {
			t.Fatalf("%q in chunks %v: handed %d bytes, the message ends at %d: %q", msg, sizes, len(handed), end, handed)
		}
		if !bytes.HasPrefix(sc.wrote, []byte("5")) {
			t.Fatalf("%q in chunks %v: reply %q, want a 5xx", msg, sizes, sc.wrote)
		}
	})
}
