package main

// End-to-end tests of the decision log, policy replay and shadow policies:
// a real mailgate process with a decision log, real clients (swaks,
// Python's smtplib) into smtp-sink, then "mailgate policy replay" run as a
// process of its own on the log that traffic produced.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// blockRules is policy A's rules file: recipients at blocked.example are
// refused. Policy B (blockRulesB) changes that one rule.
const blockRules = `rule "block" {
  stage   = "rcpt"
  when    = contains(["blocked.example"], rcpt.domain)
  action  = "reject"
  message = "recipient domain blocked"
}
rule "tag" {
  stage       = "data"
  when        = true
  action      = "accept"
  add_headers = { "X-Policy" = "a" }
}
`

var blockRulesB = strings.Replace(blockRules, `["blocked.example"]`, `["blocked.example", "closed.example"]`, 1)

// policyConfig is a mailgate configuration whose policy block runs the
// rules file rules, writing the decision log log, plus extra inside the
// policy block.
func policyConfig(sinkAddr, rules, log, extra string) string {
	return relayConfig(sinkAddr, fmt.Sprintf(`
policy {
  rules {
    name = "local"
    path = %q
  }
  decision_log = %q
%s}
`, rules, log, extra))
}

// runMailgate runs "mailgate ARGS" as a process and returns its stdout,
// stderr and exit status.
func runMailgate(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAILGATE_TEST_RUN_MAIN=1", "MAILGATE_TEST_ARGS="+strings.Join(args, " "))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatal(err)
	return "", "", -1
}

// countLines counts the lines of the files.
func countLines(t *testing.T, paths ...string) int {
	t.Helper()
	n := 0
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			n++
		}
		f.Close()
		if sc.Err() != nil {
			t.Fatal(sc.Err())
		}
	}
	return n
}

