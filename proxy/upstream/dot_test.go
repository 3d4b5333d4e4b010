package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/textproto"
	"strconv"
	"testing"
)

// wireConn records what is written to it.
type wireConn struct {
	net.Conn
	buf      bytes.Buffer
	writes   int
	maxWrite int
}

func (c *wireConn) Write(b []byte) (int, error) {
	c.writes++
	c.maxWrite = max(c.maxWrite, len(b))
	return c.buf.Write(b)
}

// stuffed runs msg through dotWriter in writes of at most chunk bytes, then
// writes the end-of-data line as DataCommand's Close does ("\r\n.\r\n",
// since nothing went through its own writer), and returns the wire bytes.
func stuffed(t testing.TB, msg []byte, chunk int) ([]byte, error) {
	t.Helper()
	wire := &wireConn{}
	cc := &corkConn{Conn: wire}
	d := newDotWriter(cc)
	defer d.release()
	for p := msg; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := d.Write(p[:n]); err != nil {
			return nil, err
		}
		p = p[n:]
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	if _, err := cc.Write([]byte("\r\n.\r\n")); err != nil {
		return nil, err
	}
	if max := len(msg)/dotFlushAt + 1; wire.writes > max {
		t.Errorf("%d writes for %d bytes, want at most %d", wire.writes, len(msg), max)
	}
	return wire.buf.Bytes(), nil
}

// textprotoStuffed is the reference: net/textproto's DotWriter.
func textprotoStuffed(msg []byte) []byte {
	var wire bytes.Buffer
	bw := bufio.NewWriter(&wire)
	w := textproto.NewWriter(bw).DotWriter()
	_, _ = w.Write(msg)
	_ = w.Close()
	return wire.Bytes()
}

func TestDotWriter(t *testing.T) {
	big := bytes.Repeat([]byte(".leading dot line\r\nplain line\r\n"), 4000) // > dotFlushAt
	valid := []struct {
		name string
		msg  string
		want string // without the end-of-data line
	}{
		{"empty", "", ""},
		{"one_line", "Subject: x\r\n", "Subject: x"},
		{"leading_dots", ".\r\n..\r\n.x\r\nx.\r\n", "..\r\n...\r\n..x\r\nx."},
		{"dot_first_byte", ".hidden\r\n", "..hidden"},
		{"no_final_crlf", "a\r\nb", "a\r\nb"},
		{"lone_dot_line_mid_body", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb"},
		{"empty_lines", "\r\n\r\n", "\r\n"},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 2, 3, 7, 1 << 20} {
				got, err := stuffed(t, []byte(tc.msg), chunk)
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				if want := tc.want + "\r\n.\r\n"; string(got) != want {
					t.Errorf("chunk %d: wire = %q, want %q", chunk, got, want)
				}
				if ref := textprotoStuffed([]byte(tc.msg)); !bytes.Equal(got, ref) {
					t.Errorf("chunk %d: wire = %q, textproto = %q", chunk, got, ref)
				}
			}
		})
	}
	// One large Write is flushed as it goes: memory stays bounded.
	t.Run("large_write_bounded_buffer", func(t *testing.T) {
		wire := &wireConn{}
		cc := &corkConn{Conn: wire}
		d := newDotWriter(cc)
		defer d.release()
		if _, err := d.Write(big); err != nil {
			t.Fatal(err)
		}
		if err := d.finish(); err != nil {
			t.Fatal(err)
		}
		if wire.maxWrite > 2*dotFlushAt || wire.writes < len(big)/(2*dotFlushAt) {
			t.Errorf("%d bytes went out in %d writes of at most %d bytes, want writes of at most %d",
				len(big), wire.writes, wire.maxWrite, 2*dotFlushAt)
		}
	})
	t.Run("large_flushes_in_chunks", func(t *testing.T) {
		for _, chunk := range []int{1000, 32 << 10, 1 << 20} {
			got, err := stuffed(t, big, chunk)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, textprotoStuffed(big)) {
				t.Errorf("chunk %d: differs from textproto", chunk)
			}
		}
	})
	// Smuggling: a bare CR or LF never reaches the upstream, in any
	// position and however the writes are cut.
	bare := []struct{ name, msg string }{
		{"bare_lf", "a\nb\r\n"},
		{"bare_lf_first", "\n.\r\n"},
		{"bare_cr", "a\rb\r\n"},
		{"cr_cr_lf", "a\r\r\n"},
		{"lf_dot_lf", "a\r\n\n.\n"},
		{"final_bare_cr", "a\r\nb\r"},
		{"final_bare_lf", "a\r\nb\n"},
	}
	for _, tc := range bare {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 2, 3, 1 << 20} {
				if got, err := stuffed(t, []byte(tc.msg), chunk); !errors.Is(err, errLineEnding) {
					t.Errorf("chunk %d: err = %v (wire %q), want errLineEnding", chunk, err, got)
				}
			}
		})
	}
	t.Run("error_is_sticky", func(t *testing.T) {
		wire := &wireConn{}
		d := newDotWriter(&corkConn{Conn: wire})
		defer d.release()
		if _, err := d.Write([]byte("a\nb")); !errors.Is(err, errLineEnding) {
			t.Fatalf("err = %v", err)
		}
		if _, err := d.Write([]byte("ok\r\n")); !errors.Is(err, errLineEnding) {
			t.Errorf("second Write err = %v, want the first error", err)
		}
		if err := d.finish(); !errors.Is(err, errLineEnding) {
			t.Errorf("finish err = %v", err)
		}
		if wire.buf.Len() != 0 {
			t.Errorf("wrote %q after a bare LF", wire.buf.Bytes())
		}
	})
}

