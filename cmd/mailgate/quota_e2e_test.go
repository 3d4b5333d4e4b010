package main

// End-to-end tests of quotas: real clients (Python's smtplib) through the
// whole mailgate into smtp-sink, counters in memory or in a real
// redis-server shared by two mailgate processes.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// smtplibPrelude opens an smtplib session s: STARTTLS and AUTH on the
// submission listener when user is set, plaintext on the relay otherwise.
func smtplibPrelude(addr, user, password string) string {
	host, port, _ := net.SplitHostPort(addr)
	login := ""
	if user != "" {
		login = fmt.Sprintf("s.starttls(context=ctx)\ns.login(%q, %q)\n", user, password)
	}
	return fmt.Sprintf(`
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def msg(frm):
    return ("From: %%s\r\nSubject: quota\r\n\r\nbody\r\n" %% frm).encode()
s = smtplib.SMTP(%q, %s, timeout=20)
%s`, host, port, login)
}

func TestE2EQuotaPerLogin(t *testing.T) {
	peertest.Require(t, "smtp-sink", "curl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	m := startMailgate(t, upstreamBlock(sink.Addr())+`
metrics {
  address        = "127.0.0.1:0"
  shutdown_delay = "0s"
}
quota "per-login" {
  key      = auth.user
  when     = auth != null
  messages = ["200/1h"]
}
`)
	// 200 messages in one session are relayed; the 201st gets 451 4.7.1
	// at MAIL with the quota's name and when to retry.
	script := smtplibPrelude(m.sub, e2eUser, e2ePassword) + fmt.Sprintf(`
for i in range(200):
    s.sendmail(%[1]q, ["bob@example.net"], msg(%[1]q))
try:
    s.sendmail(%[1]q, ["bob@example.net"], msg(%[1]q))
    print("201st accepted")
except smtplib.SMTPSenderRefused as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
s.quit()
`, e2eUser)
	out, code := peertest.PythonSMTP(t, script)
	if code != 0 {
		t.Fatalf("smtplib: exit %d\n%s", code, out)
	}
	if !regexp.MustCompile(`(?m)refused 451 4\.7\.1 quota per-login exceeded \(200/1h\), retry in (1h|1h1m)$`).MatchString(out) {
		t.Fatalf("201st message: want 451 4.7.1 naming the quota, got:\n%s", out)
	}
	if got := sink.WaitCount(t, 200, 20*time.Second); got != 200 {
		t.Fatalf("sink has %d messages, want 200", got)
	}
	logs := m.logs.String()
	if n := strings.Count(logs, `"msg":"quota exceeded"`); n != 1 {
		t.Errorf("%d 'quota exceeded' warn lines, want 1 (the first time the key trips)", n)
	}
	if !strings.Contains(logs, `"rules":"mail/quota/per-login"`) {
		t.Errorf("the transaction line does not name the quota that refused")
	}
	metrics, _ := peertest.Curl(t, "-sS", "http://"+m.extra["metrics"]+"/metrics")
	if !strings.Contains(metrics, `mailgate_quota_refusals_total{quota="per-login"} 1`) {
		t.Errorf("/metrics lacks the quota refusal:\n%s", grepLines(metrics, "quota"))
	}

	// quota show / reset against the running instance (its counters are
	// in memory: the CLI asks its metrics listener).
	cli := filepath.Join(m.dir, "cli.hcl")
	cfgText, err := os.ReadFile(filepath.Join(m.dir, "mailgate.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cli, strings.Replace(string(cfgText), "metrics {\n  address        = \"127.0.0.1:0\"",
		"metrics {\n  address        = \""+m.extra["metrics"]+"\"", 1))
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"quota", "show", "-config", cli}, nil, &stdout, &stderr); rc != 0 {
		t.Fatalf("quota show: exit %d\n%s", rc, stderr.String())
	}
	if !regexp.MustCompile(`(?m)^per-login alice@example\.com messages 200/1h used=200 remaining=0 retry_in=\S+$`).MatchString(stdout.String()) {
		t.Fatalf("quota show:\n%s", stdout.String())
	}
	stdout.Reset()
	if rc := run([]string{"quota", "reset", "-config", cli, "-quota", "per-login", "-key", e2eUser}, nil, &stdout, &stderr); rc != 0 {
		t.Fatalf("quota reset: exit %d\n%s", rc, stderr.String())
	}
	stdout.Reset()
	if rc := run([]string{"quota", "show", "-config", cli, "-quota", "per-login", "-key", e2eUser}, nil, &stdout, &stderr); rc != 0 ||
		strings.TrimSpace(stdout.String()) != "per-login alice@example.com messages 200/1h used=0 remaining=200" {
		t.Fatalf("quota show after reset: exit %d\n%s%s", rc, stdout.String(), stderr.String())
	}
	out, code = peertest.PythonSMTP(t, smtplibPrelude(m.sub, e2eUser, e2ePassword)+fmt.Sprintf(`
s.sendmail(%[1]q, ["bob@example.net"], msg(%[1]q))
s.quit()
`, e2eUser))
	if code != 0 {
		t.Fatalf("after reset: exit %d\n%s", code, out)
	}
	if rc := run([]string{"quota", "show", "-config", cli, "-quota", "nope"}, nil, &stdout, &stderr); rc != 1 ||
		!strings.Contains(stderr.String(), `no quota "nope"`) {
		t.Fatalf("unknown quota: exit %d\n%s", rc, stderr.String())
	}
}

// TestE2EQuotaOnlyDeliveredMailCounts: upstream 5xx, an upstream drop and
// RSET release the units; a per-destination quota refuses only its
// recipient, and other recipients go on.
func TestE2EQuotaOnlyDeliveredMailCounts(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	good := peertest.StartSink(t, peertest.SinkOptions{})
	bad := peertest.StartSink(t, peertest.SinkOptions{HardRejectCommands: []string{"."}})
	drop := peertest.StartSink(t, peertest.SinkOptions{DisconnectCommands: []string{"DATA"}})
	route := filepath.Join(t.TempDir(), "route.hcl")
	writeFile(t, route, `
rule "to-5xx" {
  stage    = "mail"
  when     = envelope.from == "fail@example.com"
  action   = "accept"
  upstream = "bad"
}
rule "to-drop" {
  stage    = "mail"
  when     = envelope.from == "drop@example.com"
  action   = "accept"
  upstream = "drop"
}
`)
	m := startMailgate(t, fmt.Sprintf(`
upstream "good" {
  address = %q
  tls     = "none"
}
upstream "bad" {
  address = %q
  tls     = "none"
}
upstream "drop" {
  address = %q
  tls     = "none"
}
policy {
  rules {
    name = "route"
    path = %q
  }
}
quota "per-login" {
  key      = auth.user
  when     = auth != null
  messages = ["2/1h"]
}
quota "per-destination" {
  key        = rcpt.domain
  recipients = ["2/1h"]
}
`, good.Addr(), bad.Addr(), drop.Addr(), route))
	script := smtplibPrelude(m.sub, e2eUser, e2ePassword) + fmt.Sprintf(`
def expect_fail(frm):
    try:
        s.sendmail(frm, ["x@elsewhere.example"], msg(frm))
        print("delivered", frm); sys.exit(1)
    except smtplib.SMTPDataError as e:
        print("failed", frm, e.smtp_code)
for i in range(3):
    expect_fail("fail@example.com")
for i in range(3):
    expect_fail("drop@example.com")
for i in range(3):
    s.mail(%[1]q); s.rcpt("x@elsewhere.example"); s.rset()
for i in range(3):
    # A client that hangs up in the middle of DATA.
    c = smtplib.SMTP(s._host, s.sock.getpeername()[1], timeout=20)
    c.starttls(context=ctx); c.login(%[1]q, %[2]q)
    c.mail(%[1]q); c.rcpt("x@elsewhere.example")
    c.putcmd("DATA"); print("hangup DATA", c.getreply()[0])
    c.send(b"From: a@example.com\r\n\r\nhalf a bo")
    c.close()  # closes the socket and smtplib's file on it
# mailgate releases a hung-up transaction when it reads the EOF, which
# races with the next command here: wait for it (bounded), never longer.
import time
for i in range(2):
    for attempt in range(50):
        try:
            s.sendmail(%[1]q, ["x@elsewhere.example"], msg(%[1]q))
            break
        except smtplib.SMTPSenderRefused:
            time.sleep(0.1)
    else:
        print("hung-up transactions still hold the quota after 5s"); sys.exit(1)
try:
    s.sendmail(%[1]q, ["x@elsewhere.example"], msg(%[1]q))
    print("third accepted")
except smtplib.SMTPSenderRefused as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
s.quit()
`, e2eUser, e2ePassword)
	out, code := peertest.PythonSMTP(t, script)
	if code != 0 {
		t.Fatalf("smtplib: exit %d\n%s", code, out)
	}
	if strings.Count(out, "hangup DATA 354") != 3 {
		t.Fatalf("hang-ups mid-DATA not exercised:\n%s", out)
	}
	if strings.Count(out, "failed fail@example.com 5") != 3 || strings.Count(out, "failed drop@example.com 451") != 3 {
		t.Fatalf("upstream faults not seen as expected:\n%s", out)
	}
	if !strings.Contains(out, "refused 451 4.7.1 quota per-login exceeded (2/1h)") {
		t.Fatalf("failed, dropped and reset transactions consumed quota, or the third was accepted:\n%s", out)
	}
	if got := good.WaitCount(t, 2, 10*time.Second); got != 2 {
		t.Fatalf("good sink has %d messages, want 2", got)
	}

	// Per destination: the third slow.example recipient is refused alone.
	script = smtplibPrelude(m.sub, "bob@example.com", e2ePassword) + `
refused = s.sendmail("bob@example.com", ["a@slow.example", "b@slow.example", "c@slow.example", "d@fast.example"], msg("bob@example.com"))
print("refused", refused)
try:
    s.sendmail("bob@example.com", ["e@slow.example"], msg("bob@example.com"))
    print("e accepted")
except smtplib.SMTPRecipientsRefused as e:
    print("all refused", e.recipients)
s.quit()
`
	out, code = peertest.PythonSMTP(t, script)
	if code != 0 {
		t.Fatalf("smtplib: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "refused {'c@slow.example': (451, b'4.7.1 quota per-destination exceeded (recipients 2/1h), retry in") ||
		!strings.Contains(out, "all refused {'e@slow.example': (451") {
		t.Fatalf("per-destination quota:\n%s", out)
	}
	if got := good.WaitCount(t, 3, 10*time.Second); got != 3 {
		t.Fatalf("good sink has %d messages, want 3", got)
	}
	msgs := good.Messages()
	if rcpts := msgs[len(msgs)-1].Recipients; len(rcpts) != 3 {
		t.Fatalf("last message went to %v, want a@, b@slow.example and d@fast.example", rcpts)
	}
}

// mailgateProcess runs this package's main as a separate process (the test
// binary re-executed, see TestMain) on cfgPath and returns the address of
// its listener named listener.
func mailgateProcess(t *testing.T, cfgPath, listener string) string {
	t.Helper()
	addr, _ := mailgateProcessCmd(t, cfgPath, listener)
	return addr
}

// mailgateProcessCmd is mailgateProcess that also returns the process, to
// signal it.
func mailgateProcessCmd(t *testing.T, cfgPath, listener string) (string, *os.Process) {
	t.Helper()
	mp := startProcess(t, cfgPath)
	addr := mp.waitLog(t, `msg=listening listener=`+regexp.QuoteMeta(listener)+` address=(\S+)`)
	go func() { // keep the pipe drained; mp.all keeps every line
		for range mp.logs {
		}
	}()
	return addr, mp.cmd.Process
}

// TestE2EQuotaExactAcrossInstances: two mailgate processes share one
// redis-server; 20 concurrent senders race for a quota of 50: exactly 50
// are delivered, the other 50 get 451 4.7.1. Repeated with fresh keys.
func TestE2EQuotaExactAcrossInstances(t *testing.T) {
	peertest.Require(t, "smtp-sink", "redis-server")
	rs := peertest.StartRedis(t)
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	cfg := filepath.Join(t.TempDir(), "mailgate.hcl")
	writeFile(t, cfg, relayConfig(sink.Addr(), fmt.Sprintf(`redis {
  address = %q
}
quota "per-sender" {
  key      = envelope.from
  messages = ["50/1h"]
}
`, rs.Addr())))
	a := mailgateProcess(t, cfg, "relay")
	b := mailgateProcess(t, cfg, "relay")
	delivered := 0
	for round := 1; round <= 3; round++ {
		from := fmt.Sprintf("round%d@example.com", round)
		ha, pa, _ := net.SplitHostPort(a)
		hb, pb, _ := net.SplitHostPort(b)
		script := fmt.Sprintf(`
import smtplib, sys, threading
from collections import Counter
results = Counter()
lock = threading.Lock()
def sender(i):
    host, port = [(%q, %s), (%q, %s)][i %% 2]
    s = smtplib.SMTP(host, port, timeout=30)
    for j in range(5):
        try:
            s.sendmail(%[5]q, ["x@example.net"], b"From: %[5]s\r\nSubject: race\r\n\r\nbody\r\n")
            r = "delivered"
        except smtplib.SMTPSenderRefused as e:
            r = "%%d %%s" %% (e.smtp_code, e.smtp_error.decode().split(",")[0])
        with lock:
            results[r] += 1
    s.quit()
ts = [threading.Thread(target=sender, args=(i,)) for i in range(20)]
[t.start() for t in ts]
[t.join() for t in ts]
for k, v in sorted(results.items()):
    print("%%s: %%d" %% (k, v))
`, ha, pa, hb, pb, from)
		out, code := peertest.PythonSMTP(t, script)
		if code != 0 {
			t.Fatalf("round %d: exit %d\n%s", round, code, out)
		}
		want := "451 4.7.1 quota per-sender exceeded (50/1h): 50\ndelivered: 50\n"
		if out != want {
			t.Fatalf("round %d: got\n%s\nwant\n%s", round, out, want)
		}
		delivered += 50
		if got := sink.WaitCount(t, delivered, 20*time.Second); got != delivered {
			t.Fatalf("round %d: sink has %d messages, want %d", round, got, delivered)
		}
	}
	// quota show and reset read Redis directly: no instance is asked.
	var stdout, stderr bytes.Buffer
	if rc := run([]string{"quota", "show", "-config", cfg}, nil, &stdout, &stderr); rc != 0 {
		t.Fatalf("quota show: exit %d\n%s", rc, stderr.String())
	}
	for round := 1; round <= 3; round++ {
		re := regexp.MustCompile(fmt.Sprintf(`(?m)^per-sender round%d@example\.com messages 50/1h used=50 remaining=0 retry_in=\S+$`, round))
		if !re.MatchString(stdout.String()) {
			t.Fatalf("quota show lacks round %d:\n%s", round, stdout.String())
		}
	}
	stdout.Reset()
	if rc := run([]string{"quota", "reset", "-config", cfg, "-quota", "per-sender", "-key", "round1@example.com"}, nil, &stdout, &stderr); rc != 0 {
		t.Fatalf("quota reset: exit %d\n%s", rc, stderr.String())
	}
	stdout.Reset()
	if rc := run([]string{"quota", "show", "-config", cfg, "-quota", "per-sender", "-key", "round1@example.com"}, nil, &stdout, &stderr); rc != 0 ||
		strings.TrimSpace(stdout.String()) != "per-sender round1@example.com messages 50/1h used=0 remaining=50" {
		t.Fatalf("after reset: exit %d\n%s%s", rc, stdout.String(), stderr.String())
	}
}

func grepLines(s, sub string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestE2EQuotaRedisDown: Redis stops mid-run. A quota with on_error =
// "defer" answers 451 4.7.1 and nothing is relayed; one with "accept"
// lets mail through uncounted; both work again once Redis is back.
func TestE2EQuotaRedisDown(t *testing.T) {
	peertest.Require(t, "smtp-sink", "redis-server")
	rs := peertest.StartRedis(t)
	for _, onError := range []string{"defer", "accept"} {
		t.Run(onError, func(t *testing.T) {
			sink := peertest.StartSink(t, peertest.SinkOptions{})
			m := startMailgate(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
redis {
  address    = %q
  key_prefix = "down-%s:"
}
quota "per-sender" {
  key      = envelope.from
  messages = ["100/1h"]
  on_error = %q
}
`, rs.Addr(), onError, onError))
			sendOne := func() string {
				out, _ := peertest.PythonSMTP(t, smtplibPrelude(m.relay, "", "")+`
try:
    s.sendmail("app@example.com", ["x@example.net"], msg("app@example.com"))
    print("delivered")
except smtplib.SMTPSenderRefused as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
`)
				return strings.TrimSpace(out)
			}
			if got := sendOne(); got != "delivered" {
				t.Fatalf("with Redis up: %s", got)
			}
			rs.Stop()
			got := sendOne()
			switch onError {
			case "defer":
				if got != "451 4.7.1 quota per-sender temporarily unavailable, try again later" {
					t.Fatalf("Redis down, on_error defer: %s", got)
				}
				if n := sink.Count(); n != 1 {
					t.Fatalf("sink has %d messages, want 1", n)
				}
			case "accept":
				if got != "delivered" {
					t.Fatalf("Redis down, on_error accept: %s", got)
				}
				sink.WaitCount(t, 2, 10*time.Second)
			}
			rs.Restart(t)
			if got := sendOne(); got != "delivered" {
				t.Fatalf("Redis back: %s", got)
			}
		})
	}
}

