package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// fileConfig is the schema of mailgate.hcl. Each package owns the block it
// consumes; this file only puts them together.
type fileConfig struct {
	Hostname  string                 `hcl:"hostname"`
	Listeners []proxy.ListenerConfig `hcl:"listener,block"`
	TLS       *proxy.TLSConfig       `hcl:"tls,block"`
	Auth      *auth.Config           `hcl:"auth,block"`
	Upstreams []upstream.Config      `hcl:"upstream,block"`
	DKIM      *dkim.Config           `hcl:"dkim,block"`
	Policy    *policy.Config         `hcl:"policy,block"`
	Limits    *proxy.Limits          `hcl:"limits,block"`
	Message   *proxy.MessageConfig   `hcl:"message,block"`
	Outbox    *outboxBlock           `hcl:"outbox,block"`
	Demo      *demoBlock             `hcl:"demo,block"`
	Log       *logBlock              `hcl:"log,block"`
	Redis     *redisBlock            `hcl:"redis,block"`
	Metrics   *metricsBlock          `hcl:"metrics,block"`
	Quotas    []policy.QuotaConfig   `hcl:"quota,block"`
}

// outboxBlock replaces the upstreams with a Maildir (demo and testing).
type outboxBlock struct {
	Maildir string `hcl:"maildir"`
}

// demoBlock is what the embedded default uses: a self-signed certificate
// and one generated user, both made at start.
type demoBlock struct {
	User string `hcl:"user,optional"`
}

// redisBlock is shared state for several instances: with it, AUTH failure
// counters and quota counters live in Redis instead of each instance's
// memory.
type redisBlock struct {
	Address   string `hcl:"address"`
	Username  string `hcl:"username,optional"`
	Password  string `hcl:"password,optional"`
	DB        int    `hcl:"db,optional"`
	TLS       bool   `hcl:"tls,optional"`
	KeyPrefix string `hcl:"key_prefix,optional"` // default "mailgate:"
}

// metricsBlock serves Prometheus metrics over HTTP at /metrics, and the
// health endpoints /healthz and /readyz (package proxy/health).
type metricsBlock struct {
	Address string `hcl:"address"` // e.g. "127.0.0.1:9151"
	// ProbeInterval is how often the upstreams and Redis are probed for
	// /readyz (default "10s").
	ProbeInterval string `hcl:"probe_interval,optional"`
	// ShutdownDelay is how long SIGTERM keeps the listeners open with
	// /readyz at 503 before they close, so the load balancer's health
	// check takes the instance out first (default "5s"; "0s" closes at
	// once).
	ShutdownDelay string `hcl:"shutdown_delay,optional"`
}

// Defaults of the metrics block.
const (
	defaultProbeInterval = 10 * time.Second
	defaultShutdownDelay = 5 * time.Second
	// probeTimeout bounds one readiness probe run (all upstreams, or Redis).
	probeTimeout = 10 * time.Second
)

// probeInterval and shutdownDelay return the options with their defaults
// applied (validate checked them).
func (b *metricsBlock) probeInterval() time.Duration {
	return durationOr(b.ProbeInterval, defaultProbeInterval)
}

func (b *metricsBlock) shutdownDelay() time.Duration {
	return durationOr(b.ShutdownDelay, defaultShutdownDelay)
}

func durationOr(s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return def
	}
	return d
}

type logBlock struct {
	Format string `hcl:"format,optional"` // text (default) or json
	Level  string `hcl:"level,optional"`  // debug, info (default), warn, error
}

// config is the loaded, validated configuration.
type config struct {
	file    fileConfig
	path    string // the file it was read from; "" for the embedded default
	baseDir string
	proxy   proxy.Config
	quotas  *policy.Quotas // nil without quota blocks
	// quotaBatch is the Redis quota store's batch interval (0: the
	// default); not in the file, tests set it.
	quotaBatch time.Duration
}

// evalContext offers env("VAR") for secrets: an unset variable is an
// error, never an empty password.
func evalContext() *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env": function.New(&function.Spec{
				Params: []function.Parameter{{Name: "name", Type: cty.String}},
				Type:   function.StaticReturnType(cty.String),
				Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
					name := args[0].AsString()
					v, ok := os.LookupEnv(name)
					if !ok {
						return cty.NilVal, fmt.Errorf("environment variable %s is not set", name)
					}
					return cty.StringVal(v), nil
				},
			}),
		},
	}
}

// loadConfig parses, decodes and validates a configuration. src is the
// file's content; path names it in diagnostics and anchors relative paths.
// Diagnostics are written to diagOut with source snippets.
func loadConfig(path string, src []byte, diagOut io.Writer) (*config, error) {
	p := hclparse.NewParser()
	f, diags := p.ParseHCL(src, path)
	if !diags.HasErrors() {
		c := &config{baseDir: filepath.Dir(path)}
		diags = append(diags, gohcl.DecodeBody(f.Body, evalContext(), &c.file)...)
		if !diags.HasErrors() && len(c.file.Quotas) > 0 {
			var qd hcl.Diagnostics
			c.quotas, qd = policy.CompileQuotas(c.file.Quotas)
			diags = append(diags, qd...)
		}
		if !diags.HasErrors() {
			if err := c.validate(); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return c, nil
		}
	}
	wr := hcl.NewDiagnosticTextWriter(diagOut, p.Files(), 100, false)
	_ = wr.WriteDiagnostics(diags)
	return nil, fmt.Errorf("%s: configuration has errors", path)
}

