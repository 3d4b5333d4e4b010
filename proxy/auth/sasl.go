package auth

import (
	"bytes"
	"errors"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
)

// SMTP replies for AUTH (the catalogue's, proxy/replies), returned
// unwrapped by the SASL servers because go-smtp passes an *smtp.SMTPError
// from sasl.Server.Next to the client as is (a type assertion, not
// errors.As) and turns anything else into "454 4.7.0 <err.Error()>",
// which could disclose internals. Compare with errors.Is: they are
// pointers, and the same pointer is always returned.
var (
	// ErrAuthFailed is the one reply for an unknown user, a wrong password
	// and a mismatched PLAIN authorization identity (535 5.7.8), so the
	// reply never tells which users exist.
	ErrAuthFailed = replies.AuthFailed
	// ErrMalformedAuth answers SASL input that does not follow the
	// mechanism's syntax (501 5.5.2).
	ErrMalformedAuth = replies.MalformedAuth
	// ErrTooManyFailures answers an attempt refused by the failure limiter
	// before any password is checked (454 4.7.0).
	ErrTooManyFailures = replies.TooManyAuthFailures
	// ErrAuthUnavailable answers an internal failure while authenticating
	// (454 4.7.0), for callbacks and future shared limiters that can fail;
	// the cause goes to the log only.
	ErrAuthUnavailable = replies.AuthUnavailable
)

// Mechanism names.
const (
	Plain = sasl.Plain // "PLAIN", RFC 4616
	Login = "LOGIN"    // draft-murchison-sasl-login
)

// maxSASLField bounds each of authzid, authcid and password in bytes. RFC
// 4616 §2 requires servers to accept at least 255 octets; we allow more for
// long passwords but refuse absurd input as malformed.
const maxSASLField = MaxPasswordLen

// replyFor turns what an authenticate callback returned into what Next
// returns: nil stays nil, an *smtp.SMTPError anywhere in the chain is
// returned unwrapped (go-smtp does not unwrap), and any other error becomes
// ErrAuthFailed so no internal text reaches the client.
func replyFor(err error) error {
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return ErrAuthFailed
}

// validField reports whether b is an acceptable SASL string: non-empty,
// UTF-8 (RFC 4616 §2), no NUL and not over maxSASLField bytes.
func validField(b []byte) bool {
	return len(b) > 0 && len(b) <= maxSASLField && utf8.Valid(b) && bytes.IndexByte(b, 0) < 0
}

// plainServer implements RFC 4616 PLAIN.
type plainServer struct {
	authenticate func(identity, username, password string) error
	done         bool
}

// NewPlainServer returns a server for the PLAIN mechanism (RFC 4616). The
// message is "[authzid] NUL authcid NUL passwd", as the initial response or
// after an empty challenge.
//
// The authorization identity must be empty or equal the username (compared
// with CanonicalUser); otherwise Next fails with ErrAuthFailed without
// calling authenticate, because mailgate has no proxy-authorization. Input
// that is not three NUL-separated fields, with an empty or non-UTF-8 or
// over-long username or password, fails with ErrMalformedAuth, also without
// calling authenticate. An error from authenticate is returned as described
// in replyFor: an *smtp.SMTPError as is, anything else as ErrAuthFailed.
func NewPlainServer(authenticate func(identity, username, password string) error) sasl.Server {
	return &plainServer{authenticate: authenticate}
}

// Next implements sasl.Server.
func (s *plainServer) Next(response []byte) ([]byte, bool, error) {
	if s.done {
		return nil, false, ErrMalformedAuth
	}
	if response == nil {
		// No initial response: an empty challenge asks for one (RFC 4954 §4).
		return []byte{}, false, nil
	}
	s.done = true
	parts := bytes.Split(response, []byte{0})
	if len(parts) != 3 || len(parts[0]) > maxSASLField || !utf8.Valid(parts[0]) ||
		!validField(parts[1]) || !validField(parts[2]) {
		return nil, false, ErrMalformedAuth
	}
	identity, username, password := string(parts[0]), string(parts[1]), string(parts[2])
	if identity != "" && CanonicalUser(identity) != CanonicalUser(username) {
		return nil, false, ErrAuthFailed
	}
	if err := replyFor(s.authenticate(identity, username, password)); err != nil {
		return nil, false, err
	}
	return nil, true, nil
}

// loginServer implements draft-murchison-sasl-login.
type loginServer struct {
	authenticate func(username, password string) error
	state        int
	username     string
}

const (
	loginStart = iota
	loginWantUser
	loginWantPass
	loginDone
)

// The LOGIN challenges; go-smtp base64-encodes them on the wire.
var (
	loginUserChallenge = []byte("Username:")
	loginPassChallenge = []byte("Password:")
)

// NewLoginServer returns a server for the obsolete but still widespread
// LOGIN mechanism (draft-murchison-sasl-login-00): the server challenges
// "Username:" then "Password:". A non-empty initial response
// ("AUTH LOGIN <base64 user>") is taken as the username and only
// "Password:" is asked; an empty one ("AUTH LOGIN =") counts as none.
// Empty, non-UTF-8 or over-long fields, and responses after the exchange
// ended, fail with ErrMalformedAuth without calling authenticate. An error
// from authenticate is returned as described in replyFor.
func NewLoginServer(authenticate func(username, password string) error) sasl.Server {
	return &loginServer{authenticate: authenticate}
}

// Next implements sasl.Server.
func (s *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch s.state {
	case loginStart:
		if len(response) == 0 {
			s.state = loginWantUser
			return loginUserChallenge, false, nil
		}
		fallthrough
	case loginWantUser:
		if !validField(response) {
			s.state = loginDone
			return nil, false, ErrMalformedAuth
		}
		s.username = string(response)
		s.state = loginWantPass
		return loginPassChallenge, false, nil
	case loginWantPass:
		s.state = loginDone
		if !validField(response) {
			return nil, false, ErrMalformedAuth
		}
		if err := replyFor(s.authenticate(s.username, string(response))); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	default:
		return nil, false, ErrMalformedAuth
	}
}
