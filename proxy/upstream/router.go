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
func (r *Router) checkout(u *upstream) *pconn {
	r.mu.Lock()
	defer r.mu.Unlock()
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
		return pc
	}
	return nil
}

// release hands a connection back after a finished transaction: into the
// pool when healthy and there is room, else closed (QUIT in the background
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
	if pc.broken || pc.messages >= u.cfg.MaxMessagesPerConnection || len(u.idle) >= *u.cfg.PoolSize {
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
		if !fresh {
			if pc := r.checkout(u); pc != nil {
				return pc, nil
			}
		}
		pc, err := u.dial(ctx)
		r.mu.Lock()
		if err == nil {
			u.downUntil = time.Time{}
		} else if ctx.Err() == nil {
			u.downUntil = time.Now().Add(holdDown)
		}
		r.mu.Unlock()
		if err == nil {
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
	}
	r.mu.Unlock()
	r.bg.Wait()
	return nil
}

// Stats are counters for metrics and leak checks.
type Stats struct {
	Open int // connections open now (idle + in use)
	Idle int // idle connections in the pools
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
