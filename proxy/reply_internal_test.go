package proxy

import (
	"strings"
	"testing"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/replies"
)

// TestDecisionReplyClass: a policy cannot turn a reject into a 2xx or a
// defer into a 5xx, and its text cannot inject reply lines.
func TestDecisionReplyClass(t *testing.T) {
	cases := []struct {
		d          policy.Decision
		code       int
		enh, inMsg string
	}{
		{policy.Decision{Outcome: policy.Reject}, 550, "5.7.1", "Rejected by policy"},
		{policy.Decision{Outcome: policy.Reject, Code: 250, EnhancedCode: "2.0.0", Message: "ok"}, 550, "5.7.1", "ok"},
		{policy.Decision{Outcome: policy.Reject, Code: 554, EnhancedCode: "5.7.26", Message: "dmarc"}, 554, "5.7.26", "dmarc"},
		{policy.Decision{Outcome: policy.Defer, Code: 550, EnhancedCode: "5.1.1"}, 451, "4.7.1", "Deferred"},
		{policy.Decision{Outcome: policy.Defer, Code: 452, EnhancedCode: "4.2.2", Message: "quota\r\n250 injected"}, 452, "4.2.2", "quota 250 injected"},
	}
	for _, tc := range cases {
		r := decisionReply(tc.d)
		got := replies.Line(r)
		if r.Code != tc.code || !strings.Contains(got, tc.enh) || !strings.Contains(got, tc.inMsg) || strings.ContainsAny(r.Message, "\r\n") {
			t.Errorf("%+v → %q", tc.d, got)
		}
	}
}

// TestRewriteReply pins go-smtp v0.25.1's own reply texts and what the
// client sees instead; lines that only resemble them pass unchanged.
func TestRewriteReply(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"250 2.0.0 Roger, accepting mail from <a@b.test>", "250 2.1.0 Sender <a@b.test> OK"},
		{"250 2.0.0 Roger, accepting mail from <>", "250 2.1.0 Sender <> OK"},
		{"250 2.0.0 I'll make sure <jörg@b.test> gets this", "250 2.1.5 Recipient <jörg@b.test> OK"},
		{"354 Go ahead. End your data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"},
		{"250 2.0.0 I have successfully done nothing", "250 2.0.0 OK"},
		{"421 4.4.2 Idle timeout, bye bye", "421 4.4.2 Idle timeout, closing connection"},
		{"421 4.4.0 Connection error, sorry", "421 4.4.0 Connection error, closing connection"},
		{"500 5.5.1 Too many errors. Quiting now", "500 5.5.1 Too many errors, closing connection"},
		// Look-alikes stay as they are.
		{"250 2.0.0 Hello Roger, accepting mail from <a@b.test>", ""},
		{"250-Roger, accepting mail from <a@b.test>", ""},
		{"250 Roger, accepting mail from <a@b.test>", ""},
		{"250 2.0.0 I have successfully done nothing at all", ""},
		{"250 2.0.0 I'll make sure <a@b.test> gets this!", ""},
		{"250 2.0.0 OK: queued as x", ""},
	} {
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got := string(rewriteReply([]byte(tc.in + "\r\n"))); got != want+"\r\n" {
			t.Errorf("%q: got %q, want %q", tc.in, got, want)
		}
	}
	// Not one whole line: never touched.
	for _, in := range []string{"354 Go ahead. End your data with <CR><LF>.<CR><LF>",
		"250 2.0.0 I have successfully done nothing\r\n250 2.0.0 I have successfully done nothing\r\n"} {
		if got := string(rewriteReply([]byte(in))); got != in {
			t.Errorf("%q rewritten to %q", in, got)
		}
	}
}
