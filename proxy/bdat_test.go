package proxy_test

import (
	"fmt"
	"strings"
	"testing"
)

// TestBDATChunkBoundaries (issue 10): a message's line state runs across
// BDAT chunks. A CRLF split between two chunks is a line end and the
// message is relayed exactly as if sent in one chunk; a CR at the end of a
// chunk that no LF follows is a bare CR, refused with 550 5.6.0 (never 421)
// and the connection closed.
func TestBDATChunkBoundaries(t *testing.T) {
	e := newEnv(t)
	const msg = "From: <a@src.test>\r\n\r\nhello\r\n"
	ok := []struct {
		name   string
		chunks []string // the last one is sent with LAST
	}{
		{"one-chunk", []string{msg}},
		{"CR|LF", []string{"From: <a@src.test>\r\n\r\nhello\r", "\n"}},
		{"CR|LF-then-more", []string{"From: <a@src.test>\r", "\n\r\nhello\r\n"}},
		{"CR|empty|LF", []string{"From: <a@src.test>\r", "", "\n\r\nhello\r\n"}},
		{"byte-by-byte", strings.Split(msg, "")},
		{"payload-looks-like-commands", []string{"From: <a@src.test>\r\n\r\nMAIL FROM:<@evil.test:x@y.test>\r\n", "BDAT 5 LAST\r\nDATA\r\n"}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			_, before, _ := e.up.snapshot()
			c := dialRaw(t, e.addr["relay"])
			c.expect("EHLO c", 250)
			c.expect("MAIL FROM:<a@src.test>", 250)
			c.expect("RCPT TO:<b@dst.test>", 250)
			var want strings.Builder
			for i, ch := range tc.chunks {
				last := ""
				if i == len(tc.chunks)-1 {
					last = " LAST"
				}
				want.WriteString(ch)
				c.send(bdat(ch, last))
				if code, text := c.reply(); code != 250 {
					t.Fatalf("chunk %d: %d %q", i, code, text)
				}
			}
			_, after, _ := e.up.snapshot()
			if len(after) != len(before)+1 {
				t.Fatalf("upstream got %d messages", len(after)-len(before))
			}
			if got := string(after[len(after)-1].data); !strings.HasSuffix(got, want.String()[len("From: <a@src.test>\r\n"):]) {
				t.Errorf("relayed %q, want it to end with the client's message %q", got, want.String())
			}
			c.expect("QUIT", 221)
		})
	}

	bad := []struct {
		name   string
		stream string // after RCPT
	}{
		{"CR|not-LF", bdat("From: <a@src.test>\r", "") + bdat("x", " LAST")},
		{"CR-at-end-of-LAST", bdat("From: <a@src.test>\r\n\r\nhello\r", " LAST")},
		{"CR|BDAT-0-LAST", bdat("From: <a@src.test>\r\n\r\nhello\r", "") + "BDAT 0 LAST\r\n"},
		{"CR|NOOP", bdat("From: <a@src.test>\r\n\r\nhello\r", "") + "NOOP\r\n"},
		{"CR|RSET", bdat("From: <a@src.test>\r\n\r\nhello\r", "") + "RSET\r\n"},
		{"LF-at-start-of-chunk", bdat("From: <a@src.test>\r\n", "") + bdat("\nhello\r\n", " LAST")},
		{"CR|CR", bdat("From: <a@src.test>\r", "") + bdat("\r\n\r\nx\r\n", " LAST")},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, before, _ := e.up.snapshot()
			c := dialRaw(t, e.addr["relay"])
			c.expect("EHLO c", 250)
			c.expect("MAIL FROM:<a@src.test>", 250)
			c.expect("RCPT TO:<b@dst.test>", 250)
			c.send(tc.stream)
			var code int
			var text string
			for code, text = c.reply(); code == 250; code, text = c.reply() {
			}
			if code != 550 || !strings.Contains(text, "5.6.0") {
				t.Errorf("reply %d %q, want 550 5.6.0", code, text)
			}
			if !c.closed() {
				t.Error("connection still open after a bare CR")
			}
			if _, after, _ := e.up.snapshot(); len(after) != len(before) {
				t.Errorf("upstream got %d messages", len(after)-len(before))
			}
		})
	}
}

// bdat is one BDAT command with its chunk; last is "" or " LAST".
func bdat(chunk, last string) string {
	return fmt.Sprintf("BDAT %d%s\r\n%s", len(chunk), last, chunk)
}
