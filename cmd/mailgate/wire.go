package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/policy/quota"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
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
	if cfg.file.DKIM != nil {
		sg, err := dkim.New(*cfg.file.DKIM, dkim.WithLogger(logger))
		if err != nil {
			return nil, err
		}
		w.deps.Signer = sg
		w.reloads = append(w.reloads, sg.Reload)
	}
	if cfg.file.Policy != nil || cfg.quotas != nil {
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
		}
		var pc policy.Config
		if cfg.file.Policy != nil {
			pc = *cfg.file.Policy
		}
		p, err := policy.New(pc, cfg.baseDir, opts...)
		if err != nil {
			return nil, err
		}
		w.deps.Policy = p
		w.policy = p
		w.reloads = append(w.reloads, p.Reload)
		if cfg.quotas != nil && cfg.path != "" {
			w.reloads = append(w.reloads, func() error { return reloadQuotas(cfg.path, p) })
		}
		w.closers = append(w.closers, func() { p.Close() })
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
	case cfg.file.Outbox != nil:
		ob, err := outbox.New(cfg.abs(cfg.file.Outbox.Maildir))
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

// demo is the embedded default's generated state.
type demo struct {
	user, password string
	certs          *proxy.CertStore
	outbox         string
}

func newDemo(cfg *config, b *demoBlock) (*demo, error) {
	cert, err := proxy.SelfSigned(cfg.file.Hostname)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	user := b.User
	if user == "" {
		user = "demo@example.com"
	}
	var pw [12]byte
	if _, err := rand.Read(pw[:]); err != nil {
		return nil, err
	}
	password := base64.RawURLEncoding.EncodeToString(pw[:])
	return &demo{user: user, password: password, certs: proxy.NewStaticCertStore(cert)}, nil
}

// authenticator writes the demo user's hash to a private temporary users
// file and loads it like any other.
func (d *demo) authenticator(logger *slog.Logger) (*auth.Authenticator, error) {
	hash, err := auth.Hash(d.password)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mailgate-demo-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "users")
	if err := os.WriteFile(path, []byte(d.user+":"+hash+"\n"), 0o600); err != nil {
		return nil, err
	}
	// Loaded once; the file is not needed afterwards.
	defer os.RemoveAll(dir)
	return auth.New(auth.Config{UsersFile: path}, auth.WithLogger(logger))
}

func (d *demo) announce(w io.Writer, addrs map[string]string) {
	names := make([]string, 0, len(addrs))
	for n := range addrs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := addrs[n]
		fmt.Fprintf(w, `
mailgate demo is ready on %[1]s (listener %[2]q, STARTTLS with a self-signed certificate).
  user:     %[3]s
  password: %[4]s
Accepted messages are written to the Maildir %[5]s (nothing is relayed).

Send a test message with curl:
  printf 'From: %[3]s\r\nTo: you@example.net\r\nSubject: hello from mailgate\r\n\r\nIt works.\r\n' |
    curl -sS --url smtp://%[1]s --ssl-reqd --insecure --user '%[3]s:%[4]s' \
      --mail-from %[3]s --mail-rcpt you@example.net --upload-file -
or with swaks:
  swaks --server %[1]s --tls --auth PLAIN --auth-user %[3]s --auth-password '%[4]s' \
      --from %[3]s --to you@example.net
`, a, n, d.user, d.password, d.outbox)
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
