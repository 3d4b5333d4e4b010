package upstream

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// scriptedUpstream accepts one connection on 127.0.0.1, sends greeting,
// answers each command line with the reply reply(line) returns (nothing
// more when it returns ""), and records the command lines.
func scriptedUpstream(t *testing.T, greeting string, reply func(line string) string) (addr string, lines <-chan []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan []string, 1)
	go func() {
		var got []string
		defer func() { out <- got }()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte(greeting))
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimRight(l, "\r\n")
			got = append(got, l)
			r := reply(l)
			if r == "" {
				return
			}
			if _, err := c.Write([]byte(r)); err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), out
}

func TestStartTLSDialogue(t *testing.T) {
	ctx := context.Background()
	ehlo := func(extra string) func(string) string {
		return func(l string) string {
			switch {
			case strings.HasPrefix(l, "EHLO "):
				return "250-upstream.test\r\n250-PIPELINING\r\n" + extra + "250 8BITMIME\r\n"
			case l == "STARTTLS":
				return "454 4.7.0 TLS not available\r\n"
			}
			return "502 5.5.2 no\r\n"
		}
	}
	// begin starts a transaction through a starttls upstream at addr; every
	// failure of the plaintext part is 451 4.4.1 for the client, never a
	// 5xx.
	begin := func(t *testing.T, addr string) error {
		t.Helper()
		c := cfgFor("primary", addr)
		c.TLS, c.InsecureSkipVerify = TLSStartTLS, true
		r := newTestRouter(t, []Config{c})
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		return err
	}

	t.Run("ehlo_before_tls_uses_our_name", func(t *testing.T) {
		addr, lines := scriptedUpstream(t, "220 upstream.test ESMTP\r\n", ehlo("250-STARTTLS\r\n"))
		begin(t, addr)
		got := <-lines
		if len(got) < 2 || got[0] != "EHLO mailgate.test" || got[1] != "STARTTLS" {
			t.Errorf("commands = %q, want EHLO mailgate.test then STARTTLS (never EHLO localhost)", got)
		}
	})

	t.Run("not_offered_no_plaintext_fallback", func(t *testing.T) {
		addr, lines := scriptedUpstream(t, "220 upstream.test ESMTP\r\n", ehlo(""))
		err := begin(t, addr)
		if !strings.Contains(err.Error(), "STARTTLS not offered") {
			t.Errorf("err = %v", err)
		}
		if got := <-lines; len(got) != 1 {
			t.Errorf("commands = %q, want only EHLO", got)
		}
	})

	// A man in the middle appends a reply to the 220 of STARTTLS; read
	// after the handshake it would pass for a reply sent over TLS.
	t.Run("data_after_starttls_reply_refused", func(t *testing.T) {
		addr, _ := scriptedUpstream(t, "220 upstream.test ESMTP\r\n", func(l string) string {
			if l == "STARTTLS" {
				return "220 2.0.0 go ahead\r\n250 2.1.0 injected\r\n"
			}
			return ehlo("250-STARTTLS\r\n")(l)
		})
		err := begin(t, addr)
		if !strings.Contains(err.Error(), "after its STARTTLS reply") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("greeting_refused", func(t *testing.T) {
		addr, _ := scriptedUpstream(t, "554 5.3.2 go away\r\n", ehlo("250-STARTTLS\r\n"))
		begin(t, addr)
	})
}
