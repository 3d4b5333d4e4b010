package policy

import "fmt"

// Outcome is what a decision tells the proxy to do.
type Outcome string

// The outcomes. Reject is a permanent (5xx) refusal, Defer a temporary
// (4xx) one.
const (
	Accept Outcome = "accept"
	Reject Outcome = "reject"
	Defer  Outcome = "defer"
)

// Decision is the result of evaluating one stage.
type Decision struct {
	Outcome Outcome `json:"outcome"`
	// Code, EnhancedCode and Message form the SMTP reply for reject and
	// defer. Message is safe to show the client: one printable line.
	Code         int    `json:"code,omitempty"`
	EnhancedCode string `json:"enhanced_code,omitempty"` // "5.7.1"
	Message      string `json:"message,omitempty"`
	// Engine and Rule name what made the decision ("rego:org", "deny[...]"),
	// for logs and explain output. Empty for the default accept.
	Engine string `json:"engine,omitempty"`
	Rule   string `json:"rule,omitempty"`
	// DryRun is set when the deciding policy runs in dry-run mode: the
	// proxy logs the outcome and enforces nothing (it acts as for accept,
	// Actions included; see Enforced). A decision from an enforcing engine
	// never has DryRun set.
	DryRun bool `json:"dry_run,omitempty"`
	// Revision names the bundle revisions this stage was decided with, as
	// "ENGINE=REVISION" of every evaluated bundle engine, space-separated
	// ("rego:org=2026-12-05.3"); empty without bundle engines. For the
	// transaction log line.
	Revision string    `json:"revision,omitempty"`
	Warnings []Warning `json:"warnings,omitempty"`
	Actions  Actions   `json:"actions,omitzero"`
	// Reservation holds the quota units an accepting decision reserved.
	// The caller must end it: Commit once the message went out (upstream
	// 250), Release on anything else. Nil when nothing was reserved.
	Reservation *Reservation `json:"-"`
	// Quota is the input's quota states of this stage, for the caller to
	// hand to the data stage.
	Quota map[string]QuotaState `json:"-"`
}

// The default replies of a decision; the policy package owns their texts
// (the proxy's reply catalogue refers to them, docs/replies.md lists them).
const (
	// A reject whose rule gives no reply: RFC 5321 section 4.2.2 (550),
	// RFC 3463 section 3.8 (5.7.1 delivery not authorized).
	RejectCode         = 550
	RejectEnhancedCode = "5.7.1"
	RejectMessage      = "Rejected by policy"
	// A defer whose rule gives no reply: RFC 5321 section 4.2.2 (451),
	// RFC 3463 section 3.8 (4.7.1).
	DeferCode         = 451
	DeferEnhancedCode = "4.7.1"
	DeferMessage      = "Deferred by policy, try again later"
	// An engine that failed closed (on_error = "defer"): RFC 5321 section
	// 4.2.2 (451), RFC 3463 section 3.4 (4.3.0 other mail system status).
	ErrorCode         = 451
	ErrorEnhancedCode = "4.3.0"
	ErrorMessage      = "Policy temporarily unavailable, try again later"
)

// Reply returns the SMTP reply of a reject or defer decision: its code,
// enhanced code and message, where a code or an enhanced code of the wrong
// class (or malformed) falls back to the default of the outcome, and an
// empty message to its default text, so that a policy can never turn a
// reject into a success. The message is returned as the decision holds it.
func (d Decision) Reply() (code int, enhanced [3]int, message string) {
	class, enh := 5, RejectEnhancedCode
	code, message = RejectCode, RejectMessage
	if d.Outcome == Defer {
		class, enh = 4, DeferEnhancedCode
		code, message = DeferCode, DeferMessage
	}
	if d.Code/100 == class {
		code = d.Code
	}
	enhanced, _ = ParseEnhancedCode(enh, class)
	if ec, ok := ParseEnhancedCode(d.EnhancedCode, class); ok {
		enhanced = ec
	}
	if d.Message != "" {
		message = d.Message
	}
	return code, enhanced, message
}

// ParseEnhancedCode parses an enhanced status code "class.subject.detail"
// (RFC 3463 section 2) of the given class; ok is false when s is not one.
func ParseEnhancedCode(s string, class int) (ec [3]int, ok bool) {
	n, _ := fmt.Sscanf(s, "%d.%d.%d", &ec[0], &ec[1], &ec[2])
	ok = n == 3 && ec[0] == class && ec[1] >= 0 && ec[1] < 1000 && ec[2] >= 0 && ec[2] < 1000
	return ec, ok
}

// Warning is a rule that matched with action warn: logged, not enforced.
type Warning struct {
	Engine  string `json:"engine"`
	Rule    string `json:"rule"`
	Message string `json:"message"`
}

// Actions are side effects an accepting decision asks for.
type Actions struct {
	AddHeaders    []Header `json:"add_headers,omitempty"`    // added before signing
	RemoveHeaders []string `json:"remove_headers,omitempty"` // names, case-insensitive
	DKIMDomain    string   `json:"dkim_domain,omitempty"`    // signing domain among configured keys
	Upstream      string   `json:"upstream,omitempty"`       // upstream name, honoured at stage mail
}

// Header is one header field to add.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Enforced returns the outcome the proxy must enforce: Accept when the
// decision comes from a dry-run engine, else Outcome.
func (d Decision) Enforced() Outcome {
	if d.DryRun {
		return Accept
	}
	return d.Outcome
}

// Merge adds b to a: headers to add or remove are appended; dkim_domain
// and upstream keep the first value set (the first engine, or the earliest
// stage, that sets one wins).
func (a *Actions) Merge(b Actions) {
	a.AddHeaders = append(a.AddHeaders, b.AddHeaders...)
	a.RemoveHeaders = append(a.RemoveHeaders, b.RemoveHeaders...)
	if a.DKIMDomain == "" {
		a.DKIMDomain = b.DKIMDomain
	}
	if a.Upstream == "" {
		a.Upstream = b.Upstream
	}
}
