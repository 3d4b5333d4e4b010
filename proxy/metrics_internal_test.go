package proxy

import "testing"

// TestRefusalRule: the rule label stays bounded by configuration; a Rego
// refusal named after its (possibly input-bearing) message is counted
// under its set name.
func TestRefusalRule(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"sender-matches-login", "sender-matches-login"},
		{"per-login", "per-login"},
		{"deny[sender bob@example.net is not allowed]", "deny"},
		{"defer[mail to broken.example is paused…]", "defer"},
		{"no-external-from", "no-external-from"}, // a Rego "id"
		{"deny-list", "deny-list"},
	} {
		if got := refusalRule(tc.in); got != tc.want {
			t.Errorf("refusalRule(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
