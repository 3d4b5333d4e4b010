package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// longAgo is a deadline in the past: it makes all pending and future I/O
// fail immediately.
var longAgo = time.Unix(1, 0)

// dconn is the TCP connection under the smtp.Client. go-smtp sets its own
// per-command deadline and resets it to "none" afterwards; dconn clamps
// every deadline to limit so that our context and data deadlines always
// apply, and cancel makes all further I/O fail (context cancellation).
type dconn struct {
	net.Conn
	mu        sync.Mutex
	limit     time.Time // zero: no limit
	cancelled bool
	written   atomic.Int64
	// rd, wd are the deadlines last applied (under mu): go-smtp sets and
	// clears a deadline around every command, mostly to what is set
	// already, and each change re-arms runtime timers.
	rd, wd time.Time
}

// apply sets the read and/or write deadline to t unless it is set already.
// Callers hold mu.
func (c *dconn) apply(t time.Time, read, write bool) error {
	switch {
	case read && write && t.Equal(c.rd) && t.Equal(c.wd):
		return nil
	case read && write:
		c.rd, c.wd = t, t
		return c.Conn.SetDeadline(t)
	case read:
		if t.Equal(c.rd) {
			return nil
		}
		c.rd = t
		return c.Conn.SetReadDeadline(t)
	default:
		if t.Equal(c.wd) {
			return nil
		}
		c.wd = t
		return c.Conn.SetWriteDeadline(t)
	}
}

func (c *dconn) clamp(t time.Time) time.Time {
	if c.cancelled {
		return longAgo
	}
	if !c.limit.IsZero() && (t.IsZero() || t.After(c.limit)) {
		return c.limit
	}
	return t
}

func (c *dconn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apply(c.clamp(t), true, true)
}

func (c *dconn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apply(c.clamp(t), true, false)
}

func (c *dconn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apply(c.clamp(t), false, true)
}

func (c *dconn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// setLimit sets the hard deadline and applies it now.
func (c *dconn) setLimit(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit = t
	_ = c.apply(c.clamp(time.Time{}), true, true)
}

func (c *dconn) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cancelled = true
	_ = c.apply(longAgo, true, true)
}

// pconn is one upstream SMTP connection, owned either by the pool (idle) or
// by exactly one Tx.
type pconn struct {
	up       *upstream
	c        *smtp.Client
	raw      *dconn
	wire     *corkConn // what c speaks on: raw, or the TLS connection over raw
	tls      *tls.ConnectionState
	messages int  // transactions started (MAIL accepted)
	broken   bool // never reuse: transport error, cancelled, 421
	reused   bool // taken from the pool (may be dead)
	rehello  bool // go-smtp forgets EHLO after RSET; redo it before MAIL

	idleSince time.Time
	idleTimer *time.Timer
	closeOnce sync.Once
}

// op bounds one exchange: no I/O past limit or past ctx's deadline, and
// cancelling ctx fails the I/O at once (the connection is then broken).
// The returned func must be called when the exchange is over.
func (pc *pconn) op(ctx context.Context, limit time.Time) (end func()) {
	if dl, ok := ctx.Deadline(); ok && (limit.IsZero() || dl.Before(limit)) {
		limit = dl
	}
	pc.raw.setLimit(limit)
	stop := context.AfterFunc(ctx, pc.raw.cancel)
	return func() {
		if !stop() {
			pc.broken = true // cancel ran or is running: deadline poisoned
		}
		pc.raw.setLimit(time.Time{})
	}
}

// fail classifies err from an exchange at stage. An upstream 4xx/5xx reply
// comes back cleaned as *smtp.SMTPError and leaves the connection usable
// (except 421); anything else marks the connection broken and wraps
// ErrTimeout or ErrUnavailable.
func (pc *pconn) fail(ctx context.Context, stage string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && ctx.Err() == nil {
		if clean, ok := cleanReply(stage, se); ok {
			if se.Code == 421 {
				pc.broken = true
			}
			return clean
		}
	}
	pc.broken = true
	return transportError(pc.up.name, stage, classify(ctx, err), err)
}

// classify picks the sentinel for a transport error.
func classify(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return ErrTimeout
	}
	// The connection's deadline is ctx's deadline (see op), and the network
	// poller can fire it before ctx's own timer has marked ctx done; go-smtp
	// does not always wrap the net.Error it got, so look at the clock.
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return ErrTimeout
	}
	if ctx.Err() != nil {
		return ErrUnavailable // cancelled: the client went away
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrTimeout
	}
	return ErrUnavailable
}

