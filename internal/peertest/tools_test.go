package peertest

import (
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// recordTB captures Skip and Fatal instead of ending the real test.
type recordTB struct {
	testing.TB
	mu              sync.Mutex
	skipped, failed string
}

func (r *recordTB) Helper() {}
func (r *recordTB) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skipped = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recordTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

// call runs f on a fresh goroutine, as testing does, so Goexit ends only it.
func (r *recordTB) call(f func()) {
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	<-done
}

func TestRequire(t *testing.T) {
	table := map[string]tool{
		"present":        {bin: "sh", pkg: "dash"},
		"absent":         {bin: "/nonexistent/peertest-absent", pkg: "peertest-absent-pkg"},
		"python-missing": {bin: pythonPath, pkg: "python3-nosuchmodule", python: "peertest_no_such_module"},
		"file-missing":   {bin: "sh", pkg: "libpeertest-java", files: []string{"/nonexistent/peertest.jar"}},
	}
	tests := []struct {
		name, tool, ci     string
		wantSkip, wantFail bool
		wantMsg            string
	}{
		{name: "present tool runs", tool: "present"},
		{name: "missing tool skips loudly", tool: "absent", wantSkip: true,
			wantMsg: "SKIP: integration peer absent not installed; install with apt-get install peertest-absent-pkg"},
		{name: "missing tool fails in CI", tool: "absent", ci: "true", wantFail: true,
			wantMsg: "integration peer absent not installed"},
		{name: "CI must be exactly true", tool: "absent", ci: "1", wantSkip: true, wantMsg: "SKIP:"},
		{name: "missing python module skips", tool: "python-missing", wantSkip: true,
			wantMsg: "apt-get install python3-nosuchmodule"},
		{name: "missing python module fails in CI", tool: "python-missing", ci: "true", wantFail: true,
			wantMsg: "cannot import peertest_no_such_module"},
		{name: "missing library file skips", tool: "file-missing", wantSkip: true,
			wantMsg: "apt-get install libpeertest-java"},
		{name: "missing library file fails in CI", tool: "file-missing", ci: "true", wantFail: true,
			wantMsg: "/nonexistent/peertest.jar"},
		{name: "unknown name is a test bug", tool: "no-such-tool", wantFail: true, wantMsg: "unknown tool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			if tc.tool == "python-missing" {
				if _, err := lookPath(pythonPath); err != nil {
					t.Skip("no " + pythonPath)
				}
			}
			r := &recordTB{TB: t}
			r.call(func() { require(r, table, tc.tool) })
			if (r.skipped != "") != tc.wantSkip || (r.failed != "") != tc.wantFail {
				t.Fatalf("skipped=%q failed=%q, want skip=%v fail=%v", r.skipped, r.failed, tc.wantSkip, tc.wantFail)
			}
			if got := r.skipped + r.failed; !strings.Contains(got, tc.wantMsg) {
				t.Errorf("message %q lacks %q", got, tc.wantMsg)
			}
		})
	}
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	if port <= 0 || port > 65535 {
		t.Fatalf("FreePort = %d", port)
	}
	// Below the ephemeral range, where port-0 binds never land.
	if lo, hi := belowEphemeral(); hi > lo && (port < lo || port >= hi) {
		t.Errorf("FreePort = %d, want a port in [%d, %d)", port, lo, hi)
	}
	if again := FreePort(t); again == port {
		t.Errorf("FreePort handed out %d twice", port)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("port %d from FreePort not bindable: %v", port, err)
	}
	l.Close()
}

func TestRunToolExitCodeAndOutput(t *testing.T) {
	t.Parallel()
	out, code := PythonSMTP(t, "import sys; print('hello', sys.argv[1]); sys.exit(3)", "arg")
	if code != 3 || strings.TrimSpace(out) != "hello arg" {
		t.Errorf("PythonSMTP = %q, %d; want \"hello arg\", 3", out, code)
	}
}
