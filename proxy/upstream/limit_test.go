package upstream

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// waitForWaiters blocks until n transactions wait for a connection to u:
// the test then knows the next release hands over, without any sleep.
func waitForWaiters(t *testing.T, r *Router, name string, n int) {
	t.Helper()
	u := r.byName[name]
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := len(u.waiters)
		r.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters on %s, want %d", got, name, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func statsOf(r *Router, name string) UpstreamStats {
	for _, s := range r.UpstreamStats() {
		if s.Name == name {
			return s
		}
	}
	return UpstreamStats{}
}

func TestMaxConnections(t *testing.T) {
	ctx := context.Background()

	t.Run("second_transaction_waits_then_reuses", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		r := newTestRouter(t, []Config{c}, f)
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			tx  *Tx
			err error
		}
		done := make(chan result, 1)
		go func() {
			tx, err := r.Begin(ctx, "", "c@example.com", nil)
			done <- result{tx, err}
		}()
		waitForWaiters(t, r, "primary", 1)
		if err := tx1.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tx1.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.err != nil {
			t.Fatalf("waiting Begin: %v", res.err)
		}
		if err := res.tx.Rcpt(ctx, "d@example.net", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := res.tx.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatal(err)
		}
		if cmds := f.commands(); len(cmds) != 1 {
			t.Errorf("upstream saw %d connections (%v), want 1: the waiter must reuse the first", len(cmds), cmds)
		}
		if got := len(f.transactions()); got != 2 {
			t.Errorf("upstream got %d messages, want 2", got)
		}
		if s := statsOf(r, "primary"); s.Connections != 1 || s.Reuses != 1 || s.Open != 1 {
			t.Errorf("UpstreamStats = %+v, want 1 connection, 1 reuse, 1 open", s)
		}
	})

	t.Run("waiter_gets_handover_even_with_pool_size_0", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		zero := 0
		c.PoolSize = &zero
		r := newTestRouter(t, []Config{c}, f)
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			tx, err := r.Begin(ctx, "", "c@example.com", nil)
			if err == nil {
				tx.Abort()
			}
			done <- err
		}()
		waitForWaiters(t, r, "primary", 1)
		tx1.Abort() // RSET 250: back to the waiter, not closed
		if err := <-done; err != nil {
			t.Fatalf("waiting Begin: %v", err)
		}
		if cmds := f.commands(); len(cmds) != 1 {
			t.Errorf("upstream saw %d connections, want 1", len(cmds))
		}
	})

	t.Run("closed_connection_frees_a_slot_for_the_waiter", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		c.MaxMessagesPerConnection = 1 // the first connection is closed after its message
		r := newTestRouter(t, []Config{c}, f)
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			tx, err := r.Begin(ctx, "", "c@example.com", nil)
			if err == nil {
				tx.Abort()
			}
			done <- err
		}()
		waitForWaiters(t, r, "primary", 1)
		tx1.Rcpt(ctx, "b@example.net", nil)
		if _, err := tx1.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("waiting Begin: %v", err)
		}
		if s := statsOf(r, "primary"); s.Connections != 2 || s.Reuses != 0 {
			t.Errorf("UpstreamStats = %+v, want 2 connections, no reuse", s)
		}
	})

	t.Run("waiter_times_out_with_451", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		c.ConnectTimeout = "50ms" // bounds the wait; nothing comes back
		r := newTestRouter(t, []Config{c}, f)
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx1.Abort()
		_, err = r.Begin(ctx, "", "c@example.com", nil)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if FailedUpstream(err) != "primary" {
			t.Errorf("FailedUpstream = %q", FailedUpstream(err))
		}
		r.mu.Lock()
		waiters := len(r.byName["primary"].waiters)
		r.mu.Unlock()
		if waiters != 0 {
			t.Errorf("%d waiters left after the timeout", waiters)
		}
		if s := statsOf(r, "primary"); s.Open != 1 || s.Connections != 1 {
			t.Errorf("UpstreamStats = %+v, want 1 open, 1 opened", s)
		}
	})

	t.Run("waiter_cancelled_leaves_no_slot_behind", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		r := newTestRouter(t, []Config{c}, f)
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := r.Begin(cctx, "", "c@example.com", nil)
			done <- err
		}()
		waitForWaiters(t, r, "primary", 1)
		cancel()
		if err := <-done; !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		tx1.Abort()
		// The slot is free again: the next transaction reuses the
		// connection at once.
		relay(t, r, "e@example.com", []string{"f@example.net"}, msg(100))
		if s := statsOf(r, "primary"); s.Open != 1 || s.Connections != 1 || s.Reuses != 1 {
			t.Errorf("UpstreamStats = %+v, want 1 open, 1 opened, 1 reuse", s)
		}
	})

	t.Run("failed_dial_frees_its_slot", func(t *testing.T) {
		c := cfgFor("down", "127.0.0.1:1")
		c.MaxConnections = 1
		r := newTestRouter(t, []Config{c})
		for range 2 { // a leaked slot would make the second wait instead of dialing
			if _, err := r.Begin(ctx, "", "a@example.com", nil); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrUnavailable", err)
			}
		}
		if s := statsOf(r, "down"); s.Open != 0 || s.Connections != 0 {
			t.Errorf("UpstreamStats = %+v, want nothing open", s)
		}
	})

	t.Run("close_wakes_waiters", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxConnections = 1
		r, err := NewRouter([]Config{c}, WithLogger(slogFor(t)), WithHostname("mailgate.test"))
		if err != nil {
			t.Fatal(err)
		}
		tx1, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := r.Begin(ctx, "", "c@example.com", nil)
			done <- err
		}()
		waitForWaiters(t, r, "primary", 1)
		r.Close()
		if err := <-done; !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		tx1.Abort()
		checkLeaks(t, r, f)
		if s := statsOf(r, "primary"); s.Open != 0 {
			t.Errorf("UpstreamStats = %+v, want nothing open", s)
		}
	})
}
