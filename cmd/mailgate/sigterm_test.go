package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/proxy/peertest"
)

// TestMain lets a test run this package's main in a child process (the
// test binary itself), so signals can be sent to a real mailgate process.
func TestMain(m *testing.M) {
	if os.Getenv("MAILGATE_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"mailgate"}, strings.Fields(os.Getenv("MAILGATE_TEST_ARGS"))...)
		main()
		return
	}
	os.Exit(m.Run())
}

// TestSIGTERMDrains sends SIGTERM to a mailgate process while one session
// is in the middle of DATA and another is idle: the idle one gets 421, the
// message in flight is relayed (250), then the process exits with 0.
func TestSIGTERMDrains(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mailgate.hcl")
	writeFile(t, cfg, fmt.Sprintf(`hostname = "mailgate.test"
listener "relay" {
  address          = "127.0.0.1:0"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
upstream "sink" {
  address = %q
  tls     = "none"
}
`, sink.Addr()))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAILGATE_TEST_RUN_MAIN=1", "MAILGATE_TEST_ARGS=serve -config "+cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs <- sc.Text()
		}
		close(logs)
	}()
	addrRe := regexp.MustCompile(`msg=listening listener=relay address=(\S+)`)
	var addr string
	deadline := time.After(30 * time.Second)
	for addr == "" {
		select {
		case l, ok := <-logs:
			if !ok {
				t.Fatal("mailgate exited before listening")
			}
			if m := addrRe.FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
		case <-deadline:
			t.Fatal("mailgate did not start")
		}
	}
	dial := func() *rawConn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
		rc.expect("", 220)
		rc.expect("EHLO test.example", 250)
		return rc
	}
	idle := dial()
	busy := dial()
	busy.expect("MAIL FROM:<app@example.com>", 250)
	busy.expect("RCPT TO:<bob@example.net>", 250)
	busy.expect("DATA", 354)
	busy.send("From: app@example.com\r\nSubject: in flight\r\n\r\nfirst half\r\n")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, line := idle.read(); code != 421 {
		t.Fatalf("idle session after SIGTERM: %d %s, want 421", code, line)
	}
	busy.send("second half\r\n.\r\n")
	if code, line := busy.read(); code != 250 {
		t.Fatalf("message in flight: %d %s, want 250", code, line)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mailgate exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("mailgate did not exit after draining")
	}
	if got := sink.Count(); got != 1 {
		t.Fatalf("sink has %d messages, want 1", got)
	}
}

type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (c *rawConn) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the code and last line of one reply (0 at EOF).
func (c *rawConn) read() (int, string) {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, err.Error()
		}
		if len(line) >= 4 && line[3] == '-' {
			continue
		}
		var code int
		fmt.Sscanf(line, "%d", &code)
		return code, strings.TrimSpace(line)
	}
}

func (c *rawConn) expect(cmd string, want int) {
	c.t.Helper()
	if cmd != "" {
		c.send(cmd + "\r\n")
	}
	if code, line := c.read(); code != want {
		c.t.Fatalf("%q: %d %s, want %d", cmd, code, line, want)
	}
}
