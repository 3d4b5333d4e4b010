package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/policy/quota"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
	"github.com/mailgate/mailgate/proxy/health"
	"github.com/mailgate/mailgate/proxy/outbox"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// wiring holds the built collaborators and how to reload and close them.
type wiring struct {
	deps    proxy.Deps
	demo    *demo
	reloads []func() error
	closers []func()
	probes  []func(ctx context.Context, out io.Writer) bool
	policy  *policy.Policy // watched for changes while serving
	quotas  quota.Store    // nil without quota blocks
	rdb     *redis.Client  // nil without a redis block
	// ready are the readiness checks of /readyz beside the listeners'
	// (see serve); pollers feed those that need the network. Both are
	// empty without a metrics block.
	ready   []health.Check
	pollers []*health.Poller
}

// piece is what one builder hands wire beside its collaborator: how to
// reload and close it, how `mailgate check` probes it, and its readiness
// checks. Each list is in the order the builder made things; wire keeps
// the builders' order, so that SIGHUP reloads and shutdown closes (last
// first) in the order they always did.
type piece struct {
	reloads []func() error
	closers []func()
	probes  []func(ctx context.Context, out io.Writer) bool
	ready   []health.Check // needs a metrics block
	polls   []poll         // readiness checks fed by a Poller (see wiring.poll)
}

// poll is a named readiness probe for wiring.poll.
type poll struct {
	name  string
	probe func(context.Context) error
}

// add takes over p's functions.
func (w *wiring) add(cfg *config, p piece) {
	w.reloads = append(w.reloads, p.reloads...)
	w.closers = append(w.closers, p.closers...)
	w.probes = append(w.probes, p.probes...)
	for _, pl := range p.polls {
		w.poll(cfg, pl.name, pl.probe)
	}
	w.ready = append(w.ready, p.ready...)
}

// wire builds every collaborator the configuration asks for, one builder
// each, in an order where each finds what it needs (the demo and redis
// first). On error, whatever was already built is closed; a builder that
// fails closes what it built itself.
func wire(cfg *config, logger *slog.Logger) (_ *wiring, err error) {
	w := &wiring{deps: proxy.Deps{Logger: logger}}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	var p piece
	switch {
	case cfg.file.Demo != nil:
		w.demo, p, err = buildDemo(cfg)
		if err != nil {
			return nil, err
		}
		w.deps.TLS = w.demo.certs.Config()
		w.add(cfg, p)
	case cfg.file.TLS != nil:
		w.deps.TLS, p, err = buildTLS(cfg)
		if err != nil {
			return nil, err
		}
		w.add(cfg, p)
	}
	if cfg.file.Redis != nil {
		w.rdb, p = buildRedis(cfg.file.Redis)
		w.add(cfg, p)
	}
	w.deps.Auth, p, err = buildAuth(cfg, logger, w.rdb, w.demo)
	if err != nil {
		return nil, err
	}
	w.add(cfg, p)
	dkimCfg, policyCfg, policyDir := cfg.file.DKIM, cfg.file.Policy, cfg.baseDir
	if w.demo != nil {
		// The demo's own keys and policy, unless the file names its own.
		if dkimCfg == nil {
			dkimCfg = &w.demo.dkim
		}
		if policyCfg == nil {
			policyCfg, policyDir = &w.demo.policy, w.demo.dir
		}
	}
	if dkimCfg != nil {
		w.deps.Signer, p, err = buildSigner(dkimCfg, logger)
		if err != nil {
			return nil, err
		}
		w.add(cfg, p)
	}
	if policyCfg != nil || cfg.quotas != nil {
		w.policy, w.quotas, p, err = buildPolicy(cfg, policyCfg, policyDir, w.rdb, w.demo, logger)
		if err != nil {
			return nil, err
		}
		w.deps.Policy = w.policy
		w.add(cfg, p)
	}
	w.deps.Relay, p, err = buildRelay(cfg, w.demo, logger)
	if err != nil {
		return nil, err
	}
	w.add(cfg, p)
	return w, nil
}

// buildDemo builds the demo (see demo.go): its certificate, users, keys
// and policy.
func buildDemo(cfg *config) (*demo, piece, error) {
	d, err := newDemo(cfg, cfg.file.Demo)
	if err != nil {
		return nil, piece{}, err
	}
	return d, piece{closers: []func(){d.close}}, nil
}

