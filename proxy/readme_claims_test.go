package proxy_test

// Tests named after documented claims (README.md "How a message flows",
// docs/upstreams.md "Replies", docs/security.md) that no other test pinned. They assert reply codes and
// enhanced codes, not reply texts.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy"
)

// TestExistingReceivedFieldsKept: header hygiene drops Bcc and
// Return-Path but keeps the Received fields a message already has (a
// relay must not erase the trace, RFC 5321 §4.4) and adds its own on top.
func TestExistingReceivedFieldsKept(t *testing.T) {
	e := newEnv(t)
	c := e.login(t)
	msg := "Received: from laptop.example (laptop.example [192.0.2.7])\r\n\tby mua.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"Received: by mua.example (internal); Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"From: alice@example.com\r\nSubject: trace\r\n\r\nbody\r\n"
	if code, text := send(t, c, testUser, []string{"bob@example.net"}, msg); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	_, msgs, _ := e.up.snapshot()
	got := string(msgs[0].data)
	if n := strings.Count(got, "Received:"); n != 3 {
		t.Fatalf("want the 2 existing Received fields and mailgate's, got %d:\n%s", n, got)
	}
	if !strings.HasPrefix(got, "Received: by mailgate.test") {
		t.Errorf("mailgate's Received is not the first field:\n%s", got)
	}
	if !strings.Contains(got, "Received: from laptop.example (laptop.example [192.0.2.7])\r\n\tby mua.example;") {
		t.Errorf("existing Received field changed:\n%s", got)
	}
}

// stagePolicy decides with f; it records nothing.
type stagePolicy func(policy.Input) (policy.Decision, error)

func (f stagePolicy) Evaluate(_ context.Context, in policy.Input) (policy.Decision, error) {
	return f(in)
}

// TestPolicyEngineErrorFailsClosed451: "a policy engine … failed →
// 451 4.3.0 … (session id): fail closed". Nothing reaches the upstream.
func TestPolicyEngineErrorFailsClosed451(t *testing.T) {
	for _, stage := range []policy.Stage{policy.StageMail, policy.StageRcpt, policy.StageData} {
		t.Run(string(stage), func(t *testing.T) {
			e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) {
				d.Policy = stagePolicy(func(in policy.Input) (policy.Decision, error) {
					if in.Stage == stage {
						return policy.Decision{}, fmt.Errorf("rego: /etc/secret/policy.rego:3: %w", policy.ErrEngine)
					}
					return policy.Decision{Outcome: policy.Accept}, nil
				})
			})
			c := e.login(t)
			code, text := func() (int, string) {
				if code, text := c.cmd("MAIL FROM:<" + testUser + ">"); code != 250 {
					return code, text
				}
				if code, text := c.cmd("RCPT TO:<bob@example.net>"); code != 250 {
					return code, text
				}
				c.expect("DATA", 354)
				c.send(simpleMessage + ".\r\n")
				return c.reply()
			}()
			if code != 451 || !strings.Contains(text, "4.3.0") {
				t.Fatalf("%d %s, want 451 4.3.0", code, text)
			}
			if strings.Contains(text, "secret") {
				t.Errorf("the reply discloses the engine's error: %s", text)
			}
			if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
				t.Fatal("a message was relayed although the policy failed")
			}
		})
	}
}

// failingSigner fails every signature, as an unreadable key or an I/O
// error would.
type failingSigner struct{}

func (failingSigner) Sign(_ context.Context, _ string, msg io.Reader) ([]string, error) {
	io.Copy(io.Discard, msg)
	return nil, errors.New("dkim: read /etc/mailgate/dkim/secret.pem: permission denied")
}

// TestDKIMSigningFailureFailsClosed451: "DKIM signing failed → 451 4.3.0
// … (session id)"; never relayed unsigned, the upstream transaction is
// rolled back with RSET, and the reply carries no internal text.
func TestDKIMSigningFailureFailsClosed451(t *testing.T) {
	e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.Signer = failingSigner{} })
	c := e.login(t)
	code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage)
	if code != 451 || !strings.Contains(text, "4.3.0") || !strings.HasSuffix(text, ")") {
		t.Fatalf("%d %s, want 451 4.3.0 … (session id)", code, text)
	}
	if strings.Contains(text, "secret") || strings.Contains(text, "dkim") {
		t.Errorf("the reply discloses internal text: %s", text)
	}
	c.expect("NOOP", 250) // the session goes on
	mails, msgs, _ := e.up.snapshot()
	if len(mails) != 1 || len(msgs) != 0 {
		t.Fatalf("upstream saw %d MAIL and %d messages, want 1 and 0", len(mails), len(msgs))
	}
	e.up.mu.Lock()
	rsets := e.up.rsets
	e.up.mu.Unlock()
	if rsets == 0 {
		t.Error("the upstream transaction was not rolled back with RSET")
	}
}

