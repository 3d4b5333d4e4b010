package main

// End-to-end tests: the whole mailgate (config file → serve) driven by
// real clients (swaks, curl, Python's smtplib) into real upstreams
// (Postfix's smtp-sink, a private Postfix), with signatures checked by
// dkimpy. Each message is counted at the sink: one delivery per 250, none
// per 4xx/5xx.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
)

const (
	e2eUser     = "alice@example.com"
	e2ePassword = "e2e password with spaces"
)

type mailgate struct {
	dir   string
	sub   string // STARTTLS + AUTH
	smtps string // implicit TLS + AUTH
	relay string // plaintext, trusted loopback, no AUTH
	logs  *peertest.Buffer
	dkim  map[string]string // TXT records by name
	// extra holds every listener's address by name.
	extra map[string]string
}

// startMailgate writes a configuration around extra (upstream, dkim,
// policy blocks…), with the TLS certificate, users file and DKIM keys it
// needs, and serves it until the test ends.
func startMailgate(t *testing.T, extra string) *mailgate {
	t.Helper()
	return startMailgateAuth(t, extra, "")
}

// startMailgateAuth is startMailgate with extra attributes in the auth
// block.
func startMailgateAuth(t *testing.T, extra, authAttrs string) *mailgate {
	t.Helper()
	dir := t.TempDir()
	m := &mailgate{dir: dir, logs: &peertest.Buffer{}, dkim: map[string]string{}}

	cert, err := proxy.SelfSigned("mailgate.test")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	writeFile(t, filepath.Join(dir, "cert.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})))
	writeFile(t, filepath.Join(dir, "key.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	hash, err := auth.Hash(e2ePassword)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "users"), e2eUser+":"+hash+"\nnews@example.com:"+hash+"\n"+
		"bob@example.com:"+hash+"\ncarol@example.com:"+hash+"\n")
	for _, k := range []struct{ sel, alg string }{{"rsa1", dkim.AlgorithmRSA}, {"ed1", dkim.AlgorithmEd25519}} {
		key, err := dkim.GenerateKey(k.alg, 2048)
		if err != nil {
			t.Fatal(err)
		}
		if err := dkim.WriteKeyFile(filepath.Join(dir, k.sel+".pem"), key); err != nil {
			t.Fatal(err)
		}
		rec, err := dkim.NewRecord("example.com", k.sel, key.Public())
		if err != nil {
			t.Fatal(err)
		}
		m.dkim[strings.TrimSuffix(rec.Name, ".")] = rec.Value
	}
	cfgText := fmt.Sprintf(`
hostname = "mailgate.test"
listener "submission" {
  address = %q
  tls     = "starttls"
}
listener "submissions" {
  address = %q
  tls     = "implicit"
}
listener "relay" {
  address          = %q
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
tls {
  cert_file = "cert.pem"
  key_file  = "key.pem"
}
auth {
  users_file = "users"
  %s
}
log {
  format = "json"
  level  = "debug"
}
%s
`, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", authAttrs, extra)
	path := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, path, cfgText)
	var diag bytes.Buffer
	cfg, err := loadConfigFile(path, &diag)
	if err != nil {
		t.Fatalf("%v\n%s", err, diag.String())
	}
	logger := slog.New(slog.NewJSONHandler(io.MultiWriter(m.logs, peertest.LogWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Port 0 everywhere: serve reports the bound addresses, so no test
	// races another process for a port.
	bound := make(chan map[string]string, 1)
	go func() { done <- serve(ctx, cfg, logger, io.Discard, func(a map[string]string) { bound <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if logs := m.logs.String(); strings.Contains(logs, e2ePassword) {
			t.Errorf("the password appears in the log")
		}
	})
	select {
	case m.extra = <-bound:
	case err := <-done:
		done <- err
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("mailgate did not start")
	}
	m.sub, m.smtps, m.relay = m.extra["submission"], m.extra["submissions"], m.extra["relay"]
	return m
}

func upstreamBlock(addr string) string {
	return fmt.Sprintf(`upstream "sink" {
  address = %q
  tls     = "none"
}
`, addr)
}

func swaks(t *testing.T, m *mailgate, args ...string) (string, int) {
	t.Helper()
	base := []string{"--from", e2eUser, "--to", "bob@example.net", "--timeout", "20",
		"--header", "From: " + e2eUser, "--header", "Subject: e2e"}
	return peertest.Swaks(t, append(base, args...)...)
}

func TestE2EClients(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "curl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	m := startMailgate(t, upstreamBlock(sink.Addr()))
	n := 0
	delivered := func(t *testing.T, what, out string, code int) {
		t.Helper()
		if code != 0 {
			t.Fatalf("%s failed (exit %d):\n%s", what, code, out)
		}
		n++
		if got := sink.WaitCount(t, n, 10*time.Second); got != n {
			t.Fatalf("%s: sink has %d messages, want %d", what, got, n)
		}
	}
	t.Run("swaks_starttls_plain", func(t *testing.T) {
		out, code := swaks(t, m, "--server", m.sub, "--tls", "--auth", "PLAIN", "--auth-user", e2eUser, "--auth-password", e2ePassword)
		delivered(t, "swaks STARTTLS PLAIN", out, code)
	})
	t.Run("swaks_implicit_login", func(t *testing.T) {
		out, code := swaks(t, m, "--server", m.smtps, "--tlsc", "--auth", "LOGIN", "--auth-user", e2eUser, "--auth-password", e2ePassword)
		delivered(t, "swaks implicit TLS LOGIN", out, code)
	})
	t.Run("swaks_relay_listener", func(t *testing.T) {
		out, code := swaks(t, m, "--server", m.relay)
		delivered(t, "swaks relay", out, code)
	})
	msg := "From: " + e2eUser + "\r\nTo: bob@example.net\r\nSubject: curl\r\n\r\nsent by curl\r\n"
	t.Run("curl_smtp_starttls", func(t *testing.T) {
		out, code := peertest.RunTool(t, 30*time.Second, []byte(msg), "curl", "-sS", "--url", "smtp://"+m.sub,
			"--ssl-reqd", "--insecure", "--user", e2eUser+":"+e2ePassword,
			"--mail-from", e2eUser, "--mail-rcpt", "bob@example.net", "--upload-file", "-")
		delivered(t, "curl smtp://", out, code)
	})
	t.Run("curl_smtps", func(t *testing.T) {
		out, code := peertest.RunTool(t, 30*time.Second, []byte(msg), "curl", "-sS", "--url", "smtps://"+m.smtps,
			"--insecure", "--user", e2eUser+":"+e2ePassword,
			"--mail-from", e2eUser, "--mail-rcpt", "bob@example.net", "--upload-file", "-")
		delivered(t, "curl smtps://", out, code)
	})
	t.Run("python_smtplib", func(t *testing.T) {
		host, port, _ := net.SplitHostPort(m.sub)
		script := fmt.Sprintf(`
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(%q, %s, timeout=20)
s.starttls(context=ctx)
s.login(%q, %q)
refused = s.sendmail(%q, ["bob@example.net"], b"From: %s\r\nSubject: py\r\n\r\nfrom python\r\n")
s.quit()
sys.exit(1 if refused else 0)
`, host, port, e2eUser, e2ePassword, e2eUser, e2eUser)
		out, code := peertest.PythonSMTP(t, script)
		delivered(t, "python smtplib", out, code)
	})
	t.Run("wrong_password_nothing_delivered", func(t *testing.T) {
		out, code := swaks(t, m, "--server", m.sub, "--tls", "--auth", "PLAIN", "--auth-user", e2eUser, "--auth-password", "wrong")
		if code == 0 || !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("wrong password: exit %d\n%s", code, out)
		}
		if got := sink.Count(); got != n {
			t.Fatalf("sink has %d messages, want %d", got, n)
		}
	})
	t.Run("mail_before_auth_530", func(t *testing.T) {
		out, code := swaks(t, m, "--server", m.sub, "--tls")
		if code == 0 || !strings.Contains(out, "530 5.7.0") {
			t.Fatalf("MAIL before AUTH: exit %d\n%s", code, out)
		}
	})
	t.Run("bare_lf_smuggling_refused", func(t *testing.T) {
		// No SMTP client library sends a bare LF, so Python speaks raw
		// bytes: a forged "\n.\n" end of data followed by a second
		// transaction, then the real end.
		host, port, _ := net.SplitHostPort(m.relay)
		script := fmt.Sprintf(`
import socket, sys
s = socket.create_connection((%q, %s), timeout=20)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline()
        if not l:
            return b"EOF"
        lines.append(l)
        if l[3:4] != b"-":
            return b"".join(lines)
reply()
for c in [b"EHLO py.test", b"MAIL FROM:<app@example.com>", b"RCPT TO:<bob@example.net>", b"DATA"]:
    s.sendall(c + b"\r\n"); reply()
s.sendall(b"From: app@example.com\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n")
r = reply()
sys.stdout.write(r.decode())
sys.exit(0 if r.startswith(b"550 5.6.0") else 1)
`, host, port)
		out, code := peertest.PythonSMTP(t, script)
		if code != 0 {
			t.Fatalf("smuggling attempt not refused with 550 5.6.0:\n%s", out)
		}
		if got := sink.Count(); got != n {
			t.Fatalf("sink has %d messages, want %d", got, n)
		}
	})
}

func TestE2EUpstreamFaults(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks")
	cases := []struct {
		name      string
		opts      peertest.SinkOptions
		wantReply string // in swaks output
		wantSink  int
	}{
		{"rcpt_soft_reject_4xx", peertest.SinkOptions{SoftRejectCommands: []string{"RCPT"}}, "<** 450 4.3.0", 0},
		{"rcpt_hard_reject_5xx", peertest.SinkOptions{HardRejectCommands: []string{"RCPT"}}, "<** 500 5.3.0", 0},
		{"mail_421_becomes_451", peertest.SinkOptions{Reply421Commands: []string{"MAIL"}}, "<** 451 4.", 0},
		{"disconnect_at_data_4xx", peertest.SinkOptions{DisconnectCommands: []string{"DATA"}}, "<** 451 4.4.1", 0},
		{"data_hard_reject_passes", peertest.SinkOptions{HardRejectCommands: []string{"."}}, "<** 500 5.3.0", 1},
		{"disconnect_after_dot_4xx", peertest.SinkOptions{DisconnectCommands: []string{"."}}, "<** 451 4.4.1", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := peertest.StartSink(t, tc.opts)
			m := startMailgate(t, upstreamBlock(sink.Addr()))
			out, code := swaks(t, m, "--server", m.relay)
			if code == 0 || !strings.Contains(out, tc.wantReply) {
				t.Fatalf("exit %d, want a failure with %q:\n%s", code, tc.wantReply, out)
			}
			// With "." in the fault list the sink has the message although
			// the client was told it failed: the ambiguous case, answered
			// with 4xx (never 250).
			if got := sink.Count(); got != tc.wantSink {
				t.Errorf("sink has %d messages, want %d", got, tc.wantSink)
			}
		})
	}
	t.Run("upstream_down_451_4.4.1", func(t *testing.T) {
		m := startMailgate(t, upstreamBlock(fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))))
		out, code := swaks(t, m, "--server", m.relay)
		if code == 0 || !strings.Contains(out, "451 4.4.1") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
}

// TestE2EPostfixDKIM relays through mailgate into a real Postfix and on
// into smtp-sink; dkimpy verifies what arrives.
func TestE2EPostfixDKIM(t *testing.T) {
	peertest.Require(t, "smtp-sink", "postfix", "swaks", "python3-dkim")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Relay: sink.Addr()})
	m := startMailgate(t, upstreamBlock(pf.Addr())+`
dkim {
  key "example.com" "rsa1" { file = "rsa1.pem" }
  key "example.com" "ed1"  { file = "ed1.pem" }
}
`)
	longSubject := "Subject: " + strings.Repeat("folded words ", 20)
	cases := []struct {
		name string
		data string
	}{
		{"plain", "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: dkim\r\n\r\nHello.\r\n"},
		{"8bit_body", "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, ½ € ✓\r\n"},
		{"long_folded_header", "From: alice@example.com\r\nTo: bob@example.net\r\n" + longSubject[:70] + "\r\n " + longSubject[70:150] + "\r\n\t" + longSubject[150:] + "\r\n\r\nbody\r\n"},
		{"no_body", "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: empty\r\n\r\n"},
		{"bcc_and_return_path", "Return-Path: <x@example.com>\r\nFrom: alice@example.com\r\nTo: bob@example.net\r\nBcc: hidden@example.org\r\nSubject: bcc\r\n\r\nbody\r\n"},
		{"trailing_empty_lines", "From: alice@example.com\r\nSubject: trailing\r\n\r\nbody\r\n\r\n\r\n"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code := peertest.Swaks(t, "--server", m.relay, "--from", e2eUser, "--to", "bob@example.net",
				"--data", tc.data)
			if code != 0 {
				t.Fatalf("swaks exit %d:\n%s", code, out)
			}
			sink.WaitCount(t, i+1, 30*time.Second)
			msgs := sink.Messages()
			if len(msgs) != i+1 {
				t.Fatalf("sink has %d messages, want %d", len(msgs), i+1)
			}
			got := msgs[len(msgs)-1].Data
			if bytes.Count(got, []byte("DKIM-Signature:")) != 2 {
				t.Fatalf("want an RSA and an Ed25519 signature:\n%s", got)
			}
			if bytes.Contains(got, []byte("hidden@example.org")) {
				t.Fatalf("Bcc relayed:\n%s", got)
			}
			ok, report := peertest.DKIMVerify(t, got, m.dkim)
			if !ok {
				t.Fatalf("dkimpy does not verify what Postfix delivered:\n%s\n%s", report, got)
			}
		})
	}
	t.Run("several_from_addresses_refused", func(t *testing.T) {
		out, code := peertest.Swaks(t, "--server", m.relay, "--from", e2eUser, "--to", "bob@example.net",
			"--data", "From: alice@example.com, mallory@example.com\r\nSubject: two\r\n\r\nx\r\n")
		if code == 0 || !strings.Contains(out, "550 5.7.1") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	pf.WaitQueueEmpty(t, 30*time.Second)
	if got := sink.Count(); got != len(cases) {
		t.Errorf("sink has %d messages, want %d", got, len(cases))
	}
}

// TestE2EPolicyExamples runs the example policies through mailgate with
// a real client.
func TestE2EPolicyExamples(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	abs, err := filepath.Abs("../../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	m := startMailgate(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
policy {
  rego {
    name = "org"
    path = %q
  }
  rules {
    name = "local"
    path = %q
  }
}
`, abs, filepath.Join(abs, "rules.hcl")))
	login := []string{"--server", m.sub, "--tls", "--auth", "PLAIN", "--auth-user", e2eUser, "--auth-password", e2ePassword}
	run := func(t *testing.T, args ...string) (string, int) {
		t.Helper()
		return peertest.Swaks(t, append(append([]string{"--timeout", "20"}, login...), args...)...)
	}
	t.Run("own_address_delivered", func(t *testing.T) {
		out, code := run(t, "--from", e2eUser, "--to", "bob@example.net", "--header", "From: "+e2eUser)
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if got := sink.WaitCount(t, 1, 10*time.Second); got != 1 {
			t.Fatalf("sink has %d", got)
		}
	})
	t.Run("spoofed_envelope_sender_550", func(t *testing.T) {
		out, code := run(t, "--from", "ceo@other.example", "--to", "bob@example.net")
		if code == 0 || !strings.Contains(out, "550 5.7.1") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("spoofed_from_header_550", func(t *testing.T) {
		out, code := run(t, "--from", e2eUser, "--to", "bob@example.net", "--header", "From: ceo@other.example")
		if code == 0 || !strings.Contains(out, "550 5.7.1") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("incident_domain_deferred", func(t *testing.T) {
		out, code := run(t, "--from", e2eUser, "--to", "someone@broken.example")
		if code == 0 || !strings.Contains(out, "451 4.7.1") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("delegated_sender_delivered", func(t *testing.T) {
		out, code := run(t, "--from", "sales@example.com", "--to", "bob@example.net", "--header", "From: sales@example.com")
		if code != 0 {
			t.Fatalf("delegation from data.json refused: exit %d:\n%s", code, out)
		}
		if got := sink.WaitCount(t, 2, 10*time.Second); got != 2 {
			t.Fatalf("sink has %d", got)
		}
	})
	t.Run("external_recipient_refused_for_bob", func(t *testing.T) {
		out, code := peertest.Swaks(t, "--timeout", "20", "--server", m.sub, "--tls", "--auth", "PLAIN",
			"--auth-user", "bob@example.com", "--auth-password", e2ePassword,
			"--from", "bob@example.com", "--to", "someone@example.net")
		if code == 0 || !strings.Contains(out, "550 5.7.1") || !strings.Contains(out, "outside the organization") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("recipients_capped_per_sender", func(t *testing.T) {
		// carol has no entry in max_recipients: default_max_recipients = 20. Python's
		// smtplib reports each refused recipient.
		host, port, _ := net.SplitHostPort(m.sub)
		script := fmt.Sprintf(`
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(%q, %s, timeout=20)
s.starttls(context=ctx)
s.login("carol@example.com", %q)
rcpts = ["r%%d@example.org" %% i for i in range(22)]
refused = s.sendmail("carol@example.com", rcpts, b"From: carol@example.com\r\nSubject: many\r\n\r\nhi\r\n")
s.quit()
codes = sorted(set(v[0] for v in refused.values()))
print(len(refused), codes)
sys.exit(0 if len(refused) == 2 and codes == [452] else 1)
`, host, port, e2ePassword)
		out, code := peertest.PythonSMTP(t, script)
		if code != 0 {
			t.Fatalf("want 20 accepted and 2 refused with 452:\n%s", out)
		}
		if got := sink.WaitCount(t, 3, 10*time.Second); got != 3 {
			t.Fatalf("sink has %d", got)
		}
		msgs := sink.Messages()
		if n := len(msgs[len(msgs)-1].Recipients); n != 20 {
			t.Fatalf("upstream got %d recipients, want 20", n)
		}
	})
	t.Run("bulk_without_list_unsubscribe_warns", func(t *testing.T) {
		out, code := peertest.Swaks(t, "--timeout", "20", "--server", m.sub, "--tls", "--auth", "PLAIN",
			"--auth-user", "news@example.com", "--auth-password", e2ePassword,
			"--from", "news@example.com", "--to", "reader@example.org", "--header", "From: news@example.com")
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if got := sink.WaitCount(t, 4, 10*time.Second); got != 4 {
			t.Fatalf("sink has %d", got)
		}
		if !strings.Contains(m.logs.String(), "bulk-list-unsubscribe") {
			t.Fatal("no warning logged for bulk mail without List-Unsubscribe")
		}
	})
	if got := sink.Count(); got != 4 {
		t.Errorf("sink has %d messages, want 4", got)
	}
	if logs := m.logs.String(); !strings.Contains(logs, `envelope-sender-alignment`) {
		t.Errorf("the transaction log does not name the rule that refused")
	}
}

// TestE2ESharedAuthLimitsInRedis: two instances share AUTH failure
// counters through a real redis-server: failures against one instance
// lock the user out on the other.
func TestE2ESharedAuthLimitsInRedis(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "redis-server")
	rs := peertest.StartRedis(t)
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	shared := upstreamBlock(sink.Addr()) + fmt.Sprintf(`
redis {
  address    = %q
  key_prefix = "e2e-%d:"
}
`, rs.Addr(), time.Now().UnixNano())
	a := startMailgateAuth(t, shared, "user_failures = 2")
	b := startMailgateAuth(t, shared, "user_failures = 2")
	login := func(m *mailgate, pass string) (string, int) {
		return peertest.Swaks(t, "--timeout", "20", "--server", m.sub, "--tls", "--auth", "PLAIN",
			"--auth-user", e2eUser, "--auth-password", pass, "--from", e2eUser, "--to", "bob@example.net")
	}
	if out, code := login(b, e2ePassword); code != 0 {
		t.Fatalf("instance b before any failure: exit %d\n%s", code, out)
	}
	for i := 0; i < 2; i++ {
		if out, _ := login(a, "wrong"); !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("wrong password on a: %s", out)
		}
	}
	out, code := login(b, e2ePassword)
	if code == 0 || !strings.Contains(out, "454 4.7.0") {
		t.Fatalf("instance b still lets the user in after 2 failures on a: exit %d\n%s", code, out)
	}
	if got := sink.Count(); got != 1 {
		t.Fatalf("sink has %d messages, want 1", got)
	}
}

// TestE2EMetrics scrapes /metrics with curl after real traffic.
func TestE2EMetrics(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "curl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	m := startMailgate(t, upstreamBlock(sink.Addr())+"metrics {\n  address = \"127.0.0.1:0\"\n  shutdown_delay = \"0s\"\n}\n")
	maddr := m.extra["metrics"]
	if out, code := swaks(t, m, "--server", m.relay); code != 0 {
		t.Fatalf("swaks: exit %d\n%s", code, out)
	}
	if out, _ := swaks(t, m, "--server", m.sub, "--tls", "--auth", "PLAIN", "--auth-user", e2eUser, "--auth-password", "wrong"); !strings.Contains(out, "535") {
		t.Fatalf("wrong password: %s", out)
	}
	out, code := peertest.Curl(t, "-sS", "http://"+maddr+"/metrics")
	if code != 0 {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		`mailgate_transactions_total{listener="relay",outcome="relayed"} 1`,
		`mailgate_auth_total{mechanism="PLAIN",result="failure"} 1`,
		`mailgate_connections_total{listener="relay",result="accepted"}`, // readiness probes count too
		`mailgate_relayed_message_bytes_count 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestE2EReloadOnSIGHUP: SIGHUP makes a running mailgate pick up a new
// users file and a new policy; a broken DKIM key file keeps the old key.
func TestE2EReloadOnSIGHUP(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "python3-dkim")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	rulesDir := t.TempDir()
	rules := filepath.Join(rulesDir, "rules.hcl")
	writeFile(t, rules, `rule "nothing" {
  stage  = "rcpt"
  when   = false
  action = "reject"
}
`)
	m := startMailgate(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
dkim {
  key "example.com" "rsa1" { file = "rsa1.pem" }
}
policy {
  rules {
    name = "local"
    path = %q
  }
  watch_interval = "1h"
}
`, rules))
	hup := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(m.logs.String(), "SIGHUP: reload finished") {
			if time.Now().After(deadline) {
				t.Fatal("no reload after SIGHUP")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A new user, a policy that blocks a domain, a broken DKIM key.
	hash, err := auth.Hash("dave's password")
	if err != nil {
		t.Fatal(err)
	}
	users, _ := os.ReadFile(filepath.Join(m.dir, "users"))
	writeFile(t, filepath.Join(m.dir, "users"), string(users)+"dave@example.com:"+hash+"\n")
	writeFile(t, rules, `rule "block-blocked" {
  stage   = "rcpt"
  when    = rcpt.domain == "blocked.example"
  action  = "reject"
  message = "blocked after reload"
}
`)
	writeFile(t, filepath.Join(m.dir, "rsa1.pem"), "not a key\n")
	hup()

	out, code := peertest.Swaks(t, "--timeout", "20", "--server", m.sub, "--tls", "--auth", "PLAIN",
		"--auth-user", "dave@example.com", "--auth-password", "dave's password",
		"--from", "dave@example.com", "--to", "bob@example.net", "--header", "From: dave@example.com")
	if code != 0 {
		t.Fatalf("new user after SIGHUP: exit %d\n%s", code, out)
	}
	out, code = peertest.Swaks(t, "--timeout", "20", "--server", m.relay, "--from", e2eUser, "--to", "x@blocked.example")
	if code == 0 || !strings.Contains(out, "blocked after reload") {
		t.Fatalf("policy not reloaded: exit %d\n%s", code, out)
	}
	// The broken key was refused: mail is still signed with the old one.
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink has %d messages, want 1", len(msgs))
	}
	if ok, report := peertest.DKIMVerify(t, msgs[0].Data, map[string]string{
		"rsa1._domainkey.example.com": m.dkim["rsa1._domainkey.example.com"],
	}); !ok {
		t.Fatalf("not signed with the old key after a broken reload:\n%s", report)
	}
	if !strings.Contains(m.logs.String(), "reload failed, keeping the previous state") {
		t.Error("the broken key's reload failure was not logged")
	}
}
