package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailgate/mailgate/proxy/tlspolicy"
)

// Router holds every configured upstream with its connection pool. It is
// safe for concurrent use.
type Router struct {
	ups    []*upstream
	byName map[string]*upstream
	log    *slog.Logger
	dialer func(ctx context.Context, network, addr string) (net.Conn, error)

	mu     sync.Mutex
	closed bool
	bg     sync.WaitGroup // background QUITs
	open   atomic.Int64   // connections open right now (idle + in use)
}

// upstream is one configured upstream and its idle connections.
type upstream struct {
	r         *Router
	name      string
	cfg       Config
	s         settings
	helo      string
	tlsConfig *tls.Config
	idle      []*pconn  // guarded by r.mu; most recently used last
	downUntil time.Time // guarded by r.mu; last connect failed: try last until then
	// open counts connections open or being dialed (guarded by r.mu):
	// at most cfg.MaxConnections. waiters are the transactions waiting for
	// one to come back, oldest first (guarded by r.mu).
	open    int
	waiters []*waiter

	dials  atomic.Int64 // connections opened for transactions (Begin, Offer)
	reuses atomic.Int64 // transactions that got an existing connection
}

// waiter is a transaction waiting for a connection to its upstream. It
// receives exactly once on ch: a connection handed over by release, or nil
// meaning "a slot was freed and reserved for you: dial".
type waiter struct {
	ch chan *pconn // buffered, 1
}

// holdDown is how long an upstream that failed to connect is tried after
// the others, so that a blackholed primary does not cost connect_timeout
// on every message. It is still tried (last), so a single-upstream route
// keeps working as soon as the upstream is back.
const holdDown = 30 * time.Second

// Option configures NewRouter.
type Option func(*options)

type options struct {
	log      *slog.Logger
	dialer   func(ctx context.Context, network, addr string) (net.Conn, error)
	tls      *tls.Config
	hostname string
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDialer replaces the TCP dialer (default net.Dialer.DialContext). The
// context carries the connect deadline.
func WithDialer(d func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dialer = d }
}

