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

	"github.com/mailgate/mailgate/proxy/peertest"
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
// v2: a message through HAProxy is delivered, a direct connection is
// refused.
func TestHAProxyExample(t *testing.T) {
	peertest.Require(t, "haproxy", "smtp-sink", "swaks")
	out, err := exec.Command("haproxy", "-c", "-f", "../../examples/haproxy/haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c rejects the example:\n%s", out)
	}

	sink := peertest.StartSink(t, peertest.SinkOptions{})
	mp := startMailgateProxied(t, sink.Addr())
	front := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
	cfg := fmt.Sprintf(`global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
frontend relay
    bind %s
    default_backend mg
backend mg
    server mg1 %s send-proxy-v2
`, front, mp)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	writeFile(t, path, cfg)
	cmd := exec.Command("haproxy", "-db", "-f", path)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitPort(t, front)
	o, code := peertest.Swaks(t, "--server", front, "--from", e2eUser, "--to", "bob@example.net", "--timeout", "20")
	if code != 0 {
		t.Fatalf("through HAProxy: exit %d\n%s\nhaproxy:\n%s", code, o, logs.String())
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
}

// startMailgateProxied serves a relay listener that requires PROXY
// headers from 127.0.0.1 and returns its address.
func startMailgateProxied(t *testing.T, sink string) string {
	t.Helper()
	m := startMailgate(t, upstreamBlock(sink)+fmt.Sprint(`
listener "behind-lb" {
  address          = "127.0.0.1:0"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
  proxy_protocol   = ["127.0.0.1"]
}
`))
	return m.extra["behind-lb"]
}
