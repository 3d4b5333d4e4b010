package peertest

import (
	"errors"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// process is a started child in its own process group.
type process struct {
	cmd  *exec.Cmd
	out  *Buffer
	done chan struct{} // closed when the child has been reaped
	err  error         // Wait's result, valid after done
}

// startProcess starts path in a new process group with output captured.
func startProcess(path string, args ...string) (*process, error) {
	p := &process{out: &Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop signals the whole process group by PID: SIGTERM, then SIGKILL after
// grace.
func (p *process) stop(grace time.Duration) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// errExited reports a child that ended before it was ready.
var errExited = errors.New("peertest: process exited before it was ready")

// waitListening dials addr until it accepts, the child exits or timeout
// passes. A nil p only waits for the port.
func waitListening(p *process, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p != nil && p.exited() {
			return errExited
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitListening waits until addr ("127.0.0.1:port") accepts a TCP
// connection, for a server the test started itself, and fails the test
// when it does not within timeout. Call it from the test's goroutine.
func WaitListening(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	if err := waitListening(nil, addr, timeout); err != nil {
		t.Fatalf("peertest: nothing listening on %s after %v: %v", addr, timeout, err)
	}
}

// logOnFailure registers a cleanup that logs output when t failed.
func logOnFailure(t testing.TB, what string, output func() string) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", what, output())
		}
	})
}
