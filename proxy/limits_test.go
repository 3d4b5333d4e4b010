package proxy_test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy"
)

func TestLimits(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.MaxMessageSize = 64 << 10
		c.Limits.MaxRecipients = 3
		c.Limits.MaxHeaderSize = 2048
		c.Limits.MaxConnectionsPerIP = 4
	})
	start := func(t *testing.T) *rawClient {
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		return c
	}
	t.Run("size_param_over_limit_552", func(t *testing.T) {
		c := start(t)
		code, text := c.cmd(fmt.Sprintf("MAIL FROM:<app@example.com> SIZE=%d", 65<<10))
		if code != 552 {
			t.Fatalf("%d %s, want 552", code, text)
		}
	})
	t.Run("body_over_limit_552", func(t *testing.T) {
		c := start(t)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		line := strings.Repeat("x", 900) + "\r\n"
		c.send("From: app@example.com\r\n\r\n" + strings.Repeat(line, 100) + ".\r\n")
		code, text := c.reply()
		if code != 552 {
			t.Fatalf("%d %s, want 552", code, text)
		}
		if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
			t.Fatal("oversize message relayed")
		}
	})
	t.Run("long_line_5xx", func(t *testing.T) {
		c := start(t)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send("From: app@example.com\r\n\r\n" + strings.Repeat("y", 1200) + "\r\n.\r\n")
		code, text := c.reply()
		if code/100 != 5 {
			t.Fatalf("%d %s, want 5xx", code, text)
		}
	})
	t.Run("header_too_big_552", func(t *testing.T) {
		c := start(t)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		hdr := strings.Repeat("X-Filler: "+strings.Repeat("z", 70)+"\r\n", 40)
		c.send("From: app@example.com\r\n" + hdr + "\r\nbody\r\n.\r\n")
		code, text := c.reply()
		if code != 552 || !strings.Contains(text, "header") {
			t.Fatalf("%d %s, want 552 about the header", code, text)
		}
	})
	t.Run("too_many_recipients_452", func(t *testing.T) {
		c := start(t)
		c.expect("MAIL FROM:<app@example.com>", 250)
		for i := 0; i < 3; i++ {
			c.expect(fmt.Sprintf("RCPT TO:<r%d@example.net>", i), 250)
		}
		code, text := c.cmd("RCPT TO:<r3@example.net>")
		if code != 452 || !strings.Contains(text, "4.5.3") {
			t.Fatalf("%d %s, want 452 4.5.3", code, text)
		}
	})
	t.Run("connections_per_ip_421", func(t *testing.T) {
		// A fresh server: the connections of the subtests above may still
		// be closing on the server side.
		e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) { c.Limits.MaxConnectionsPerIP = 4 })
		var open []*rawClient
		for i := 0; i < 4; i++ {
			open = append(open, dialRaw(t, e.addr["relay"]))
		}
		c, err := net.Dial("tcp", e.addr["relay"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc := &rawClient{t: t, c: c, r: newReader(c)}
		code, text := rc.reply()
		if code != 421 {
			t.Fatalf("fifth connection: %d %s, want 421", code, text)
		}
		for _, o := range open {
			o.c.Close()
		}
	})
}

func TestHeaderHygiene(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.Now = func() time.Time { return now } })
	c := e.login(t)
	msg := "From: alice@example.com\r\nTo: bob@example.net\r\nBcc: secret@example.org\r\n" +
		"Return-Path: <forged@example.com>\r\nSubject: hygiene\r\n\r\nbody\r\n"
	if code, text := send(t, c, testUser, []string{"bob@example.net"}, msg); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	got := string(msgs[0].data)
	for _, bad := range []string{"Bcc:", "secret@example.org", "Return-Path:", "forged@"} {
		if strings.Contains(got, bad) {
			t.Errorf("relayed message still has %q", bad)
		}
	}
	if !strings.Contains(got, "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n") {
		t.Errorf("Date not added:\n%s", got)
	}
	if !strings.Contains(got, "Message-ID: <") || !strings.Contains(got, "@mailgate.test>") {
		t.Errorf("Message-ID not added:\n%s", got)
	}
	if !strings.HasPrefix(got, "Received: by mailgate.test") {
		t.Errorf("Received header not first:\n%s", got)
	}

	t.Run("existing_date_and_id_kept", func(t *testing.T) {
		msg := "From: alice@example.com\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <keep@example.com>\r\n\r\nx\r\n"
		if code, text := send(t, c, testUser, []string{"bob@example.net"}, msg); code != 250 {
			t.Fatalf("%d %s", code, text)
		}
		_, msgs, _ := e.up.snapshot()
		got := string(msgs[len(msgs)-1].data)
		if strings.Count(got, "Date:") != 1 || strings.Count(got, "Message-ID:") != 1 || !strings.Contains(got, "<keep@example.com>") {
			t.Errorf("existing Date/Message-ID changed:\n%s", got)
		}
	})
	t.Run("no_from_5xx", func(t *testing.T) {
		before := len(msgs)
		code, text := send(t, c, testUser, []string{"bob@example.net"}, "To: bob@example.net\r\nSubject: no from\r\n\r\nx\r\n")
		if code/100 != 5 {
			t.Fatalf("%d %s, want 5xx", code, text)
		}
		if _, msgs, _ := e.up.snapshot(); len(msgs) != before+1 {
			// +1: existing_date_and_id_kept relayed one.
			t.Errorf("message without From relayed")
		}
	})
}

