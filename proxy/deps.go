package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/policy"
)

// Deps are the collaborators a Server hands messages to, in the one
// direction of flow: policy, then signing, then the upstream relay.
type Deps struct {
	Logger *slog.Logger
	// TLS provides the server certificate. Required for starttls and
	// implicit listeners.
	TLS *tls.Config
	// Auth verifies credentials. Nil means no AUTH is offered.
	Auth Authenticator
	// Policy decides every stage. Nil accepts everything.
	Policy policy.Evaluator
	// Signer DKIM-signs accepted messages. Nil relays unsigned.
	Signer Signer
	// Relay is the upstream. Required.
	Relay Relay
	// Now is the clock (Date and Received headers). Default time.Now.
	Now func() time.Time
	// Metrics records Prometheus metrics. Nil records nothing.
	Metrics *Metrics
}

// Authenticator verifies SMTP AUTH credentials.
type Authenticator interface {
	// Mechanisms lists the SASL mechanisms offered, e.g. PLAIN, LOGIN.
	Mechanisms() []string
	// Server returns a SASL server for mech. onSuccess is called with the
	// authenticated user; onFailure after every failed attempt. Failures
	// surface as *smtp.SMTPError (535 5.7.8 for bad credentials).
	Server(mech string, remote netip.Addr, onSuccess func(user string), onFailure func()) (sasl.Server, error)
	// MaxFailures is how many failed attempts close a connection.
	MaxFailures() int
}

// Signer DKIM-signs a message. See dkim.Signer.Sign for the contract.
type Signer interface {
	// Sign reads the whole message (CRLF) and returns the header fields to
	// prepend, each ending in CRLF. domain "" means the From header's
	// domain. (nil, nil) means: relay unsigned.
	Sign(ctx context.Context, domain string, msg io.Reader) ([]string, error)
}

// Relay opens upstream transactions.
type Relay interface {
	// Begin checks out an upstream connection and sends MAIL FROM. route
	// names an upstream chosen by policy, "" means the default order.
	// opts.UTF8 asks for SMTPUTF8, which Begin may drop when from is
	// ASCII and the upstream lacks it (see RelayTx.SMTPUTF8).
	Begin(ctx context.Context, route, from string, opts *smtp.MailOptions) (RelayTx, error)
}

// ExtensionProber is implemented by a Relay that can tell whether its
// upstreams offer an ESMTP extension. The proxy asks once, when Serve
// starts, to decide what it advertises itself (DSN): a Relay that does not
// implement it gets no DSN advertised.
type ExtensionProber interface {
	// Offers reports whether every upstream a transaction may use offers
	// the EHLO keyword ext; an unreachable upstream counts as not.
	Offers(ctx context.Context, ext string) bool
}

// RelayTx is one upstream transaction, mirroring the client's.
type RelayTx interface {
	// Rcpt sends RCPT TO; an upstream refusal is an *smtp.SMTPError.
	Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error
	// Data sends the message and returns the upstream's final reply as
	// one line for the log ("250 2.0.0 Ok: queued as 4Xyz").
	Data(ctx context.Context, r io.Reader) (string, error)
	// Abort ends the transaction without a message (RSET).
	Abort()
	// Upstream names the upstream in use, for logs.
	Upstream() string
	// SMTPUTF8 reports whether the transaction may carry non-ASCII
	// addresses and header fields (RFC 6531): false when the client asked
	// for SMTPUTF8 but the upstream does not offer it, so Begin sent MAIL
	// without it (the client's SMTPUTF8 is a request, not a need).
	SMTPUTF8() bool
}
