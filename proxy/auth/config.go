package auth

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("auth: invalid config")

// DefaultMaxFailures is the default number of failed AUTH attempts on one
// connection before the session closes it.
const DefaultMaxFailures = 3

// maxFailureWindow caps failure_window: counters older than a day are
// forgotten anyway and a longer window is almost certainly a typo.
const maxFailureWindow = 24 * time.Hour

// Config is the `auth` block of the mailgate config file:
//
//	auth {
//	  users_file     = "/etc/mailgate/users" # required
//	  max_failures   = 3     # per connection, then the connection closes
//	  ip_failures    = 20    # per client address (IPv6: per /64) per window
//	  user_failures  = 10    # per user name per window
//	  failure_window = "15m" # Go duration
//	}
//
// A zero or absent number and an empty window mean the default; call
// WithDefaults then Validate (New does both).
type Config struct {
	UsersFile     string `hcl:"users_file"`
	MaxFailures   int    `hcl:"max_failures,optional"`
	IPFailures    int    `hcl:"ip_failures,optional"`
	UserFailures  int    `hcl:"user_failures,optional"`
	FailureWindow string `hcl:"failure_window,optional"`
}

// WithDefaults returns c with every unset field set to its default.
func (c Config) WithDefaults() Config {
	if c.MaxFailures == 0 {
		c.MaxFailures = DefaultMaxFailures
	}
	if c.IPFailures == 0 {
		c.IPFailures = DefaultIPFailures
	}
	if c.UserFailures == 0 {
		c.UserFailures = DefaultUserFailures
	}
	if c.FailureWindow == "" {
		c.FailureWindow = DefaultFailureWindow.String()
	}
	return c
}

// Validate checks c, which should have had WithDefaults applied. It does
// not read the users file (New does).
func (c Config) Validate() error {
	var errs []error
	if c.UsersFile == "" {
		errs = append(errs, errors.New("users_file is required"))
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"max_failures", c.MaxFailures}, {"ip_failures", c.IPFailures}, {"user_failures", c.UserFailures}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1, got %d", f.name, f.v))
		}
	}
	if d, err := time.ParseDuration(c.FailureWindow); err != nil {
		errs = append(errs, fmt.Errorf("failure_window: %w", err))
	} else if d <= 0 || d > maxFailureWindow {
		errs = append(errs, fmt.Errorf("failure_window must be in (0, %s], got %s", maxFailureWindow, d))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Window returns FailureWindow parsed, or the default if it does not parse
// (Validate reports that).
func (c Config) Window() time.Duration {
	d, err := time.ParseDuration(c.FailureWindow)
	if err != nil || d <= 0 {
		return DefaultFailureWindow
	}
	return d
}