// TestDataStageRejectAbortsUpstreamWithRSET: "A message refused at the
// data stage (policy, hygiene, signing) aborts the upstream transaction
// with RSET".
func TestDataStageRejectAbortsUpstreamWithRSET(t *testing.T) {
	cases := []struct {
		name string
		msg  string
		code int
	}{
		{"policy", "From: alice@example.com\r\nSubject: refuse me\r\n\r\nx\r\n", 550},
		{"hygiene_no_from", "Subject: no from\r\n\r\nx\r\n", 550},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) {
				d.Policy = stagePolicy(func(in policy.Input) (policy.Decision, error) {
					if in.Stage == policy.StageData && len(in.Message.Headers["subject"]) > 0 && in.Message.Headers["subject"][0] == "refuse me" {
						return policy.Decision{Outcome: policy.Reject, Code: 550, EnhancedCode: "5.7.1", Message: "refused", Rule: "t"}, nil
					}
					return policy.Decision{Outcome: policy.Accept}, nil
				})
			})
			c := e.login(t)
			if code, text := send(t, c, testUser, []string{"bob@example.net"}, tc.msg); code != tc.code {
				t.Fatalf("%d %s, want %d", code, text, tc.code)
			}
			c.expect("NOOP", 250)
			mails, msgs, _ := e.up.snapshot()
			e.up.mu.Lock()
			rsets := e.up.rsets
			e.up.mu.Unlock()
			if len(mails) != 1 || len(msgs) != 0 || rsets == 0 {
				t.Fatalf("upstream: %d MAIL, %d messages, %d RSET; want 1, 0, at least 1", len(mails), len(msgs), rsets)
			}
		})
	}
}

// TestMaxConnectionsInTotal421: "connections in total and per IP (421)";
// the per-IP half is TestLimits/connections_per_ip_421.
func TestMaxConnectionsInTotal421(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) { c.Limits.MaxConnections = 3 })
	for i := 0; i < 3; i++ {
		dialRaw(t, e.addr["relay"])
	}
	c, err := net.Dial("tcp", e.addr["relay"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := &rawClient{t: t, c: c, r: newReader(c)}
	if code, text := rc.reply(); code != 421 {
		t.Fatalf("fourth connection: %d %s, want 421", code, text)
	}
}

// TestRefusedBodyIsReadToItsEnd: "a body refused before its end (too big,
// header too big) is still read to its end-of-data line, and what follows
// that line is read as commands": a pipelining client's next command,
// sent in the same write as the body, is answered in order.
func TestRefusedBodyIsReadToItsEnd(t *testing.T) {
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.MaxMessageSize = 16 << 10
		c.Limits.MaxHeaderSize = 1024
	})
	cases := []struct {
		name, body string
	}{
		{"too_big", "From: app@example.com\r\n\r\n" + strings.Repeat(strings.Repeat("x", 500)+"\r\n", 64)},
		{"header_too_big", "From: app@example.com\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("z", 70)+"\r\n", 40) + "\r\nbody\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, e.addr["relay"])
			c.expect("EHLO client.test", 250)
			c.expect("MAIL FROM:<app@example.com>", 250)
			c.expect("RCPT TO:<bob@example.net>", 250)
			c.expect("DATA", 354)
			// A body line that looks like a command must stay body.
			c.send(tc.body + "RSET\r\nQUIT\r\n.\r\nNOOP\r\n")
			if code, text := c.reply(); code != 552 {
				t.Fatalf("%d %s, want 552", code, text)
			}
			if code, text := c.reply(); code != 250 {
				t.Fatalf("the command after the refused body: %d %s, want NOOP's 250", code, text)
			}
			c.expect("MAIL FROM:<app@example.com>", 250)
		})
	}
	if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
		t.Fatalf("%d refused messages relayed", len(msgs))
	}
}

// TestBodyLinesThatLookLikeCommandsRelayedByteForByte: "Lines in a body
// that look like commands are relayed byte for byte."
func TestBodyLinesThatLookLikeCommandsRelayedByteForByte(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	body := "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nQUIT\r\nRSET\r\n"
	if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\n"+body); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	c.expect("NOOP", 250)
	mails, msgs, _ := e.up.snapshot()
	if len(mails) != 1 || len(msgs) != 1 || !strings.HasSuffix(string(msgs[0].data), "\r\n\r\n"+body) {
		t.Fatalf("upstream: MAIL %v, messages %q", mails, msgs)
	}
}

