package proxy

import (
	"bytes"
	"errors"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/replies"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// This file is the one place where errors become SMTP replies. Stages
// return plain wrapped errors or *smtp.SMTPError (values of the catalogue,
// proxy/replies); reply maps them with errors.As. Anything unknown becomes
// a generic 451 4.3.0 carrying the session id, never internal text (it
// might disclose configuration).

// errSign marks an error of the signing stage (wrapped with %w by
// session.Data), so reply can count it; it is not shown to the client.
var errSign = errors.New("proxy: dkim")

// needsSMTPUTF8 is the reply for a message part that needs SMTPUTF8 when
// the upstream does not offer it (RFC 6531 section 3.4: never downgrade):
// t is one of the catalogue's *NeedsSMTPUTF8 and what names the part. A
// client's SMTPUTF8 alone is a request, not a need (like Postfix's
// smtputf8_autodetect_classes): all-ASCII mail is relayed without it, so
// only what names a non-ASCII part is refused — an address at its own
// command (550), a header field at the end of DATA (554).
func needsSMTPUTF8(t replies.Template, what string) *smtp.SMTPError {
	return t.With(sanitize(what))
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
		return replies.SignFrom
	case errors.Is(err, dkim.ErrNoKey):
		s.s.deps.Metrics.dkimFailure("no_key")
		return replies.SignNoKey
	case errors.Is(err, errSign):
		s.s.deps.Metrics.dkimFailure("error")
	}
	s.log.Error("internal error", "err", err)
	return replies.InternalError.With(s.id)
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

// decisionReply is the reply for a reject or defer decision, as the
// decision gives it (policy.Decision.Reply: codes of the wrong class fall
// back to the policy's defaults, so a policy cannot turn a reject into a
// success), cleaned.
func decisionReply(d policy.Decision) *smtp.SMTPError {
	code, ec, msg := d.Reply()
	return clean(&smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(ec), Message: msg})
}

// policyUnavailable answers a stage whose policy failed: the policy's
// text for an engine that failed closed, with the session id.
func policyUnavailable(id string) *smtp.SMTPError {
	ec, _ := policy.ParseEnhancedCode(policy.ErrorEnhancedCode, 4)
	return &smtp.SMTPError{Code: policy.ErrorCode, EnhancedCode: ec,
		Message: policy.ErrorMessage + " (" + id + ")"}
}

// go-smtp writes some replies itself, after a Session method returned nil
// or on its own, with playful texts ("Roger, accepting mail from <…>",
// "I'll make sure <…> gets this", "Go ahead", "bye bye"). It has no hook
// for them, and returning a 250 *smtp.SMTPError from Mail or Rcpt would
// make it forget the sender or recipient. So clientConn.Write replaces
// them with the catalogue's conventional texts (proxy/replies: RFC 5321
// section 4.2, RFC 3463 codes, Postfix's wording). The match is exact and on whole replies only:
// a Write from go-smtp is one reply line, and one whose bytes are exactly
// go-smtp's text (including the address it echoes) is rewritten; nothing
// a client or an upstream controls can produce one (a HELO echo starts
// "250 2.0.0 Hello", an EHLO line has no enhanced code). Client bytes
// never pass through Write. TestReplyTexts pins every pair, so a go-smtp
// upgrade that changes a text fails it.
var goSMTPReplies = []struct {
	prefix, suffix string // go-smtp's line, around the echoed address
	// ours appends the catalogue's reply line to b, given the address
	// when there is one.
	ours func(b, addr []byte) []byte
}{
	{"250 2.0.0 Roger, accepting mail from <", ">", withAddr(replies.SenderOK)},
	{"250 2.0.0 I'll make sure <", "> gets this", withAddr(replies.RecipientOK)},
	{"354 Go ahead. End your data with <CR><LF>.<CR><LF>", "", fixed(replies.StartData)},
	{"250 2.0.0 I have successfully done nothing", "", fixed(replies.OK)},
	{"421 4.4.2 Idle timeout, bye bye", "", fixed(replies.IdleTimeout)},
	{"421 4.4.0 Connection error, sorry", "", fixed(replies.ConnectionError)},
	{"500 5.5.1 Too many errors. Quiting now", "", fixed(replies.TooManyErrors)},
}

func fixed(r *smtp.SMTPError) func(b, addr []byte) []byte {
	return func(b, _ []byte) []byte { return replies.AppendLine(b, r) }
}

func withAddr(t replies.Template) func(b, addr []byte) []byte {
	return func(b, addr []byte) []byte { return t.AppendLine(b, addr) }
}

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
		addr := body[len(r.prefix) : len(body)-len(r.suffix)]
		return append(r.ours(make([]byte, 0, len(body)+16), addr), "\r\n"...)
	}
	return line
}