func TestReceivedHeaderFull(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) { c.Message.ReceivedHeader = "full" })
	c := e.login(t)
	if code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	if got := string(msgs[0].data); !strings.HasPrefix(got, "Received: from client.test ([127.0.0.1])") {
		t.Errorf("full Received header:\n%s", got)
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Run("unreachable_451_4.4.1", func(t *testing.T) {
		e := newEnv(t)
		e.up.srv.Close()
		time.Sleep(50 * time.Millisecond)
		c := e.login(t)
		code, text := c.cmd("MAIL FROM:<alice@example.com>")
		if code != 451 || !strings.Contains(text, "4.4.1") {
			t.Fatalf("%d %s, want 451 4.4.1", code, text)
		}
	})
	t.Run("rcpt_552_becomes_452", func(t *testing.T) {
		e := newEnv(t)
		e.up.set(func(u *recUpstream) {
			u.rcptErr = func(string) error {
				return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"}
			}
		})
		c := e.login(t)
		c.expect("MAIL FROM:<alice@example.com>", 250)
		code, text := c.cmd("RCPT TO:<bob@example.net>")
		if code != 452 {
			t.Fatalf("%d %s, want 452", code, text)
		}
	})
	t.Run("rcpt_5xx_per_recipient", func(t *testing.T) {
		e := newEnv(t)
		e.up.set(func(u *recUpstream) {
			u.rcptErr = func(to string) error {
				if strings.HasPrefix(to, "nobody") {
					return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user\r\n250 fake"}
				}
				return nil
			}
		})
		c := e.login(t)
		c.expect("MAIL FROM:<alice@example.com>", 250)
		code, text := c.cmd("RCPT TO:<nobody@example.net>")
		if code != 550 || !strings.Contains(text, "5.1.1") || strings.Contains(text, "\n250") {
			t.Fatalf("%d %q, want a clean 550 5.1.1", code, text)
		}
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send(simpleMessage + ".\r\n")
		if code, text := c.reply(); code != 250 {
			t.Fatalf("%d %s", code, text)
		}
		_, msgs, _ := e.up.snapshot()
		if len(msgs) != 1 || len(msgs[0].rcpts) != 1 {
			t.Fatalf("upstream messages %+v", msgs)
		}
	})
	t.Run("5xx_after_data_passes_through_cleaned", func(t *testing.T) {
		e := newEnv(t)
		e.up.set(func(u *recUpstream) {
			u.dataErr = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "spam\x07 detected"}
		})
		c := e.login(t)
		code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage)
		if code != 554 || !strings.Contains(text, "5.7.1 spam detected") {
			t.Fatalf("%d %q, want 554 5.7.1 spam detected", code, text)
		}
	})
	t.Run("4xx_after_data_passes_through", func(t *testing.T) {
		e := newEnv(t)
		e.up.set(func(u *recUpstream) {
			u.dataErr = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		})
		c := e.login(t)
		if code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage); code != 451 {
			t.Fatalf("%d %s, want 451", code, text)
		}
	})
	t.Run("drop_after_data_is_4xx", func(t *testing.T) {
		e := newEnv(t)
		e.up.set(func(u *recUpstream) { u.dropData = true })
		c := e.login(t)
		code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage)
		if code/100 != 4 {
			t.Fatalf("%d %s, want 4xx", code, text)
		}
	})
	t.Run("client_rset_aborts_upstream", func(t *testing.T) {
		e := newEnv(t)
		c := e.login(t)
		c.expect("MAIL FROM:<alice@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("RSET", 250)
		if code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage); code != 250 {
			t.Fatalf("%d %s", code, text)
		}
		mails, msgs, conns := e.up.snapshot()
		if len(mails) != 2 || len(msgs) != 1 || conns != 1 {
			t.Fatalf("upstream: mails %v, %d messages over %d conns", mails, len(msgs), conns)
		}
	})
}

