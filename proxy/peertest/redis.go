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
	r := &Redis{addr: addr, proc: p}
	t.Cleanup(func() { p.stop(2 * time.Second) })
	logOnFailure(t, "redis-server", p.out.String)
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	return r
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return r.addr }
