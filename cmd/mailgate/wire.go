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

// wire builds every collaborator the configuration asks for. On error,
// whatever was already built is closed.
func wire(cfg *config, logger *slog.Logger) (_ *wiring, err error) {
	w := &wiring{deps: proxy.Deps{Logger: logger}}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if cfg.file.Demo != nil {
		d, err := newDemo(cfg, cfg.file.Demo)
		if err != nil {
			return nil, err
		}
		w.demo = d
		w.closers = append(w.closers, d.close)
		w.deps.TLS = d.certs.Config()
	} else if cfg.file.TLS != nil {
		pol, err := cfg.file.TLS.Policy() // checked by validate
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cs, err := proxy.LoadCertStore(cfg.abs(cfg.file.TLS.CertFile), cfg.abs(cfg.file.TLS.KeyFile))
		if err != nil {
			return nil, err
		}
		w.deps.TLS = cs.ServerConfig(pol)
		w.reloads = append(w.reloads, cs.Reload)
	}
	if rb := cfg.file.Redis; rb != nil {
		rdb := newRedis(rb)
		w.rdb = rdb
		w.closers = append(w.closers, func() { rdb.Close() })
		w.probes = append(w.probes, func(ctx context.Context, out io.Writer) bool {
			if err := rdb.Ping(ctx).Err(); err != nil {
				fmt.Fprintf(out, "redis (%s): NOT reachable: %v\n", rb.Address, err)
				return false
			}
			fmt.Fprintf(out, "redis (%s): answers\n", rb.Address)
			return true
		})
		w.poll(cfg, "redis", func(ctx context.Context) error {
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("%s does not answer: %w", rb.Address, err)
			}
			return nil
		})
	}
	switch {
	case cfg.file.Auth != nil:
		opts := []auth.Option{auth.WithLogger(logger)}
		if rb, rdb := cfg.file.Redis, w.rdb; rdb != nil {
			ac := cfg.file.Auth // defaults applied by validate
			opts = append(opts, auth.WithLimiter(auth.NewRedisLimiter(rdb, auth.RedisLimiterConfig{
				IPFailures: ac.IPFailures, UserFailures: ac.UserFailures, Window: ac.Window(),
				Prefix: rb.KeyPrefix, Logger: logger,
			})))
		}
		a, err := auth.New(*cfg.file.Auth, opts...)
		if err != nil {
			return nil, err
		}
		w.deps.Auth = a
		w.reloads = append(w.reloads, a.Reload)
	case w.demo != nil:
		a, err := w.demo.authenticator(logger)
		if err != nil {
			return nil, err
		}
		w.deps.Auth = a
	}
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
		sg, err := dkim.New(*dkimCfg, dkim.WithLogger(logger))
		if err != nil {
			return nil, err
		}
		w.deps.Signer = sg
		w.reloads = append(w.reloads, sg.Reload)
		w.closers = append(w.closers, sg.Close) // frees OpenSSL keys
		logger.Info("dkim signer ready", "keys", len(dkimCfg.Keys), "rsa_backend", sg.RSABackend())
	}
	if policyCfg != nil || cfg.quotas != nil {
		opts := []policy.Option{policy.WithLogger(logger)}
		if cfg.quotas != nil {
			store := newQuotaStore(cfg, w.rdb, logger)
			w.quotas = store
			// Closed before rdb (closers run last first): applies the
			// commits and releases still queued.
			w.closers = append(w.closers, func() {
				ctx, cancel := context.WithTimeout(context.Background(), quotaCloseTimeout)
				defer cancel()
				if err := store.Close(ctx); err != nil {
					logger.Warn("quota store: queued updates not applied at exit", "err", err)
				}
			})
			opts = append(opts, policy.WithQuotas(cfg.quotas, w.quotas))
			if w.demo != nil {
				w.demo.quotas = describeQuotas(cfg.quotas)
			}
		}
		var pc policy.Config
		if policyCfg != nil {
			pc = *policyCfg
		}
		p, err := policy.New(pc, policyDir, opts...)
		if err != nil {
			return nil, err
		}
		w.deps.Policy = p
		w.policy = p
		// SIGHUP reopens the decision log first (logrotate renamed it),
		// then recompiles; a failed reload keeps logging to the new file.
		w.reloads = append(w.reloads, p.ReopenDecisionLog, p.Reload) // Reload polls bundle servers too
		if p.Revisions() != nil {
			w.probes = append(w.probes, func(_ context.Context, out io.Writer) bool { return probeBundles(p, out) })
		}
		if cfg.quotas != nil && cfg.path != "" {
			w.reloads = append(w.reloads, func() error { return reloadQuotas(cfg.path, p) })
		}
		w.closers = append(w.closers, func() { p.Close() })
		if cfg.file.Metrics != nil {
			// Path engines are compiled by policy.New; a bundle engine is
			// ready once its first bundle (or the cached one) is active.
			w.ready = append(w.ready, health.Check{Name: "policy", Ready: p.Ready})
		}
	}
	switch {
	case len(cfg.file.Upstreams) > 0:
		r, err := upstream.NewRouter(cfg.file.Upstreams, upstream.WithLogger(logger),
			upstream.WithHostname(cfg.file.Hostname))
		if err != nil {
			return nil, err
		}
		w.deps.Relay = proxy.UpstreamRelay(r)
		w.closers = append(w.closers, func() { r.Close() })
		w.probes = append(w.probes, func(ctx context.Context, out io.Writer) bool {
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
		})
		w.poll(cfg, "upstreams", upstreamsAnswer(r))
	case cfg.file.Outbox != nil:
		var opts []outbox.Option
		if w.demo != nil {
			opts = append(opts, outbox.WithSaved(w.demo.saved))
		}
		ob, err := outbox.New(cfg.abs(cfg.file.Outbox.Maildir), opts...)
		if err != nil {
			return nil, err
		}
		w.deps.Relay = ob
		if w.demo != nil {
			w.demo.outbox = ob.Dir()
		}
	default:
		return nil, errors.New("no upstream: configure upstream blocks or an outbox")
	}
	return w, nil
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