// buildTLS loads the tls block's certificate, reloaded on SIGHUP.
func buildTLS(cfg *config) (*tls.Config, piece, error) {
	pol, err := cfg.file.TLS.Policy() // checked by validate
	if err != nil {
		return nil, piece{}, fmt.Errorf("tls: %w", err)
	}
	cs, err := proxy.LoadCertStore(cfg.abs(cfg.file.TLS.CertFile), cfg.abs(cfg.file.TLS.KeyFile))
	if err != nil {
		return nil, piece{}, err
	}
	return cs.ServerConfig(pol), piece{reloads: []func() error{cs.Reload}}, nil
}

// buildRedis makes the redis block's client (it connects on first use),
// probed by `mailgate check` and, with a metrics block, for /readyz.
func buildRedis(rb *redisBlock) (*redis.Client, piece) {
	rdb := newRedis(rb)
	return rdb, piece{
		closers: []func(){func() { rdb.Close() }},
		probes: []func(context.Context, io.Writer) bool{func(ctx context.Context, out io.Writer) bool {
			if err := rdb.Ping(ctx).Err(); err != nil {
				fmt.Fprintf(out, "redis (%s): NOT reachable: %v\n", rb.Address, err)
				return false
			}
			fmt.Fprintf(out, "redis (%s): answers\n", rb.Address)
			return true
		}},
		polls: []poll{{"redis", func(ctx context.Context) error {
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("%s does not answer: %w", rb.Address, err)
			}
			return nil
		}}},
	}
}

// buildAuth builds the auth block's authenticator (its failure limiter in
// Redis when there is a redis block), or the demo's; nil without either.
func buildAuth(cfg *config, logger *slog.Logger, rdb *redis.Client, d *demo) (proxy.Authenticator, piece, error) {
	switch {
	case cfg.file.Auth != nil:
		opts := []auth.Option{auth.WithLogger(logger)}
		if rdb != nil {
			ac := cfg.file.Auth // defaults applied by validate
			opts = append(opts, auth.WithLimiter(auth.NewRedisLimiter(rdb, auth.RedisLimiterConfig{
				IPFailures: ac.IPFailures, UserFailures: ac.UserFailures, Window: ac.Window(),
				Prefix: cfg.file.Redis.KeyPrefix, Logger: logger,
			})))
		}
		a, err := auth.New(*cfg.file.Auth, opts...)
		if err != nil {
			return nil, piece{}, err
		}
		return a, piece{reloads: []func() error{a.Reload}}, nil
	case d != nil:
		a, err := d.authenticator(logger)
		if err != nil {
			return nil, piece{}, err
		}
		return a, piece{}, nil
	}
	return nil, piece{}, nil
}

// buildSigner builds the DKIM signer of dc.
func buildSigner(dc *dkim.Config, logger *slog.Logger) (proxy.Signer, piece, error) {
	sg, err := dkim.New(*dc, dkim.WithLogger(logger))
	if err != nil {
		return nil, piece{}, err
	}
	logger.Info("dkim signer ready", "keys", len(dc.Keys), "rsa_backend", sg.RSABackend())
	return sg, piece{
		reloads: []func() error{sg.Reload},
		closers: []func(){sg.Close}, // frees OpenSSL keys
	}, nil
}

// buildPolicy builds the policy of pc (nil: quotas only) and the quota
// store its quota blocks count in (nil without quota blocks).
func buildPolicy(cfg *config, pc *policy.Config, dir string, rdb *redis.Client, d *demo, logger *slog.Logger) (
	*policy.Policy, quota.Store, piece, error) {
	var pp piece
	opts := []policy.Option{policy.WithLogger(logger)}
	var store quota.Store
	if cfg.quotas != nil {
		st := newQuotaStore(cfg, rdb, logger)
		store = st
		// Closed before rdb (closers run last first): applies the
		// commits and releases still queued.
		pp.closers = append(pp.closers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), quotaCloseTimeout)
			defer cancel()
			if err := st.Close(ctx); err != nil {
				logger.Warn("quota store: queued updates not applied at exit", "err", err)
			}
		})
		opts = append(opts, policy.WithQuotas(cfg.quotas, store))
		if d != nil {
			d.quotas = describeQuotas(cfg.quotas)
		}
	}
	var c policy.Config
	if pc != nil {
		c = *pc
	}
	p, err := policy.New(c, dir, opts...)
	if err != nil {
		for _, cl := range pp.closers {
			cl()
		}
		return nil, nil, piece{}, err
	}
	// SIGHUP reopens the decision log first (logrotate renamed it), then
	// recompiles; a failed reload keeps logging to the new file.
	pp.reloads = append(pp.reloads, p.ReopenDecisionLog, p.Reload) // Reload polls bundle servers too
	if p.Revisions() != nil {
		pp.probes = append(pp.probes, func(_ context.Context, out io.Writer) bool { return probeBundles(p, out) })
	}
	if cfg.quotas != nil && cfg.path != "" {
		pp.reloads = append(pp.reloads, func() error { return reloadQuotas(cfg.path, p) })
	}
	pp.closers = append(pp.closers, func() { p.Close() })
	if cfg.file.Metrics != nil {
		// Path engines are compiled by policy.New; a bundle engine is
		// ready once its first bundle (or the cached one) is active.
		pp.ready = append(pp.ready, health.Check{Name: "policy", Ready: p.Ready})
	}
	return p, store, pp, nil
}

