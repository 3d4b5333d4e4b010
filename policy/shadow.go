package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
)

// ShadowConfig is the shadow block of a policy: a complete candidate chain
// of engines, combined like the enforcing chain (first reject, then first
// defer, else accept), evaluated on the same input after the enforced
// decision is known and never enforced. Where its decision differs from
// the enforced one, the disagreement is counted
// (mailgate_policy_shadow_disagreements_total) and every decision log
// record carries what the shadow concluded ("shadow": {...}).
//
//	policy {
//	  rego  { name = "org" path = "policies/" }
//	  shadow {
//	    rego  { name = "org" path = "candidate/" }
//	  }
//	}
//
// A block rather than a per-engine mode = "shadow": a candidate is a
// whole chain (an engine replaced, added or removed), which a per-engine
// mode cannot describe without saying what it replaces; and it is the
// same thing "mailgate policy replay -config" evaluates, so shadow and
// replay answer the same question, live and after the fact. Engines are
// compared by their ids ("rego:org"): name a shadow engine like the
// enforcing engine it is a candidate for.
type ShadowConfig struct {
	Rego  []RegoConfig  `hcl:"rego,block"`
	Rules []RulesConfig `hcl:"rules,block"`
}

// ShadowResult is what the shadow chain concluded for one decision, as the
// decision log records it.
type ShadowResult struct {
	// Agree is true when the shadow decided like the enforcing chain (same
	// outcome, dry-run flag, codes, engine and rule).
	Agree        bool    `json:"agree"`
	Outcome      Outcome `json:"outcome,omitempty"`
	DryRun       bool    `json:"dry_run,omitempty"`
	Code         int     `json:"code,omitempty"`
	EnhancedCode string  `json:"enhanced_code,omitempty"`
	Engine       string  `json:"engine,omitempty"`
	Rule         string  `json:"rule,omitempty"`
	// Error is set when the shadow chain failed; it is then neither an
	// agreement nor a disagreement, and is counted in
	// mailgate_policy_shadow_errors_total.
	Error string `json:"error,omitempty"`
}

// shadow is a candidate chain compiled as a Policy of its own: no decision
// log, no quota store (it sees the quota states the enforcing chain's
// quotas left in the input), no shadow.
type shadow struct {
	p   *Policy
	m   *policyMetrics
	log *slog.Logger
}

func newShadow(cfg ShadowConfig, watchInterval, baseDir string, log *slog.Logger, m *policyMetrics) (*shadow, error) {
	log = log.With(slog.Bool("shadow", true))
	p, err := New(Config{Rego: cfg.Rego, Rules: cfg.Rules, WatchInterval: watchInterval}, baseDir, WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("policy: shadow: %w", err)
	}
	return &shadow{p: p, m: m, log: log}, nil
}

// compare evaluates in (the enforced stage's input, its quota states
// filled) with the shadow chain and compares with enforced. It never
// changes enforced; a shadow failure is logged and counted.
func (s *shadow) compare(ctx context.Context, in *Input, enforced *Decision) *ShadowResult {
	d, _, err := evaluateWithQuotaStates(ctx, s.p, *in, false)
	if err != nil {
		s.m.shadowErrors.WithLabelValues(string(in.Stage)).Inc()
		s.log.LogAttrs(ctx, slog.LevelWarn, "shadow policy failed (not enforced)",
			slog.String("session", in.Session.ID), slog.String("stage", string(in.Stage)), slog.Any("error", err))
		return &ShadowResult{Error: err.Error()}
	}
	r := &ShadowResult{Agree: sameDecision(enforced, &d), Outcome: d.Outcome, DryRun: d.DryRun,
		Code: d.Code, EnhancedCode: d.EnhancedCode, Engine: d.Engine, Rule: d.Rule}
	if !r.Agree {
		s.m.disagreements.WithLabelValues(string(in.Stage), string(enforced.Enforced()), string(d.Enforced())).Inc()
	}
	return r
}

// sameDecision says whether a and b decide alike: outcome, dry-run flag,
// reply codes and the engine and rule that decided. Messages, warnings and
// actions are not compared.
func sameDecision(a, b *Decision) bool {
	return a.Outcome == b.Outcome && a.DryRun == b.DryRun && a.Code == b.Code &&
		a.EnhancedCode == b.EnhancedCode && a.Engine == b.Engine && a.Rule == b.Rule
}

// quotaRefusalFromStates rebuilds the refusal the quotas made at a stage
// from the states they left in the input, for a chain without counters
// (shadow, replay): as checkQuotas decides, the first exceeded reject
// quota wins, else the first exceeded defer quota; warn quotas refuse
// nothing. Quotas are taken in name order (the input does not keep the
// configuration's).
func quotaRefusalFromStates(qs map[string]QuotaState) *Decision {
	names := make([]string, 0, len(qs))
	for n, q := range qs {
		if q.Exceeded {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var refusal *Decision
	for _, n := range names {
		switch qs[n].Action {
		case "reject":
			return &Decision{Outcome: Reject, Code: defaultRejectCode, EnhancedCode: defaultRejectEnh,
				Message: "quota " + n + " exceeded", Engine: QuotaEngine, Rule: n}
		case "defer":
			if refusal == nil {
				refusal = &Decision{Outcome: Defer, Code: defaultDeferCode, EnhancedCode: defaultDeferEnh,
					Message: "quota " + n + " exceeded", Engine: QuotaEngine, Rule: n}
			}
		}
	}
	return refusal
}

// evaluateWithQuotaStates evaluates in with p (a Policy without a quota
// store, so in.Quota reaches the engines as given) and combines the result
// with the quota refusal in.Quota records, as Evaluate combines a live
// quota check: a quota reject wins without evaluating the engines; a quota
// defer loses only to an enforced reject or a failing engine. Quotas are
// checked at stages mail and rcpt only: at stage data, in.Quota holds the
// earlier stages' levels (an exceeded one there refused a recipient, not
// the message).
func evaluateWithQuotaStates(ctx context.Context, p *Policy, in Input, explain bool) (Decision, []EngineResult, error) {
	var r *Decision
	if in.Stage != StageData {
		r = quotaRefusalFromStates(in.Quota)
	}
	if r != nil && r.Outcome == Reject {
		return *r, nil, nil
	}
	d, results, err := p.evaluate(ctx, in, explain)
	if r == nil || (d.Outcome == Reject && !d.DryRun) || errors.Is(err, ErrEngine) {
		return d, results, err
	}
	q := *r
	q.Warnings = d.Warnings
	return q, results, err
}
