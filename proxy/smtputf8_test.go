package proxy_test

import (
	"context"
	netsmtp "net/smtp"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy"
)

// smtputf8Seen is a policy that accepts everything and records the
// envelope.smtputf8 of every input it is given.
type smtputf8Seen struct {
	mu   sync.Mutex
	seen []bool
}

func (p *smtputf8Seen) Evaluate(_ context.Context, in policy.Input) (policy.Decision, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, in.Envelope.SMTPUTF8)
	return policy.Decision{Outcome: policy.Accept}, nil
}

// noSMTPUTF8 configures a recording upstream that does not offer SMTPUTF8.
func noSMTPUTF8(s *smtp.Server) { s.EnableSMTPUTF8 = false }

const asciiMessage = "From: app@example.com\r\nTo: bob@example.net\r\nSubject: plain\r\n\r\nHello.\r\n"

// TestGoNetSMTPWithoutUpstreamSMTPUTF8 is issue 10's lockout: Go's
// net/smtp adds SMTPUTF8 to every MAIL FROM when the server advertises it,
// and mailgate always does. An all-ASCII message must still reach an
// upstream that lacks SMTPUTF8 (Postfix's smtp-sink never offers it),
// relayed without the parameter.
func TestGoNetSMTPWithoutUpstreamSMTPUTF8(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pol := &smtputf8Seen{}
	e := newEnv(t, withUpstream(t, sink.Addr()), func(_ *proxy.Config, d *proxy.Deps) { d.Policy = pol })
	err := netsmtp.SendMail(e.addr["relay"], nil, "app@example.com", []string{"bob@example.net"}, []byte(asciiMessage))
	if err != nil {
		t.Fatalf("net/smtp SendMail: %v", err)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink holds %d messages, want 1", len(msgs))
	}
	if strings.Contains(strings.ToUpper(msgs[0].MailArgs), "SMTPUTF8") {
		t.Errorf("upstream MAIL %q carries SMTPUTF8 it does not offer", msgs[0].MailArgs)
	}
	// envelope.smtputf8 stays what the client asked, at every stage.
	pol.mu.Lock()
	seen := append([]bool(nil), pol.seen...)
	pol.mu.Unlock()
	if len(seen) != 3 || !seen[0] || !seen[1] || !seen[2] {
		t.Errorf("policy saw envelope.smtputf8 = %v at mail, rcpt, data; want true each time", seen)
	}
	if !strings.Contains(e.logs.String(), `"smtputf8":"dropped"`) {
		t.Errorf("transaction log does not say the client asked for SMTPUTF8:\n%s", e.logs.String())
	}
}

// TestGoNetSMTPWithUpstreamSMTPUTF8: the same client behind an upstream
// that offers SMTPUTF8 gets it passed through.
func TestGoNetSMTPWithUpstreamSMTPUTF8(t *testing.T) {
	e := newEnv(t)
	err := netsmtp.SendMail(e.addr["relay"], nil, "app@example.com", []string{"bob@example.net"}, []byte(asciiMessage))
	if err != nil {
		t.Fatalf("net/smtp SendMail: %v", err)
	}
	_, msgs, _ := e.up.snapshot()
	if len(msgs) != 1 || !msgs[0].opts.UTF8 {
		t.Fatalf("upstream got %v, want one message with SMTPUTF8", msgs)
	}
}

// smtputf8Script sends one message with smtplib and SMTPUTF8 and prints
// OK, or the refusal: "MAIL|RCPT|DATA code text".
const smtputf8Script = `
import smtplib, sys
addr, sender, rcpt, subject = sys.argv[1:5]
host, port = addr.rsplit(':', 1)
msg = ('From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nHello.\r\n' % (sender, rcpt, subject)).encode('utf-8')
s = smtplib.SMTP(host, int(port), timeout=20)
s.ehlo('client.test')
try:
    s.sendmail(sender, [rcpt], msg, mail_options=['SMTPUTF8'])
    print('OK')
except smtplib.SMTPSenderRefused as e:
    print('MAIL', e.smtp_code, e.smtp_error.decode())
except smtplib.SMTPRecipientsRefused as e:
    code, text = list(e.recipients.values())[0]
    print('RCPT', code, text.decode())
except smtplib.SMTPDataError as e:
    print('DATA', e.smtp_code, e.smtp_error.decode())
s.quit()
`