// TestE2EPolicyReplay: traffic through a mailgate running policy A writes
// the decision log (SIGTERM flushes it); replaying it with policy B, which
// changes one rule, reports exactly the two recipients that rule now
// refuses and exits 1; replaying with A exits 0; a garbage line and a
// truncated last line are counted, not fatal; a .gz copy and -format json
// work.
func TestE2EPolicyReplay(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	dir := t.TempDir()
	log := filepath.Join(dir, "decisions.jsonl")
	writeFile(t, filepath.Join(dir, "a.hcl"), blockRules)
	writeFile(t, filepath.Join(dir, "b.hcl"), blockRulesB)
	cfgA := filepath.Join(dir, "a-mailgate.hcl")
	cfgB := filepath.Join(dir, "b-mailgate.hcl")
	writeFile(t, cfgA, policyConfig(sink.Addr(), filepath.Join(dir, "a.hcl"), log, ""))
	writeFile(t, cfgB, policyConfig(sink.Addr(), filepath.Join(dir, "b.hcl"), log, ""))
	mp := startProcess(t, cfgA)
	addr := mp.waitLog(t, `msg=listening listener=relay address=(\S+)`)

	for _, to := range []string{"a@example.net", "x@closed.example"} {
		if out, code := peertest.Swaks(t, "--server", addr, "--from", "app@example.com", "--to", to); code != 0 {
			t.Fatalf("swaks to %s: exit %d\n%s", to, code, out)
		}
	}
	host, port, _ := net.SplitHostPort(addr)
	out, code := peertest.PythonSMTP(t, fmt.Sprintf(`
import smtplib
s = smtplib.SMTP(%q, %s, timeout=20)
msg = b"From: app2@example.com\r\nSubject: replay\r\n\r\nbody\r\n"
s.sendmail("app2@example.com", ["b@example.net", "y@closed.example"], msg)
try:
    s.sendmail("app2@example.com", ["z@blocked.example"], msg)
    raise SystemExit("blocked recipient accepted")
except smtplib.SMTPRecipientsRefused as e:
    print("refused", e.recipients)
s.quit()
`, host, port))
	if code != 0 || !strings.Contains(out, "550") {
		t.Fatalf("smtplib: exit %d\n%s", code, out)
	}
	if got := sink.WaitCount(t, 3, 10*time.Second); got != 3 {
		t.Fatalf("sink has %d messages, want 3", got)
	}
	// SIGTERM: the process exits cleanly and every decision is in the log
	// (3 + 3 + 4 + 2 stages: mail, rcpt per recipient, data).
	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mp.waitExit(t)
	if n := countLines(t, log); n != 12 {
		t.Fatalf("decision log has %d lines after SIGTERM, want 12", n)
	}

	t.Run("policy B: the changed decisions, exit 1", func(t *testing.T) {
		stdout, stderr, code := runMailgate(t, "policy", "replay", "-config", cfgB, "-log", log)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, stdout, stderr)
		}
		for _, want := range []string{
			"replayed 12 decisions from 1 file(s)",
			"changed: 2\n",
			"accept → reject (rules:local/block): 2 decisions, 2 senders, e.g. rcpt app@example.com → x@closed.example (session ",
			"; rcpt app2@example.com → y@closed.example (session ",
			"unchanged: mail 4, rcpt 3, data 3\n",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, stdout)
			}
		}
		if strings.Count(stdout, "→ reject") != 1 || strings.Contains(stdout, "skipped") {
			t.Errorf("more than the one change reported:\n%s", stdout)
		}
		if stderr != "" {
			t.Errorf("stderr is not a terminal, yet replay wrote %q", stderr)
		}
	})
	t.Run("policy A: nothing changed, exit 0", func(t *testing.T) {
		stdout, stderr, code := runMailgate(t, "policy", "replay", "-config", cfgA, "-log", log)
		if code != 0 || !strings.Contains(stdout, "changed: none") || !strings.Contains(stdout, "unchanged: mail 4, rcpt 5, data 3") {
			t.Fatalf("exit %d, want 0\n%s%s", code, stdout, stderr)
		}
	})
	raw, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("garbage and a truncated last line counted, not fatal", func(t *testing.T) {
		lines := bytes.SplitAfter(raw, []byte("\n"))
		var b []byte
		b = append(b, lines[0]...)
		b = append(b, "\x00\x01 not a record\n"...)
		b = append(b, bytes.Join(lines[1:11], nil)...)
		b = append(b, lines[11][:len(lines[11])/2]...)
		damaged := filepath.Join(dir, "damaged.jsonl")
		writeFile(t, damaged, string(b))
		stdout, stderr, code := runMailgate(t, "policy", "replay", "-config", cfgB, "-log", damaged)
		if code != 1 || !strings.Contains(stdout, "skipped: 2 unparsable lines") || !strings.Contains(stdout, "replayed 11 decisions") {
			t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
		}
	})
	t.Run("gzip copy and json", func(t *testing.T) {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(raw)
		zw.Close()
		gzPath := filepath.Join(dir, "rotated.jsonl.1.gz")
		writeFile(t, gzPath, z.String())
		stdout, stderr, code := runMailgate(t, "policy", "replay", "-config", cfgB, "-log", gzPath, "-format", "json")
		var rep struct {
			Replayed, Changed int
			Changes           []struct {
				From, To, Engine, Rule string
				Decisions, Senders     int
			}
		}
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("exit %d: %v\n%s%s", code, err, stdout, stderr)
		}
		if code != 1 || rep.Replayed != 12 || rep.Changed != 2 || len(rep.Changes) != 1 || rep.Changes[0].To != "reject" ||
			rep.Changes[0].Rule != "block" || rep.Changes[0].Senders != 2 {
			t.Fatalf("exit %d %+v", code, rep)
		}
	})
	t.Run("progress on a terminal", func(t *testing.T) {
		long := filepath.Join(dir, "long.jsonl")
		writeFile(t, long, strings.Repeat(string(raw), 300)) // 3,600 records
		out, code := peertest.PythonSMTP(t, fmt.Sprintf(`
import os, pty, subprocess, sys
master, slave = pty.openpty()
env = dict(os.environ, MAILGATE_TEST_RUN_MAIN="1", MAILGATE_TEST_ARGS=%q)
p = subprocess.Popen([%q, "-test.run=^$"], stdout=subprocess.PIPE, stderr=slave, env=env)
os.close(slave)
tty = b""
while True:
    try:
        chunk = os.read(master, 4096)
    except OSError:
        break
    if not chunk:
        break
    tty += chunk
stdout = p.stdout.read()
p.wait()
print("EXIT", p.returncode)
print("TTY", repr(tty))
print("STDOUT", stdout.decode())
`, "policy replay -config "+cfgB+" -log "+long, os.Args[0]))
		if code != 0 || !strings.Contains(out, "EXIT 1") || !strings.Contains(out, "changed: 600") {
			t.Fatalf("exit %d\n%s", code, out)
		}
		if !strings.Contains(out, "replaying long.jsonl: ") || !strings.Contains(out, " lines, ") {
			t.Fatalf("no progress line on the terminal:\n%s", out)
		}
	})
	t.Run("errors exit 2", func(t *testing.T) {
		if _, _, code := runMailgate(t, "policy", "replay", "-config", cfgB, "-log", filepath.Join(dir, "nothing*.jsonl")); code != 2 {
			t.Errorf("no log file: exit %d, want 2", code)
		}
		if _, _, code := runMailgate(t, "policy", "replay", "-config", filepath.Join(dir, "missing.hcl"), "-log", log); code != 2 {
			t.Errorf("no config: exit %d, want 2", code)
		}
		notALog := filepath.Join(dir, "mailgate.log")
		writeFile(t, notALog, mp.all.String())
		if _, stderr, code := runMailgate(t, "policy", "replay", "-config", cfgB, "-log", notALog); code != 2 || !strings.Contains(stderr, "is a decision record") {
			t.Errorf("a file with no decision record: exit %d (%s), want 2", code, stderr)
		}
	})
}

