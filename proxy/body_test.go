package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/proxy"
)

// TestDataBody covers mailgate's own DATA body reader (proxy/body.go):
// bodies end exactly at the end-of-data line however the bytes arrive, what
// follows is read as commands, and a body refused before its end is
// drained so the stream stays in step.
func TestDataBody(t *testing.T) {
	const limit = 8 << 10
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.MaxMessageSize = limit
		c.Limits.MaxHeaderSize = 1024
	})
	start := func(t *testing.T) *rawClient {
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		return c
	}
	relayed := func(t *testing.T, want ...string) {
		t.Helper()
		_, msgs, _ := e.up.snapshot()
		if len(msgs) < len(want) {
			t.Fatalf("upstream has %d messages, want at least %d", len(msgs), len(want))
		}
		msgs = msgs[len(msgs)-len(want):]
		for i, w := range want {
			if !strings.HasSuffix(string(msgs[i].data), w) {
				t.Errorf("message %d = %q, want it to end with %q", i, msgs[i].data, w)
			}
		}
	}

	// A client that sends everything at once (no wait for 354): the body
	// and the next transaction arrive in the same read as the DATA line.
	t.Run("pipelined_body_and_next_transaction", func(t *testing.T) {
		c := start(t)
		tx := func(n int) string {
			return "MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" +
				fmt.Sprintf("From: app@example.com\r\nSubject: %d\r\n\r\n..dot %d\r\nDATA\r\nMAIL FROM:<@x,@y:evil@example.com>\r\n.\r\n", n, n)
		}
		c.send(tx(1) + tx(2) + "QUIT\r\n")
		for _, want := range []int{250, 250, 354, 250, 250, 250, 354, 250, 221} {
			if code, text := c.reply(); code != want {
				t.Fatalf("reply %d %s, want %d", code, text, want)
			}
		}
		// Body lines that look like commands stay body, byte for byte.
		relayed(t, "\r\n\r\n.dot 1\r\nDATA\r\nMAIL FROM:<@x,@y:evil@example.com>\r\n",
			"\r\n\r\n.dot 2\r\nDATA\r\nMAIL FROM:<@x,@y:evil@example.com>\r\n")
	})

	// The end-of-data line and dot-stuffed lines split across reads at
	// every awkward place.
	t.Run("split_at_awkward_places", func(t *testing.T) {
		body := "From: app@example.com\r\n\r\nline\r\n..two dots\r\n.\r\n"
		for _, cut := range []int{1, len(body) - 4, len(body) - 3, len(body) - 2, len(body) - 1,
			strings.Index(body, ".."), strings.Index(body, "..") + 1} {
			t.Run(fmt.Sprint(cut), func(t *testing.T) {
				c := start(t)
				c.expect("MAIL FROM:<app@example.com>", 250)
				c.expect("RCPT TO:<bob@example.net>", 250)
				c.expect("DATA", 354)
				c.send(body[:cut])
				time.Sleep(20 * time.Millisecond) // separate TCP reads
				c.send(body[cut:])
				if code, text := c.reply(); code != 250 {
					t.Fatalf("%d %s", code, text)
				}
				relayed(t, "\r\n\r\nline\r\n.two dots\r\n")
				c.expect("NOOP", 250)
			})
		}
	})

	t.Run("exactly_max_message_size_accepted", func(t *testing.T) {
		c := start(t)
		head := "From: app@example.com\r\n\r\n"
		line := strings.Repeat("x", 98) + "\r\n"
		body := head + strings.Repeat(line, (limit-len(head))/len(line))
		body += strings.Repeat("y", limit-len(body)-2) + "\r\n"
		if len(body) != limit {
			t.Fatalf("body is %d bytes", len(body))
		}
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send(body + ".\r\n")
		if code, text := c.reply(); code != 250 {
			t.Fatalf("%d %s, want 250 for a body of exactly max_message_size", code, text)
		}
	})

	// Refused before the end (too big, header too big): the rest of the
	// body is drained, never read as commands, and the session goes on.
	for _, tc := range []struct {
		name string
		body string
	}{
		{"over_max_message_size", "From: app@example.com\r\n\r\n" + strings.Repeat(strings.Repeat("z", 98)+"\r\nRSET\r\n", 90)},
		{"header_too_big", "From: app@example.com\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("z", 70)+"\r\n", 20) + "\r\nQUIT\r\n"},
	} {
		t.Run(tc.name+"_stream_stays_in_step", func(t *testing.T) {
			c := start(t)
			_, before, _ := e.up.snapshot()
			c.expect("MAIL FROM:<app@example.com>", 250)
			c.expect("RCPT TO:<bob@example.net>", 250)
			c.expect("DATA", 354)
			c.send(tc.body + ".\r\n")
			if code, text := c.reply(); code != 552 {
				t.Fatalf("%d %s, want 552", code, text)
			}
			// The next reply answers the next command, not a body line.
			c.expect("NOOP", 250)
			c.expect("MAIL FROM:<app@example.com>", 250)
			c.expect("RCPT TO:<bob@example.net>", 250)
			c.expect("DATA", 354)
			c.send("From: app@example.com\r\n\r\nafter\r\n.\r\n")
			if code, text := c.reply(); code != 250 {
				t.Fatalf("%d %s", code, text)
			}
			if _, after, _ := e.up.snapshot(); len(after) != len(before)+1 {
				t.Fatalf("upstream got %d messages, want 1", len(after)-len(before))
			}
			relayed(t, "\r\n\r\nafter\r\n")
		})
	}

	// Smuggling through the new reader: a bare LF before the end refuses
	// the message and closes; one after the end belongs to the next
	// command.
	t.Run("bare_lf_in_body_550_close", func(t *testing.T) {
		c := start(t)
		_, before, _ := e.up.snapshot()
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send("From: app@example.com\r\n\r\nx\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n")
		if code, text := c.reply(); code != 550 {
			t.Fatalf("%d %s, want 550", code, text)
		}
		if !c.closed() {
			t.Fatal("connection still open after a bare LF")
		}
		if _, after, _ := e.up.snapshot(); len(after) != len(before) {
			t.Fatal("a message was relayed")
		}
	})
	t.Run("bare_lf_after_end_is_the_next_commands", func(t *testing.T) {
		c := start(t)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send("From: app@example.com\r\n\r\nok\r\n.\r\nNOOP\n")
		if code, text := c.reply(); code != 250 {
			t.Fatalf("%d %s, want the message accepted", code, text)
		}
		relayed(t, "\r\n\r\nok\r\n")
		if code, text := c.reply(); code != 550 {
			t.Fatalf("%d %s, want 550 for the bare LF", code, text)
		}
	})
}
