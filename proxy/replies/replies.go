// Package replies is the catalogue of every SMTP reply mailgate itself
// originates, each a named value with the RFC that defines its code:
// RFC 5321 (reply codes, section 4.2), RFC 3463 (enhanced status codes),
// RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 6531 (SMTPUTF8), RFC 3030
// (BDAT) and RFC 8689 (REQUIRETLS). A reader finds every reply here, as in
// mox's smtp/codes.go and go-smtp's backend.go; docs/replies.md documents
// them, and TestCatalogueMatchesDocs (proxy/catalogue_test.go) holds the
// two together.
//
// The replies of policy decisions are the policy package's: a rule's own
// text, or the defaults a Decision owns (policy.RejectMessage and the rest,
// see policy.Decision.Reply), which proxy/reply.go turns into replies;
// docs/replies.md lists them too. What is not here is not mailgate's: an
// upstream's own replies, passed on cleaned (proxy/upstream), and the few
// replies go-smtp writes itself and mailgate leaves alone (its 220
// greeting, its EHLO and syntax replies, 552 5.3.4 for max_message_size).
// The replies mailgate puts in place of go-smtp's playful texts are here.
//
// It is a package of its own, beside proxy rather than in it, because
// proxy/auth and proxy/upstream originate replies too and cannot import
// proxy. The proxy turns errors into these replies in one place
// (proxy/reply.go); the values are shared, never modified.
package replies

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Template is a reply whose text takes arguments (fmt verbs): the
// session id, an address, the host name. A Template is not an error, so it
// cannot be returned unfilled.
type Template struct {
	Code         int
	EnhancedCode smtp.EnhancedCode // smtp.NoEnhancedCode: the reply has none
	Format       string            // "\n" separates the lines of a multi-line reply
}

// With fills t's text with args. Arguments that come from a client or an
// upstream must be made safe (one printable line) by the caller.
func (t Template) With(args ...any) *smtp.SMTPError {
	return &smtp.SMTPError{Code: t.Code, EnhancedCode: t.EnhancedCode, Message: fmt.Sprintf(t.Format, args...)}
}

// AppendLine appends t filled with args, as Line formats it, to b: the
// same as Line(t.With(args...)) without the allocations, for the replies
// written on every message.
func (t Template) AppendLine(b []byte, args ...any) []byte {
	if strings.Contains(t.Format, "\n") {
		return AppendLine(b, t.With(args...))
	}
	b = appendHead(b, t.Code, false, t.EnhancedCode)
	return fmt.Appendf(b, t.Format, args...)
}

// Line formats r as written on the wire, without the final CRLF: "550
// 5.7.1 text", "220 text" for a reply without an enhanced code, and the
// lines of a multi-line text as "250-first\r\n250 last" (RFC 5321 section
// 4.2.1).
func Line(r *smtp.SMTPError) string {
	return string(AppendLine(make([]byte, 0, len(r.Message)+16), r))
}

// AppendLine appends r, as Line formats it, to b.
func AppendLine(b []byte, r *smtp.SMTPError) []byte {
	msg := r.Message
	for {
		line, rest, more := strings.Cut(msg, "\n")
		b = appendHead(b, r.Code, more, r.EnhancedCode)
		b = append(b, line...)
		if !more {
			return b
		}
		b = append(b, "\r\n"...)
		msg = rest
	}
}

// appendHead appends a reply line's code, "-" before more lines (else a
// space) and the enhanced code with its space, if any.
func appendHead(b []byte, code int, more bool, ec smtp.EnhancedCode) []byte {
	b = strconv.AppendInt(b, int64(code), 10)
	if more {
		b = append(b, '-')
	} else {
		b = append(b, ' ')
	}
	if ec != smtp.NoEnhancedCode {
		b = strconv.AppendInt(b, int64(ec[0]), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(ec[1]), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(ec[2]), 10)
		b = append(b, ' ')
	}
	return b
}