// TestE2EDecisionLogRotation: while four smtplib clients send 200
// messages, the decision log is renamed and mailgate sent SIGHUP, three
// times (logrotate's create mode): after SIGTERM, the four files hold one
// line per stage decided (3 per message), none lost.
func TestE2EDecisionLogRotation(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	dir := t.TempDir()
	log := filepath.Join(dir, "decisions.jsonl")
	writeFile(t, filepath.Join(dir, "a.hcl"), blockRules)
	cfg := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, cfg, policyConfig(sink.Addr(), filepath.Join(dir, "a.hcl"), log, ""))
	mp := startProcess(t, cfg)
	addr := mp.waitLog(t, `msg=listening listener=relay address=(\S+)`)
	host, port, _ := net.SplitHostPort(addr)
	const threads, each = 4, 50
	done := make(chan string, 1)
	go func() {
		out, code := peertest.PythonSMTP(t, fmt.Sprintf(`
import smtplib, threading, sys
errors = []
def send(n):
    try:
        s = smtplib.SMTP(%q, %s, timeout=30)
        for i in range(%d):
            frm = "t%%d-%%d@example.com" %% (n, i)
            s.sendmail(frm, ["r@example.net"], ("From: %%s\r\nSubject: rotate\r\n\r\nbody\r\n" %% frm).encode())
        s.quit()
    except Exception as e:
        errors.append(repr(e))
ts = [threading.Thread(target=send, args=(n,)) for n in range(%d)]
for t in ts: t.start()
for t in ts: t.join()
print("errors:", errors)
sys.exit(1 if errors else 0)
`, host, port, each, threads))
		done <- fmt.Sprintf("exit %d: %s", code, out)
	}()
	var files []string
	for i := range 3 {
		// Rotate once decisions are flowing, then wait for the reopen.
		for countLines(t, log) < 10 {
			time.Sleep(5 * time.Millisecond)
		}
		rotated := fmt.Sprintf("%s.%d", log, i+1)
		if err := os.Rename(log, rotated); err != nil {
			t.Fatal(err)
		}
		files = append(files, rotated)
		if err := mp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		mp.waitLog(t, `msg="SIGHUP: reload (finished)"`)
		if _, err := os.Stat(log); err != nil {
			t.Fatalf("log not reopened after SIGHUP: %v", err)
		}
	}
	if res := <-done; !strings.HasPrefix(res, "exit 0") {
		t.Fatalf("smtplib clients: %s", res)
	}
	if got := sink.WaitCount(t, threads*each, 20*time.Second); got != threads*each {
		t.Fatalf("sink has %d messages, want %d", got, threads*each)
	}
	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mp.waitExit(t)
	files = append(files, log)
	total := countLines(t, files...)
	for _, f := range files[:3] {
		if countLines(t, f) == 0 {
			t.Errorf("%s is empty: the rotation did not happen under load", f)
		}
	}
	if total != 3*threads*each {
		t.Fatalf("%d lines across %d files, want %d (3 per message)", total, len(files), 3*threads*each)
	}
}

