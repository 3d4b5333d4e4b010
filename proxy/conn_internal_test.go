package proxy

import (
	"bytes"
	"testing"

	"github.com/mailgate/mailgate/proxy/replies"
)

func TestScanLineEndings(t *testing.T) {
	cases := []struct {
		in  string
		bad int
	}{
		{"EHLO x\r\nMAIL FROM:<a@b>\r\n", -1},
		{"EHLO x\n", 6},
		{"EHLO x\r\r\n", 7},
		{"a\x00b\r\n", 1},
		{"\r\n", -1},
	}
	for _, tc := range cases {
		cc := &clientConn{prev: '\n', lineHead: make([]byte, 0, 32)}
		if got, _ := cc.scan([]byte(tc.in), modeCommand); got != tc.bad {
			t.Errorf("%q: bad at %d, want %d", tc.in, got, tc.bad)
		}
	}
	// A CR at the end of one read is judged by the next.
	cc := &clientConn{prev: '\n', lineHead: make([]byte, 0, 32)}
	if a, _ := cc.scan([]byte("NOOP\r"), modeCommand); a != -1 {
		t.Error("CR at the end of a read refused early")
	}
	if b, _ := cc.scan([]byte("X"), modeCommand); b != 0 {
		t.Error("CR split across reads not caught")
	}
	// Line length counts CRLF and spans reads.
	cc = &clientConn{prev: '\n', lineHead: make([]byte, 0, 32), maxLine: 10}
	if a, err := cc.scan([]byte("12345678\r\n1234"), modeData); a != -1 || err != nil {
		t.Errorf("10-byte line refused: %d %v", a, err)
	}
	if a, err := cc.scan([]byte("56789\r\n"), modeData); err != replies.LineTooLong || a != 0 {
		t.Errorf("11-byte line across reads: %d %v", a, err)
	}
	// Source routes are neutralised in MAIL and RCPT only.
	b := []byte("mail from: <@relay:a@b>\r\nNOOP <@x\r\n")
	cc = &clientConn{prev: '\n', lineHead: make([]byte, 0, 32)}
	cc.scan(b, modeCommand)
	if !bytes.Contains(b, []byte("<\x01relay:")) || !bytes.Contains(b, []byte("NOOP <@x")) {
		t.Errorf("source route handling: %q", b)
	}
}

// refScan is the obvious byte-by-byte definition of what scan finds: the
// first bare CR (judged at the byte after it), bare LF or NUL, or the first
// line longer than max (CRLF included).
func refScan(b []byte, max int) int {
	prev, lineLen := byte('\n'), 0
	for i, ch := range b {
		if prev == '\r' && ch != '\n' {
			return i
		}
		if ch == 0 || ch == '\n' && prev != '\r' {
			return i
		}
		lineLen++
		if max > 0 && lineLen > max {
			return -2 // reported at the start of the segment; compared loosely
		}
		if ch == '\n' {
			lineLen = 0
		}
		prev = ch
	}
	return -1
}

// FuzzScan checks the line-wise scan against refScan, with the input split
// into two reads at every fuzzed position.
func FuzzScan(f *testing.F) {
	f.Add([]byte("EHLO x\r\nMAIL FROM:<a@b>\r\n"), uint8(3))
	f.Add([]byte("a\r\n.\n"), uint8(2))
	f.Add([]byte("x\r\r\n"), uint8(1))
	f.Add([]byte("\x00"), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		const max = 16
		want := refScan(data, max)
		cut := int(split) % (len(data) + 1)
		cc := &clientConn{prev: '\n', lineHead: make([]byte, 0, 32), maxLine: max}
		buf := append([]byte(nil), data...)
		got, err := cc.scan(buf[:cut], modeData)
		if got < 0 {
			got, err = cc.scan(buf[cut:], modeData)
			if got >= 0 {
				got += cut
			}
		}
		switch {
		case want == -1 && got != -1:
			t.Fatalf("%q split %d: refused at %d (%v), reference accepts", data, cut, got, err)
		case want >= 0 && (got == -1 || err == replies.LineTooLong && got > want):
			t.Fatalf("%q split %d: got %d (%v), reference refuses at %d", data, cut, got, err, want)
		case want >= 0 && err == replies.BareLineEnding && got != want:
			t.Fatalf("%q split %d: bare line ending at %d, reference %d", data, cut, got, want)
		case want == -2 && got == -1:
			t.Fatalf("%q split %d: long line accepted", data, cut)
		}
	})
}
