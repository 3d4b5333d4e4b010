package policy

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
