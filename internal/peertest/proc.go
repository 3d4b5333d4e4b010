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
	return startCmd(exec.Command(path, args...))
}

// startCmd starts cmd in a new process group. Unless cmd has its own
// Stdout or Stderr, both are captured in out.
func startCmd(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, out: &Buffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout = p.out
		cmd.Stderr = p.out
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Process is a child process a test started with [Start].
type Process struct {
	p     *process
	grace time.Duration
}

// Start starts cmd (built by the caller with its path, arguments,
// environment and directory) in its own process group, and stops it by PID
// when the test ends: SIGTERM to the group, SIGKILL after grace. Unless cmd
// has its own Stdout or Stderr, both are collected in [Process.Output],
// which is logged when the test failed. For a server, follow with
// [WaitListening]. Call it from the test's goroutine.
func Start(t testing.TB, cmd *exec.Cmd, grace time.Duration) *Process {
	t.Helper()
	collect := cmd.Stdout == nil && cmd.Stderr == nil
	p, err := startCmd(cmd)
	if err != nil {
		t.Fatalf("peertest: start %s: %v", cmd.Path, err)
	}
	pr := &Process{p: p, grace: grace}
	t.Cleanup(pr.Stop)
	if collect {
		logOnFailure(t, cmd.Path, p.out.String)
	}
	return pr
}

// Pid is the child's process ID, which is also its process group's.
func (pr *Process) Pid() int { return pr.p.cmd.Process.Pid }

// Output is what the child wrote so far, when Start collected it.
func (pr *Process) Output() string { return pr.p.out.String() }

// Exited reports whether the child has ended.
func (pr *Process) Exited() bool { return pr.p.exited() }

// Stop stops the child's process group now, as the test's end would:
// SIGTERM, SIGKILL after the grace given to Start. It returns once the
// child has been reaped; stopping a stopped child does nothing.
func (pr *Process) Stop() { pr.p.stop(pr.grace) }

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
