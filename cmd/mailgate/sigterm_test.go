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

	"github.com/mailgate/mailgate/internal/peertest"
)

// TestMain lets a test run this package's main in a child process (the
// test binary itself), so signals can be sent to a real mailgate process.
// The arguments are MAILGATE_TEST_ARGS, or without it the command line
// (so a script can run the test binary as mailgate).
func TestMain(m *testing.M) {
	if os.Getenv("MAILGATE_TEST_RUN_MAIN") == "1" {
		if args, ok := os.LookupEnv("MAILGATE_TEST_ARGS"); ok {
			os.Args = append([]string{"mailgate"}, strings.Fields(args)...)
		}
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
	writeFile(t, cfg, relayConfig(sink.Addr(), ""))
	mp := startProcess(t, cfg)
	addr := mp.waitLog(t, `msg=listening listener=relay address=(\S+)`)
	cmd := mp.cmd
	dial := func() *rawConn {
		rc := dialRaw(t, addr)
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
	mp.waitExit(t)
	if got := sink.Count(); got != 1 {
		t.Fatalf("sink has %d messages, want 1", got)
	}
}

// relayConfig is the configuration the process tests start from: one
// trusted plaintext listener "relay" on a free port in front of the
// upstream at sinkAddr, plus extra blocks.
func relayConfig(sinkAddr, extra string) string {
	return fmt.Sprintf(`hostname = "mailgate.test"
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
`, sinkAddr) + extra
}

// childProcess is a real mailgate process (this test binary running
// main) and the lines it logs.
type childProcess struct {
	cmd  *exec.Cmd
	logs chan string
	all  peertest.Buffer // every line, for failures
}

// startProcess runs "mailgate serve -config cfg" in a child process.
func startProcess(t *testing.T, cfg string) *childProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAILGATE_TEST_RUN_MAIN=1", "MAILGATE_TEST_ARGS=serve -config "+cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mp := &childProcess{cmd: cmd, logs: make(chan string, 1000)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("mailgate log:\n%s", mp.all.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(&mp.all, sc.Text())
			mp.logs <- sc.Text()
		}
		close(mp.logs)
	}()
	return mp
}

// waitLog waits for a log line matching re and returns its first group.
func (mp *childProcess) waitLog(t *testing.T, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-mp.logs:
			if !ok {
				t.Fatalf("mailgate exited before logging %s", re)
			}
			if m := rx.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		case <-deadline:
			t.Fatalf("mailgate did not log %s", re)
		}
	}
}

// waitExit waits for the process to exit with status 0.
func (mp *childProcess) waitExit(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for range mp.logs { // keep the pipe drained
		}
		done <- mp.cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mailgate exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("mailgate did not exit after draining")
	}
}

// dialRaw connects to an SMTP listener and reads its 220 greeting.
func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	rc.expect("", 220)
	return rc
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
