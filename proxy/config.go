package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// TLS modes of a listener.
const (
	TLSNone     = "none"     // plaintext only (trusted networks)
	TLSStartTLS = "starttls" // RFC 3207; TLS is required before AUTH and MAIL
	TLSImplicit = "implicit" // RFC 8314 implicit TLS (port 465)
)

// Config is everything the proxy itself needs. It is decoded from the
// top level of the configuration file by cmd/mailgate; other packages own
// their own blocks (auth, upstream, dkim, policy).
type Config struct {
	// Hostname is used in the greeting, in Received headers and in
	// generated Message-IDs.
	Hostname  string
	Listeners []ListenerConfig
	Limits    Limits
	Message   MessageConfig
}

// ListenerConfig is one `listener "NAME" { … }` block.
type ListenerConfig struct {
	Name string `hcl:"name,label"`
	// Address is host:port. Every port is configurable.
	Address string `hcl:"address"`
	// TLS is "none", "starttls" (default) or "implicit".
	TLS *string `hcl:"tls,optional"`
	// Auth is "required" (default) or "none". A listener without AUTH must
	// name its trusted_networks: mailgate is never an open relay.
	Auth *string `hcl:"auth,optional"`
	// TrustedNetworks lists the CIDRs allowed to connect. Empty means
	// anyone (only allowed with auth = "required").
	TrustedNetworks []string `hcl:"trusted_networks,optional"`
	// AllowInsecureAuth allows AUTH without TLS; only on a listener whose
	// address is a loopback address.
	AllowInsecureAuth bool `hcl:"allow_insecure_auth,optional"`
	// ProxyProtocol lists the load balancers (CIDRs) in front of this
	// listener. When set, connections from them must start with a PROXY
	// protocol v1 or v2 header (HAProxy send-proxy-v2) whose client address
	// is used for everything (trusted_networks, limits, logs, policy);
	// connections from anywhere else are refused.
	ProxyProtocol []string `hcl:"proxy_protocol,optional"`

	// Parsed by Validate.
	trusted []netip.Prefix
	proxies []netip.Prefix
}

// TLSMode returns the listener's TLS mode after defaults.
func (l *ListenerConfig) TLSMode() string {
	if l.TLS == nil || *l.TLS == "" {
		return TLSStartTLS
	}
	return *l.TLS
}

// AuthMode returns "required" or "none" after defaults.
func (l *ListenerConfig) AuthMode() string {
	if l.AuthRequired() {
		return "required"
	}
	return "none"
}

// AuthRequired reports whether AUTH is required before MAIL.
func (l *ListenerConfig) AuthRequired() bool {
	return l.Auth == nil || *l.Auth == "" || *l.Auth == "required"
}

// Limits holds every limit. Zero values mean the default; every default is
// safe (Postfix's defaults are the reference).
type Limits struct {
	MaxMessageSize int64 `hcl:"max_message_size,optional"` // bytes, default 10 MiB (Postfix message_size_limit)
	MaxRecipients  int   `hcl:"max_recipients,optional"`   // default 1000 (smtpd_recipient_limit)
	MaxLineLength  int   `hcl:"max_line_length,optional"`  // default 1000 (RFC 5322 §2.1.1: 998 + CRLF)
	MaxHeaderSize  int   `hcl:"max_header_size,optional"`  // default 102400 (header_size_limit)
	// CommandTimeout is a deadline for a whole command line (the wait
	// for it included): bytes of the line do not extend it. Default
	// "300s" (Postfix smtpd_timeout with smtpd_per_record_deadline).
	CommandTimeout string `hcl:"command_timeout,optional"`
	// DataTimeout is the time a body may take beyond what min_data_rate
	// pays for, and the longest a body may stall. Default "300s".
	DataTimeout string `hcl:"data_timeout,optional"`
	// MinDataRate (bytes/s) is the slowest average rate a body (DATA or
	// BDAT) may arrive at: every byte extends the body's deadline by
	// 1/min_data_rate s, never past data_timeout from now. Default 500
	// (Postfix smtpd_min_data_rate).
	MinDataRate         int    `hcl:"min_data_rate,optional"`
	MaxConnections      int    `hcl:"max_connections,optional"`        // default 1000
	MaxConnectionsPerIP int    `hcl:"max_connections_per_ip,optional"` // default 50 (smtpd_client_connection_count_limit)
	TLSHandshakeTimeout string `hcl:"tls_handshake_timeout,optional"`  // default "30s"
	// LoginTimeout bounds the time from connect until the client has
	// logged in: AUTH succeeded, or EHLO/HELO on a listener with
	// auth = "none" (STARTTLS and the TLS handshake included). Default
	// "60s".
	LoginTimeout string `hcl:"login_timeout,optional"`

	commandTimeout, dataTimeout, handshakeTimeout, loginTimeout time.Duration
}

// MessageConfig is the `message { … }` block: header hygiene and spooling.
type MessageConfig struct {
	// ReceivedHeader is "private" (default: no client IP or HELO),
	// "full" (RFC 5321 §4.4 with the client's address) or "none".
	ReceivedHeader string `hcl:"received_header,optional"`
	// SpoolThreshold is how many bytes of a body stay in memory before the
	// rest goes to a temporary file. Default 1 MiB.
	SpoolThreshold int64 `hcl:"spool_threshold,optional"`
	// SpoolDir holds the temporary files. Default: the system temp dir.
	SpoolDir string `hcl:"spool_dir,optional"`
}