// buildRelay builds the upstream router of the upstream blocks, or the
// outbox (a Maildir) that stands in for an upstream.
func buildRelay(cfg *config, d *demo, logger *slog.Logger) (proxy.Relay, piece, error) {
	switch {
	case len(cfg.file.Upstreams) > 0:
		r, err := upstream.NewRouter(cfg.file.Upstreams, upstream.WithLogger(logger),
			upstream.WithHostname(cfg.file.Hostname))
		if err != nil {
			return nil, piece{}, err
		}
		return proxy.UpstreamRelay(r), piece{
			closers: []func(){func() { r.Close() }},
			probes:  []func(context.Context, io.Writer) bool{probeUpstreams(r)},
			polls:   []poll{{"upstreams", upstreamsAnswer(r)}},
		}, nil
	case cfg.file.Outbox != nil:
		var opts []outbox.Option
		if d != nil {
			opts = append(opts, outbox.WithSaved(d.saved))
		}
		ob, err := outbox.New(cfg.abs(cfg.file.Outbox.Maildir), opts...)
		if err != nil {
			return nil, piece{}, err
		}
		if d != nil {
			d.outbox = ob.Dir()
		}
		return ob, piece{}, nil
	}
	return nil, piece{}, errors.New("no upstream: configure upstream blocks or an outbox")
}

// probeUpstreams is `mailgate check`'s probe of every upstream: false
// when one does not answer.
func probeUpstreams(r *upstream.Router) func(context.Context, io.Writer) bool {
	return func(ctx context.Context, out io.Writer) bool {
		ok := true
		for _, p := range r.Probe(ctx) {
			if p.OK {
				tlsv := p.TLSVersion
				if tlsv == "" {
					tlsv = "no TLS"
				}
				fmt.Fprintf(out, "upstream %q (%s): answers, %s, auth=%v, %s\n", p.Upstream, p.Address, tlsv, p.Auth, p.Duration.Round(time.Millisecond))
			} else {
				ok = false
				fmt.Fprintf(out, "upstream %q (%s): NOT reachable: %v\n", p.Upstream, p.Address, p.Err)
			}
		}
		return ok
	}
}

// poll adds a readiness check fed by probe every probe_interval, when
// there is a metrics block to serve /readyz.
func (w *wiring) poll(cfg *config, name string, probe func(context.Context) error) {
	mb := cfg.file.Metrics
	if mb == nil {
		return
	}
	p := health.NewPoller(probe, mb.probeInterval(), probeTimeout)
	w.pollers = append(w.pollers, p)
	w.ready = append(w.ready, health.Check{Name: name, Ready: p.Ready})
}

// upstreamsAnswer is the upstreams' readiness probe: nil when at least one
// upstream answered (connect, EHLO, TLS, AUTH: Router.Probe), else every
// upstream's failure.
func upstreamsAnswer(r *upstream.Router) func(context.Context) error {
	return func(ctx context.Context) error {
		var down []string
		for _, p := range r.Probe(ctx) {
			if p.OK {
				return nil
			}
			down = append(down, p.Err.Error())
		}
		return fmt.Errorf("none answers: %s", strings.Join(down, "; "))
	}
}

// quotaCloseTimeout bounds the last flush of the quota store at exit.
const quotaCloseTimeout = 5 * time.Second

func (w *wiring) reload(logger *slog.Logger) {
	logger.Info("SIGHUP: reloading")
	failed := 0
	for _, r := range w.reloads {
		if err := r(); err != nil {
			failed++
			logger.Error("reload failed, keeping the previous state", "err", err)
		}
	}
	logger.Info("SIGHUP: reload finished", "failed", failed)
}

func (w *wiring) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
}

// probe says which upstreams answer; false when one does not.
func (w *wiring) probe(ctx context.Context, out io.Writer) bool {
	ok := true
	for _, p := range w.probes {
		if !p(ctx, out) {
			ok = false
		}
	}
	return ok
}

func newRedis(b *redisBlock) *redis.Client {
	o := &redis.Options{Addr: b.Address, Username: b.Username, Password: b.Password, DB: b.DB}
	if b.TLS {
		host, _, _ := net.SplitHostPort(b.Address)
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return redis.NewClient(o)
}