// Connection: refused at accept, ended by mailgate (server.go, conn.go).
var (
	// AccessDenied refuses a client outside the listener's
	// trusted_networks instead of the greeting (RFC 5321 section 3.1:
	// 554; RFC 3463 section 3.8: 5.7.1 not authorized).
	AccessDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Access denied"}
	// TooManyConnections refuses a connection over max_connections (RFC
	// 5321 section 3.1: 421 instead of the greeting; RFC 3463 4.7.0).
	TooManyConnections = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many connections, try again later"}
	// TooManyFromAddress refuses a connection over
	// max_connections_per_ip (RFC 5321 section 3.1, RFC 3463 4.7.0).
	TooManyFromAddress = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many connections from your address, try again later"}
	// RefusedShuttingDown refuses a connection accepted while the server
	// is shutting down, before any greeting (RFC 5321 section 3.1, RFC
	// 3463 4.7.0).
	RefusedShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Service shutting down, try again later"}
	// ShuttingDown ends an idle session, a TLS handshake or a STARTTLS
	// dialogue on shutdown (RFC 5321 section 3.8: 421 then close; RFC
	// 3463 section 3.4: 4.3.2 system not accepting network messages).
	ShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Service shutting down, try again later"}
	// LoginTimeout ends a connection that has not logged in (AUTH, or
	// EHLO/HELO without AUTH) within login_timeout (RFC 5321 section
	// 4.5.3.2: the server may time out; RFC 3463 section 3.5: 4.4.2 bad
	// connection).
	LoginTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Login timeout exceeded, closing connection"}
	// LineTimeout ends a connection whose command line did not arrive
	// whole within command_timeout (RFC 5321 section 4.5.3.2.7, RFC 3463
	// 4.4.2).
	LineTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout reading a command line, closing connection"}
	// IdleTimeout ends a connection that sent no command within
	// command_timeout: before STARTTLS, and in place of go-smtp's "Idle
	// timeout, bye bye" (RFC 5321 section 4.5.3.2.7, RFC 3463 4.4.2).
	IdleTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Idle timeout, closing connection"}
	// ConnectionError replaces go-smtp's "Connection error, sorry" (RFC
	// 5321 section 3.8, RFC 3463 section 3.5: 4.4.0).
	ConnectionError = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 0},
		Message: "Connection error, closing connection"}
	// TooManyErrors replaces go-smtp's "Too many errors. Quiting now"
	// (RFC 5321 section 4.2.3: 500; RFC 3463 section 3.6: 5.5.1).
	TooManyErrors = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Too many errors, closing connection"}
	// DataTimeout ends a body that stalled past data_timeout or fell
	// below min_data_rate (RFC 5321 section 4.5.3.2.6, RFC 3463 4.4.2).
	DataTimeout = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout waiting for message data, closing connection"}
)

// Strict input (conn.go, bdat.go): SMTP smuggling and over-long lines.
var (
	// BareLineEnding answers a bare CR, a bare LF or a NUL in commands,
	// DATA or BDAT payload, and closes (RFC 5321 section 2.3.8: CR and LF
	// only as CRLF; RFC 3463 section 3.7: 5.6.0 other media error).
	// Anything else is how SMTP smuggling starts, so mailgate refuses it,
	// like Postfix's smtpd_forbid_bare_newline = reject.
	BareLineEnding = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Bare CR, bare LF or NUL received (RFC 5321 section 2.3.8), closing connection"}
	// LineTooLong answers a line over max_line_length, in commands and
	// message text alike, and closes (RFC 5321 section 4.5.3.1.6: 500;
	// RFC 3463 section 3.6: 5.5.2 syntax error).
	LineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Line too long, closing connection"}
)

