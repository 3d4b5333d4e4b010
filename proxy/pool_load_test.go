package proxy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// TestPoolFitsTheLoad relays 20 concurrent client sessions × 50 messages
// through mailgate with the default upstream settings (max_connections
// 100, pool_size = max_connections, max_messages_per_connection 100) into
// a real smtp-sink, and counts the connections at the sink (its own
// session counter). With the former pool_size default of 8, connections
// returned while 8 were idle were closed and redialled moments later
// (issue 13): 59-116 connections in this test.
//
// The bound, maxUpstreamConns: at most 20 transactions are in flight at
// once, and a connection is dialled only when none is idle, so at most
// 20 are open at a time; beyond those, each connection retired after
// max_messages_per_connection (100) forces one new one: 1,000 / 100 = 10
// at most. 20 + 10 = 30 is what a pool without churn can need; the test
// asserts it and logs the real count.
func TestPoolFitsTheLoad(t *testing.T) {
	const sessions, perSession = 20, 50
	const maxUpstreamConns = sessions + sessions*perSession/upstream.DefaultMaxMessagesPerConnection
	sink := peertest.StartSink(t, peertest.SinkOptions{CountSessions: true})
	// StartSink's readiness check was one session: count from there.
	deadline := time.Now().Add(10 * time.Second)
	for sink.Sessions() < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	before := sink.Sessions()
	var router *upstream.Router
	e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) {
		r, err := upstream.NewRouter([]upstream.Config{{Name: "sink", Address: sink.Addr(), TLS: "none"}},
			upstream.WithLogger(d.Logger), upstream.WithHostname("mailgate.test"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		router = r
		d.Relay = proxy.UpstreamRelay(r)
		d.Logger = slog.New(slog.DiscardHandler) // 1,000 transactions of debug logs: too slow, too long
	})
	body := bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 13) // 1 KiB
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := range sessions {
		wg.Go(func() {
			c, err := smtp.Dial(e.addr["relay"])
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for m := range perSession {
				msg := fmt.Appendf(nil, "From: s%d@example.com\r\nTo: r@example.net\r\nSubject: %d/%d\r\n\r\n%s", s, s, m, body)
				if err := c.SendMail(fmt.Sprintf("s%d@example.com", s), []string{"r@example.net"}, bytes.NewReader(msg)); err != nil {
					errs <- fmt.Errorf("session %d message %d: %w", s, m, err)
					return
				}
			}
			c.Quit()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := sink.Count(); got != sessions*perSession {
		t.Errorf("sink holds %d messages, want %d", got, sessions*perSession)
	}
	st := router.UpstreamStats()[0]
	router.Close() // every connection QUITs: the sink counts ended sessions
	deadline = time.Now().Add(10 * time.Second)
	for sink.Sessions()-before < int(st.Connections) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	conns := sink.Sessions() - before
	t.Logf("%d messages over %d upstream connections (router: %d opened, %d reuses)",
		sessions*perSession, conns, st.Connections, st.Reuses)
	if conns != int(st.Connections) {
		t.Errorf("sink saw %d sessions, router opened %d", conns, st.Connections)
	}
	if conns > maxUpstreamConns {
		t.Errorf("%d upstream connections for %d sessions × %d messages, want at most %d", conns, sessions, perSession, maxUpstreamConns)
	}
}
