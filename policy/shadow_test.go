package policy

import (
	"context"
	"testing"
)

const blockBad = `rule "block-bad" {
  stage   = "mail"
  when    = envelope.from == "bad@example.com"
  action  = "reject"
  message = "not you"
}
`

// TestShadow_DisagreementCountedNeverEnforced: the enforcing chain accepts
// everything, the shadow refuses one sender: every decision is an accept,
// the refused sender's is counted as a disagreement and logged with the
// shadow's verdict, the others logged as agreeing.
func TestShadow_DisagreementCountedNeverEnforced(t *testing.T) {
	p, path := logPolicy(t, Config{
		Rules:  []RulesConfig{{Name: "local", Path: "none.hcl"}},
		Shadow: &ShadowConfig{Rules: []RulesConfig{{Name: "local", Path: "candidate.hcl"}}},
	}, map[string]string{"none.hcl": fixed("none", "nothing"), "candidate.hcl": blockBad})
	for _, from := range []string{"good@example.com", "bad@example.com", "other@example.com"} {
		if d := evaluate(t, p, mailInput("", from)); d.Outcome != Accept {
			t.Fatalf("%s: %+v, want accept (the shadow is never enforced)", from, d)
		}
	}
	if got := counterValue(t, p, "mailgate_policy_shadow_disagreements_total",
		map[string]string{"stage": "mail", "enforced": "accept", "shadow": "reject"}); got != 1 {
		t.Errorf("disagreements{mail,accept,reject} = %v, want 1", got)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, path)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	for i, agree := range []bool{true, false, true} {
		sh, _ := recs[i]["shadow"].(map[string]any)
		if sh == nil || sh["agree"] != agree {
			t.Errorf("record %d shadow = %v, want agree=%v", i, recs[i]["shadow"], agree)
		}
	}
	sh := recs[1]["shadow"].(map[string]any)
	if sh["outcome"] != "reject" || sh["engine"] != "rules:local" || sh["rule"] != "block-bad" || sh["code"] != float64(550) {
		t.Errorf("shadow of the refused sender = %v", sh)
	}
	if recs[1]["outcome"] != "accept" {
		t.Errorf("record outcome %v, want the enforced accept", recs[1]["outcome"])
	}
}

// TestShadow_ErrorNeverAffectsDelivery: a shadow engine that fails (an
// invalid result, which fails closed when enforced) changes nothing: the
// decision is the enforcing chain's, Evaluate returns no error, the
// failure is counted and logged.
func TestShadow_ErrorNeverAffectsDelivery(t *testing.T) {
	p, path := logPolicy(t, Config{
		Shadow: &ShadowConfig{Rego: []RegoConfig{{Name: "org", Path: "shadow.rego"}}},
	}, map[string]string{"shadow.rego": "package mailgate\ndeny contains {\"msg\": \"x\", \"code\": 451}\n"})
	d, err := p.Evaluate(context.Background(), mailInput("", "a@example.com"))
	if err != nil || d.Outcome != Accept {
		t.Fatalf("decision %+v, %v: want accept without error", d, err)
	}
	if got := counterValue(t, p, "mailgate_policy_shadow_errors_total", map[string]string{"stage": "mail"}); got != 1 {
		t.Errorf("shadow errors = %v, want 1", got)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, path)
	sh, _ := recs[0]["shadow"].(map[string]any)
	if sh == nil || sh["error"] == nil || sh["agree"] != false {
		t.Fatalf("shadow = %v, want the error recorded", recs[0]["shadow"])
	}
}

// TestShadow_QuotaRefusalFromStates: a shadow chain has no counters; the
// refusal the enforcing quotas made is rebuilt from the states they left
// in the input, so a quota refusal is not a disagreement.
func TestShadow_QuotaRefusalFromStates(t *testing.T) {
	states := map[string]QuotaState{
		"soft": {Key: "a", Action: "defer", Exceeded: true},
		"warn": {Key: "a", Action: "warn", Exceeded: true},
		"ok":   {Key: "a", Action: "reject"},
	}
	r := quotaRefusalFromStates(states)
	if r == nil || r.Outcome != Defer || r.Engine != QuotaEngine || r.Rule != "soft" {
		t.Fatalf("refusal %+v, want defer by quota soft", r)
	}
	states["hard"] = QuotaState{Key: "a", Action: "reject", Exceeded: true}
	if r := quotaRefusalFromStates(states); r == nil || r.Outcome != Reject || r.Rule != "hard" {
		t.Fatalf("refusal %+v, want reject by quota hard (a reject beats a defer)", r)
	}
	p := newPolicy(t, Config{Rules: []RulesConfig{{Name: "local", Path: "r.hcl"}}}, map[string]string{"r.hcl": blockBad})
	in := mailInput("", "bad@example.com")
	in.Quota = map[string]QuotaState{"soft": {Key: "a", Action: "defer", Exceeded: true}}
	d, _, err := evaluateWithQuotaStates(context.Background(), p, in, false)
	if err != nil || d.Outcome != Reject || d.Rule != "block-bad" {
		t.Fatalf("%+v, %v: an engine's reject beats a quota defer", d, err)
	}
	in.Envelope.From = "good@example.com"
	if d, _, _ := evaluateWithQuotaStates(context.Background(), p, in, false); d.Outcome != Defer || d.Rule != "soft" {
		t.Fatalf("%+v: want the quota's defer", d)
	}
	data := dataInput("", "good@example.com", nil, nil)
	data.Quota = in.Quota // a recipient was refused by the quota; the message goes on
	if d, _, _ := evaluateWithQuotaStates(context.Background(), p, data, false); d.Outcome != Accept {
		t.Fatalf("data stage %+v: quotas refuse at mail and rcpt only", d)
	}
}