// The plaintext dialogue of a starttls listener before TLS (starttls.go,
// RFC 3207).
var (
	// Greeting is the 220 of a starttls listener, with the host name (RFC
	// 5321 section 4.2: a greeting has no enhanced code).
	Greeting = Template{Code: 220, EnhancedCode: smtp.NoEnhancedCode,
		Format: "%s ESMTP mailgate"}
	// EHLOBeforeTLS answers EHLO before TLS, with the host name and
	// max_message_size: the extensions offered in plaintext (RFC 5321
	// section 4.1.1.1; RFC 3207 section 4 STARTTLS; RFC 2920, RFC 1870,
	// RFC 6152, RFC 2034).
	EHLOBeforeTLS = Template{Code: 250, EnhancedCode: smtp.NoEnhancedCode,
		Format: "%s\nPIPELINING\nSIZE %d\n8BITMIME\nENHANCEDSTATUSCODES\nSTARTTLS"}
	// HELOBeforeTLS answers HELO before TLS with the host name (RFC 5321
	// section 4.1.1.1).
	HELOBeforeTLS = Template{Code: 250, EnhancedCode: smtp.NoEnhancedCode,
		Format: "%s"}
	// EHLONeedsDomain and HELONeedsDomain answer a greeting without a
	// domain (RFC 5321 section 4.1.1.1 syntax, section 4.2.2 501; RFC 3463
	// section 3.6: 5.5.4 invalid command arguments).
	EHLONeedsDomain = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
		Message: "EHLO needs a domain"}
	HELONeedsDomain = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
		Message: "HELO needs a domain"}
	// BadLineBeforeTLS answers a bare CR, a bare LF, a NUL or a line over
	// 512 bytes before TLS, and closes (RFC 5321 section 2.3.8 and
	// section 4.5.3.1.4, the 512-octet command line; RFC 3463 5.6.0).
	BadLineBeforeTLS = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Bare CR, bare LF, NUL or an over-long line received, closing connection"}
	// SendEHLOFirst answers STARTTLS before EHLO (RFC 5321 section 4.1.4:
	// 503 bad sequence; RFC 3463 5.5.1).
	SendEHLOFirst = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Send EHLO first"}
	// STARTTLSNoArgument answers "STARTTLS something" (RFC 3207 section
	// 4: 501 syntax error, no parameters allowed; RFC 3463 5.5.4).
	STARTTLSNoArgument = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
		Message: "STARTTLS takes no argument"}
	// ReadyToStartTLS answers STARTTLS before the handshake (RFC 3207
	// section 4: 220; RFC 3463 2.0.0).
	ReadyToStartTLS = &smtp.SMTPError{Code: 220, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: "Ready to start TLS"}
	// OK answers NOOP and RSET before TLS, and replaces go-smtp's "I have
	// successfully done nothing" (RFC 5321 section 4.1.1.9, RFC 3463
	// 2.0.0).
	OK = &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: "OK"}
	// Bye answers QUIT before TLS (RFC 5321 section 4.1.1.10: 221).
	Bye = &smtp.SMTPError{Code: 221, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: "Bye"}
	// MustStartTLS answers MAIL, RCPT, DATA, BDAT, AUTH, VRFY and EXPN
	// before TLS (RFC 3207 section 4: 530 5.7.0).
	MustStartTLS = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Must issue a STARTTLS command first"}
	// NotRecognized answers any other command before TLS (RFC 5321
	// section 4.2.4: 502 in place of 500 for an unimplemented command;
	// RFC 3463 5.5.1).
	NotRecognized = &smtp.SMTPError{Code: 502, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Command not recognized"}
	// TooManyErrorsBeforeTLS ends a plaintext dialogue after more than
	// ten refused commands (RFC 5321 section 3.8: 421 then close; RFC
	// 3463 section 3.8: 4.7.0).
	TooManyErrorsBeforeTLS = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many errors, closing connection"}
)

// In place of go-smtp's own texts (proxy/reply.go goSMTPReplies; the
// connection ones are above: OK, IdleTimeout, ConnectionError,
// TooManyErrors).
var (
	// SenderOK accepts MAIL FROM, with the address (RFC 5321 section
	// 4.1.1.2: 250; RFC 3463 section 3.2: 2.1.0 other address status).
	SenderOK = Template{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 1, 0},
		Format: "Sender <%s> OK"}
	// RecipientOK accepts RCPT TO, with the address (RFC 5321 section
	// 4.1.1.3: 250; RFC 3463 section 3.2: 2.1.5 destination address
	// valid).
	RecipientOK = Template{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 1, 5},
		Format: "Recipient <%s> OK"}
	// StartData answers DATA (RFC 5321 section 4.1.1.4: 354, which has
	// no enhanced code).
	StartData = &smtp.SMTPError{Code: 354, EnhancedCode: smtp.NoEnhancedCode,
		Message: "End data with <CR><LF>.<CR><LF>"}
)

