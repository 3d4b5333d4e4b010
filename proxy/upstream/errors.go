package upstream

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
)

// Sentinel errors, checked with errors.Is. AsSMTPError maps each one to the
// reply the client gets.
var (
	// ErrUnavailable: no upstream could be reached, or the connection broke
	// (TLS failure, EOF, reset, protocol violation, 421). Client reply: 451 4.4.1.
	ErrUnavailable = errors.New("upstream: unavailable")
	// ErrTimeout: a dial, command or DATA deadline expired. Client reply: 451 4.4.2.
	ErrTimeout = errors.New("upstream: timeout")
	// ErrInvalidAddress: an address that would break the command line
	// (CR, LF, NUL, '<', '>'); nothing was sent. Client reply: 501 5.1.7 at
	// MAIL, 501 5.1.3 at RCPT.
	ErrInvalidAddress = errors.New("upstream: invalid address")
	// ErrInvalidParameter: a MAIL/RCPT parameter go-smtp refuses to send
	// (BINARYMIME over DATA, malformed ENVID/RET...). Client reply: 501 5.5.4.
	ErrInvalidParameter = errors.New("upstream: invalid parameter")
	// ErrSMTPUTF8: an address needs SMTPUTF8 (it is not ASCII) but the
	// upstream does not advertise it (RFC 6531 section 3.4: the message
	// must not be sent downgraded). Client reply: 550 5.6.7.
	ErrSMTPUTF8 = errors.New("upstream: SMTPUTF8 not supported by upstream")
	// ErrRequireTLS: the client asked for REQUIRETLS but the upstream does
	// not advertise it (RFC 8689 section 5). Client reply: 550 5.7.30.
	ErrRequireTLS = errors.New("upstream: REQUIRETLS not supported by upstream")
	// ErrUnknownRoute: Begin was given a route that names no configured
	// upstream (a policy/config mismatch). Client reply: 451 4.3.0.
	ErrUnknownRoute = errors.New("upstream: unknown route")
	// ErrTxClosed: a Tx method was called after Data, Abort or a transport
	// failure ended it (a caller bug). Client reply: 451 4.3.0.
	ErrTxClosed = errors.New("upstream: transaction closed")
)

// MaxReplyLen caps the text of an upstream reply passed to the client.
const MaxReplyLen = 200

// AsSMTPError maps any error returned by this package to the reply the
// client must get. It returns nil for nil. The reply is a 5xx only when the
// upstream itself answered 5xx or the request can never succeed (see the
// package documentation); transport trouble is always 4xx. The returned
// value is a fresh copy the caller may modify.
func AsSMTPError(err error) *smtp.SMTPError {
	var ae *addressError
	var se *smtp.SMTPError
	var r *smtp.SMTPError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrTimeout):
		r = replies.UpstreamTimeout
	case errors.Is(err, ErrUnavailable):
		r = replies.UpstreamUnavailable
	case errors.As(err, &ae):
		r = replies.BadRecipientSyntax
		if ae.stage == "mail" {
			r = replies.BadSenderSyntax
		}
	case errors.Is(err, ErrInvalidParameter):
		r = replies.InvalidParameter
	case errors.Is(err, ErrSMTPUTF8):
		r = replies.UpstreamNoSMTPUTF8
	case errors.Is(err, ErrRequireTLS):
		r = replies.UpstreamNoRequireTLS
	case errors.As(err, &se):
		r = se
	default:
		// ErrUnknownRoute, ErrTxClosed, message read errors: internal.
		// Never leak internal text to the client.
		r = replies.UpstreamInternal
	}
	c := *r
	return &c
}

// addressError is returned for an address refused before sending.
type addressError struct {
	stage, addr string
}

func (e *addressError) Error() string {
	return fmt.Sprintf("upstream: %s address %q: refused (CR, LF, NUL, '<' or '>')", e.stage, e.addr)
}

func (e *addressError) Is(target error) bool { return target == ErrInvalidAddress }

// checkAddress refuses addresses that could inject into or break the
// "MAIL FROM:<...>" / "RCPT TO:<...>" command line.
func checkAddress(stage, addr string) error {
	if strings.ContainsAny(addr, "\r\n\x00<>") {
		return &addressError{stage: stage, addr: addr}
	}
	return nil
}

