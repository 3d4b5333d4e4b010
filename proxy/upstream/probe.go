package upstream

import (
	"context"
	"crypto/tls"
	"sort"
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

// Probe connects to every upstream in config order (dial, greeting, EHLO,
// STARTTLS or implicit TLS, AUTH), records the result and QUITs. It uses
// fresh connections and leaves the pools alone. For `mailgate check`.
func (r *Router) Probe(ctx context.Context) []ProbeResult {
	res := make([]ProbeResult, 0, len(r.ups))
	for _, u := range r.ups {
		p := ProbeResult{Upstream: u.name, Address: u.cfg.Address}
		start := time.Now()
		pc, err := u.dial(ctx)
		p.Duration = time.Since(start)
		if err != nil {
			p.Err = err
			res = append(res, p)
			continue
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
		res = append(res, p)
	}
	return res
}