func loadConfigFile(path string, diagOut io.Writer) (*config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := loadConfig(path, src, diagOut)
	if c != nil {
		c.path = path
	}
	return c, err
}

// abs resolves p against the config file's directory.
func (c *config) abs(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.baseDir, p)
}

func (c *config) validate() error {
	var errs []error
	c.proxy = proxy.Config{Hostname: c.file.Hostname, Listeners: c.file.Listeners}
	if c.file.Limits != nil {
		c.proxy.Limits = *c.file.Limits
	}
	if c.file.Message != nil {
		c.proxy.Message = *c.file.Message
		c.proxy.Message.SpoolDir = c.abs(c.proxy.Message.SpoolDir)
	}
	if err := c.proxy.Validate(); err != nil {
		errs = append(errs, err)
	}
	needTLS := false
	for _, l := range c.proxy.Listeners {
		if l.TLSMode() != proxy.TLSNone {
			needTLS = true
		}
	}
	if needTLS && c.file.TLS == nil && c.file.Demo == nil {
		errs = append(errs, errors.New("tls: a starttls or implicit listener needs a tls { cert_file, key_file } block"))
	}
	if c.file.TLS != nil {
		if _, err := c.file.TLS.Policy(); err != nil {
			errs = append(errs, fmt.Errorf("tls: %w", err))
		}
	}
	if c.file.Auth != nil {
		a := c.file.Auth.WithDefaults()
		a.UsersFile = c.abs(a.UsersFile)
		if err := a.Validate(); err != nil {
			errs = append(errs, err)
		}
		c.file.Auth = &a
	}
	needAuth := false
	for _, l := range c.proxy.Listeners {
		if l.AuthRequired() {
			needAuth = true
		}
	}
	if needAuth && c.file.Auth == nil && c.file.Demo == nil {
		errs = append(errs, errors.New(`auth: a listener with auth = "required" needs an auth { users_file } block`))
	}
	names := map[string]bool{}
	for i, u := range c.file.Upstreams {
		u = u.WithDefaults()
		u.CAFile = c.abs(u.CAFile)
		if names[u.Name] {
			errs = append(errs, fmt.Errorf("upstream %q: defined twice", u.Name))
		}
		names[u.Name] = true
		if err := u.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("upstream %q: %w", u.Name, err))
		}
		c.file.Upstreams[i] = u
	}
	switch {
	case len(c.file.Upstreams) == 0 && c.file.Outbox == nil:
		errs = append(errs, errors.New("upstream: at least one upstream block (or an outbox) is required"))
	case len(c.file.Upstreams) > 0 && c.file.Outbox != nil:
		errs = append(errs, errors.New("outbox: an outbox replaces the upstreams; configure one or the other"))
	}
	if d := c.file.DKIM; d != nil {
		for i := range d.Keys {
			d.Keys[i].File = c.abs(d.Keys[i].File)
		}
		if err := d.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if r := c.file.Redis; r != nil {
		if _, _, err := net.SplitHostPort(r.Address); err != nil {
			errs = append(errs, fmt.Errorf("redis: address %q: %w", r.Address, err))
		}
		if r.DB < 0 {
			errs = append(errs, errors.New("redis: db must not be negative"))
		}
	}
	if mb := c.file.Metrics; mb != nil {
		if _, _, err := net.SplitHostPort(mb.Address); err != nil {
			errs = append(errs, fmt.Errorf("metrics: address %q: %w", mb.Address, err))
		}
		if mb.ProbeInterval != "" {
			if d, err := time.ParseDuration(mb.ProbeInterval); err != nil || d < 100*time.Millisecond {
				errs = append(errs, fmt.Errorf("metrics: probe_interval %q: want a duration of at least 100ms", mb.ProbeInterval))
			}
		}
		if mb.ShutdownDelay != "" {
			if d, err := time.ParseDuration(mb.ShutdownDelay); err != nil || d < 0 || d > shutdownGrace {
				errs = append(errs, fmt.Errorf("metrics: shutdown_delay %q: want a duration from 0s to %s", mb.ShutdownDelay, shutdownGrace))
			}
		}
	}
	if c.file.Log != nil {
		switch c.file.Log.Format {
		case "", "text", "json":
		default:
			errs = append(errs, fmt.Errorf("log: format %q: want text or json", c.file.Log.Format))
		}
		switch c.file.Log.Level {
		case "", "debug", "info", "warn", "error":
		default:
			errs = append(errs, fmt.Errorf("log: level %q: want debug, info, warn or error", c.file.Log.Level))
		}
	}
	return errors.Join(errs...)
}

// loadDKIMConfig and loadPolicyConfig give the tool verbs the block they
// need from a whole configuration file.
func loadDKIMConfig(diag io.Writer) func(string) (dkim.Config, error) {
	return func(path string) (dkim.Config, error) {
		c, err := loadConfigFile(path, diag)
		if err != nil {
			return dkim.Config{}, err
		}
		if c.file.DKIM == nil {
			return dkim.Config{}, fmt.Errorf("%s: no dkim block", path)
		}
		return *c.file.DKIM, nil
	}
}

func loadPolicyConfig(diag io.Writer) func(string) (policy.Config, string, error) {
	return func(path string) (policy.Config, string, error) {
		c, err := loadConfigFile(path, diag)
		if err != nil {
			return policy.Config{}, "", err
		}
		if c.file.Policy == nil {
			return policy.Config{}, "", fmt.Errorf("%s: no policy block", path)
		}
		return *c.file.Policy, c.baseDir, nil
	}
}
