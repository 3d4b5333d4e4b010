// Package auth authenticates SMTP submission clients for mailgate: it loads
// the users file, verifies password hashes, provides the PLAIN (RFC 4616)
// and LOGIN (draft-murchison-sasl-login) SASL servers for go-smtp, and
// limits failed attempts per client address and per user name.
//
// The proxy's session uses one Authenticator:
//
//	a, err := auth.New(cfg.Auth, auth.WithLogger(log))
//	...
//	func (s *session) AuthMechanisms() []string { return s.auth.Mechanisms() }
//	func (s *session) Auth(mech string) (sasl.Server, error) {
//		return s.auth.Server(mech, s.remote,
//			func(user string) { s.user = user },
//			func() { s.failures++ /* close at a.MaxFailures() */ })
//	}
//
// Every error the SASL servers return is an *smtp.SMTPError that go-smtp
// sends as is: 535 5.7.8 for any bad credentials (unknown user, wrong
// password, mismatched authorization identity — one reply, so it does not
// reveal which users exist), 501 5.5.2 for malformed SASL data, 454 4.7.0
// when the failure limits are reached. They are values of the reply
// catalogue (proxy/replies), as ErrAuthFailed and the rest.
//
// Passwords and AUTH payloads never reach a log or an error; user names
// and outcomes do.
package auth
