package proxy

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/replies"
)

func TestMailboxReserialization(t *testing.T) {
	cases := []struct {
		in, want string
		code     int
	}{
		{"alice@example.com", "alice@example.com", 0},
		{"john doe@example.com", `"john doe"@example.com`, 0},
		{`a"b@example.com`, `"a\"b"@example.com`, 0},
		{".lead@example.com", `".lead"@example.com`, 0},
		{"user@[192.0.2.1]", "user@[192.0.2.1]", 0},
		{"user@[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]", 0},
		{"user@[999.1.1.1]", "", 553},
		{"a%b@example.com", "", 553},
		{"host!user@example.com", "", 553},
		{"\x01relay:user@example.com", "", 553},
		{"us\ter@example.com", "", 553},
		{"user@-bad.example", "", 553},
		{"user@", "", 553},
		{"@example.com", "", 553},
		{"jörg@example.com", "", 553}, // needs SMTPUTF8
	}
	for _, tc := range cases {
		mb, err := parseMailbox(tc.in, false, false)
		if tc.code != 0 {
			if err == nil || err.Code != tc.code {
				t.Errorf("%q: got %v, want %d", tc.in, err, tc.code)
			}
			continue
		}
		if err != nil || mb.String() != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, mb.String(), err, tc.want)
		}
	}
	if mb, err := parseMailbox("jörg@bücher.example", false, true); err != nil || mb.String() != "jörg@bücher.example" {
		t.Errorf("SMTPUTF8 address: %q %v", mb.String(), err)
	}
	if mb, err := parseMailbox("", true, false); err != nil || mb.String() != "" {
		t.Errorf("null sender: %q %v", mb.String(), err)
	}
}

// TestDecisionReplyClass: a policy cannot turn a reject into a 2xx or a
// defer into a 5xx, and its text cannot inject reply lines.
func TestDecisionReplyClass(t *testing.T) {
	cases := []struct {
		d          policy.Decision
		code       int
		enh, inMsg string
	}{
		{policy.Decision{Outcome: policy.Reject}, 550, "5.7.1", "Rejected by policy"},
		{policy.Decision{Outcome: policy.Reject, Code: 250, EnhancedCode: "2.0.0", Message: "ok"}, 550, "5.7.1", "ok"},
		{policy.Decision{Outcome: policy.Reject, Code: 554, EnhancedCode: "5.7.26", Message: "dmarc"}, 554, "5.7.26", "dmarc"},
		{policy.Decision{Outcome: policy.Defer, Code: 550, EnhancedCode: "5.1.1"}, 451, "4.7.1", "Deferred"},
		{policy.Decision{Outcome: policy.Defer, Code: 452, EnhancedCode: "4.2.2", Message: "quota\r\n250 injected"}, 452, "4.2.2", "quota 250 injected"},
	}
	for _, tc := range cases {
		r := decisionReply(tc.d)
		got := replies.Line(r)
		if r.Code != tc.code || !strings.Contains(got, tc.enh) || !strings.Contains(got, tc.inMsg) || strings.ContainsAny(r.Message, "\r\n") {
			t.Errorf("%+v → %q", tc.d, got)
		}
	}
}

