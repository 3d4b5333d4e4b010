package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// This file is the one place where errors become SMTP replies. Stages
// return plain wrapped errors or *smtp.SMTPError; reply maps them with
// errors.As. Anything unknown becomes a generic 451 4.3.0 carrying the
// session id, never internal text (it might disclose configuration).

var (
	errSignFrom = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Message must have exactly one From address to be signed"}
	errSignNoKey = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "This server does not sign mail for the From domain"}
)

// errSign marks an error of the signing stage (wrapped with %w by
// session.Data), so reply can count it; it is not shown to the client.
var errSign = errors.New("proxy: dkim")

// errAborted answers a message whose client went away mid-transfer (or
// sent RSET between BDAT chunks); nobody is left to read it.
var errAborted = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
	Message: "Message transfer aborted"}

// queuedReply is the client's reply for a message the upstream accepted
// (after its 250): the transaction id, which the log line carries too.
func queuedReply(txID string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + txID}
}

// needsSMTPUTF8 is the reply for a message part that needs SMTPUTF8 when
// the upstream does not offer it (RFC 6531 section 3.4: never downgrade).
// A client's SMTPUTF8 alone is a request, not a need (like Postfix's
// smtputf8_autodetect_classes): all-ASCII mail is relayed without it, so
// only what names a non-ASCII part is refused — an address at its own
// command (550), a header field at the end of DATA (554).
func needsSMTPUTF8(code int, what string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message: sanitize(what) + " needs SMTPUTF8, which the upstream does not support"}
}

// reply turns err into the reply the client gets.
func (s *session) reply(err error) error {
	if err == nil {
		return nil
	}
	if r := upstreamReply(err); r != nil {
		s.log.Warn("upstream trouble", "err", err)
		switch {
		case errors.Is(err, upstream.ErrTimeout):
			s.s.deps.Metrics.upstreamError(upstream.FailedUpstream(err), "timeout")
		case errors.Is(err, upstream.ErrUnavailable):
			s.s.deps.Metrics.upstreamError(upstream.FailedUpstream(err), "unavailable")
		}
		return clean(r)
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return clean(se)
	}
	if errors.Is(err, smtp.ErrDataReset) {
		return err
	}
	switch {
	case errors.Is(err, dkim.ErrFromHeader):
		s.s.deps.Metrics.dkimFailure("from_header")
		return errSignFrom
	case errors.Is(err, dkim.ErrNoKey):
		s.s.deps.Metrics.dkimFailure("no_key")
		return errSignNoKey
	case errors.Is(err, errSign):
		s.s.deps.Metrics.dkimFailure("error")
	}
	s.log.Error("internal error", "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Internal error, try again later (" + s.id + ")"}
}

// clean returns a copy of r whose message is one printable line of at
// most 200 bytes, so nothing from an upstream or a policy can inject
// reply lines.
func clean(r *smtp.SMTPError) *smtp.SMTPError {
	c := *r
	c.Message = sanitize(r.Message)
	return &c
}

func sanitize(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' {
			r = ' '
		}
		if r == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		b.WriteRune(r)
		if b.Len() >= 200 {
			break
		}
	}
	return strings.TrimSpace(b.String())
}

// decisionReply is the reply for a reject or defer decision. Codes of the
// wrong class fall back to the defaults (550 5.7.1, 451 4.7.1): a policy
// cannot turn a reject into a success.
func decisionReply(d policy.Decision) *smtp.SMTPError {
	r := &smtp.SMTPError{Message: d.Message}
	class := 5
	r.Code, r.EnhancedCode = 550, smtp.EnhancedCode{5, 7, 1}
	if d.Outcome == policy.Defer {
		class = 4
		r.Code, r.EnhancedCode = 451, smtp.EnhancedCode{4, 7, 1}
	}
	if d.Code/100 == class {
		r.Code = d.Code
	}
	var ec smtp.EnhancedCode
	if n, _ := fmt.Sscanf(d.EnhancedCode, "%d.%d.%d", &ec[0], &ec[1], &ec[2]); n == 3 && ec[0] == class &&
		ec[1] >= 0 && ec[1] < 1000 && ec[2] >= 0 && ec[2] < 1000 {
		r.EnhancedCode = ec
	}
	if r.Message == "" {
		r.Message = "Rejected by policy"
		if class == 4 {
			r.Message = "Deferred by policy, try again later"
		}
	}
	return clean(r)
}

func formatReply(r *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
}

// go-smtp writes some replies itself, after a Session method returned nil
// or on its own, with playful texts ("Roger, accepting mail from <…>",
// "I'll make sure <…> gets this", "Go ahead", "bye bye"). It has no hook
// for them, and returning a 250 *smtp.SMTPError from Mail or Rcpt would
// make it forget the sender or recipient. So clientConn.Write replaces
// them with the conventional texts below (RFC 5321 section 4.2, RFC 3463
// codes, Postfix's wording). The match is exact and on whole replies only:
// a Write from go-smtp is one reply line, and one whose bytes are exactly
// go-smtp's text (including the address it echoes) is rewritten; nothing
// a client or an upstream controls can produce one (a HELO echo starts
// "250 2.0.0 Hello", an EHLO line has no enhanced code). Client bytes
// never pass through Write. TestReplyTexts pins every pair, so a go-smtp
// upgrade that changes a text fails it.
var goSMTPReplies = []struct {
	prefix, suffix string // go-smtp's line, around the echoed address
	format         string // ours; %s is the address when there is one
}{
	{"250 2.0.0 Roger, accepting mail from <", ">", replySenderOK},
	{"250 2.0.0 I'll make sure <", "> gets this", replyRecipientOK},
	{"354 Go ahead. End your data with <CR><LF>.<CR><LF>", "", replyStartData},
	{"250 2.0.0 I have successfully done nothing", "", replyNoop},
	{"421 4.4.2 Idle timeout, bye bye", "", replyIdleTimeout},
	{"421 4.4.0 Connection error, sorry", "", replyConnectionError},
	{"500 5.5.1 Too many errors. Quiting now", "", replyTooManyErrors},
}

// The replies clientConn.Write puts in place of go-smtp's.
const (
	replySenderOK        = "250 2.1.0 Sender <%s> OK"
	replyRecipientOK     = "250 2.1.5 Recipient <%s> OK"
	replyStartData       = "354 End data with <CR><LF>.<CR><LF>"
	replyNoop            = "250 2.0.0 OK"
	replyIdleTimeout     = "421 4.4.2 Idle timeout, closing connection"
	replyConnectionError = "421 4.4.0 Connection error, closing connection"
	replyTooManyErrors   = "500 5.5.1 Too many errors, closing connection"
)

// rewriteReply returns the conventional text for one of go-smtp's own
// reply lines (see goSMTPReplies), or line itself. line is one whole
// reply line with its CRLF.
func rewriteReply(line []byte) []byte {
	body, ok := bytes.CutSuffix(line, []byte("\r\n"))
	if !ok || bytes.IndexByte(body, '\n') >= 0 || len(body) < 4 {
		return line
	}
	for _, r := range goSMTPReplies {
		if !bytes.HasPrefix(body, []byte(r.prefix)) || !bytes.HasSuffix(body[len(r.prefix):], []byte(r.suffix)) {
			continue
		}
		if r.suffix == "" && len(body) != len(r.prefix) {
			continue
		}
		if !strings.Contains(r.format, "%s") {
			return []byte(r.format + "\r\n")
		}
		addr := body[len(r.prefix) : len(body)-len(r.suffix)]
		return fmt.Appendf(nil, r.format+"\r\n", addr)
	}
	return line
}
