package upstream

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"time"

	"github.com/mailgate/mailgate/proxy/tlspolicy"
)

// TLS modes for Config.TLS.
const (
	TLSNone     = "none"     // plaintext; AUTH only allowed to a loopback address
	TLSStartTLS = "starttls" // STARTTLS is required, the session fails without it
	TLSImplicit = "implicit" // TLS from the first byte (RFC 8314, port 465)
)

// Defaults applied by Config.WithDefaults.
const (
	DefaultTLS = TLSStartTLS
	// DefaultMaxConnections is Postfix's default_process_limit: a Postfix
	// upstream runs at most 100 smtpd processes, so more connections than
	// that would only wait in its listen backlog. It is far above what a
	// listener's concurrent transactions need in practice (20 sessions
	// hold at most 20), so the limit only bites on a real overload.
	DefaultMaxConnections           = 100
	DefaultMaxMessagesPerConnection = 100
	DefaultConnectTimeout           = 30 * time.Second
	DefaultCommandTimeout           = 5 * time.Minute // Postfix smtp_*_timeout = 300s
	DefaultDataTimeout              = 10 * time.Minute
	DefaultIdleTimeout              = 60 * time.Second
)

// ErrConfig is wrapped by every error returned from Config.Validate.
var ErrConfig = errors.New("upstream: invalid config")

// Config is one `upstream "NAME" { ... }` block of the main configuration,
// decoded with gohcl. Durations are strings in Go's time.ParseDuration syntax
// ("15s", "5m"); they are parsed by Validate and by NewRouter.
//
// Zero values mean "use the default" (see WithDefaults), except PoolSize where
// nil means default (MaxConnections) and an explicit 0 disables keeping
// idle connections.
type Config struct {
	Name     string `hcl:"name,label"`
	Address  string `hcl:"address"`            // host:port, required
	TLS      string `hcl:"tls,optional"`       // none | starttls | implicit (default starttls)
	Username string `hcl:"username,optional"`  // AUTH PLAIN (or LOGIN) when set
	Password string `hcl:"password,optional"`  // never logged
	Helo     string `hcl:"helo,optional"`      // EHLO name; default: WithHostname, else os.Hostname
	PoolSize *int   `hcl:"pool_size,optional"` // idle connections kept (default max_connections)

	// MaxConnections bounds the connections open to this upstream, idle
	// and in use (default 100). A transaction that finds no idle
	// connection dials only below it; otherwise it waits, at most
	// connect_timeout, for a connection to come back.
	MaxConnections int `hcl:"max_connections,optional"`

	MaxMessagesPerConnection int `hcl:"max_messages_per_connection,optional"` // default 100

	ConnectTimeout string `hcl:"connect_timeout,optional"` // dial+greeting+EHLO+STARTTLS+AUTH (default 30s)
	CommandTimeout string `hcl:"command_timeout,optional"` // each command reply (default 5m)
	DataTimeout    string `hcl:"data_timeout,optional"`    // DATA body + final reply (default 10m)
	IdleTimeout    string `hcl:"idle_timeout,optional"`    // lifetime of a pooled idle connection (default 60s)

	InsecureSkipVerify bool   `hcl:"insecure_skip_verify,optional"` // certificates verified unless true
	ServerName         string `hcl:"server_name,optional"`          // TLS SNI/verification name (default host of Address)
	CAFile             string `hcl:"ca_file,optional"`              // extra PEM CA bundle, added to the system roots

	// TLSMinVersion is "1.2" (default) or "1.3"; TLSCipherSuites are the
	// TLS 1.2 suites offered, by Go name (default: ECDHE with AES-GCM or
	// ChaCha20-Poly1305 only). See package tlspolicy.
	TLSMinVersion   string   `hcl:"tls_min_version,optional"`
	TLSCipherSuites []string `hcl:"tls_cipher_suites,optional"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// WithDefaults returns a copy of c with every unset option set to its
// default. Helo is left empty when unset: the Router fills it from
// WithHostname (the global hostname), else os.Hostname.
func (c Config) WithDefaults() Config {
	if c.TLS == "" {
		c.TLS = DefaultTLS
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.PoolSize == nil {
		// Every connection the load needed stays for the next message
		// until idle_timeout: a smaller idle bound closes connections
		// that concurrent sessions need again a moment later (issue 13:
		// with 8 and 20 sessions, 59-116 connections per 1,000 messages
		// instead of 20).
		n := c.MaxConnections
		c.PoolSize = &n
	}
	if c.MaxMessagesPerConnection == 0 {
		c.MaxMessagesPerConnection = DefaultMaxMessagesPerConnection
	}
	if c.ConnectTimeout == "" {
		c.ConnectTimeout = DefaultConnectTimeout.String()
	}
	if c.CommandTimeout == "" {
		c.CommandTimeout = DefaultCommandTimeout.String()
	}
	if c.DataTimeout == "" {
		c.DataTimeout = DefaultDataTimeout.String()
	}
	if c.IdleTimeout == "" {
		c.IdleTimeout = DefaultIdleTimeout.String()
	}
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(c.Address); err == nil {
			c.ServerName = host
		}
	}
	return c
}

// settings are the parsed, validated values of a Config.
type settings struct {
	connectTimeout, commandTimeout, dataTimeout, idleTimeout time.Duration
	tls                                                      tlspolicy.Policy
}

// Validate checks c (after WithDefaults) and returns every problem found,
// joined, each wrapping ErrConfig. It does not touch the network; it does
// check that CAFile is readable.
func (c Config) Validate() error {
	_, err := c.parse()
	return err
}

func (c Config) parse() (settings, error) {
	var s settings
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: upstream %q: %s", ErrConfig, c.Name, fmt.Sprintf(format, args...)))
	}
	if !nameRE.MatchString(c.Name) {
		bad("name must match %s", nameRE)
	}
	host, port, err := net.SplitHostPort(c.Address)
	if err != nil || host == "" || port == "" {
		bad("address %q must be host:port", c.Address)
	}
	switch c.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		bad("tls = %q, want none, starttls or implicit", c.TLS)
	}
	if (c.Username == "") != (c.Password == "") {
		bad("username and password must be set together")
	}
	if c.Username != "" && c.TLS == TLSNone && !isLoopbackHost(host) {
		// Fail closed: AUTH PLAIN/LOGIN over plaintext would put the
		// upstream password on the wire.
		bad("username set with tls = \"none\" to a non-loopback address would send the password in clear")
	}
	if c.PoolSize == nil || *c.PoolSize < 0 {
		bad("pool_size must be >= 0")
	}
	if c.MaxConnections < 1 {
		bad("max_connections must be >= 1")
	}
	if c.MaxMessagesPerConnection < 1 {
		bad("max_messages_per_connection must be >= 1")
	}
	dur := func(name, v string) time.Duration {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			bad("%s = %q must be a positive duration like \"30s\"", name, v)
		}
		return d
	}
	s.connectTimeout = dur("connect_timeout", c.ConnectTimeout)
	s.commandTimeout = dur("command_timeout", c.CommandTimeout)
	s.dataTimeout = dur("data_timeout", c.DataTimeout)
	s.idleTimeout = dur("idle_timeout", c.IdleTimeout)
	if p, err := tlspolicy.Parse("tls_min_version", c.TLSMinVersion, "tls_cipher_suites", c.TLSCipherSuites); err != nil {
		bad("%v", err)
	} else {
		s.tls = p
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			bad("ca_file: %v", err)
		}
	}
	return s, errors.Join(errs...)
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
