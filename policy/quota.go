package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/mailgate/mailgate/policy/quota"
)

// QuotaConfig is one quota block of the main configuration file:
//
//	quota "per-login" {
//	  key        = auth.user
//	  when       = auth != null
//	  messages   = ["200/1h", "1000/24h"]
//	  recipients = ["2000/24h"]
//	  action     = "defer"
//	}
//
// key and when are HCL expressions over the policy input document, like
// the when of a rule. A key that refers to rcpt makes a per-recipient
// quota, checked at each RCPT.
type QuotaConfig struct {
	Name string `hcl:"name,label"`
	// Key is what is counted: one counter per distinct value. An empty
	// string means the quota does not apply to the transaction.
	Key hcl.Expression `hcl:"key"`
	// When restricts the quota to the transactions it is true for.
	When *hcl.Attribute `hcl:"when,optional"`
	// Messages, Recipients and NewRecipients are "COUNT/DURATION" windows;
	// every window of a kind must have room.
	Messages      []string `hcl:"messages,optional"`
	Recipients    []string `hcl:"recipients,optional"`
	NewRecipients []string `hcl:"new_recipients,optional"`
	// Remember is how long a recipient stays known to its key for
	// new_recipients. Default 30d.
	Remember string `hcl:"remember,optional"`
	// Action is what a full window does: "defer" (default, 451 4.7.1),
	// "reject" (550 5.7.1) or "warn" (logged, counted, not enforced).
	Action string `hcl:"action,optional"`
	// OnError is what happens when the counter store cannot be reached:
	// "defer" (default, 451 4.7.1) or "accept" (the quota is skipped).
	OnError string `hcl:"on_error,optional"`
	// DeclRange is where the block starts in the configuration file.
	DeclRange hcl.Range `hcl:",def_range"`
}

// QuotaEngine is the Engine of a decision or engine result made by a
// quota; the Rule is the quota's name.
const QuotaEngine = "quota"

// DefaultRemember is the remember period of new_recipients when a quota
// does not set one.
const DefaultRemember = 30 * 24 * time.Hour

// reservationTTL is how long reserved units count when nobody ends the
// reservation (an instance that crashed mid-transaction). It outlasts any
// transaction the proxy's default timeouts allow.
const reservationTTL = 30 * time.Minute

// Quotas is a compiled, immutable set of quota blocks.
type Quotas struct {
	defs []*quotaDef
	// mail and rcpt are the quotas checked at those stages.
	mail, rcpt stageQuotas
}

// stageQuotas is what checking the quotas of one stage needs, worked out
// once at compile time.
type stageQuotas struct {
	defs []*quotaDef // that apply at the stage, in configuration order
	// vars lists the input attributes they read.
	vars []varSpec
	// nreqs is the most requests they make.
	nreqs int
	// hcl says whether a key or when needs HCL's evaluation context
	// (otherwise every key is an input attribute, read directly).
	hcl bool
}

// stage is the quotas checked at stage, nil at stage data.
func (q *Quotas) stage(s Stage) *stageQuotas {
	switch s {
	case StageMail:
		return &q.mail
	case StageRcpt:
		return &q.rcpt
	}
	return nil
}

// Names lists the quotas in configuration order.
func (q *Quotas) Names() []string {
	if q == nil {
		return nil
	}
	names := make([]string, len(q.defs))
	for i, d := range q.defs {
		names[i] = d.name
	}
	return names
}

// Windows returns the windows of quota name by kind, for tools (quota
// show); ok is false when there is no such quota.
func (q *Quotas) Windows(name string) (ws map[quota.Kind][]quota.Window, ok bool) {
	if q == nil {
		return nil, false
	}
	for _, d := range q.defs {
		if d.name == name {
			ws = map[quota.Kind][]quota.Window{}
			for _, k := range kinds {
				if w := d.windows(k); len(w) > 0 {
					ws[k] = w
				}
			}
			return ws, true
		}
	}
	return nil, false
}

var kinds = []quota.Kind{quota.Messages, quota.Recipients, quota.NewRecipients}