// TestE2EQuotaReloadOnSIGHUP: a mailgate process picks up changed quota
// blocks on SIGHUP and keeps the counted usage.
func TestE2EQuotaReloadOnSIGHUP(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	cfg := filepath.Join(t.TempDir(), "mailgate.hcl")
	conf := func(limit string) string {
		return relayConfig(sink.Addr(), fmt.Sprintf(`quota "per-sender" {
  key      = envelope.from
  messages = [%q]
}
`, limit))
	}
	writeFile(t, cfg, conf("1/1h"))
	addr, proc := mailgateProcessCmd(t, cfg, "relay")
	send := func() string {
		out, _ := peertest.PythonSMTP(t, smtplibPrelude(addr, "", "")+`
try:
    s.sendmail("app@example.com", ["x@example.net"], msg("app@example.com"))
    print("delivered")
except smtplib.SMTPSenderRefused as e:
    print(e.smtp_code)
s.quit()
`)
		return strings.TrimSpace(out)
	}
	if got := send(); got != "delivered" {
		t.Fatalf("first: %s", got)
	}
	if got := send(); got != "451" {
		t.Fatalf("second under 1/1h: %s", got)
	}
	writeFile(t, cfg, conf("2/1h"))
	if err := proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	got := ""
	for time.Now().Before(deadline) {
		if got = send(); got == "delivered" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != "delivered" {
		t.Fatalf("after SIGHUP to 2/1h: %s", got)
	}
	if got := send(); got != "451" {
		t.Fatalf("third under 2/1h (usage kept across the reload): %s", got)
	}
	if n := sink.Count(); n != 2 {
		t.Fatalf("sink has %d messages, want 2", n)
	}
}
