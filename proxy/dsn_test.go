package proxy_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

// dsnScript sends one message with smtplib and the DSN parameters of
// RFC 3461, after printing whether the server advertised DSN.
const dsnScript = `
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
s = smtplib.SMTP(host, int(port), timeout=20)
s.ehlo('client.test')
print('DSN' if s.has_extn('dsn') else 'NODSN')
if s.has_extn('dsn'):
    s.sendmail('a@src.test', ['b@dst.test'], b'From: <a@src.test>\r\nSubject: dsn\r\n\r\nhi\r\n',
               mail_options=['RET=HDRS', 'ENVID=x'],
               rcpt_options=['NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;b@dst.test'])
    print('OK')
s.quit()
`

// TestDSNPassThrough (issue 10): mailgate advertises DSN when its
// upstreams offer it and passes RET, ENVID, NOTIFY and ORCPT through
// unchanged; behind an upstream without DSN it does not advertise it.
func TestDSNPassThrough(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	t.Run("go-smtp-upstream", func(t *testing.T) {
		e := newEnvUp(t, startUpstreamWith(t, func(s *smtp.Server) { s.EnableDSN = true }))
		out, code := peertest.PythonSMTP(t, dsnScript, e.addr["relay"])
		if code != 0 || strings.Fields(out)[0] != "DSN" || !strings.Contains(out, "OK") {
			t.Fatalf("python exited %d: %s", code, out)
		}
		_, msgs, _ := e.up.snapshot()
		if len(msgs) != 1 {
			t.Fatalf("upstream got %v", msgs)
		}
		m := msgs[0]
		if m.opts.Return != smtp.DSNReturnHeaders || m.opts.EnvelopeID != "x" {
			t.Errorf("MAIL options %+v, want RET=HDRS ENVID=x", m.opts)
		}
		if len(m.rcptOpts) != 1 {
			t.Fatalf("RCPT options %+v", m.rcptOpts)
		}
		ro := m.rcptOpts[0]
		if len(ro.Notify) != 2 || ro.Notify[0] != smtp.DSNNotifySuccess || ro.Notify[1] != smtp.DSNNotifyFailure ||
			ro.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || ro.OriginalRecipient != "b@dst.test" {
			t.Errorf("RCPT options %+v, want NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@dst.test", ro)
		}
	})
	t.Run("smtp-sink", func(t *testing.T) {
		sink := peertest.StartSink(t, peertest.SinkOptions{})
		e := newEnv(t, withUpstream(t, sink.Addr()))
		out, code := peertest.PythonSMTP(t, dsnScript, e.addr["relay"])
		if code != 0 || strings.Fields(out)[0] != "DSN" || !strings.Contains(out, "OK") {
			t.Fatalf("python exited %d: %s", code, out)
		}
		msgs := sink.Messages()
		if len(msgs) != 1 {
			t.Fatalf("sink holds %d messages", len(msgs))
		}
		if args := msgs[0].MailArgs; !strings.Contains(args, "RET=HDRS") || !strings.Contains(args, "ENVID=x") {
			t.Errorf("MAIL %q, want RET=HDRS ENVID=x", args)
		}
		// go-smtp writes the addr-type in upper case; RFC 3461 section 4.2
		// compares it case-insensitively.
		if got := strings.Join(msgs[0].RcptArgs, " "); !strings.Contains(got, "NOTIFY=SUCCESS,FAILURE") ||
			!strings.Contains(strings.ToLower(got), "orcpt=rfc822;b@dst.test") {
			t.Errorf("RCPT %q, want NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@dst.test", got)
		}
	})
	t.Run("upstream-without-dsn", func(t *testing.T) {
		sink := peertest.StartSink(t, peertest.SinkOptions{NoDSN: true})
		e := newEnv(t, withUpstream(t, sink.Addr()))
		out, code := peertest.PythonSMTP(t, dsnScript, e.addr["relay"])
		if code != 0 || strings.TrimSpace(out) != "NODSN" {
			t.Fatalf("python exited %d: %q, want DSN not advertised", code, out)
		}
	})
}