// TestBeforeTLSOnlyEHLOSTARTTLSNOOPRSETQUIT: "A starttls listener accepts
// only EHLO, STARTTLS, NOOP, RSET and QUIT before TLS". Reply classes
// only: the texts are go-smtp's and may change.
func TestBeforeTLSOnlyEHLOSTARTTLSNOOPRSETQUIT(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["sub"])
	c.expect("EHLO client.test", 250)
	for _, cmd := range []string{"NOOP", "RSET"} {
		if code, text := c.cmd(cmd); code != 250 {
			t.Errorf("%s before TLS: %d %s, want 250", cmd, code, text)
		}
	}
	for _, cmd := range []string{"MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.net>", "DATA",
		"AUTH PLAIN " + plainIR("", testUser, testPassword), "VRFY alice", "BDAT 5 LAST"} {
		if code, text := c.cmd(cmd); code/100 != 5 {
			t.Errorf("%q before TLS: %d %s, want 5xx", cmd, code, text)
		}
	}
	if code, text := c.cmd("QUIT"); code != 221 {
		t.Errorf("QUIT before TLS: %d %s, want 221", code, text)
	}
	if mails, _, _ := e.up.snapshot(); len(mails) != 0 {
		t.Fatal("a plaintext command reached the upstream")
	}
}

// TestAllowInsecureAuthOnlyOnLoopback: "AUTH … only over TLS, unless a
// loopback-only listener says allow_insecure_auth = true": such a listener
// takes AUTH in plaintext; the same option on any other address is a
// configuration error.
func TestAllowInsecureAuthOnlyOnLoopback(t *testing.T) {
	none := "none"
	plain := proxy.ListenerConfig{Name: "plainauth", Address: "127.0.0.1:0", TLS: &none, AllowInsecureAuth: true}
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) { c.Listeners = append(c.Listeners, plain) })
	c := dialRaw(t, e.addr["plainauth"])
	c.expect("EHLO client.test", 250)
	c.expect("AUTH PLAIN "+plainIR("", testUser, testPassword), 235)
	if code, text := send(t, c, testUser, []string{"bob@example.net"}, simpleMessage); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:587", "[::]:587", "localhost:587"} {
		l := plain
		l.Address = addr
		cfg := proxy.Config{Hostname: "mailgate.test", Listeners: []proxy.ListenerConfig{l}}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "allow_insecure_auth") {
			t.Errorf("allow_insecure_auth on %s: err = %v, want a configuration error", addr, err)
		}
	}
	l := plain
	l.Address = "[::1]:0"
	if err := (&proxy.Config{Hostname: "mailgate.test", Listeners: []proxy.ListenerConfig{l}}).Validate(); err != nil {
		t.Errorf("allow_insecure_auth on [::1]: %v", err)
	}
}

// TestLargeBodySpooledToUnlinkedFile: "Large bodies are spooled to an
// unlinked temporary file": while the message is being decided (the body
// already spooled past spool_threshold), the spool directory holds no
// file a name could open.
func TestLargeBodySpooledToUnlinkedFile(t *testing.T) {
	dir := t.TempDir()
	var (
		mu      sync.Mutex
		seen    []string
		decided bool
	)
	e := newEnv(t, func(c *proxy.Config, d *proxy.Deps) {
		c.Message.SpoolThreshold = 4096
		c.Message.SpoolDir = dir
		d.Policy = stagePolicy(func(in policy.Input) (policy.Decision, error) {
			if in.Stage == policy.StageData {
				entries, err := os.ReadDir(dir)
				if err != nil {
					return policy.Decision{}, err
				}
				mu.Lock()
				defer mu.Unlock()
				for _, en := range entries {
					seen = append(seen, en.Name())
				}
				decided = in.Message.Size > 4096
			}
			return policy.Decision{Outcome: policy.Accept}, nil
		})
	})
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	body := strings.Repeat(strings.Repeat("0123456789", 9)+"\r\n", 2000) // ~180 KB
	if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\n"+body); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	mu.Lock()
	defer mu.Unlock()
	if !decided {
		t.Fatal("the data-stage policy did not see the spooled message")
	}
	if len(seen) != 0 {
		t.Fatalf("spool files visible while the message was held: %v", seen)
	}
}
