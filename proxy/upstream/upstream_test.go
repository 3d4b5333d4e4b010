package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func smtpErr(code int, ec smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}
}

// wantReply asserts that AsSMTPError(err) is code/ec, and that a 5xx only
// appears where the test says the upstream (or the request) was permanent.
func wantReply(t *testing.T, err error, code int, ec smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want %d %v", code, ec)
	}
	got := AsSMTPError(err)
	if got.Code != code || got.EnhancedCode != ec {
		t.Fatalf("AsSMTPError(%v) = %d %v %q, want %d %v", err, got.Code, got.EnhancedCode, got.Message, code, ec)
	}
	return got
}

func TestRelay(t *testing.T) {
	ctx := context.Background()

	t.Run("basic_relay_dot_stuffed", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		body := []byte("Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n")
		rep := relay(t, r, "a@example.com", []string{"b@example.net", "c@example.net"}, body)
		if rep.Code != 250 || rep.EnhancedCode != (smtp.EnhancedCode{2, 0, 0}) || rep.Message != "Ok: queued as FAKE123" {
			t.Errorf("reply = %+v", rep)
		}
		txs := f.transactions()
		if len(txs) != 1 {
			t.Fatalf("upstream got %d messages, want 1", len(txs))
		}
		if !bytes.Equal(txs[0].data, body) {
			t.Errorf("upstream body = %q, want %q (dot-stuffing must round-trip)", txs[0].data, body)
		}
		if txs[0].from != "a@example.com" || !slices.Equal(txs[0].rcpts, []string{"b@example.net", "c@example.net"}) {
			t.Errorf("envelope = %q %q", txs[0].from, txs[0].rcpts)
		}
		cmds := f.commands()
		if len(cmds) != 1 || cmds[0][0] != "EHLO" {
			t.Errorf("commands = %v", cmds)
		}
	})

	t.Run("reuse_without_rset", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		relay(t, r, "c@example.com", []string{"d@example.net"}, msg(100))
		cmds := f.commands()
		want := []string{"EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"}
		if len(cmds) != 1 || !slices.Equal(cmds[0], want) {
			t.Fatalf("upstream commands = %v, want one connection with %v", cmds, want)
		}
		if st := r.Stats(); st.Idle != 1 || st.Open != 1 {
			t.Errorf("Stats = %+v, want 1 idle, 1 open", st)
		}
	})

	t.Run("dead_pooled_conn_retried_once", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		// The upstream drops the idle connection (restart, its own timeout).
		f.mu.Lock()
		f.conns[0].Conn.Close()
		f.mu.Unlock()
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		if n := len(f.transactions()); n != 2 {
			t.Fatalf("upstream got %d messages, want 2", n)
		}
		if n := len(f.commands()); n != 2 {
			t.Errorf("upstream saw %d connections, want 2 (dead one + fresh one)", n)
		}

		// Retried only once: if the fresh connection fails too, the error
		// comes back (4xx).
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		f.set(func(f *fakeUpstream) {
			for _, c := range f.conns {
				c.Conn.Close()
			}
			f.onMail = func(string) *fault { return &fault{drop: true} }
		})
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("err = %v, want ErrUnavailable", err)
		}
		// conn 1 (killed), conn 2 (the retry, then reused and killed),
		// conn 3 (the single retry, dropped at MAIL): no further attempt.
		if n := len(f.commands()); n != 3 {
			t.Errorf("upstream saw %d connections, want 3 (one retry, not more)", n)
		}
	})

	t.Run("421_on_reused_conn_retried", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		first := true
		f.set(func(f *fakeUpstream) {
			f.onMail = func(string) *fault {
				if first {
					first = false
					return &fault{err: smtpErr(421, smtp.EnhancedCode{4, 4, 2}, "idle timeout")}
				}
				return nil
			}
		})
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		if n := len(f.commands()); n != 2 {
			t.Errorf("upstream saw %d connections, want 2", n)
		}
	})

	t.Run("failover_on_connect_failure", func(t *testing.T) {
		// A port that refuses connections: listen, note the address, close.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ln.Addr().String()
		ln.Close()
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", dead), cfgFor("secondary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		if tx.Upstream() != "secondary" {
			t.Errorf("Upstream() = %q, want secondary", tx.Upstream())
		}
		tx.Abort()

		// A route naming the dead upstream does not fail over.
		_, err = r.Begin(ctx, "primary", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})

		// All upstreams down: 4xx, never 5xx.
		r2 := newTestRouter(t, []Config{cfgFor("a", dead), cfgFor("b", dead)})
		_, err = r2.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
	})

	t.Run("failover_on_connect_timeout", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		blackhole := "192.0.2.1:587" // never dialled: the dialer below stalls it
		var d net.Dialer
		var blackholeDials atomic.Int32
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == blackhole {
				blackholeDials.Add(1)
				<-ctx.Done() // a silently dropped SYN
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		}
		primary := cfgFor("primary", blackhole)
		primary.ConnectTimeout = "100ms"
		r, err := NewRouter([]Config{primary, cfgFor("secondary", f.addr)},
			WithDialer(dial), WithLogger(slogFor(t)), WithHostname("mailgate.test"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { checkLeaks(t, r, f) })
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		defer tx.Abort()
		if tx.Upstream() != "secondary" {
			t.Errorf("Upstream() = %q, want secondary", tx.Upstream())
		}
		tx.Abort()
		// Held down: the next message goes straight to the secondary
		// instead of paying connect_timeout again.
		tx2, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		tx2.Abort()
		if n := blackholeDials.Load(); n != 1 {
			t.Errorf("primary dialled %d times, want 1 (held down after the failure)", n)
		}
		// A route naming only the held-down upstream still tries it.
		_, err = r.Begin(ctx, "primary", "a@example.com", nil)
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("err = %v, want ErrTimeout", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 2})
	})

	t.Run("no_failover_on_smtp_reply", func(t *testing.T) {
		f1 := startFake(t, fakeOpts{})
		f2 := startFake(t, fakeOpts{})
		f1.set(func(f *fakeUpstream) {
			f.onMail = func(string) *fault { return &fault{err: smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "sender denied")} }
		})
		r := newTestRouter(t, []Config{cfgFor("a", f1.addr), cfgFor("b", f2.addr)}, f1, f2)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		got := wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 1})
		if got.Message != "sender denied" {
			t.Errorf("message = %q", got.Message)
		}
		if len(f2.commands()) != 0 {
			t.Error("a 5xx reply must not fail over to the next upstream")
		}
	})

	t.Run("unknown_route", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		_, err := r.Begin(ctx, "nope", "a@example.com", nil)
		if !errors.Is(err, ErrUnknownRoute) {
			t.Fatalf("err = %v, want ErrUnknownRoute", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 3, 0})
	})

	t.Run("rcpt_552_becomes_452", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) {
			f.onRcpt = func(to string) *fault {
				switch to {
				case "many@example.net":
					return &fault{err: smtpErr(552, smtp.EnhancedCode{5, 5, 3}, "Too many recipients")}
				case "unknown@example.net":
					return &fault{err: smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "No such user")}
				case "busy@example.net":
					return &fault{err: smtpErr(450, smtp.EnhancedCode{4, 2, 1}, "Mailbox busy")}
				}
				return nil
			}
		})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Abort()
		got := wantReply(t, tx.Rcpt(ctx, "many@example.net", nil), 452, smtp.EnhancedCode{4, 5, 3})
		if got.Message != "Too many recipients" {
			t.Errorf("message = %q", got.Message)
		}
		wantReply(t, tx.Rcpt(ctx, "unknown@example.net", nil), 550, smtp.EnhancedCode{5, 1, 1})
		wantReply(t, tx.Rcpt(ctx, "busy@example.net", nil), 450, smtp.EnhancedCode{4, 2, 1})
		// The transaction survives per-recipient refusals.
		if err := tx.Rcpt(ctx, "ok@example.net", nil); err != nil {
			t.Fatalf("Rcpt after refusals: %v", err)
		}
		if _, err := tx.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatalf("Data: %v", err)
		}
		if txs := f.transactions(); len(txs) != 1 || !slices.Equal(txs[0].rcpts, []string{"ok@example.net"}) {
			t.Errorf("upstream transactions = %+v", txs)
		}
	})

	t.Run("drop_after_data_is_4xx", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) { f.onData = func([]byte) *fault { return &fault{drop: true} } })
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		rep, err := tx.Data(ctx, bytes.NewReader(msg(1000)))
		if rep != nil {
			t.Errorf("reply = %+v, want nil", rep)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("err = %v, want ErrUnavailable", err)
		}
		if st := r.Stats(); st.Idle != 0 {
			t.Errorf("broken connection pooled: %+v", st)
		}
		// Further use of the transaction reports the same failure.
		if err := tx.Rcpt(ctx, "c@example.net", nil); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Rcpt after drop = %v", err)
		}
	})

	t.Run("drop_at_each_stage_is_4xx", func(t *testing.T) {
		for _, stage := range []string{"mail", "rcpt"} {
			t.Run(stage, func(t *testing.T) {
				f := startFake(t, fakeOpts{})
				drop := func(string) *fault { return &fault{drop: true} }
				f.set(func(f *fakeUpstream) {
					if stage == "mail" {
						f.onMail = drop
					} else {
						f.onRcpt = drop
					}
				})
				r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
				tx, err := r.Begin(ctx, "", "a@example.com", nil)
				if err == nil {
					err = tx.Rcpt(ctx, "b@example.net", nil)
					tx.Abort()
				}
				wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
			})
		}
	})

	t.Run("timeout_is_4xx", func(t *testing.T) {
		for _, stage := range []string{"rcpt", "data", "ctx"} {
			t.Run(stage, func(t *testing.T) {
				f := startFake(t, fakeOpts{})
				stall := func() *fault { return &fault{stall: true} }
				f.set(func(f *fakeUpstream) {
					if stage == "data" {
						f.onData = func([]byte) *fault { return stall() }
					} else {
						f.onRcpt = func(string) *fault { return stall() }
					}
				})
				c := cfgFor("primary", f.addr)
				c.CommandTimeout, c.DataTimeout = "200ms", "300ms"
				tctx := ctx
				if stage == "ctx" {
					// The caller's deadline is shorter than command_timeout.
					c.CommandTimeout = "1m"
					var cancel context.CancelFunc
					tctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
					defer cancel()
				}
				r := newTestRouter(t, []Config{c}, f)
				tx, err := r.Begin(tctx, "", "a@example.com", nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Abort()
				err = tx.Rcpt(tctx, "b@example.net", nil)
				if err == nil {
					_, err = tx.Data(tctx, bytes.NewReader(msg(100)))
				}
				if !errors.Is(err, ErrTimeout) {
					t.Errorf("err = %v, want ErrTimeout", err)
				}
				wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 2})
				if st := r.Stats(); st.Open != 0 {
					t.Errorf("timed-out connection kept: %+v", st)
				}
			})
		}
	})

	t.Run("5xx_at_data_passes_through_cleaned", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) {
			f.onData = func([]byte) *fault {
				return &fault{err: smtpErr(554, smtp.EnhancedCode{5, 7, 1},
					"Message rejected\x07 by\tpolicy\x1b[31m\nsee https://example.test/why")}
			}
		})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Data(ctx, bytes.NewReader(msg(100)))
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			t.Fatalf("err = %T %v, want *smtp.SMTPError", err, err)
		}
		got := wantReply(t, err, 554, smtp.EnhancedCode{5, 7, 1})
		if want := "Message rejected by policy [31m; see https://example.test/why"; got.Message != want {
			t.Errorf("message = %q, want %q", got.Message, want)
		}
		// The refusal ended the transaction cleanly: the connection is
		// reused for the next message.
		f.set(func(f *fakeUpstream) { f.onData = nil })
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		if n := len(f.commands()); n != 1 {
			t.Errorf("upstream saw %d connections, want 1", n)
		}
	})

	t.Run("4xx_at_mail_passes_through", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) {
			f.onMail = func(string) *fault { return &fault{err: smtpErr(451, smtp.EnhancedCode{4, 7, 1}, "greylisted")} }
		})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 1})
		if st := r.Stats(); st.Idle != 1 {
			t.Errorf("connection after a refused MAIL should be pooled: %+v", st)
		}
	})

	t.Run("abort_sends_rset", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		tx.Abort()
		tx.Abort() // idempotent
		if _, err := tx.Data(ctx, bytes.NewReader(msg(10))); !errors.Is(err, ErrTxClosed) {
			t.Errorf("Data after Abort = %v, want ErrTxClosed", err)
		}
		if n := len(f.transactions()); n != 0 {
			t.Fatalf("upstream finished %d aborted messages", n)
		}
		// The connection went back to the pool and works (EHLO again:
		// go-smtp forgets it after RSET).
		relay(t, r, "c@example.com", []string{"d@example.net"}, msg(100))
		cmds := f.commands()
		want := []string{"EHLO", "MAIL", "RCPT", "RSET", "EHLO", "MAIL", "RCPT", "DATA"}
		if len(cmds) != 1 || !slices.Equal(cmds[0], want) {
			t.Errorf("upstream commands = %v, want %v", cmds, want)
		}
	})

	t.Run("data_command_refused_rolls_back", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) {
			f.onRcpt = func(string) *fault { return &fault{err: smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no")} }
		})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		tx.Rcpt(ctx, "b@example.net", nil)
		// No recipient accepted: the upstream refuses DATA itself (502),
		// its transaction is still open, so Data rolls it back with RSET.
		_, err = tx.Data(ctx, bytes.NewReader(msg(100)))
		wantReply(t, err, 502, smtp.EnhancedCode{5, 5, 1})
		cmds := f.commands()
		if want := []string{"EHLO", "MAIL", "RCPT", "DATA", "RSET"}; len(cmds) != 1 || !slices.Equal(cmds[0], want) {
			t.Errorf("upstream commands = %v, want %v", cmds, want)
		}
		if st := r.Stats(); st.Idle != 1 {
			t.Errorf("Stats = %+v, want the connection pooled after RSET", st)
		}
	})

	t.Run("read_error_never_finishes_message", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("spool read failed")
		_, err = tx.Data(ctx, io.MultiReader(bytes.NewReader(msg(100)), &failReader{boom}))
		if !errors.Is(err, boom) {
			t.Errorf("err = %v, want the read error", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 3, 0})
		checkLeaks(t, r, f)
		if n := len(f.transactions()); n != 0 {
			t.Errorf("upstream finished a message whose body failed to read")
		}
	})

	// A bare LF can only get here through a bug before the upstream (the
	// client's stream is checked strictly): never send the final dot.
	t.Run("bare_lf_in_body_never_finishes_message", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Data(ctx, strings.NewReader("Subject: x\r\n\r\nok\r\nsmuggled\n.\nMAIL FROM:<evil@example.com>\r\n"))
		if !errors.Is(err, errLineEnding) {
			t.Errorf("err = %v, want errLineEnding", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 3, 0})
		checkLeaks(t, r, f)
		if n := len(f.transactions()); n != 0 {
			t.Errorf("upstream finished a message with a bare LF")
		}
	})

	t.Run("crlf_in_address_refused", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		for _, bad := range []string{"a@example.com\r\nRCPT TO:<x@evil>", "a@example.com\n", "a\x00@example.com", "a@example.com> SIZE=1", "<a@example.com"} {
			_, err := r.Begin(ctx, "", bad, nil)
			if !errors.Is(err, ErrInvalidAddress) {
				t.Errorf("Begin(%q) = %v, want ErrInvalidAddress", bad, err)
			}
			wantReply(t, err, 501, smtp.EnhancedCode{5, 1, 7})
		}
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Abort()
		err = tx.Rcpt(ctx, "b@example.net\r\nDATA", nil)
		wantReply(t, err, 501, smtp.EnhancedCode{5, 1, 3})
		for _, c := range f.commands() {
			if slices.Contains(c, "RCPT") || slices.Contains(c, "DATA") {
				t.Errorf("refused address reached the upstream: %v", c)
			}
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Errorf("transaction unusable after a refused address: %v", err)
		}
	})

	t.Run("null_sender", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		relay(t, r, "", []string{"b@example.net"}, msg(100))
		if txs := f.transactions(); len(txs) != 1 || txs[0].from != "" {
			t.Errorf("transactions = %+v", txs)
		}
	})

	t.Run("max_messages_per_connection", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.MaxMessagesPerConnection = 2
		r := newTestRouter(t, []Config{c}, f)
		for range 5 {
			relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		}
		checkLeaks(t, r, f) // waits for the background QUITs
		cmds := f.commands()
		if len(cmds) != 3 {
			t.Fatalf("upstream saw %d connections, want 3 for 5 messages at 2 per connection", len(cmds))
		}
		for _, c := range cmds[:2] {
			if n := countOf(c, "MAIL"); n != 2 || c[len(c)-1] != "QUIT" {
				t.Errorf("connection commands = %v, want 2 MAIL then QUIT", c)
			}
		}
	})

	t.Run("idle_timeout", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.IdleTimeout = "50ms"
		r := newTestRouter(t, []Config{c}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		deadline := time.Now().Add(5 * time.Second)
		for r.Stats().Open != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if st := r.Stats(); st.Open != 0 || st.Idle != 0 {
			t.Fatalf("idle connection not expired: %+v", st)
		}
		if cmds := f.commands(); cmds[0][len(cmds[0])-1] != "QUIT" {
			t.Errorf("expired connection not closed with QUIT: %v", cmds[0])
		}
	})

	t.Run("pool_size_bounded", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		two := 2
		c.PoolSize = &two
		r := newTestRouter(t, []Config{c}, f)
		var txs []*Tx
		for range 4 {
			tx, err := r.Begin(ctx, "", "a@example.com", nil)
			if err != nil {
				t.Fatal(err)
			}
			txs = append(txs, tx)
		}
		if st := r.Stats(); st.Open != 4 {
			t.Errorf("Stats = %+v, want 4 open", st)
		}
		for _, tx := range txs {
			tx.Abort()
		}
		if st := r.Stats(); st.Idle != 2 {
			t.Errorf("Stats = %+v, want 2 idle", st)
		}
	})

	t.Run("smtputf8", func(t *testing.T) {
		plain := startFake(t, fakeOpts{})
		utf := startFake(t, fakeOpts{smtputf8: true})
		r := newTestRouter(t, []Config{cfgFor("plain", plain.addr), cfgFor("utf", utf.addr)}, plain, utf)
		_, err := r.Begin(ctx, "plain", "jösé@example.com", &smtp.MailOptions{UTF8: true})
		if !errors.Is(err, ErrSMTPUTF8) {
			t.Errorf("err = %v, want ErrSMTPUTF8", err)
		}
		wantReply(t, err, 550, smtp.EnhancedCode{5, 6, 7})
		tx, err := r.Begin(ctx, "utf", "jösé@example.com", &smtp.MailOptions{UTF8: true, Size: 123})
		if err != nil {
			t.Fatal(err)
		}
		tx.Rcpt(ctx, "b@example.net", nil)
		if _, err := tx.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatal(err)
		}
		if got := utf.transactions()[0].opts; !got.UTF8 || got.Size != 123 || got.Body != smtp.Body8BitMIME {
			t.Errorf("MAIL options = %+v, want SMTPUTF8 SIZE=123 BODY=8BITMIME", got)
		}
	})

	// SMTPUTF8 is a request, not a need: an all-ASCII sender goes to an
	// upstream without SMTPUTF8 without the parameter, and only a
	// non-ASCII recipient is refused (issue 10, Go's net/smtp lockout).
	t.Run("smtputf8_requested_not_needed", func(t *testing.T) {
		plain := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("plain", plain.addr)}, plain)
		tx, err := r.Begin(ctx, "", "a@example.com", &smtp.MailOptions{UTF8: true})
		if err != nil {
			t.Fatalf("ASCII sender with SMTPUTF8 requested: %v", err)
		}
		defer tx.Abort()
		if tx.SMTPUTF8() {
			t.Error("Tx.SMTPUTF8() = true for an upstream without SMTPUTF8")
		}
		err = tx.Rcpt(ctx, "bjørn@example.net", nil)
		if !errors.Is(err, ErrSMTPUTF8) {
			t.Errorf("non-ASCII recipient: err = %v, want ErrSMTPUTF8", err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			t.Fatalf("ASCII recipient after a refused one: %v", err)
		}
		if _, err := tx.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatal(err)
		}
		txs := plain.transactions()
		if len(txs) != 1 || txs[0].opts.UTF8 {
			t.Errorf("upstream transactions %+v, want one without SMTPUTF8", txs)
		}
	})

	// Offer asks every upstream for an EHLO keyword at start-up and keeps
	// the connection for the first transaction.
	t.Run("offer", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		if r.Offer(ctx, "DSN") {
			t.Error("Offer(DSN) = true, the upstream does not offer DSN")
		}
		if !r.Offer(ctx, "8BITMIME") {
			t.Error("Offer(8BITMIME) = false")
		}
		if st := r.Stats(); st.Idle != 2 {
			t.Errorf("Stats = %+v, want both probe connections pooled (2 idle)", st)
		}
		down := newTestRouter(t, []Config{cfgFor("primary", f.addr), cfgFor("down", "127.0.0.1:1")})
		if down.Offer(ctx, "8BITMIME") {
			t.Error("Offer = true with an upstream down")
		}
	})

	t.Run("requiretls_and_envid", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		_, err := r.Begin(ctx, "", "a@example.com", &smtp.MailOptions{RequireTLS: true})
		if !errors.Is(err, ErrRequireTLS) {
			t.Errorf("err = %v, want ErrRequireTLS", err)
		}
		wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 30})
		_, err = r.Begin(ctx, "", "a@example.com", &smtp.MailOptions{EnvelopeID: "id\x01"})
		wantReply(t, err, 501, smtp.EnhancedCode{5, 5, 4})
		if n := len(f.transactions()); n != 0 {
			t.Errorf("refused MAIL reached the upstream")
		}
	})

	t.Run("client_gone_is_4xx", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		f.set(func(f *fakeUpstream) { f.onData = func([]byte) *fault { return &fault{stall: true} } })
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		cctx, cancel := context.WithCancel(ctx)
		tx, err := r.Begin(cctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(cctx, "b@example.net", nil); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err = tx.Data(cctx, bytes.NewReader(msg(1000)))
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("err = %v, want ErrUnavailable", err)
		}
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if st := r.Stats(); st.Open != 0 {
			t.Errorf("cancelled connection kept: %+v", st)
		}
	})

	t.Run("binarymime_refused", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		_, err := r.Begin(ctx, "", "a@example.com", &smtp.MailOptions{Body: smtp.BodyBinaryMIME})
		wantReply(t, err, 501, smtp.EnhancedCode{5, 5, 4})
	})

	t.Run("router_closed", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		r := newTestRouter(t, []Config{cfgFor("primary", f.addr)}, f)
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		tx.Rcpt(ctx, "b@example.net", nil)
		if _, err := tx.Data(ctx, bytes.NewReader(msg(100))); err != nil {
			t.Fatalf("in-flight transaction must finish after Close: %v", err)
		}
		_, err = r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
	})
}