// FuzzDotWriter checks dotWriter against textproto's DotWriter: for input
// without bare CR/LF the wire bytes are identical however the input is
// split; for any other input it is refused.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\n", ".\r\n", "a\nb", "a\rb", "..\r\n.\r\n", "x\r"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, msg []byte, chunk uint8) {
		got, err := stuffed(t, msg, int(chunk)+1)
		strict := !bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) &&
			!bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n"))
		switch {
		case strict && err != nil:
			t.Fatalf("strict input refused: %v", err)
		case !strict && err == nil:
			t.Fatalf("bare CR/LF accepted: %q -> %q", msg, got)
		case strict && !bytes.Equal(got, textprotoStuffed(msg)):
			t.Fatalf("wire %q, textproto %q", got, textprotoStuffed(msg))
		}
	})
}

// discardConn is a net.Conn whose writes go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }

func benchMsg(size int) []byte {
	var b bytes.Buffer
	for b.Len() < size {
		b.WriteString("The quick brown fox jumps over the lazy dog, again and again.\r\n.a line to stuff\r\n")
	}
	return b.Bytes()
}

// BenchmarkDotWriter is the upstream body path (dot-stuffing in bulk);
// BenchmarkTextprotoDotWriter what go-smtp's client does byte by byte.
func BenchmarkDotWriter(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		msg := benchMsg(size)
		b.Run(strconv.Itoa(size>>10)+"KB", func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			cc := &corkConn{Conn: discardConn{}}
			for b.Loop() {
				d := newDotWriter(cc)
				if _, err := d.Write(msg); err != nil {
					b.Fatal(err)
				}
				if err := d.finish(); err != nil {
					b.Fatal(err)
				}
				d.release()
				if _, err := cc.Write([]byte("\r\n.\r\n")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkTextprotoDotWriter(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		msg := benchMsg(size)
		b.Run(strconv.Itoa(size>>10)+"KB", func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			bw := bufio.NewWriter(discardConn{})
			tw := textproto.NewWriter(bw)
			for b.Loop() {
				w := tw.DotWriter()
				if _, err := w.Write(msg); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