// Defaults.
const (
	DefaultMaxMessageSize      = 10 << 20
	DefaultMaxRecipients       = 1000
	DefaultMaxLineLength       = 1000
	DefaultMaxHeaderSize       = 100 << 10
	DefaultCommandTimeout      = 300 * time.Second
	DefaultDataTimeout         = 300 * time.Second
	DefaultMaxConnections      = 1000
	DefaultMaxConnectionsPerIP = 50
	DefaultHandshakeTimeout    = 30 * time.Second
	DefaultMinDataRate         = 500 // bytes per second
	DefaultLoginTimeout        = 60 * time.Second
	DefaultSpoolThreshold      = 1 << 20
)

// Validate applies defaults and checks everything, returning all problems
// at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Hostname == "" {
		errs = append(errs, errors.New("hostname: must be set"))
	}
	if len(c.Listeners) == 0 {
		errs = append(errs, errors.New("listener: at least one listener is required"))
	}
	seen := map[string]bool{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if seen[l.Name] {
			errs = append(errs, fmt.Errorf("listener %q: defined twice", l.Name))
		}
		seen[l.Name] = true
		if err := l.validate(); err != nil {
			errs = append(errs, fmt.Errorf("listener %q: %w", l.Name, err))
		}
	}
	if err := c.Limits.validate(); err != nil {
		errs = append(errs, fmt.Errorf("limits: %w", err))
	}
	m := &c.Message
	switch m.ReceivedHeader {
	case "":
		m.ReceivedHeader = "private"
	case "private", "full", "none":
	default:
		errs = append(errs, fmt.Errorf("message: received_header %q: want private, full or none", m.ReceivedHeader))
	}
	if m.SpoolThreshold == 0 {
		m.SpoolThreshold = DefaultSpoolThreshold
	} else if m.SpoolThreshold < 0 {
		errs = append(errs, errors.New("message: spool_threshold must not be negative"))
	}
	return errors.Join(errs...)
}

func (l *ListenerConfig) validate() error {
	var errs []error
	host, _, err := net.SplitHostPort(l.Address)
	if err != nil {
		errs = append(errs, fmt.Errorf("address %q: %w", l.Address, err))
	}
	switch l.TLSMode() {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		errs = append(errs, fmt.Errorf("tls %q: want none, starttls or implicit", l.TLSMode()))
	}
	if !l.AuthRequired() && *l.Auth != "none" {
		errs = append(errs, fmt.Errorf("auth %q: want required or none", *l.Auth))
	}
	var err2 error
	if l.trusted, err2 = parsePrefixes(l.TrustedNetworks); err2 != nil {
		errs = append(errs, fmt.Errorf("trusted_networks: %w", err2))
	}
	if l.proxies, err2 = parsePrefixes(l.ProxyProtocol); err2 != nil {
		errs = append(errs, fmt.Errorf("proxy_protocol: %w", err2))
	}
	if !l.AuthRequired() && len(l.trusted) == 0 {
		errs = append(errs, errors.New(`auth = "none" needs trusted_networks: mailgate is never an open relay`))
	}
	if l.AllowInsecureAuth {
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			errs = append(errs, fmt.Errorf("allow_insecure_auth needs a loopback address, not %q", host))
		}
	}
	return errors.Join(errs...)
}

func (l *Limits) validate() error {
	var errs []error
	if l.MaxMessageSize == 0 {
		l.MaxMessageSize = DefaultMaxMessageSize
	}
	if l.MaxRecipients == 0 {
		l.MaxRecipients = DefaultMaxRecipients
	}
	if l.MaxLineLength == 0 {
		l.MaxLineLength = DefaultMaxLineLength
	}
	if l.MaxHeaderSize == 0 {
		l.MaxHeaderSize = DefaultMaxHeaderSize
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxConnectionsPerIP == 0 {
		l.MaxConnectionsPerIP = DefaultMaxConnectionsPerIP
	}
	if l.MinDataRate == 0 {
		l.MinDataRate = DefaultMinDataRate
	}
	if l.MaxMessageSize < 0 || l.MaxRecipients < 0 || l.MaxLineLength < 0 || l.MaxHeaderSize < 0 ||
		l.MaxConnections < 0 || l.MaxConnectionsPerIP < 0 || l.MinDataRate < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	if l.MaxLineLength > 0 && l.MaxLineLength < 80 {
		errs = append(errs, fmt.Errorf("max_line_length %d: must be at least 80", l.MaxLineLength))
	}
	var err error
	if l.commandTimeout, err = parseDuration(l.CommandTimeout, DefaultCommandTimeout); err != nil {
		errs = append(errs, fmt.Errorf("command_timeout: %w", err))
	}
	if l.dataTimeout, err = parseDuration(l.DataTimeout, DefaultDataTimeout); err != nil {
		errs = append(errs, fmt.Errorf("data_timeout: %w", err))
	}
	if l.handshakeTimeout, err = parseDuration(l.TLSHandshakeTimeout, DefaultHandshakeTimeout); err != nil {
		errs = append(errs, fmt.Errorf("tls_handshake_timeout: %w", err))
	}
	if l.loginTimeout, err = parseDuration(l.LoginTimeout, DefaultLoginTimeout); err != nil {
		errs = append(errs, fmt.Errorf("login_timeout: %w", err))
	}
	return errors.Join(errs...)
}

func parseDuration(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be positive", s)
	}
	return d, nil
}

// parsePrefixes parses CIDRs; a bare address means that address alone.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	var errs []error
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				errs = append(errs, fmt.Errorf("%q: %w", s, err))
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		ps = append(ps, p.Masked())
	}
	return ps, errors.Join(errs...)
}