// TestE2EShadowPolicy: the enforcing chain accepts, a shadow chain refuses
// one sender: the message is still delivered, the disagreement is in
// /metrics and in the decision log. A shadow that fails (an invalid
// result) never affects delivery either.
func TestE2EShadowPolicy(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "curl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	dir := t.TempDir()
	log := filepath.Join(dir, "decisions.jsonl")
	writeFile(t, filepath.Join(dir, "a.hcl"), blockRules)
	writeFile(t, filepath.Join(dir, "shadow.hcl"), blockRules+`rule "no-ceo" {
  stage  = "mail"
  when   = envelope.from == "ceo@example.com"
  action = "reject"
}
`)
	writeFile(t, filepath.Join(dir, "broken.rego"), "package mailgate\ndeny contains {\"msg\": \"x\", \"code\": 451} if input.envelope.from == \"cfo@example.com\"\n")
	cfg := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, cfg, policyConfig(sink.Addr(), filepath.Join(dir, "a.hcl"), log, fmt.Sprintf(`  shadow {
    rules {
      name = "local"
      path = %q
    }
    rego {
      name = "broken"
      path = %q
      on_error = "defer"
    }
  }
`, filepath.Join(dir, "shadow.hcl"), filepath.Join(dir, "broken.rego")))+`
metrics {
  address        = "127.0.0.1:0"
  shutdown_delay = "0s"
}
`)
	mp := startProcess(t, cfg)
	maddr := mp.waitLog(t, `msg=metrics address=(\S+)`)
	addr := mp.waitLog(t, `msg=listening listener=relay address=(\S+)`)
	for i, from := range []string{"app@example.com", "ceo@example.com", "cfo@example.com"} {
		if out, code := peertest.Swaks(t, "--server", addr, "--from", from, "--to", "bob@example.net"); code != 0 {
			t.Fatalf("swaks from %s: exit %d (the shadow must not be enforced)\n%s", from, code, out)
		}
		if got := sink.WaitCount(t, i+1, 10*time.Second); got != i+1 {
			t.Fatalf("sink has %d messages, want %d", got, i+1)
		}
	}
	out, code := peertest.Curl(t, "-sS", "http://"+maddr+"/metrics")
	if code != 0 {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		`mailgate_policy_shadow_disagreements_total{enforced="accept",shadow="reject",stage="mail"} 1`,
		`mailgate_policy_shadow_errors_total{stage="mail"} 1`,
		`mailgate_policy_decision_log_dropped_total 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if n := strings.Count(out, "\nmailgate_policy_shadow_disagreements_total{"); n != 1 {
		t.Errorf("%d disagreement series, want only the mail stage's:\n%s", n, grepLines(out, "shadow"))
	}
	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mp.waitExit(t)
	raw, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var disagree, failed int
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec struct {
			Outcome string
			Input   struct{ Envelope struct{ From string } }
			Shadow  *struct {
				Agree         bool
				Outcome, Rule string
				Error         string
			}
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Shadow == nil || rec.Outcome != "accept" {
			t.Fatalf("record without shadow or not accepted: %s", line)
		}
		switch {
		case rec.Shadow.Error != "":
			failed++
			if rec.Input.Envelope.From != "cfo@example.com" {
				t.Errorf("shadow error for %s", line)
			}
		case !rec.Shadow.Agree:
			disagree++
			if rec.Input.Envelope.From != "ceo@example.com" || rec.Shadow.Outcome != "reject" || rec.Shadow.Rule != "no-ceo" {
				t.Errorf("disagreement %s", line)
			}
		}
	}
	if disagree != 1 || failed != 3 { // cfo@ fails at mail, rcpt and data
		t.Fatalf("%d disagreements, %d shadow errors in the log; want 1 and 3", disagree, failed)
	}
}
