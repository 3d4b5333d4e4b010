package peertest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Redis is a private redis-server on a loopback port.
type Redis struct {
	addr string
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
		t.Cleanup(func() { p.stop(2 * time.Second) })
		return &Redis{addr: addr, proc: p}
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.addr }
