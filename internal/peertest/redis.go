package peertest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Redis is a private redis-server on a loopback port.
type Redis struct {
	addr string
	bin  string
	conf string
	mu   sync.Mutex
	proc *process
}

// StartRedis starts redis-server on 127.0.0.1 with no persistence and
// stops it by PID when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	Require(t, "redis-server")
	bin, err := lookPath(tools["redis-server"].bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// FreePort closes its socket before redis-server binds it, so another
	// process may take it meanwhile: try a few ports.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		conf := filepath.Join(dir, "redis.conf")
		content := fmt.Sprintf("bind 127.0.0.1\nport %d\nsave \"\"\nappendonly no\ndir %s\nprotected-mode yes\n", port, dir)
		if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := startProcess(bin, conf)
		if err != nil {
			t.Fatal(err)
		}
		if lastErr = waitListening(p, addr, 10*time.Second); lastErr != nil {
			t.Logf("redis-server on %s: %v\n%s", addr, lastErr, p.out.String())
			p.stop(time.Second)
			continue
		}
		r := &Redis{addr: addr, bin: bin, conf: conf, proc: p}
		t.Cleanup(r.Stop)
		return r
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.addr }

// Stop stops the server by PID (SIGTERM, SIGKILL after 2s); clients see
// it gone. Stopping a stopped server does nothing.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil && !r.proc.exited() {
		r.proc.stop(2 * time.Second)
	}
}

// Restart stops the server if it runs and starts a new, empty one on the
// same port (another process may have taken the port meanwhile: then the
// test fails).
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := startProcess(r.bin, r.conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitListening(p, r.addr, 10*time.Second); err != nil {
		p.stop(time.Second)
		t.Fatalf("redis-server restart on %s: %v\n%s", r.addr, err, p.out.String())
	}
	r.proc = p
}