type failReader struct{ err error }

func (r *failReader) Read([]byte) (int, error) { return 0, r.err }

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestTLSAndAuth(t *testing.T) {
	ctx := context.Background()
	srvTLS, caFile := selfSigned(t)

	t.Run("tls_verify_required", func(t *testing.T) {
		f := startFake(t, fakeOpts{tls: srvTLS})
		c := cfgFor("primary", f.addr)
		c.TLS = TLSStartTLS
		r := newTestRouter(t, []Config{c}, f)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("err = %v, want a certificate verification error", err)
		}
		if n := len(f.transactions()); n != 0 {
			t.Error("MAIL sent over an unverified connection")
		}
	})

	t.Run("tls_ca_file_verifies", func(t *testing.T) {
		for _, mode := range []string{TLSStartTLS, TLSImplicit} {
			t.Run(mode, func(t *testing.T) {
				f := startFake(t, fakeOpts{tls: srvTLS, implicit: mode == TLSImplicit})
				c := cfgFor("primary", f.addr)
				c.TLS, c.CAFile = mode, caFile
				r := newTestRouter(t, []Config{c}, f)
				relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
				res := r.Probe(ctx)
				if len(res) != 1 || !res[0].OK || res[0].TLSVersion == "" {
					t.Errorf("Probe = %+v", res)
				}
			})
		}
	})

	t.Run("insecure_skip_verify", func(t *testing.T) {
		f := startFake(t, fakeOpts{tls: srvTLS})
		c := cfgFor("primary", f.addr)
		c.TLS, c.InsecureSkipVerify = TLSStartTLS, true
		r := newTestRouter(t, []Config{c}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
	})

	t.Run("starttls_required_when_not_offered", func(t *testing.T) {
		f := startFake(t, fakeOpts{})
		c := cfgFor("primary", f.addr)
		c.TLS = TLSStartTLS
		r := newTestRouter(t, []Config{c}, f)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
	})

	t.Run("wrong_server_name_refused", func(t *testing.T) {
		f := startFake(t, fakeOpts{tls: srvTLS})
		c := cfgFor("primary", f.addr)
		c.TLS, c.CAFile, c.ServerName = TLSStartTLS, caFile, "mail.other.test"
		r := newTestRouter(t, []Config{c}, f)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
	})

	t.Run("auth_plain_required", func(t *testing.T) {
		f := startFake(t, fakeOpts{tls: srvTLS, user: "relay", pass: "s3cret"})
		c := cfgFor("primary", f.addr)
		c.TLS, c.CAFile = TLSStartTLS, caFile
		r := newTestRouter(t, []Config{c}, f)
		_, err := r.Begin(ctx, "", "a@example.com", nil)
		// Without credentials the upstream says 502 5.7.0 at MAIL.
		wantReply(t, err, 502, smtp.EnhancedCode{5, 7, 0})

		c.Username, c.Password = "relay", "s3cret"
		// Leak checks run LIFO: only the first router waits on f.
		r2 := newTestRouter(t, []Config{c})
		relay(t, r2, "a@example.com", []string{"b@example.net"}, msg(100))

		c.Password = "wrong"
		r3 := newTestRouter(t, []Config{c})
		_, err = r3.Begin(ctx, "", "a@example.com", nil)
		// Our credentials being refused is our problem, never the client's 5xx.
		wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
		if strings.Contains(err.Error(), "wrong") {
			t.Errorf("error leaks the password: %v", err)
		}
		res := r3.Probe(ctx)
		if res[0].OK || !errors.Is(res[0].Err, ErrUnavailable) {
			t.Errorf("Probe with a wrong password = %+v", res[0])
		}
	})

	t.Run("auth_mechanism_choice", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			offered []string
			want    string
		}{
			{"plain_preferred", []string{sasl.Login, sasl.Plain}, sasl.Plain},
			{"login_when_only_login", []string{sasl.Login}, sasl.Login},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f := startFake(t, fakeOpts{user: "relay", pass: "s3cret", mechs: tc.offered})
				c := cfgFor("primary", f.addr)
				c.Username, c.Password = "relay", "s3cret"
				r := newTestRouter(t, []Config{c}, f)
				relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
				f.mu.Lock()
				defer f.mu.Unlock()
				if f.mechUsed != tc.want {
					t.Errorf("AUTH %s used, want %s", f.mechUsed, tc.want)
				}
			})
		}
	})
}

// TestProbeConcurrent: an upstream that accepts and never greets does not
// use up the probe's deadline for the next one (the readiness probe asks
// whether any upstream answers).
func TestProbeConcurrent(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	defer func() { silent.Close(); <-done }()
	go func() {
		defer close(done)
		var held []net.Conn // never greeted
		for {
			c, err := silent.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	f := startFake(t, fakeOpts{})
	r := newTestRouter(t, []Config{cfgFor("silent", silent.Addr().String()), cfgFor("secondary", f.addr)}, f)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	res := r.Probe(ctx)
	if len(res) != 2 || res[0].Upstream != "silent" || res[1].Upstream != "secondary" {
		t.Fatalf("Probe = %+v, want both in config order", res)
	}
	if res[0].OK || !errors.Is(res[0].Err, ErrTimeout) {
		t.Errorf("silent upstream: %+v, want a timeout", res[0])
	}
	if !res[1].OK {
		t.Errorf("secondary: %+v, want OK", res[1])
	}
}