func TestReadHeader(t *testing.T) {
	msg := "From: a@example.com\r\nSubject: folded\r\n  continued\r\nBcc: x@y\r\n\r\nbody\r\n"
	br := bufio.NewReader(strings.NewReader(msg))
	h, err := readHeader(br, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.policyView(0).Headers["subject"]; len(got) != 1 || got[0] != "folded  continued" {
		t.Errorf("subject %q", got)
	}
	rest := new(bytes.Buffer)
	rest.ReadFrom(br)
	if rest.String() != "body\r\n" {
		t.Errorf("body %q", rest.String())
	}
	if h.remove("BCC") != 1 || h.has("bcc") {
		t.Error("remove")
	}
	for name, bad := range map[string]string{
		"continuation_first": " x\r\n\r\n",
		"no_colon":           "From a@example.com\r\n\r\n",
		"space_in_name":      "Bad Name: x\r\n\r\n",
	} {
		if _, err := readHeader(bufio.NewReader(strings.NewReader(bad)), 1000); err != replies.BadHeader {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := readHeader(bufio.NewReader(strings.NewReader(strings.Repeat("X-A: b\r\n", 200)+"\r\n")), 1000); err != replies.HeaderTooBig {
		t.Errorf("big header: %v", err)
	}
}

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

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"))
	f.Add([]byte("A: b\r\n c\r\n\r\n"))
	f.Add([]byte("\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(bufio.NewReader(bytes.NewReader(data)), 4096)
		if err != nil {
			return
		}
		// What is relayed is exactly what was read: no field gains or
		// loses bytes, and every field ends in CRLF.
		out := h.bytes()
		if !bytes.HasPrefix(data, out[:len(out)-2]) {
			t.Fatalf("header changed: %q → %q", data, out)
		}
		for _, fl := range h.fields {
			if !bytes.HasSuffix(fl.raw, []byte("\r\n")) {
				t.Fatalf("field without CRLF: %q", fl.raw)
			}
		}
		_ = h.policyView(int64(len(data)))
	})
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

// deadlineConn answers every Read with one line and records the read
// deadlines set on it.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (c *deadlineConn) Read(b []byte) (int, error)        { return copy(b, "NOOP\r\n"), nil }
func (c *deadlineConn) SetReadDeadline(t time.Time) error { c.set = append(c.set, t); return nil }

// TestReadDeadlineGranularity backs the README's "a silent client is cut
// off between 94 % and 100 % of the timeout": before every read the
// deadline in force is at least 15/16 of the timeout away, while reads in
// quick succession do not re-arm it; drain forces the next read to set it.
func TestReadDeadlineGranularity(t *testing.T) {
	const timeout = 320 * time.Millisecond
	dc := &deadlineConn{}
	c := newClientConn(dc, netip.Addr{}, 1000, timeout, timeout)
	buf := make([]byte, 64)
	start := time.Now()
	for i := 0; i < 40; i++ {
		before := time.Now()
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		if left := dc.set[len(dc.set)-1].Sub(before); left < timeout*15/16 {
			t.Fatalf("read %d: deadline %v away, want at least %v", i, left, timeout*15/16)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// The deadline moves about every 20 ms (1/16 of the timeout), not on
	// each of the 40 reads.
	most := int(time.Since(start)/(timeout/16)) + 2
	if n := len(dc.set); n < 2 || n > most {
		t.Errorf("deadline set %d times for 40 reads in %v, want 2..%d", n, time.Since(start), most)
	}
	n := len(dc.set)
	c.drain() // sets a deadline of now to wake the reader
	c.draining.Store(false)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if len(dc.set) != n+2 {
		t.Errorf("after drain: %d deadlines set, want the drain's and a fresh one", len(dc.set)-n)
	}
}

// TestRewriteReply pins go-smtp v0.25.1's own reply texts and what the
// client sees instead; lines that only resemble them pass unchanged.
func TestRewriteReply(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"250 2.0.0 Roger, accepting mail from <a@b.test>", "250 2.1.0 Sender <a@b.test> OK"},
		{"250 2.0.0 Roger, accepting mail from <>", "250 2.1.0 Sender <> OK"},
		{"250 2.0.0 I'll make sure <jörg@b.test> gets this", "250 2.1.5 Recipient <jörg@b.test> OK"},
		{"354 Go ahead. End your data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"},
		{"250 2.0.0 I have successfully done nothing", "250 2.0.0 OK"},
		{"421 4.4.2 Idle timeout, bye bye", "421 4.4.2 Idle timeout, closing connection"},
		{"421 4.4.0 Connection error, sorry", "421 4.4.0 Connection error, closing connection"},
		{"500 5.5.1 Too many errors. Quiting now", "500 5.5.1 Too many errors, closing connection"},
		// Look-alikes stay as they are.
		{"250 2.0.0 Hello Roger, accepting mail from <a@b.test>", ""},
		{"250-Roger, accepting mail from <a@b.test>", ""},
		{"250 Roger, accepting mail from <a@b.test>", ""},
		{"250 2.0.0 I have successfully done nothing at all", ""},
		{"250 2.0.0 I'll make sure <a@b.test> gets this!", ""},
		{"250 2.0.0 OK: queued as x", ""},
	} {
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got := string(rewriteReply([]byte(tc.in + "\r\n"))); got != want+"\r\n" {
			t.Errorf("%q: got %q, want %q", tc.in, got, want)
		}
	}
	// Not one whole line: never touched.
	for _, in := range []string{"354 Go ahead. End your data with <CR><LF>.<CR><LF>",
		"250 2.0.0 I have successfully done nothing\r\n250 2.0.0 I have successfully done nothing\r\n"} {
		if got := string(rewriteReply([]byte(in))); got != in {
			t.Errorf("%q rewritten to %q", in, got)
		}
	}
}
