// Package health serves mailgate's liveness and readiness endpoints on the
// metrics listener: /healthz answers 200 while the process serves HTTP at
// all; /readyz answers 200 only when every readiness check passes and the
// server is not shutting down, else 503 with one plain-text line per
// check that is not ready. A load balancer health-checks /readyz (see
// docs/operations.md, "Readiness"), so an instance leaves the pool before
// its listeners close.
//
// Checks never do I/O in the request: a check that needs the network (an
// upstream, Redis) is a Poller, which runs its probe on an interval and
// reports the last result.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A Check reports whether one part of the server is ready: nil when it is,
// else an error whose text says what is missing (one line, shown to
// whoever asks /readyz; never a secret). It must return quickly and do no
// I/O: see Poller.
type Check struct {
	Name  string
	Ready func() error
}

// ErrShuttingDown is what /readyz reports once Drain was called.
var ErrShuttingDown = errors.New("shutting down")

// Checker holds the readiness checks. The zero value is not usable; use
// New. It is safe for concurrent use.
type Checker struct {
	mu       sync.Mutex
	checks   []Check
	draining atomic.Bool
}

// New returns a Checker with checks.
func New(checks ...Check) *Checker {
	return &Checker{checks: append([]Check(nil), checks...)}
}

// Add appends checks, e.g. once a collaborator exists.
func (c *Checker) Add(checks ...Check) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks = append(c.checks, checks...)
}

// Drain turns readiness off for good: /readyz answers 503 from now on,
// whatever the checks say. Called first on SIGTERM, before the listeners
// close, so the load balancer stops sending new connections.
func (c *Checker) Drain() { c.draining.Store(true) }

// NotReady returns one line per check that is not ready ("name: why"),
// in the order the checks were added; none means ready.
func (c *Checker) NotReady() []string {
	var out []string
	if c.draining.Load() {
		out = append(out, ErrShuttingDown.Error())
	}
	c.mu.Lock()
	checks := append([]Check(nil), c.checks...)
	c.mu.Unlock()
	for _, ch := range checks {
		if err := ch.Ready(); err != nil {
			out = append(out, ch.Name+": "+oneLine(err.Error()))
		}
	}
	return out
}

// Register adds /healthz and /readyz to mux. Both answer GET and HEAD with
// text/plain and Cache-Control: no-store.
func (c *Checker) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if bad := c.NotReady(); len(bad) > 0 {
			plain(w, http.StatusServiceUnavailable, "not ready\n"+strings.Join(bad, "\n")+"\n")
			return
		}
		plain(w, http.StatusOK, "ready\n")
	})
}

func plain(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// errNotYet is a Poller's state before its first probe finished.
var errNotYet = errors.New("not probed yet")

// Poller runs a probe on an interval and remembers its last result, so
// that a readiness check costs no I/O and a burst of /readyz requests
// costs no burst of connections.
type Poller struct {
	probe    func(ctx context.Context) error
	interval time.Duration
	timeout  time.Duration
	last     atomic.Pointer[error]
}

// NewPoller returns a Poller for probe, which must give up when its
// context ends. Each run gets timeout; runs start interval apart. Until
// the first run finishes, Ready reports "not probed yet".
func NewPoller(probe func(ctx context.Context) error, interval, timeout time.Duration) *Poller {
	p := &Poller{probe: probe, interval: interval, timeout: timeout}
	err := errNotYet
	p.last.Store(&err)
	return p
}

// Run probes at once, then every interval, until ctx ends.
func (p *Poller) Run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, p.timeout)
		err := p.probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.last.Store(&err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ready returns the last probe's error (nil when it succeeded).
func (p *Poller) Ready() error { return *p.last.Load() }
