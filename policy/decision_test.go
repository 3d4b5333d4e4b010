package policy

import "testing"

// TestDecisionReply: a decision's reply keeps the rule's code, enhanced
// code and text when they are of the outcome's class, and falls back to
// the package's defaults otherwise, so that no policy turns a reject into
// a success or a defer into a permanent failure.
func TestDecisionReply(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    Decision
		code int
		ec   [3]int
		msg  string
	}{
		{"reject defaults", Decision{Outcome: Reject}, 550, [3]int{5, 7, 1}, "Rejected by policy"},
		{"defer defaults", Decision{Outcome: Defer}, 451, [3]int{4, 7, 1}, "Deferred by policy, try again later"},
		{"reject kept", Decision{Outcome: Reject, Code: 554, EnhancedCode: "5.7.26", Message: "dmarc"}, 554, [3]int{5, 7, 26}, "dmarc"},
		{"defer kept", Decision{Outcome: Defer, Code: 452, EnhancedCode: "4.2.2", Message: "full"}, 452, [3]int{4, 2, 2}, "full"},
		{"reject as success", Decision{Outcome: Reject, Code: 250, EnhancedCode: "2.0.0", Message: "ok"}, 550, [3]int{5, 7, 1}, "ok"},
		{"defer as reject", Decision{Outcome: Defer, Code: 550, EnhancedCode: "5.1.1"}, 451, [3]int{4, 7, 1}, "Deferred by policy, try again later"},
		{"malformed enhanced", Decision{Outcome: Reject, Code: 553, EnhancedCode: "5.x.1"}, 553, [3]int{5, 7, 1}, "Rejected by policy"},
		{"enhanced out of range", Decision{Outcome: Reject, EnhancedCode: "5.1000.1"}, 550, [3]int{5, 7, 1}, "Rejected by policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, ec, msg := tc.d.Reply()
			if code != tc.code || ec != tc.ec || msg != tc.msg {
				t.Errorf("Reply() = %d %v %q, want %d %v %q", code, ec, msg, tc.code, tc.ec, tc.msg)
			}
		})
	}
}