// Session: sequence and access (session.go).
var (
	// AuthRequired answers MAIL before AUTH on a listener that requires
	// it (RFC 4954 section 6: 530 5.7.0).
	AuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	// EncryptionRequired answers AUTH before TLS (RFC 4954 section 6:
	// 538 5.7.11).
	EncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism"}
	// AuthInTransaction answers AUTH after MAIL (RFC 4954 section 4: not
	// permitted during a mail transaction; 503 5.5.1).
	AuthInTransaction = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "AUTH is not permitted during a mail transaction"}
	// NestedMail answers a second MAIL in a transaction (RFC 5321 section
	// 4.1.4: 503 bad sequence; RFC 3463 5.5.1).
	NestedMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Nested MAIL command"}
	// NeedMail answers RCPT, DATA or BDAT without a transaction (RFC 5321
	// section 4.1.4: 503; RFC 3463 5.5.1).
	NeedMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Need MAIL before RCPT"}
)

// Addresses refused before policy (address.go).
var (
	// BadAddress* refuse a MAIL FROM or RCPT TO address mailgate will not
	// relay (RFC 5321 section 4.2.2: 553 mailbox name not allowed; RFC
	// 3463 section 3.2: 5.1.3 bad destination mailbox address syntax).
	BadAddressEmpty = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Empty address"}
	BadAddressForm = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Address must be local-part@domain"}
	// BadAddressRoute: RFC 5321 section 4.1.2 source routes (which
	// go-smtp would strip) and control characters.
	BadAddressRoute = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Source routes and control characters are not accepted"}
	BadAddressUTF8 = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Address is not valid UTF-8"}
	// BadAddressLength: RFC 5321 section 4.5.3.1.1 and 4.5.3.1.2 (64 and
	// 255 octets).
	BadAddressLength = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Address too long"}
	// BadAddressRouting: percent hacks and bang paths (RFC 5321 section
	// 3.6).
	BadAddressRouting = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Percent hacks and bang paths are not accepted"}
	BadAddressDomain = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Invalid domain in address"}
	// NonASCIIAddress refuses a non-ASCII address from a client that did
	// not say SMTPUTF8 (RFC 6531 section 3.4; RFC 3463 section 3.7 as
	// updated by RFC 6531: 5.6.7).
	NonASCIIAddress = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message: "Non-ASCII address needs SMTPUTF8"}
)

// SMTPUTF8 needed but not offered by the upstream: RFC 6531 section 3.4
// (never downgrade), 5.6.7. The argument names the part and is made safe
// by the caller.
var (
	// SenderNeedsSMTPUTF8 answers MAIL with a non-ASCII sender (550).
	SenderNeedsSMTPUTF8 = Template{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Format: "Sender <%s> needs SMTPUTF8, which the upstream does not support"}
	// RecipientNeedsSMTPUTF8 answers RCPT with a non-ASCII recipient
	// (550).
	RecipientNeedsSMTPUTF8 = Template{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Format: "Recipient <%s> needs SMTPUTF8, which the upstream does not support"}
	// HeaderNeedsSMTPUTF8 answers the end of DATA for a non-ASCII header
	// field, named (RFC 5321 section 4.2.2: 554 transaction failed).
	HeaderNeedsSMTPUTF8 = Template{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Format: "Non-ASCII header (%s) needs SMTPUTF8, which the upstream does not support"}
)

