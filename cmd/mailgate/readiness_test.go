package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// readyz is one answer of /readyz.
type readyz struct {
	code int
	body string
}

// getReadyz asks addr's /readyz once; code 0 when nothing answers.
func getReadyz(addr string) readyz {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return readyz{body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return readyz{code: resp.StatusCode, body: string(b)}
}

// pollReadyz polls /readyz, as a load balancer does, until want holds,
// and returns that answer. It fails the test after 30 seconds.
func pollReadyz(t *testing.T, addr, what string, want func(readyz) bool) readyz {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last readyz
	for time.Now().Before(deadline) {
		if last = getReadyz(addr); want(last) {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/readyz never %s; last: %d %q", what, last.code, last.body)
	return last
}

// TestReadinessStartupAndSIGTERM runs a real mailgate process whose Redis
// is down at start: /readyz says 503 and names Redis while /healthz says
// 200; once Redis is up /readyz turns 200. On SIGTERM /readyz turns 503
// ("shutting down") while the SMTP listener still greets new clients
// (shutdown_delay), then the process drains and exits 0.
func TestReadinessStartupAndSIGTERM(t *testing.T) {
	peertest.Require(t, "smtp-sink", "redis-server")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	rds := peertest.StartRedis(t)
	rds.Stop()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, cfg, relayConfig(sink.Addr(), fmt.Sprintf(`redis {
  address = %q
}
metrics {
  address        = "127.0.0.1:0"
  probe_interval = "200ms"
  shutdown_delay = "2s"
}
`, rds.Addr())))
	mp := startProcess(t, cfg)
	maddr := mp.waitLog(t, `msg=metrics address=(\S+)`)

	// At first nothing is probed yet; then only Redis is missing.
	want := "not ready\nredis: " + rds.Addr() + " does not answer: "
	r := pollReadyz(t, maddr, "503 naming only redis", func(r readyz) bool {
		return r.code == 503 && strings.HasPrefix(r.body, want) && strings.Count(r.body, "\n") == 2
	})
	if ct := r.body; strings.Contains(ct, "upstreams") {
		t.Errorf("/readyz: %q", ct)
	}
	if hr, err := http.Get("http://" + maddr + "/healthz"); err != nil || hr.StatusCode != 200 {
		t.Fatalf("/healthz while not ready: %v %v", hr, err)
	} else {
		hr.Body.Close()
	}
	addr := mp.waitLog(t, `msg=listening listener=relay address=(\S+)`)

	rds.Restart(t)
	pollReadyz(t, maddr, "200 once Redis is up", func(r readyz) bool { return r.code == 200 })

	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r = pollReadyz(t, maddr, "503 after SIGTERM", func(r readyz) bool { return r.code != 200 })
	if r.code != 503 || !strings.Contains(r.body, "shutting down") {
		t.Fatalf("/readyz after SIGTERM: %d %q, want 503 shutting down", r.code, r.body)
	}
	// Not ready, yet still serving: the load balancer drains first.
	c := dialRaw(t, addr)
	c.expect("EHLO test.example", 250)
	c.expect("MAIL FROM:<app@example.com>", 250)
	c.expect("RCPT TO:<bob@example.net>", 250)
	c.expect("DATA", 354)
	c.expect("From: app@example.com\r\nSubject: during drain\r\n\r\nbody\r\n.", 250)
	c.expect("QUIT", 221)
	mp.waitExit(t)
	if got := sink.Count(); got != 1 {
		t.Fatalf("sink has %d messages, want 1", got)
	}
}

// TestSecondSignalSkipsShutdownDelay: with a long shutdown_delay, a second
// SIGTERM closes the listeners at once and the process exits.
func TestSecondSignalSkipsShutdownDelay(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	cfg := filepath.Join(t.TempDir(), "mailgate.hcl")
	writeFile(t, cfg, relayConfig(sink.Addr(), `metrics {
  address        = "127.0.0.1:0"
  probe_interval = "200ms"
  shutdown_delay = "4m"
}
`))
	mp := startProcess(t, cfg)
	maddr := mp.waitLog(t, `msg=metrics address=(\S+)`)
	pollReadyz(t, maddr, "200", func(r readyz) bool { return r.code == 200 })
	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mp.waitLog(t, `msg="shutting down: (not ready)`)
	if err := mp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mp.waitLog(t, `msg="shutting down: (second signal)`)
	mp.waitExit(t) // within 30 s, not 4 minutes
}
