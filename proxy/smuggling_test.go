package proxy_test

import (
	"fmt"
	"strings"
	"testing"
)

// smugglingEndings are the end-of-data forgeries of SMTP smuggling
// (SEC Consult, 2023) and their variants. None may end a message: each
// contains a bare CR, a bare LF or a NUL, and mailgate refuses those.
var smugglingEndings = []struct{ name, ending string }{
	{"LF.LF", "\n.\n"},
	{"LF.CRLF", "\n.\r\n"},
	{"CRLF.LF", "\r\n.\n"},
	{"CR.CR", "\r.\r"},
	{"CR.LF", "\r.\n"},
	{"LF.CR", "\n.\r"},
	{"CR.CRLF", "\r.\r\n"},
	{"CRLF.CR", "\r\n.\r"},
	{"CRLF_NUL.CRLF", "\r\n\x00.\r\n"},
	{"CRLF.NUL_CRLF", "\r\n.\x00\r\n"},
	{"CRLF.CR_CRLF", "\r\n.\r\r\n"},
	{"CR_CRLF.CR_CRLF", "\r\r\n.\r\r\n"},
}

const smuggled = "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n" +
	"From: evil@example.com\r\n\r\nsmuggled\r\n.\r\n"

// TestSMTPSmuggling sends a message whose body hides a second transaction
// behind a forged end of data, then the real end. The upstream must see at
// most one message, never the smuggled MAIL FROM, and the client gets a
// 5.6.0-class refusal.
func TestSMTPSmuggling(t *testing.T) {
	e := newEnv(t)
	for _, tc := range smugglingEndings {
		for _, mode := range []string{"DATA", "BDAT"} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				before, beforeMsgs, _ := e.up.snapshot()
				c := dialRaw(t, e.addr["relay"])
				c.expect("EHLO client.test", 250)
				c.expect("MAIL FROM:<app@example.com>", 250)
				c.expect("RCPT TO:<bob@example.net>", 250)
				body := "From: app@example.com\r\n\r\nfirst" + tc.ending + smuggled
				var code int
				var text string
				if mode == "DATA" {
					c.expect("DATA", 354)
					c.send(body + "\r\n.\r\n")
					code, text = c.reply()
				} else {
					c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
					code, text = c.reply()
				}
				if code != 550 || !strings.Contains(text, "5.6.0") {
					t.Errorf("reply %d %q, want 550 5.6.0", code, text)
				}
				if !c.closed() {
					t.Error("connection still open after a bare line ending")
				}
				after, afterMsgs, _ := e.up.snapshot()
				if got := len(afterMsgs) - len(beforeMsgs); got > 0 {
					t.Errorf("upstream received %d messages", got)
				}
				for _, m := range after[len(before):] {
					if m != "app@example.com" {
						t.Errorf("upstream saw MAIL FROM:<%s>", m)
					}
				}
				if n := len(after) - len(before); n > 1 {
					t.Errorf("upstream saw %d MAIL commands", n)
				}
			})
		}
	}
}

// TestBareLineEndingsInCommands: a bare LF ends nothing between commands
// either (Postfix smtpd_forbid_bare_newline).
func TestBareLineEndingsInCommands(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	c.send("MAIL FROM:<app@example.com>\nRCPT TO:<bob@example.net>\r\n")
	code, text := c.reply()
	if code != 550 || !strings.Contains(text, "5.6.0") {
		t.Fatalf("bare LF command: %d %q, want 550 5.6.0", code, text)
	}
	if mails, _, _ := e.up.snapshot(); len(mails) != 0 {
		t.Fatalf("upstream saw %v", mails)
	}
}

// TestCommandsBeforeBareLFAreAnswered: pipelined commands before the bad
// byte get their replies in order, then the refusal.
func TestCommandsBeforeBareLFAreAnswered(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	c.send("NOOP\r\nNOOP\r\nNOOP\n")
	for i := 0; i < 2; i++ {
		if code, text := c.reply(); code != 250 {
			t.Fatalf("NOOP %d: %d %s", i, code, text)
		}
	}
	if code, _ := c.reply(); code != 550 {
		t.Fatalf("bare LF: %d, want 550", code)
	}
}

func TestValidMessageWithDotsRelayedIntact(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	body := "From: app@example.com\r\n\r\n..leading dot\r\n.\r\n"
	// "..leading dot" is dot-stuffed "." line content; ".\r\n" ends it.
	c.expect("MAIL FROM:<app@example.com>", 250)
	c.expect("RCPT TO:<bob@example.net>", 250)
	c.expect("DATA", 354)
	c.send(body)
	if code, text := c.reply(); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	if len(msgs) != 1 || !strings.HasSuffix(string(msgs[0].data), "\r\n\r\n.leading dot\r\n") {
		t.Fatalf("relayed body wrong: %q", msgs)
	}
}
