package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// TestSystemdUnitCommands: every mailgate command line in the example
// unit names a verb and flags that exist (a usage error is exit 2; a
// missing configuration file is exit 1).
func TestSystemdUnitCommands(t *testing.T) {
	f, err := os.Open("../../examples/systemd/mailgate.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "Exec") || !strings.Contains(v, "/mailgate ") {
			continue
		}
		args := strings.Fields(v)[1:]
		for i, a := range args {
			if a == "-config" && i+1 < len(args) {
				args[i+1] = filepath.Join(t.TempDir(), "absent.hcl")
			}
		}
		n++
		if code := run(args, strings.NewReader(""), io.Discard, io.Discard); code != 1 {
			t.Errorf("%s: exit %d, want 1 (config missing), not a usage error", line, code)
		}
	}
	if n < 2 {
		t.Fatalf("found %d mailgate command lines in the unit", n)
	}
}

// TestHAProxyExample checks the example HAProxy configuration with
// haproxy itself, then runs mailgate behind a real HAProxy sending PROXY
// v2 and health-checking /readyz as the example does: a message through
// HAProxy is delivered, a direct connection is refused; when readiness
// turns 503 (Redis down) HAProxy marks the server DOWN and sends no client
// to it, and UP again once /readyz is 200.
func TestHAProxyExample(t *testing.T) {
	peertest.Require(t, "haproxy", "smtp-sink", "swaks", "redis-server")
	example, err := os.ReadFile("../../examples/haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"option httpchk GET /readyz", "http-check expect status 200", "check port 9151"} {
		if !strings.Contains(string(example), want) {
			t.Errorf("the example lacks %q", want)
		}
	}
	out, err := exec.Command(peertest.Path(t, "haproxy"), "-c", "-f", "../../examples/haproxy/haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c rejects the example:\n%s", out)
	}

	sink := peertest.StartSink(t, peertest.SinkOptions{})
	rds := peertest.StartRedis(t)
	mp, metrics := startMailgateProxied(t, sink.Addr(), rds.Addr())
	_, mport, _ := net.SplitHostPort(metrics)
	front := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
	dir := t.TempDir()
	sock := filepath.Join(dir, "haproxy.sock")
	// The example's backend stanza, on loopback, with fast checks.
	cfg := fmt.Sprintf(`global
    maxconn 100
    stats socket %s level operator
defaults
    mode tcp
    timeout connect 5s
    timeout check 2s
    timeout client 1m
    timeout server 1m
frontend relay
    bind %s
    default_backend mg
backend mg
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
    server mg1 %s send-proxy-v2 check port %s
`, sock, front, mp, mport)
	path := filepath.Join(dir, "haproxy.cfg")
	writeFile(t, path, cfg)
	peertest.Start(t, exec.Command(peertest.Path(t, "haproxy"), "-db", "-f", path), 5*time.Second)
	peertest.WaitListening(t, front, 10*time.Second)
	waitServerState(t, sock, "UP")
	o, code := peertest.Swaks(t, "--server", front, "--from", e2eUser, "--to", "bob@example.net", "--timeout", "20")
	if code != 0 {
		t.Fatalf("through HAProxy: exit %d\n%s", code, o)
	}
	if got := sink.WaitCount(t, 1, 10*time.Second); got != 1 {
		t.Fatalf("sink has %d", got)
	}
	// A client that bypasses HAProxy (it speaks first, as swaks would after
	// a few seconds of silence) gets no greeting.
	c, err := net.DialTimeout("tcp", mp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("EHLO bypass.test\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); strings.HasPrefix(string(b), "220") {
		t.Fatalf("direct connection to a proxy_protocol listener got a greeting: %q", b)
	}

	// Not ready: HAProxy takes the server out, a client gets no greeting.
	rds.Stop()
	waitServerState(t, sock, "DOWN")
	if b := greeting(front); strings.HasPrefix(b, "220") {
		t.Fatalf("HAProxy sent a client to a server whose /readyz is 503: %q", b)
	}
	rds.Restart(t)
	waitServerState(t, sock, "UP")
	if b := greeting(front); !strings.HasPrefix(b, "220") {
		t.Fatalf("ready again, but through HAProxy: %q", b)
	}
}

// greeting connects to addr and returns the first line that arrives
// within 5 seconds, or what went wrong.
func greeting(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return line + err.Error()
	}
	return line
}

// waitServerState polls HAProxy's stats socket until server mg/mg1 has
// status want (UP, DOWN).
func waitServerState(t *testing.T, sock, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if last = haproxyStatus(sock, "mg", "mg1"); last == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("HAProxy server mg/mg1 is %q, want %q", last, want)
}

// haproxyStatus reads one server's status column from "show stat".
func haproxyStatus(sock, backend, server string) string {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(c)
	lines := strings.Split(string(b), "\n")
	header := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := -1
	for i, h := range header {
		if h == "status" {
			col = i
		}
	}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if col >= 0 && len(f) > col && f[0] == backend && f[1] == server {
			return strings.Fields(f[col] + " ")[0] // "DOWN 1/2" while changing
		}
	}
	return "not found"
}

// startMailgateProxied serves a relay listener that requires PROXY
// headers from 127.0.0.1, with Redis at rds and a metrics listener probing
// it often, and returns the listener's and the metrics' addresses.
func startMailgateProxied(t *testing.T, sink, rds string) (relay, metrics string) {
	t.Helper()
	m := startMailgate(t, upstreamBlock(sink)+fmt.Sprintf(`
redis {
  address = %q
}
metrics {
  address        = "127.0.0.1:0"
  probe_interval = "100ms"
  shutdown_delay = "0s"
}
listener "behind-lb" {
  address          = "127.0.0.1:0"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
  proxy_protocol   = ["127.0.0.1"]
}
`, rds))
	return m.extra["behind-lb"], m.extra["metrics"]
}
