package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// countListener counts the writes on every connection it accepts.
type countListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: c, n: &l.writes}, nil
}

type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

type noRelay struct{}

func (noRelay) Begin(context.Context, string, string, *smtp.MailOptions) (RelayTx, error) {
	return nil, errors.New("no relay in this test")
}

// TestEHLOOneWrite (issue 10): a multi-line reply leaves in one write on
// the client's connection (one TLS record, one syscall), not one per line.
func TestEHLOOneWrite(t *testing.T) {
	none := "none"
	cfg := Config{Hostname: "mailgate.test", Listeners: []ListenerConfig{
		{Name: "relay", Address: "127.0.0.1:0", TLS: &none, Auth: &none, TrustedNetworks: []string{"127.0.0.0/8"}},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Deps{Relay: noRelay{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	cl := &countListener{Listener: s.listeners[0].ln}
	s.listeners[0].ln = cl
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = s.Shutdown(sctx)
		cancel()
		<-done
	})

	c, err := net.DialTimeout("tcp", cl.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting %q", line)
	}
	before := cl.writes.Load()
	if _, err := c.Write([]byte("EHLO client.test\r\n")); err != nil {
		t.Fatal(err)
	}
	lines := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		lines++
		if line[3] == ' ' {
			break
		}
	}
	if lines < 5 {
		t.Fatalf("EHLO reply has %d lines, want a multi-line reply", lines)
	}
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("EHLO reply of %d lines took %d writes, want 1", lines, n)
	}
}
