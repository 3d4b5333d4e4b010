package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

// runningDemo is the embedded default configuration served on a free port
// in a temporary working directory, with its announcement captured.
type runningDemo struct {
	dir, addr string
	out       *peertest.Buffer
}

// startDemo runs what `go run ./cmd/mailgate` runs (the embedded default),
// with the listener on port 0, and waits for the announcement.
func startDemo(t *testing.T) *runningDemo {
	t.Helper()
	cfg, err := loadConfig("default.hcl", defaultConfig, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	d := &runningDemo{dir: t.TempDir(), out: &peertest.Buffer{}}
	cfg.baseDir = d.dir
	cfg.proxy.Listeners[0].Address = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	bound := make(chan map[string]string, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), d.out, func(a map[string]string) { bound <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	select {
	case a := <-bound:
		d.addr = a["submission"]
	case err := <-done:
		done <- err
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not start")
	}
	// ready runs after the announcement: it is complete now.
	if text := d.out.String(); !strings.Contains(text, d.addr) || !strings.Contains(text, "swaks") ||
		!strings.Contains(text, "quota:    per-login: messages 100/1h") {
		t.Fatalf("the announcement lacks the address, the commands or the quota:\n%s", text)
	}
	return d
}

var (
	demoPasswordRe = regexp.MustCompile(`password: (\S+)`)
	zoneLineRe     = regexp.MustCompile(`(?m)^\s+(\S+)\. IN TXT \( (.*) \)$`)
	txtStringRe    = regexp.MustCompile(`"([^"]*)"`)
	refusedCodeRe  = regexp.MustCompile(`the policy answers (\d{3} \d\.\d{1,3}\.\d{1,3})`)
)

func (d *runningDemo) password(t *testing.T) string {
	t.Helper()
	m := demoPasswordRe.FindStringSubmatch(d.out.String())
	if m == nil {
		t.Fatalf("no password in the announcement:\n%s", d.out.String())
	}
	return m[1]
}

// records parses the printed zone-file lines into DNS name → TXT value,
// joining the character-strings as a resolver does (RFC 6376 §3.6.2.2).
func (d *runningDemo) records(t *testing.T) map[string]string {
	t.Helper()
	recs := map[string]string{}
	for _, m := range zoneLineRe.FindAllStringSubmatch(d.out.String(), -1) {
		var v strings.Builder
		for _, s := range txtStringRe.FindAllStringSubmatch(m[2], -1) {
			v.WriteString(s[1])
		}
		recs[m[1]] = v.String()
	}
	if len(recs) != 2 {
		t.Fatalf("want 2 printed TXT records (RSA and Ed25519), got %v:\n%s", recs, d.out.String())
	}
	return recs
}

// command returns the indented lines of the numbered step n ("1." or
// "2.") of the announcement: a shell command as a user would paste it.
func (d *runningDemo) command(t *testing.T, n string) string {
	t.Helper()
	var lines []string
	in := false
	for _, l := range strings.Split(d.out.String(), "\n") {
		switch {
		case strings.HasPrefix(l, n+" "):
			in = true
		case in && l != "" && !strings.HasPrefix(l, "  "):
			in = false
		case in && strings.HasPrefix(l, "  "):
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("no command %s in the announcement:\n%s", n, d.out.String())
	}
	return strings.Join(lines, "\n")
}

// delivered lists the paths the demo printed as "delivered: PATH".
func (d *runningDemo) delivered() []string {
	var paths []string
	for _, m := range regexp.MustCompile(`(?m)^delivered: (\S+)$`).FindAllStringSubmatch(d.out.String(), -1) {
		paths = append(paths, m[1])
	}
	return paths
}

func (d *runningDemo) outboxFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(d.dir, "mailgate-outbox", "new", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(d.dir, "mailgate-outbox", "tmp", "*")); len(tmp) != 0 {
		t.Errorf("files left in tmp/: %v", tmp)
	}
	return files
}

// shell runs a printed command with /bin/sh, as a user pasting it would.
func shell(t *testing.T, script string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peertest.DefaultTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/bin/sh", "-c", script).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("sh: %v\n%s", err, out)
	return "", -1
}

// TestDemoPrintedCommands runs the demo exactly as its announcement says:
// the printed curl command is delivered into the outbox, the file printed
// as "delivered: PATH" carries an RSA and an Ed25519 signature that dkimpy
// verifies with the printed TXT records, and the printed swaks command with
// a forged From: is refused with the code the announcement names, leaving
// the outbox as it was.
func TestDemoPrintedCommands(t *testing.T) {
	peertest.Require(t, "curl", "swaks", "python3-dkim")
	d := startDemo(t)
	recs := d.records(t)

	out, code := shell(t, d.command(t, "1."))
	if code != 0 {
		t.Fatalf("printed command 1 (curl) failed, exit %d:\n%s", code, out)
	}
	paths := d.delivered()
	if len(paths) != 1 {
		t.Fatalf("printed %d delivered paths, want 1:\n%s", len(paths), d.out.String())
	}
	if files := d.outboxFiles(t); len(files) != 1 || files[0] != paths[0] {
		t.Fatalf("outbox has %v, the demo printed %v", files, paths)
	}
	msg, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(msg, []byte("\nDKIM-Signature:")); n != 2 {
		t.Fatalf("want 2 DKIM-Signature fields, got %d:\n%s", n, msg)
	}
	if ok, report := peertest.DKIMVerify(t, msg, recs); !ok {
		t.Fatalf("dkimpy does not verify the delivered message with the printed records:\n%s\n%s", report, msg)
	}

	want := refusedCodeRe.FindStringSubmatch(d.out.String())
	if want == nil {
		t.Fatalf("the announcement does not say which reply the forged message gets:\n%s", d.out.String())
	}
	out, _ = shell(t, d.command(t, "2."))
	// swaks marks the server's reply lines with "<~" over TLS ("<~*" for
	// an error); assert the code only, the text belongs to the policy.
	if !regexp.MustCompile(`(?m)^<~\* ` + regexp.QuoteMeta(want[1]) + ` `).MatchString(out) {
		t.Fatalf("printed command 2 (forged From:) was not refused with %s:\n%s", want[1], out)
	}
	if files := d.outboxFiles(t); len(files) != 1 {
		t.Fatalf("the forged message reached the outbox: %v", files)
	}
	if got := d.delivered(); len(got) != 1 {
		t.Fatalf("delivered printed %d times, want once", len(got))
	}
}

// TestDemoDefault submits with Go's SMTP client and the printed password
// (no external tools): a message from the login lands in the outbox
// signed, a forged envelope sender and a forged From: header are refused
// by the demo policy with 550.
func TestDemoDefault(t *testing.T) {
	d := startDemo(t)
	c, err := smtp.DialStartTLS(d.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "demo@example.com", d.password(t))); err != nil {
		t.Fatalf("AUTH with the printed password: %v", err)
	}
	msg := "From: demo@example.com\r\nTo: you@example.net\r\nSubject: demo\r\n\r\nhello\r\n"
	if err := c.SendMail("demo@example.com", []string{"you@example.net"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	files := d.outboxFiles(t)
	if len(files) != 1 {
		t.Fatalf("outbox has %d messages, want 1", len(files))
	}
	got, _ := os.ReadFile(files[0])
	for _, want := range []string{"Subject: demo", "Message-ID: <", "s=demo-rsa;", "s=demo-ed25519;", "d=example.com;"} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("outbox message lacks %q:\n%s", want, got)
		}
	}
	for _, tc := range []struct{ name, from, header string }{
		{"forged_envelope_sender", "ceo@example.org", "demo@example.com"},
		{"forged_from_header", "demo@example.com", "ceo@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.SendMail(tc.from, []string{"you@example.net"},
				strings.NewReader("From: "+tc.header+"\r\nSubject: forged\r\n\r\nx\r\n"))
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
				t.Fatalf("want 550 5.7.1 from the demo policy, got %v", err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if files := d.outboxFiles(t); len(files) != 1 {
		t.Fatalf("outbox has %d messages after the forgeries, want 1", len(files))
	}
}

// TestDemoPolicyTests runs the embedded demo policy's own Rego tests, as
// `mailgate policy test cmd/mailgate/demo` does.
func TestDemoPolicyTests(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"policy", "test", "demo"}, nil, &out, &errb); code != 0 {
		t.Fatalf("policy test demo: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "PASS: 5 passed") {
		t.Fatalf("policy test demo:\n%s", out.String())
	}
}
