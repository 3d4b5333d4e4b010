package auth

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Authenticator ties the users file, the failure limiter and the SASL
// servers together for one proxy. It is safe for concurrent use; the
// session calls Server for each AUTH command.
type Authenticator struct {
	cfg     Config
	users   atomic.Pointer[Users]
	limiter Limiter
	log     *slog.Logger
}

// Option configures New.
type Option func(*options)

type options struct {
	log     *slog.Logger
	limiter Limiter
	now     func() time.Time
}

// WithLogger sets the logger; the default discards. Records carry the
// mechanism, the client address, the user name and the outcome, never a
// password or an AUTH payload.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithLimiter replaces the default MemoryLimiter built from the Config, for
// instance with one shared between instances.
func WithLimiter(l Limiter) Option { return func(o *options) { o.limiter = l } }

// WithClock sets the clock of the default MemoryLimiter (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// New applies cfg's defaults, validates it, loads the users file and
// returns an Authenticator.
func New(cfg Config, opts ...Option) (*Authenticator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.limiter == nil {
		o.limiter = NewMemoryLimiter(MemoryLimiterConfig{
			IPFailures:   cfg.IPFailures,
			UserFailures: cfg.UserFailures,
			Window:       cfg.Window(),
			Now:          o.now,
		})
	}
	a := &Authenticator{cfg: cfg, limiter: o.limiter, log: o.log}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload reads the users file again and swaps it in atomically. On error
// the previous users stay in force; attempts in flight finish against the
// set they started with.
func (a *Authenticator) Reload() error {
	u, err := LoadUsers(a.cfg.UsersFile)
	if err != nil {
		return err
	}
	a.users.Store(u)
	a.log.Info("auth: users loaded", "file", a.cfg.UsersFile, "users", u.Len())
	return nil
}

// MaxFailures is how many failed AUTH attempts the session allows on one
// connection before closing it.
func (a *Authenticator) MaxFailures() int { return a.cfg.MaxFailures }

// Mechanisms returns the SASL mechanisms to advertise.
func (a *Authenticator) Mechanisms() []string { return []string{Plain, Login} }

// Server returns the SASL server for one AUTH command from remote; mech is
// matched case-insensitively.
//
// onSuccess(user) is called with the canonical user name once the password
// matched; onFailure is called once for each failed attempt — wrong
// credentials, malformed input, or an attempt refused by the limiter — so
// the session can count towards MaxFailures. Either may be nil. The replies
// are ErrAuthFailed (535), ErrMalformedAuth (501), ErrTooManyFailures (454,
// also returned directly by Server when remote is already over its limit)
// and smtp.ErrAuthUnknownMechanism (504), all *smtp.SMTPError for go-smtp
// to send as they are.
func (a *Authenticator) Server(mech string, remote netip.Addr, onSuccess func(user string), onFailure func()) (sasl.Server, error) {
	if onSuccess == nil {
		onSuccess = func(string) {}
	}
	if onFailure == nil {
		onFailure = func() {}
	}
	mech = strings.ToUpper(mech)
	if mech != Plain && mech != Login {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	log := a.log.With("mechanism", mech, "remote", remote.String())
	if !a.limiter.Allow(remote, "") {
		log.Warn("auth: refused", "outcome", "throttled")
		onFailure()
		return nil, ErrTooManyFailures
	}
	log.Debug("auth: start")
	att := &attempt{a: a, remote: remote, log: log, onSuccess: onSuccess, onFailure: onFailure}
	var inner sasl.Server
	if mech == Plain {
		inner = NewPlainServer(func(_, username, password string) error { return att.check(username, password) })
	} else {
		inner = NewLoginServer(att.check)
	}
	return &trackedServer{inner: inner, att: att}, nil
}

// attempt is the state of one AUTH command.
type attempt struct {
	a         *Authenticator
	remote    netip.Addr
	log       *slog.Logger
	onSuccess func(string)
	onFailure func()
	checked   bool // check ran, so accounting is done
}

// check limits, verifies and accounts one username/password pair.
func (t *attempt) check(username, password string) error {
	t.checked = true
	user := CanonicalUser(username)
	if !t.a.limiter.Allow(t.remote, user) {
		t.log.Warn("auth: refused", "user", user, "outcome", "throttled")
		t.onFailure()
		return ErrTooManyFailures
	}
	name, ok := t.a.users.Load().Verify(user, password)
	if !ok {
		t.a.limiter.Fail(t.remote, user)
		t.log.Warn("auth: failed", "user", user, "outcome", "invalid_credentials")
		t.onFailure()
		return ErrAuthFailed
	}
	t.a.limiter.Succeed(t.remote, name)
	t.log.Info("auth: succeeded", "user", name, "outcome", "success")
	t.onSuccess(name)
	return nil
}

// trackedServer accounts for failures that end an exchange before check
// runs: malformed input and a PLAIN authorization identity that differs
// from the username. They count against the client address only (the user
// name is unknown or not trusted).
type trackedServer struct {
	inner sasl.Server
	att   *attempt
}

func (s *trackedServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.inner.Next(response)
	if err != nil && !s.att.checked {
		s.att.checked = true
		outcome := "malformed"
		if errors.Is(err, ErrAuthFailed) {
			outcome = "authzid_mismatch"
		}
		s.att.a.limiter.Fail(s.att.remote, "")
		s.att.log.Warn("auth: failed", "outcome", outcome)
		s.att.onFailure()
	}
	return challenge, done, err
}