func TestAddresses(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	cases := []struct {
		name, cmd string
		want      int
	}{
		{"source_route_refused", "MAIL FROM:<@relay.example:app@example.com>", 501},
		{"source_route_list_refused", "MAIL FROM:<@a.example,@b.example:app@example.com>", 501},
		{"percent_hack_refused", "MAIL FROM:<app%other.example@example.com>", 553},
		{"bang_path_refused", "MAIL FROM:<host!app@example.com>", 553},
		{"bad_domain_refused", "MAIL FROM:<app@exa_mple..com>", 553},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if code, text := c.cmd(tc.cmd); code != tc.want {
				t.Fatalf("%q: %d %s, want %d", tc.cmd, code, text, tc.want)
			}
		})
	}
	if mails, _, _ := e.up.snapshot(); len(mails) != 0 {
		t.Fatalf("upstream saw %q", mails)
	}
	t.Run("quoted_local_part_requoted", func(t *testing.T) {
		c.expect(`MAIL FROM:<"john doe"@example.com>`, 250)
		c.expect(`RCPT TO:<"a\"b"@example.net>`, 250)
		c.expect("RSET", 250)
		mails, _, _ := e.up.snapshot()
		// go-smtp's server unquotes what it receives, so the upstream's
		// recorded addresses prove a correctly quoted command was sent.
		if len(mails) != 1 || mails[0] != "john doe@example.com" {
			t.Fatalf("upstream MAIL %q", mails)
		}
	})
}

func TestSpoolLargeMessage(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Message.SpoolThreshold = 4096
		c.Message.SpoolDir = dir
	})
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	body := strings.Repeat(strings.Repeat("0123456789", 9)+"\r\n", 20000) // ~1.8 MB
	if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\n"+body); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	if !strings.HasSuffix(string(msgs[0].data), "\r\n\r\n"+body) {
		t.Fatal("body changed through the spool")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "mailgate-spool-*"))
	if len(left) != 0 {
		t.Fatalf("spool files left behind: %v", left)
	}
}

func TestShutdownDrains(t *testing.T) {
	e := newEnv(t)
	idle := dialRaw(t, e.addr["relay"])
	idle.expect("EHLO idle.test", 250)
	busy := dialRaw(t, e.addr["relay"])
	busy.expect("EHLO busy.test", 250)
	busy.expect("MAIL FROM:<app@example.com>", 250)
	busy.expect("RCPT TO:<bob@example.net>", 250)
	busy.expect("DATA", 354)
	busy.send("From: app@example.com\r\n\r\nfirst half\r\n")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	code, text := idle.reply()
	if code != 421 {
		t.Fatalf("idle session: %d %s, want 421", code, text)
	}
	// The transaction in flight finishes and is relayed.
	time.Sleep(100 * time.Millisecond)
	busy.send("second half\r\n.\r\n")
	if code, text := busy.reply(); code != 250 {
		t.Fatalf("in-flight transaction: %d %s, want 250", code, text)
	}
	if code, _ := busy.reply(); code != 421 {
		t.Errorf("after its transaction the session should get 421, got %d", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, msgs, _ := e.up.snapshot(); len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	if _, err := net.DialTimeout("tcp", e.addr["relay"], time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

// TestShutdownClosesPreTLSSessions: a client sitting in the plaintext part
// of a STARTTLS listener does not hold up shutdown.
func TestShutdownClosesPreTLSSessions(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["sub"])
	c.expect("EHLO waiting.test", 250)
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if code, text := c.reply(); code != 421 {
		t.Fatalf("pre-TLS session: %d %s, want 421", code, text)
	}
}

// TestProxyProtocol: behind a load balancer the PROXY header's client
// address is the one trusted_networks, limits and logs see; a connection
// without a header is refused.
func TestProxyProtocol(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Listeners[2].ProxyProtocol = []string{"127.0.0.1"}
		c.Listeners[2].TrustedNetworks = []string{"192.0.2.0/24"}
		c.Message.ReceivedHeader = "full"
	})
	t.Run("header_from_load_balancer_used", func(t *testing.T) {
		conn := dialPlain(t, e.addr["relay"])
		if _, err := conn.Write([]byte("PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n")); err != nil {
			t.Fatal(err)
		}
		c := &rawClient{t: t, c: conn, r: newReader(conn)}
		if code, text := c.reply(); code != 220 {
			t.Fatalf("greeting: %d %s", code, text)
		}
		c.expect("EHLO client.test", 250)
		if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\nx\r\n"); code != 250 {
			t.Fatalf("%d %s", code, text)
		}
		_, msgs, _ := e.up.snapshot()
		if len(msgs) != 1 || !strings.Contains(string(msgs[0].data), "[192.0.2.10]") {
			t.Fatalf("client address from the PROXY header not used: %q", msgs)
		}
	})
	t.Run("no_header_refused", func(t *testing.T) {
		conn := dialPlain(t, e.addr["relay"])
		conn.Write([]byte("EHLO sneaky.test\r\n"))
		c := &rawClient{t: t, c: conn, r: newReader(conn)}
		if code, _ := c.reply(); code == 220 {
			t.Fatal("connection without a PROXY header accepted")
		}
	})
	t.Run("header_outside_trusted_networks_refused", func(t *testing.T) {
		conn := dialPlain(t, e.addr["relay"])
		conn.Write([]byte("PROXY TCP4 198.51.100.7 127.0.0.1 40000 25\r\n"))
		c := &rawClient{t: t, c: conn, r: newReader(conn)}
		if code, _ := c.reply(); code != 554 {
			t.Fatalf("client outside trusted_networks: %d, want 554", code)
		}
	})
}