// The message (message.go, session.go Data).
var (
	// HeaderTooBig refuses a header section over max_header_size (RFC
	// 5321 section 4.2.2: 552; RFC 3463 section 3.4: 5.3.4 message too
	// big for system).
	HeaderTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message header section exceeds the size limit"}
	// BadHeader refuses a malformed header field (RFC 5322 section 2.2;
	// RFC 3463 section 3.7: 5.6.0).
	BadHeader = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Malformed header field"}
	// NoFrom refuses a message without From (RFC 5322 section 3.6; RFC
	// 3463 5.6.0).
	NoFrom = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message has no From header (RFC 5322 section 3.6)"}
	// SignFrom refuses to sign a message without exactly one From address
	// (RFC 6376 section 5.4: From must be signed; RFC 3463 5.7.1).
	SignFrom = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Message must have exactly one From address to be signed"}
	// SignNoKey refuses a From domain mailgate holds no DKIM key for: it
	// never relays unsigned (RFC 3463 5.7.1).
	SignNoKey = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "This server does not sign mail for the From domain"}
	// Queued is the final reply after the upstream's 250, with the
	// transaction id (RFC 5321 section 4.1.1.4; RFC 3030 section 2 for
	// BDAT LAST; RFC 3463 2.0.0).
	Queued = Template{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Format: "OK: queued as %s"}
	// Aborted answers a message whose client went away mid-transfer or
	// sent RSET between BDAT chunks (RFC 5321 section 4.2.2: 451; RFC
	// 3463 section 3.5: 4.4.2). Nobody is usually left to read it.
	Aborted = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Message transfer aborted"}
	// InternalError answers any failure of mailgate's own (signing, disk,
	// an unknown error), with the session id for the log, never the cause
	// (RFC 5321 section 4.2.2: 451 local error; RFC 3463 section 3.4:
	// 4.3.0).
	InternalError = Template{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Format: "Internal error, try again later (%s)"}
)

// AUTH (proxy/auth, RFC 4954 section 6).
var (
	// AuthFailed is the one reply for an unknown user, a wrong password
	// and a mismatched PLAIN authorization identity, so that it never
	// tells which users exist (535 5.7.8).
	AuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid"}
	// MalformedAuth answers SASL input that breaks the mechanism's syntax
	// (RFC 4954 section 4: 501; RFC 3463 5.5.2).
	MalformedAuth = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Malformed authentication data"}
	// TooManyAuthFailures answers an attempt refused by the failure
	// limiter before any password is checked (454 4.7.0 temporary
	// authentication failure).
	TooManyAuthFailures = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many authentication failures, try later"}
	// AuthUnavailable answers an internal failure while authenticating
	// (454 4.7.0); the cause goes to the log only.
	AuthUnavailable = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Temporary authentication failure"}
)

// The upstream failed, or refused before anything was sent
// (proxy/upstream AsSMTPError). The upstream's own 4xx/5xx replies are
// its own, passed on cleaned, and not here.
var (
	// UpstreamTimeout: a dial, command or DATA deadline expired (RFC 5321
	// section 4.2.2: 451; RFC 3463 section 3.5: 4.4.2).
	UpstreamTimeout = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Upstream server timed out, try again later"}
	// UpstreamUnavailable: no upstream reachable, or the connection broke
	// (RFC 5321 section 4.2.2: 451; RFC 3463 section 3.5: 4.4.1 no answer
	// from host).
	UpstreamUnavailable = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1},
		Message: "Upstream server unavailable, try again later"}
	// BadSenderSyntax and BadRecipientSyntax: an address that would break
	// the upstream command line (RFC 5321 section 4.2.2: 501; RFC 3463
	// section 3.2: 5.1.7 and 5.1.3).
	BadSenderSyntax = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "Bad sender address syntax"}
	BadRecipientSyntax = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Bad recipient address syntax"}
	// InvalidParameter: a MAIL/RCPT parameter go-smtp's client refuses to
	// send (RFC 5321 section 4.2.2: 501; RFC 3463 5.5.4).
	InvalidParameter = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
		Message: "Invalid command parameter"}
	// UpstreamNoSMTPUTF8: an address needs SMTPUTF8 and the upstream does
	// not offer it (RFC 6531 section 3.4; 5.6.7). The proxy answers MAIL
	// with SenderNeedsSMTPUTF8 instead, which names the address.
	UpstreamNoSMTPUTF8 = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message: "SMTPUTF8 is not supported by the upstream server"}
	// UpstreamNoRequireTLS: REQUIRETLS asked for and not offered by the
	// upstream (RFC 8689 section 5: 5.7.30).
	UpstreamNoRequireTLS = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 30},
		Message: "REQUIRETLS is not supported by the upstream server"}
	// UpstreamInternal: a route naming no upstream, a closed transaction,
	// a message read error (RFC 5321 section 4.2.2: 451; RFC 3463 4.3.0).
	// The proxy answers these with InternalError, which carries the id.
	UpstreamInternal = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Internal error, try again later"}
)