type quotaDef struct {
	name     string
	key      hcl.Expression
	when     hcl.Expression  // nil: always
	vars     []hcl.Traversal // input variables key and when refer to
	perRcpt  bool            // key refers to rcpt: checked at RCPT only
	messages []quota.Window
	rcpts    []quota.Window
	newRcpts []quota.Window
	texts    map[quota.Kind][]string // windows as configured
	remember time.Duration
	action   string
	onError  OnError
	// attr is the key when it is one string attribute of the input and
	// when is absent or a null test, whenNull (see inputAttr); zero
	// otherwise.
	attr     inputAttr
	whenNull nullTest
}

func (d *quotaDef) windows(k quota.Kind) []quota.Window {
	switch k {
	case quota.Messages:
		return d.messages
	case quota.Recipients:
		return d.rcpts
	}
	return d.newRcpts
}

var windowRe = regexp.MustCompile(`^\s*([0-9]+)\s*/\s*([0-9]*)\s*([a-z]+)\s*$`)

// ParseWindow parses "COUNT/DURATION": a positive count and a duration of
// a number and a unit among s, m, h, d (24h) and w (7d), the number
// defaulting to 1 ("100/m" is "100/1m").
func ParseWindow(s string) (quota.Window, error) {
	m := windowRe.FindStringSubmatch(s)
	if m == nil {
		return quota.Window{}, fmt.Errorf("window %q: want COUNT/DURATION, like \"200/1h\"", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || n <= 0 {
		return quota.Window{}, fmt.Errorf("window %q: count must be a positive integer", s)
	}
	d, err := parseDuration(m[2] + m[3])
	if err != nil {
		return quota.Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	return quota.Window{Limit: n, Period: d}, nil
}

// parseDuration parses a whole number and one unit among s, m, h, d, w.
func parseDuration(s string) (time.Duration, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s[:max(i, 0)], s[max(i, 0):]
	if i < 0 {
		num, unit = s, ""
	}
	n := int64(1)
	if num != "" {
		var err error
		if n, err = strconv.ParseInt(num, 10, 64); err != nil || n <= 0 {
			return 0, fmt.Errorf("duration %q: want a positive whole number and a unit (s, m, h, d, w)", s)
		}
	}
	units := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour, "w": 7 * 24 * time.Hour}
	u, ok := units[unit]
	if !ok {
		return 0, fmt.Errorf("duration %q: unit must be s, m, h, d or w", s)
	}
	if n > int64(10*365*24*time.Hour/u) {
		return 0, fmt.Errorf("duration %q: longer than ten years", s)
	}
	return time.Duration(n) * u, nil
}

// FormatWindow writes w as configured: "200/1h".
func FormatWindow(w quota.Window) string {
	return strconv.FormatInt(w.Limit, 10) + "/" + formatPeriod(w.Period)
}

// formatPeriod writes a period the way a reply shows it: "1h", "24h", "30d".
func formatPeriod(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0 && d >= 48*time.Hour:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

// CompileQuotas validates and type-checks quota blocks. The diagnostics
// point into the configuration file, with the same checks as rule
// expressions (a misspelt attribute, auth.user without an auth != null
// guard, a key that is not a string).
func CompileQuotas(cfgs []QuotaConfig) (*Quotas, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	q := &Quotas{}
	seen := map[string]hcl.Range{}
	for _, c := range cfgs {
		errAt := func(summary, detail string) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary,
				Detail: fmt.Sprintf("Quota %q: %s", c.Name, detail), Subject: c.DeclRange.Ptr()})
		}
		if !nameRe.MatchString(c.Name) {
			errAt("Invalid quota name", "a name is 1 to 64 letters, digits, '.', '_' or '-'.")
			continue
		}
		if prev, ok := seen[c.Name]; ok {
			errAt("Duplicate quota", fmt.Sprintf("already defined at %s.", prev))
			continue
		}
		seen[c.Name] = c.DeclRange
		d := &quotaDef{name: c.Name, key: c.Key, texts: map[quota.Kind][]string{}}
		switch c.Action {
		case "", "defer":
			d.action = "defer"
		case "reject", "warn":
			d.action = c.Action
		default:
			errAt("Invalid action", fmt.Sprintf("action %q must be \"defer\", \"reject\" or \"warn\".", c.Action))
		}
		switch OnError(c.OnError) {
		case "", OnErrorDefer:
			d.onError = OnErrorDefer
		case OnErrorAccept:
			d.onError = OnErrorAccept
		default:
			errAt("Invalid on_error", fmt.Sprintf("on_error %q must be \"defer\" or \"accept\".", c.OnError))
		}
		for _, k := range []struct {
			kind quota.Kind
			in   []string
			out  *[]quota.Window
		}{{quota.Messages, c.Messages, &d.messages}, {quota.Recipients, c.Recipients, &d.rcpts}, {quota.NewRecipients, c.NewRecipients, &d.newRcpts}} {
			for _, s := range k.in {
				w, err := ParseWindow(s)
				if err != nil {
					errAt("Invalid window", fmt.Sprintf("%s: %v.", k.kind, err))
					continue
				}
				*k.out = append(*k.out, w)
				d.texts[k.kind] = append(d.texts[k.kind], FormatWindow(w))
			}
		}
		if len(c.Messages)+len(c.Recipients)+len(c.NewRecipients) == 0 {
			errAt("Quota without windows", "set at least one of messages, recipients or new_recipients.")
		}
		d.remember = DefaultRemember
		if c.Remember != "" {
			r, err := parseDuration(c.Remember)
			if err != nil {
				errAt("Invalid remember", err.Error()+".")
			}
			d.remember = r
			if len(c.NewRecipients) == 0 {
				errAt("remember without new_recipients", "remember applies to new_recipients only.")
			}
		}
		used := map[string]bool{}
		for _, tr := range c.Key.Variables() {
			used[tr.RootName()] = true
		}
		var guard hcl.Expression
		if c.When != nil {
			d.when, guard = c.When.Expr, c.When.Expr
			for _, tr := range c.When.Expr.Variables() {
				used[tr.RootName()] = true
			}
		}
		d.perRcpt = used["rcpt"]
		d.vars = c.Key.Variables()
		if d.when != nil {
			d.vars = append(d.vars, d.when.Variables()...)
		}
		if used["message"] || used["quota"] {
			errAt("Invalid key or when", "key and when are decided at MAIL or RCPT: they cannot refer to message or quota.")
			continue
		}
		if d.perRcpt && len(d.messages) > 0 {
			errAt("messages on a per-recipient quota", "a key that refers to rcpt is decided per recipient: count recipients = [...] instead of messages.")
		}
		stage := StageMail
		if d.perRcpt || len(d.messages) == 0 {
			stage = StageRcpt
		}
		if d.when != nil {
			diags = append(diags, typeCheck(d.when, stage, cty.Bool, nil)...)
			d.when = optimize(d.when)
		}
		diags = append(diags, typeCheck(d.key, stage, cty.String, guard)...)
		d.key = optimize(d.key)
		if d.when == nil || nullRoot(d.when) {
			d.attr = attrOf(d.key)
			if d.when != nil {
				d.whenNull = nullTestOf(d.when)
			}
		}
		q.defs = append(q.defs, d)
	}
	if diags.HasErrors() {
		return nil, diags
	}
	for _, stage := range []Stage{StageMail, StageRcpt} {
		sq := q.stage(stage)
		var trs []hcl.Traversal
		for _, d := range q.defs {
			if !d.applies(stage) {
				continue
			}
			sq.defs = append(sq.defs, d)
			if d.attr.root == "" {
				// Evaluated by HCL: its variables go into the context.
				trs = append(trs, d.vars...)
				sq.hcl = true
			}
			if stage == StageMail {
				sq.nreqs++
			} else {
				sq.nreqs += min(len(d.rcpts), 1) + min(len(d.newRcpts), 1)
			}
		}
		sq.vars = traversalSpecs(trs)
	}
	return q, nil
}