// TestPythonSMTPUTF8 drives Python's smtplib with mail_options=['SMTPUTF8']
// behind upstreams with and without SMTPUTF8: only what really needs it
// (a non-ASCII address or header field) is refused, at the command that
// carries it, by a reply that names it.
func TestPythonSMTPUTF8(t *testing.T) {
	peertest.Require(t, "smtp-sink")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	withUTF8 := newEnv(t)
	recNoUTF8 := startUpstreamWith(t, noSMTPUTF8)
	withoutUTF8 := newEnvUp(t, recNoUTF8)
	behindSink := newEnv(t, withUpstream(t, sink.Addr()))

	cases := []struct {
		name                   string
		e                      *env
		from, to, subject      string
		want                   string // "OK" or a prefix of the refusal line
		wantUpstreamUTF8, sent bool
	}{
		{"ascii/upstream-smtputf8", withUTF8, "app@example.com", "bob@example.net", "plain", "OK", true, true},
		{"ascii/upstream-without", withoutUTF8, "app@example.com", "bob@example.net", "plain", "OK", false, true},
		{"ascii/smtp-sink", behindSink, "app@example.com", "bob@example.net", "plain", "OK", false, true},
		{"utf8-rcpt/upstream-smtputf8", withUTF8, "app@example.com", "bjørn@example.net", "plain", "OK", true, true},
		{"utf8-from/upstream-smtputf8", withUTF8, "jörg@example.com", "bob@example.net", "grüße", "OK", true, true},
		{"utf8-rcpt/upstream-without", withoutUTF8, "app@example.com", "bjørn@example.net", "plain",
			"RCPT 550 5.6.7 Recipient <bjørn@example.net> needs SMTPUTF8, which the upstream does not support", false, false},
		{"utf8-from/upstream-without", withoutUTF8, "jörg@example.com", "bob@example.net", "plain",
			"MAIL 550 5.6.7 Sender <jörg@example.com> needs SMTPUTF8, which the upstream does not support", false, false},
		{"utf8-subject/upstream-without", withoutUTF8, "app@example.com", "bob@example.net", "grüße",
			"DATA 554 5.6.7 Non-ASCII header (Subject) needs SMTPUTF8, which the upstream does not support", false, false},
		{"utf8-rcpt/smtp-sink", behindSink, "app@example.com", "bjørn@example.net", "plain",
			"RCPT 550 5.6.7 Recipient <bjørn@example.net> needs SMTPUTF8", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before int
			if tc.e.up != nil {
				_, m, _ := tc.e.up.snapshot()
				before = len(m)
			}
			sinkBefore := sink.Count()
			out, code := peertest.PythonSMTP(t, smtputf8Script, tc.e.addr["relay"], tc.from, tc.to, tc.subject)
			if code != 0 {
				t.Fatalf("python exited %d: %s", code, out)
			}
			if got := strings.TrimSpace(out); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if tc.e == behindSink {
				if n := sink.Count() - sinkBefore; n != map[bool]int{true: 1, false: 0}[tc.sent] {
					t.Fatalf("sink got %d messages", n)
				}
				return
			}
			_, msgs, _ := tc.e.up.snapshot()
			msgs = msgs[before:]
			if !tc.sent {
				if len(msgs) != 0 {
					t.Fatalf("upstream got %v", msgs)
				}
				return
			}
			if len(msgs) != 1 || msgs[0].opts.UTF8 != tc.wantUpstreamUTF8 {
				t.Fatalf("upstream got %v (SMTPUTF8 %v), want one message, SMTPUTF8 %v", msgs,
					len(msgs) == 1 && msgs[0].opts.UTF8, tc.wantUpstreamUTF8)
			}
		})
	}
}