// transportError wraps sentinel (ErrUnavailable or ErrTimeout) with the
// stage and cause for logs. A cause that is an upstream SMTP reply (e.g. 535
// at AUTH during connect) is flattened to text so that errors.As never finds
// it: such a reply is about our connection, not about the client's request.
func transportError(name, stage string, sentinel, cause error) error {
	var se *smtp.SMTPError
	if errors.As(cause, &se) {
		return &namedError{name, fmt.Errorf("upstream %s: %s: %w: %s", name, stage, sentinel, cleanText(se.Error()))}
	}
	return &namedError{name, fmt.Errorf("upstream %s: %s: %w: %w", name, stage, sentinel, cause)}
}

// namedError carries the name of the upstream a transport error is
// about, for FailedUpstream.
type namedError struct {
	name string
	err  error
}

func (e *namedError) Error() string { return e.err.Error() }
func (e *namedError) Unwrap() error { return e.err }

// FailedUpstream names the upstream a transport error (ErrUnavailable,
// ErrTimeout) is about, "" for any other error. When every upstream of a
// route failed, it is the first one tried. The name is a configured
// upstream's, so it is fit for a metric label.
func FailedUpstream(err error) string {
	var ne *namedError
	if errors.As(err, &ne) {
		return ne.name
	}
	return ""
}

// cleanReply turns a raw upstream reply into what the client may see: one
// printable line, enhanced code recovered from any line, codes adjusted per
// the package contract. ok is false when the reply is not a 4xx/5xx at all
// (a protocol violation, e.g. 250 to DATA), which the caller treats as
// transport trouble.
func cleanReply(stage string, raw *smtp.SMTPError) (_ *smtp.SMTPError, ok bool) {
	if raw.Code < 400 || raw.Code > 599 {
		return nil, false
	}
	code := raw.Code
	ec := raw.EnhancedCode
	lines := strings.Split(raw.Message, "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		// RFC 2034 puts the enhanced code on every line; go-smtp only
		// strips it when the first line carries it.
		if c, rest, found := splitEnhanced(l); found {
			if ec == smtp.EnhancedCodeNotSet || ec == smtp.NoEnhancedCode {
				ec = c
			}
			l = rest
		}
		lines[i] = l
	}
	msg := cleanText(strings.Join(lines, "\n"))
	if ec == smtp.NoEnhancedCode || ec[0] != code/100 {
		// Missing or of the wrong class: let go-smtp's server write X.0.0.
		ec = smtp.EnhancedCodeNotSet
	}
	switch {
	case stage == "rcpt" && code == 552:
		// RFC 5321 section 4.5.3.1.10: "too many recipients" was once
		// sent as 552; it must be treated as temporary (452).
		code, ec = 452, smtp.EnhancedCode{4, 5, 3}
	case code == 421:
		// The upstream closes its channel; the client's channel stays
		// open, so 421 (which promises a close) would be wrong.
		code = 451
	}
	if msg == "" {
		msg = "Upstream server replied without text"
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}, true
}

// splitEnhanced splits "5.1.1 text" into the code and "text".
func splitEnhanced(l string) (smtp.EnhancedCode, string, bool) {
	head, rest, _ := strings.Cut(l, " ")
	parts := strings.Split(head, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, l, false
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || len(p) > 3 {
			return smtp.EnhancedCode{}, l, false
		}
		ec[i] = n
	}
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return smtp.EnhancedCode{}, l, false
	}
	return ec, rest, true
}

// cleanText joins lines with "; ", replaces anything but printable ASCII
// with a space, collapses runs of spaces and caps the result at MaxReplyLen
// bytes. The client sees it verbatim, so nothing may break its reply line.
func cleanText(s string) string {
	var b strings.Builder
	b.Grow(min(len(s), MaxReplyLen+8))
	space := false
	first := true
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(strings.Map(func(r rune) rune {
			if r < 0x20 || r > 0x7e {
				return ' '
			}
			return r
		}, line))
		if line == "" {
			continue
		}
		if !first {
			b.WriteString("; ")
		}
		first = false
		space = false
		for i := 0; i < len(line); i++ {
			c := line[i]
			if c == ' ' {
				if space {
					continue
				}
				space = true
			} else {
				space = false
			}
			b.WriteByte(c)
		}
		if b.Len() > MaxReplyLen {
			break
		}
	}
	out := b.String()
	if len(out) > MaxReplyLen {
		out = strings.TrimSpace(out[:MaxReplyLen-3]) + "..."
	}
	return out
}
