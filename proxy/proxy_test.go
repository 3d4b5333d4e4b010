package proxy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/proxy"
)

// send runs one transaction on c and returns the final reply.
func send(t *testing.T, c *rawClient, from string, rcpts []string, msg string) (int, string) {
	t.Helper()
	c.expect("MAIL FROM:<"+from+">", 250)
	for _, r := range rcpts {
		c.expect("RCPT TO:<"+r+">", 250)
	}
	c.expect("DATA", 354)
	c.send(msg + ".\r\n")
	return c.reply()
}

func TestRelaySubmission(t *testing.T) {
	e := newEnv(t)
	c := e.login(t)
	code, text := send(t, c, testUser, []string{"bob@example.net", "carol@example.org"}, simpleMessage)
	if code != 250 {
		t.Fatalf("DATA: %d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.from != testUser || strings.Join(m.rcpts, ",") != "bob@example.net,carol@example.org" {
		t.Errorf("envelope: from %q rcpts %v", m.from, m.rcpts)
	}
	body := string(m.data)
	for _, want := range []string{"Subject: test\r\n", "\r\n\r\nHello.\r\n", "Date: ", "Message-ID: <", "Received: by mailgate.test (mailgate) with ESMTPSA id "} {
		if !strings.Contains(body, want) {
			t.Errorf("relayed message lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "client.test") {
		t.Errorf("private Received header reveals the client:\n%s", body)
	}
	// One summary line per transaction, with the fields operators grep for.
	logs := e.logs.String()
	if n := strings.Count(logs, `"msg":"transaction"`); n != 1 {
		t.Errorf("%d transaction log lines, want 1:\n%s", n, logs)
	}
	for _, want := range []string{`"outcome":"relayed"`, `"user":"alice@example.com"`, `"rcpts":2`, `"upstream":"up"`, `"session":`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(logs, testPassword) || strings.Contains(logs, plainIR("", testUser, testPassword)) {
		t.Error("credentials appear in the log")
	}
}

func TestPooledUpstreamReuse(t *testing.T) {
	e := newEnv(t)
	c := e.login(t)
	for i := 0; i < 3; i++ {
		if code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage); code != 250 {
			t.Fatalf("message %d: %d %s", i, code, text)
		}
	}
	c2 := e.login(t)
	if code, text := send(t, c2, testUser, []string{"bob@example.net"}, simpleMessage); code != 250 {
		t.Fatalf("second session: %d %s", code, text)
	}
	_, msgs, conns := e.up.snapshot()
	if len(msgs) != 4 || conns != 1 {
		t.Errorf("upstream: %d messages over %d connections, want 4 over 1", len(msgs), conns)
	}
	e.up.mu.Lock()
	rsets := e.up.rsets
	e.up.mu.Unlock()
	// go-smtp's server calls Reset after each DATA itself; a client RSET
	// would add more.
	if rsets > 4 {
		t.Errorf("upstream saw %d resets for 4 clean transactions", rsets)
	}
}

func TestAuthRequiredBeforeMail(t *testing.T) {
	e := newEnv(t)
	c := dialRawTLS(t, e.addr["smtps"])
	c.expect("EHLO client.test", 250)
	code, text := c.cmd("MAIL FROM:<alice@example.com>")
	if code != 530 || !strings.Contains(text, "5.7.0") {
		t.Fatalf("MAIL before AUTH: %d %s, want 530 5.7.0", code, text)
	}
	if mails, _, _ := e.up.snapshot(); len(mails) != 0 {
		t.Errorf("upstream saw MAIL %v", mails)
	}
}

func dialRawTLS(t *testing.T, addr string) *rawClient {
	t.Helper()
	c := &rawClient{t: t}
	raw := dialPlain(t, addr)
	c.c = raw
	c.tls()
	if code, text := c.reply(); code != 220 {
		t.Fatalf("greeting: %d %s", code, text)
	}
	return c
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	t.Run("plain_ok", func(t *testing.T) {
		e.login(t)
	})
	t.Run("login_ok", func(t *testing.T) {
		c := startTLS(t, e)
		code, text := c.cmd("AUTH LOGIN")
		if code != 334 {
			t.Fatalf("AUTH LOGIN: %d %s", code, text)
		}
		code, _ = c.cmd(b64(testUser))
		if code != 334 {
			t.Fatalf("username: %d", code)
		}
		if code, text := c.cmd(b64(testPassword)); code != 235 {
			t.Fatalf("password: %d %s", code, text)
		}
	})
	t.Run("wrong_password_535", func(t *testing.T) {
		c := startTLS(t, e)
		code, text := c.cmd("AUTH PLAIN " + plainIR("", testUser, "wrong"))
		if code != 535 || !strings.Contains(text, "5.7.8") {
			t.Fatalf("got %d %s, want 535 5.7.8", code, text)
		}
	})
	t.Run("unknown_user_same_reply", func(t *testing.T) {
		c := startTLS(t, e)
		_, known := c.cmd("AUTH PLAIN " + plainIR("", testUser, "wrong"))
		c2 := startTLS(t, e)
		_, unknown := c2.cmd("AUTH PLAIN " + plainIR("", "nobody@example.com", "wrong"))
		if known != unknown {
			t.Errorf("replies differ: %q vs %q", known, unknown)
		}
	})
	t.Run("plain_authzid_must_match", func(t *testing.T) {
		c := startTLS(t, e)
		code, text := c.cmd("AUTH PLAIN " + plainIR("boss@example.com", testUser, testPassword))
		if code == 235 {
			t.Fatalf("authorization identity of another user accepted: %s", text)
		}
	})
	t.Run("no_auth_before_tls", func(t *testing.T) {
		c := dialRaw(t, e.addr["sub"])
		text := c.expect("EHLO client.test", 250)
		if strings.Contains(text, "AUTH") {
			t.Errorf("AUTH offered before TLS: %s", text)
		}
		code, _ := c.cmd("AUTH PLAIN " + plainIR("", testUser, testPassword))
		if code != 530 {
			t.Errorf("AUTH before TLS: %d, want 530", code)
		}
	})
	t.Run("closes_after_max_failures", func(t *testing.T) {
		c := startTLS(t, e)
		for i := 0; i < 3; i++ {
			code, _ := c.cmd("AUTH PLAIN " + plainIR("", testUser, "wrong"))
			if code == 0 {
				t.Fatalf("connection closed after %d failures", i)
			}
		}
		if !c.closed() {
			t.Fatal("connection still open after max_failures")
		}
	})
	if logs := e.logs.String(); strings.Contains(logs, testPassword) || strings.Contains(logs, b64(testPassword)) {
		t.Error("password appears in the log")
	}
}

func startTLS(t *testing.T, e *env) *rawClient {
	t.Helper()
	c := dialRaw(t, e.addr["sub"])
	c.expect("EHLO client.test", 250)
	c.expect("STARTTLS", 220)
	c.tls()
	c.expect("EHLO client.test", 250)
	return c
}

func TestSTARTTLS(t *testing.T) {
	e := newEnv(t)
	t.Run("pipelined_plaintext_discarded", func(t *testing.T) {
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		// The injected AUTH and MAIL must not survive into the TLS session.
		c.send("STARTTLS\r\nAUTH PLAIN " + plainIR("", testUser, testPassword) + "\r\nMAIL FROM:<alice@example.com>\r\n")
		if code, text := c.reply(); code != 220 {
			t.Fatalf("STARTTLS: %d %s", code, text)
		}
		c.tls()
		code, text := c.cmd("MAIL FROM:<alice@example.com>")
		if code == 250 {
			t.Fatalf("injected plaintext took effect: %s", text)
		}
	})
	t.Run("ehlo_required_again", func(t *testing.T) {
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		c.expect("STARTTLS", 220)
		c.tls()
		code, _ := c.cmd("AUTH PLAIN " + plainIR("", testUser, testPassword))
		if code/100 != 5 {
			t.Fatalf("AUTH without a new EHLO: %d, want 5xx", code)
		}
	})
	t.Run("failed_handshake_closes", func(t *testing.T) {
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		c.expect("STARTTLS", 220)
		c.send("this is not a TLS client hello\r\n\r\n")
		if !c.closed() {
			t.Fatal("connection open after a failed handshake")
		}
	})
	t.Run("mail_before_starttls_refused", func(t *testing.T) {
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		code, _ := c.cmd("MAIL FROM:<alice@example.com>")
		if code != 530 {
			t.Fatalf("MAIL before STARTTLS: %d, want 530", code)
		}
	})
}

func TestTrustedNetworksRefuseAtConnect(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Listeners[2].TrustedNetworks = []string{"192.0.2.0/24"}
	})
	c := dialPlain(t, e.addr["relay"])
	rc := &rawClient{t: t, c: c, r: newReader(c)}
	code, text := rc.reply()
	if code != 554 {
		t.Fatalf("connect from outside trusted_networks: %d %s, want 554", code, text)
	}
	if !rc.closed() {
		t.Fatal("connection still open")
	}
}

func TestTimeouts(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.CommandTimeout = "300ms"
		c.Limits.DataTimeout = "300ms"
	})
	t.Run("idle_client_421", func(t *testing.T) {
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		time.Sleep(500 * time.Millisecond)
		code, text := c.reply()
		if code != 421 || !strings.Contains(text, "4.4.2") {
			t.Fatalf("idle: %d %s, want 421 4.4.2", code, text)
		}
	})
	t.Run("stalled_body_451_rest_not_commands", func(t *testing.T) {
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send("From: app@example.com\r\n\r\npart one\r\n")
		time.Sleep(600 * time.Millisecond)
		// What follows would be a second transaction if read as commands.
		c.send(".\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n")
		code, text := c.reply()
		if code != 451 || !strings.Contains(text, "4.4.2") {
			t.Fatalf("stalled body: %d %s, want 451 4.4.2", code, text)
		}
		if !c.closed() {
			t.Fatal("connection open after a data timeout")
		}
		mails, msgs, _ := e.up.snapshot()
		for _, m := range mails {
			if m == "evil@example.com" {
				t.Fatal("the rest of the body was read as commands")
			}
		}
		if len(msgs) != 0 {
			t.Fatalf("upstream got %d messages", len(msgs))
		}
	})
}