// WithTLSConfig sets the base TLS configuration, cloned per upstream; each
// upstream's tls_min_version, tls_cipher_suites (default TLS 1.2+, AEAD
// suites only: package tlspolicy), server_name, insecure_skip_verify and
// ca_file are applied on top of it. Default: a zero config.
func WithTLSConfig(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithHostname sets the EHLO name used by upstreams without helo (the
// global hostname). Default: os.Hostname().
func WithHostname(h string) Option { return func(o *options) { o.hostname = h } }

// NewRouter validates cfgs (defaults applied) and builds a Router. It does
// not connect: connections are opened on demand by Begin. Names must be
// unique; at least one upstream is required.
func NewRouter(cfgs []Config, opts ...Option) (*Router, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.dialer == nil {
		var d net.Dialer
		o.dialer = d.DialContext
	}
	if o.hostname == "" {
		o.hostname, _ = os.Hostname()
		if o.hostname == "" {
			o.hostname = "localhost"
		}
	}
	if len(cfgs) == 0 {
		return nil, fmt.Errorf("%w: no upstream configured", ErrConfig)
	}
	r := &Router{byName: make(map[string]*upstream), log: o.log, dialer: o.dialer}
	var errs []error
	for _, c := range cfgs {
		c = c.WithDefaults()
		s, err := c.parse()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := r.byName[c.Name]; dup {
			errs = append(errs, fmt.Errorf("%w: upstream %q defined twice", ErrConfig, c.Name))
			continue
		}
		tc, err := tlsConfigFor(o.tls, c, s.tls)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u := &upstream{r: r, name: c.Name, cfg: c, s: s, helo: c.Helo, tlsConfig: tc}
		if u.helo == "" {
			u.helo = o.hostname
		}
		r.ups = append(r.ups, u)
		r.byName[c.Name] = u
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

func tlsConfigFor(base *tls.Config, c Config, p tlspolicy.Policy) (*tls.Config, error) {
	var tc *tls.Config
	if base != nil {
		tc = base.Clone()
	} else {
		tc = &tls.Config{}
	}
	p.Apply(tc)
	tc.ServerName = c.ServerName
	if c.InsecureSkipVerify {
		tc.InsecureSkipVerify = true
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: upstream %q: ca_file: %w", ErrConfig, c.Name, err)
		}
		pool := tc.RootCAs
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		} else {
			pool = pool.Clone()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: upstream %q: ca_file %s: no PEM certificate found", ErrConfig, c.Name, c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// route returns the upstreams to try for route, in order.
func (r *Router) route(route string) ([]*upstream, error) {
	if route == "" {
		return r.ups, nil
	}
	u, ok := r.byName[route]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownRoute, route)
	}
	return []*upstream{u}, nil
}

// Upstreams returns the configured names in config order.
func (r *Router) Upstreams() []string {
	names := make([]string, len(r.ups))
	for i, u := range r.ups {
		names[i] = u.name
	}
	return names
}

// checkout takes the most recently used idle connection of u, or nil.
// r.mu must be held.
func (r *Router) checkout(u *upstream) *pconn {
	for len(u.idle) > 0 {
		pc := u.idle[len(u.idle)-1]
		u.idle[len(u.idle)-1] = nil
		u.idle = u.idle[:len(u.idle)-1]
		pc.idleTimer.Stop() // its expire finds pc gone from idle: no-op
		if time.Since(pc.idleSince) >= u.s.idleTimeout {
			r.closeBackground(pc, true)
			continue
		}
		pc.reused = true
		u.reuses.Add(1)
		return pc
	}
	return nil
}

// release hands a connection back after a finished transaction: to the
// oldest waiting transaction, else into the pool when healthy and there is
// room, else closed (QUIT in the background
// when healthy, so the client's reply is not delayed).
func (r *Router) release(pc *pconn) {
	u := pc.up
	r.mu.Lock()
	if r.closed {
		// Close may already be waiting on r.bg: close synchronously.
		r.mu.Unlock()
		pc.close(true)
		return
	}
	defer r.mu.Unlock()
	if pc.broken || pc.messages >= u.cfg.MaxMessagesPerConnection {
		r.closeBackground(pc, true)
		return
	}
	if len(u.waiters) > 0 {
		// A transaction is waiting at max_connections: hand over
		// directly, whatever the idle pool holds.
		w := u.waiters[0]
		u.waiters[0] = nil
		u.waiters = u.waiters[1:]
		pc.reused = true
		u.reuses.Add(1)
		w.ch <- pc
		return
	}
	if len(u.idle) >= *u.cfg.PoolSize {
		r.closeBackground(pc, true)
		return
	}
	pc.reused = false
	pc.idleSince = time.Now()
	pc.idleTimer = time.AfterFunc(u.s.idleTimeout, func() { r.expire(pc) })
	u.idle = append(u.idle, pc)
}

// expire closes pc if it is still idle (idle_timeout elapsed).
func (r *Router) expire(pc *pconn) {
	u := pc.up
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range u.idle {
		if p == pc {
			u.idle = append(u.idle[:i], u.idle[i+1:]...)
			r.closeBackground(pc, true)
			return
		}
	}
}

// closeBackground closes pc in a goroutine that Close waits for. r.mu must
// be held, and r.closed false unless called from Close itself (so that no
// r.bg.Add races with r.bg.Wait).
func (r *Router) closeBackground(pc *pconn, graceful bool) {
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		pc.close(graceful)
	}()
}

// discard closes a broken connection now, without QUIT.
func (r *Router) discard(pc *pconn) {
	pc.broken = true
	pc.close(false)
}

// connect returns a connection to the first upstream of ups that works:
// an idle one from its pool, else a new one. It moves to the next upstream
// only on connect failure; with fresh it skips the pools. Upstreams that
// failed to connect in the last holdDown are tried after the others.
func (r *Router) connect(ctx context.Context, ups []*upstream, fresh bool) (*pconn, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("upstream: router closed: %w", ErrUnavailable)
	}
	order := make([]*upstream, 0, len(ups))
	var down []*upstream
	now := time.Now()
	for _, u := range ups {
		if now.Before(u.downUntil) {
			down = append(down, u)
		} else {
			order = append(order, u)
		}
	}
	order = append(order, down...)
	r.mu.Unlock()

	var errs []error
	for _, u := range order {
		pc, mustDial, err := r.acquire(ctx, u, fresh)
		if err != nil {
			r.log.LogAttrs(ctx, slog.LevelWarn, "upstream busy",
				slog.String("upstream", u.name), slog.Int("max_connections", u.cfg.MaxConnections), slog.Any("error", err))
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if !mustDial {
			return pc, nil
		}
		pc, err = u.dial(ctx)
		if err != nil {
			r.freeSlot(u)
		}
		r.mu.Lock()
		if err == nil {
			u.downUntil = time.Time{}
		} else if ctx.Err() == nil {
			u.downUntil = time.Now().Add(holdDown)
		}
		r.mu.Unlock()
		if err == nil {
			u.dials.Add(1)
			return pc, nil
		}
		r.log.LogAttrs(ctx, slog.LevelWarn, "upstream connect failed",
			slog.String("upstream", u.name), slog.String("address", u.cfg.Address), slog.Any("error", err))
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	// errors.Join keeps ErrTimeout reachable when one upstream timed out;
	// AsSMTPError checks ErrTimeout first, so any timeout wins.
	return nil, errors.Join(errs...)
}

// errBusy is the cause (wrapped with ErrUnavailable) when every one of an upstream's
// max_connections stayed in use for connect_timeout.
var errBusy = errors.New("all max_connections in use")

// acquire gets u's idle connection (pc), or a reserved slot to dial
// (mustDial), waiting up to connect_timeout for either when u has
// max_connections open. With fresh, the idle pool is skipped.
func (r *Router) acquire(ctx context.Context, u *upstream, fresh bool) (pc *pconn, mustDial bool, _ error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, false, fmt.Errorf("upstream: router closed: %w", ErrUnavailable)
	}
	if !fresh {
		// Under the same lock as the decision to wait: a connection
		// returned just before is found here, not missed by a waiter.
		if pc := r.checkout(u); pc != nil {
			r.mu.Unlock()
			return pc, false, nil
		}
	}
	if u.open < u.cfg.MaxConnections {
		u.open++
		r.mu.Unlock()
		return nil, true, nil
	}
	w := &waiter{ch: make(chan *pconn, 1)}
	u.waiters = append(u.waiters, w)
	r.mu.Unlock()

	t := time.NewTimer(u.s.connectTimeout)
	defer t.Stop()
	var cause error
	select {
	case pc := <-w.ch:
		return r.served(u, pc)
	case <-t.C:
		cause = context.DeadlineExceeded
	case <-ctx.Done():
		cause = context.Cause(ctx)
	}
	r.mu.Lock()
	for i, x := range u.waiters {
		if x == w {
			u.waiters = append(u.waiters[:i], u.waiters[i+1:]...)
			r.mu.Unlock()
			sentinel := ErrUnavailable
			if ctx.Err() != nil {
				sentinel = classify(ctx, cause)
			}
			return nil, false, transportError(u.name, "wait", sentinel, fmt.Errorf("%w (%d) for %v", errBusy, u.cfg.MaxConnections, u.s.connectTimeout))
		}
	}
	r.mu.Unlock()
	// Served while giving up: take what was given rather than pass it on.
	return r.served(u, <-w.ch)
}

// served is what a waiter got: a connection, or a reserved slot to dial
// unless Close ran meanwhile (Close wakes waiters with slots).
func (r *Router) served(u *upstream, pc *pconn) (*pconn, bool, error) {
	if pc != nil {
		return pc, false, nil
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		r.freeSlot(u)
		return nil, false, fmt.Errorf("upstream: router closed: %w", ErrUnavailable)
	}
	return nil, true, nil
}

// freeSlot gives back a slot taken by acquire (dial failed, or a
// connection closed): to the oldest waiter, reserved for it, else to the
// pool of slots.
func (r *Router) freeSlot(u *upstream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(u.waiters) > 0 && !r.closed {
		w := u.waiters[0]
		u.waiters[0] = nil
		u.waiters = u.waiters[1:]
		w.ch <- nil // the slot stays counted in u.open, now the waiter's
		return
	}
	u.open--
}

// Close closes every idle connection with QUIT and waits for background
// closes. Connections in use by a Tx are closed when the Tx ends; later
// Begin calls fail with ErrUnavailable.
func (r *Router) Close() error {
	r.mu.Lock()
	r.closed = true
	for _, u := range r.ups {
		for _, pc := range u.idle {
			pc.idleTimer.Stop()
			r.closeBackground(pc, true)
		}
		u.idle = nil
		for _, w := range u.waiters {
			u.open++ // the slot served gives back (freeSlot)
			w.ch <- nil
		}
		u.waiters = nil
	}
	r.mu.Unlock()
	r.bg.Wait()
	return nil
}

// Stats are gauges for leak checks.
type Stats struct {
	Open int // connections open now (idle + in use)
	Idle int // idle connections in the pools
}

// UpstreamStats are one upstream's counters, for metrics.
type UpstreamStats struct {
	Name        string
	Open        int   // connections open or being dialed now (idle + in use)
	Connections int64 // connections opened for transactions (not Probe's) since NewRouter
	Reuses      int64 // transactions that got an existing connection
}

// UpstreamStats returns every upstream's counters, in config order.
func (r *Router) UpstreamStats() []UpstreamStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]UpstreamStats, len(r.ups))
	for i, u := range r.ups {
		out[i] = UpstreamStats{Name: u.name, Open: u.open, Connections: u.dials.Load(), Reuses: u.reuses.Load()}
	}
	return out
}

// Stats returns the current counters.
func (r *Router) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var idle int
	for _, u := range r.ups {
		idle += len(u.idle)
	}
	return Stats{Open: int(r.open.Load()), Idle: idle}
}
