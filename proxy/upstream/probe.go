package upstream

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// ProbeResult is the outcome of probing one upstream.
type ProbeResult struct {
	Upstream   string
	Address    string
	OK         bool
	Err        error         // nil when OK; wraps ErrUnavailable or ErrTimeout
	TLSVersion string        // "" without TLS, else e.g. "TLS 1.3"
	Auth       bool          // AUTH succeeded (credentials configured)
	Extensions []string      // EHLO keywords after TLS and AUTH, sorted
	Duration   time.Duration // connect through AUTH
}

// Probe connects to every upstream at once (dial, greeting, EHLO,
// STARTTLS or implicit TLS, AUTH), records the result and QUITs; results
// are in config order. It uses fresh connections and leaves the pools
// alone. The upstreams are probed concurrently so that one that never
// answers cannot use up ctx for the others. For `mailgate check` and the
// readiness probe.
func (r *Router) Probe(ctx context.Context) []ProbeResult {
	res := make([]ProbeResult, len(r.ups))
	var wg sync.WaitGroup
	for i, u := range r.ups {
		wg.Go(func() { res[i] = u.probe(ctx) })
	}
	wg.Wait()
	return res
}

func (u *upstream) probe(ctx context.Context) ProbeResult {
	p := ProbeResult{Upstream: u.name, Address: u.cfg.Address}
	start := time.Now()
	pc, err := u.dialOutsideLimit(ctx)
	p.Duration = time.Since(start)
	if err != nil {
		p.Err = err
		return p
	}
	p.OK = true
	if pc.tls != nil {
		p.TLSVersion = tls.VersionName(pc.tls.Version)
	}
	p.Auth = u.cfg.Username != ""
	for _, ext := range []string{"8BITMIME", "AUTH", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES",
		"PIPELINING", "REQUIRETLS", "SIZE", "SMTPUTF8", "STARTTLS"} {
		if ok, _ := pc.c.Extension(ext); ok {
			p.Extensions = append(p.Extensions, ext)
		}
	}
	sort.Strings(p.Extensions)
	pc.close(true)
	return p
}

// Offer reports whether every configured upstream offers the EHLO keyword
// ext (e.g. "DSN") right now. It connects to each upstream once (dial,
// EHLO, TLS, AUTH) and puts the connection into the pool for the first
// transaction to use, so asking costs no extra connection. An upstream
// that cannot be reached makes it false. For decisions taken once at
// start-up, such as which extensions the proxy itself advertises.
func (r *Router) Offer(ctx context.Context, ext string) bool {
	for _, u := range r.ups {
		pc, err := u.dialOutsideLimit(ctx)
		if err != nil {
			r.log.LogAttrs(ctx, slog.LevelWarn, "upstream probe failed",
				slog.String("upstream", u.name), slog.String("extension", ext), slog.Any("error", err))
			return false
		}
		u.dials.Add(1) // it goes to the pool for a transaction
		ok, _ := pc.c.Extension(ext)
		r.release(pc)
		if !ok {
			return false
		}
	}
	return len(r.ups) > 0
}

// dialOutsideLimit dials for a probe: the connection counts as open (it
// is), but a probe never waits for max_connections, so it may exceed it
// for the moment it lasts.
func (u *upstream) dialOutsideLimit(ctx context.Context) (*pconn, error) {
	u.r.mu.Lock()
	u.open++
	u.r.mu.Unlock()
	pc, err := u.dial(ctx)
	if err != nil {
		u.r.freeSlot(u)
	}
	return pc, err
}