// close closes the connection, with QUIT when graceful and the connection
// is healthy. Safe to call more than once.
func (pc *pconn) close(graceful bool) {
	pc.closeOnce.Do(func() {
		if graceful && !pc.broken {
			to := min(pc.up.s.commandTimeout, quitTimeout)
			pc.raw.setLimit(time.Now().Add(to))
			_ = pc.c.Quit()
		}
		_ = pc.c.Close()
		pc.up.r.open.Add(-1)
		pc.up.r.freeSlot(pc.up)
	})
}

// quitTimeout caps how long QUIT and Abort's RSET may wait: a slow
// goodbye is not worth holding a session or shutdown for.
const quitTimeout = 10 * time.Second

// dial opens, greets, secures and authenticates a new connection within
// connect_timeout. Every failure wraps ErrUnavailable or ErrTimeout.
func (u *upstream) dial(ctx context.Context) (*pconn, error) {
	ctx, cancel := context.WithTimeout(ctx, u.s.connectTimeout)
	defer cancel()

	nc, err := u.r.dialer(ctx, "tcp", u.cfg.Address)
	if err != nil {
		return nil, transportError(u.name, "connect", classify(ctx, err), err)
	}
	u.r.open.Add(1)
	raw := &dconn{Conn: nc}
	pc := &pconn{up: u, raw: raw}
	end := pc.op(ctx, time.Time{})
	fail := func(stage string, err error) (*pconn, error) {
		end()
		pc.broken = true
		if pc.c != nil {
			_ = pc.c.Close()
		} else {
			_ = raw.Close()
		}
		u.r.open.Add(-1)
		return nil, transportError(u.name, stage, classify(ctx, err), err)
	}

	switch u.cfg.TLS {
	case TLSImplicit:
		tc := tls.Client(raw, u.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail("tls", err)
		}
		pc.wire = &corkConn{Conn: tc}
	case TLSStartTLS:
		tc, err := startTLS(ctx, raw, u.helo, u.tlsConfig)
		if err != nil {
			return fail("starttls", err)
		}
		pc.wire = &corkConn{Conn: tc}
	default:
		pc.wire = &corkConn{Conn: raw}
	}
	if tc, ok := pc.wire.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		pc.tls = &st
	}
	if u.cfg.TLS == TLSStartTLS {
		// The greeting was read before STARTTLS: go-smtp's client reads
		// one when it starts, so it gets that one again.
		pc.c = smtp.NewClient(&greetedConn{Conn: pc.wire, greeting: []byte("220 greeted before STARTTLS\r\n")})
	} else {
		pc.c = smtp.NewClient(pc.wire)
	}
	pc.c.CommandTimeout = u.s.commandTimeout
	pc.c.SubmissionTimeout = u.s.dataTimeout
	if err := pc.c.Hello(u.helo); err != nil {
		return fail("ehlo", err)
	}
	if u.cfg.Username != "" {
		mech, err := u.saslClient(pc.c)
		if err != nil {
			return fail("auth", err)
		}
		if err := pc.c.Auth(mech); err != nil {
			// Never log the payload: go-smtp's error holds only the reply.
			return fail("auth", err)
		}
	}
	end()
	if pc.broken { // the connect deadline hit just as we finished
		return fail("connect", context.DeadlineExceeded)
	}
	attrs := []slog.Attr{slog.String("upstream", u.name), slog.String("address", u.cfg.Address)}
	if pc.tls != nil {
		attrs = append(attrs, slog.String("tls", tls.VersionName(pc.tls.Version)))
	}
	u.r.log.LogAttrs(ctx, slog.LevelDebug, "upstream connected", attrs...)
	return pc, nil
}

// saslClient picks AUTH PLAIN, or LOGIN when only that is offered.
func (u *upstream) saslClient(c *smtp.Client) (sasl.Client, error) {
	ok, mechs := c.Extension("AUTH")
	if !ok {
		return nil, errors.New("AUTH not offered by upstream")
	}
	var login bool
	for _, m := range strings.Fields(mechs) {
		switch strings.ToUpper(m) {
		case sasl.Plain:
			return sasl.NewPlainClient("", u.cfg.Username, u.cfg.Password), nil
		case sasl.Login:
			login = true
		}
	}
	if login {
		return sasl.NewLoginClient(u.cfg.Username, u.cfg.Password), nil
	}
	return nil, fmt.Errorf("no supported AUTH mechanism in %q (want PLAIN or LOGIN)", mechs)
}
