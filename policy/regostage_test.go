package policy

import (
	"context"
	"encoding/json"
	"reflect"
	"sort"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

func TestRuleStage(t *testing.T) {
	for _, tc := range []struct {
		name, rule string
		want       Stage
	}{
		{"guard first", `deny contains "x" if { input.stage == "mail"; input.auth == null }`, StageMail},
		{"guard later", `deny contains "x" if { input.auth == null; input.stage == "rcpt" }`, StageRcpt},
		{"literal on the left", `deny contains "x" if { "data" == input.stage }`, StageData},
		{"unification", `deny contains "x" if { input.stage = "mail" }`, StageMail},
		{"no guard", `deny contains "x" if { input.auth == null }`, allStages},
		{"negated guard", `deny contains "x" if { not input.stage == "mail" }`, allStages},
		{"guard with with", `deny contains "x" if { input.stage == "mail" with input.stage as "mail" }`, allStages},
		{"inequality", `deny contains "x" if { input.stage != "mail" }`, allStages},
		{"other reference", `deny contains "x" if { input.envelope.stage == "mail" }`, allStages},
		{"default", `default actions := {}`, allStages},
		{"else branch", "actions := {\"upstream\": \"a\"} if { input.stage == \"mail\" } else := {\"upstream\": \"b\"}", allStages},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ast.ParseModuleWithOpts("p.rego", "package mailgate\n\n"+tc.rule+"\n", ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatal(err)
			}
			if got := ruleStage(m.Rules[0]); got != tc.want {
				t.Errorf("ruleStage = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRegoStageQueries: a stage no rule is bound to is not evaluated, and
// a rule bound to no stage is evaluated at every stage.
func TestRegoStageQueries(t *testing.T) {
	p := newPolicy(t, Config{Rego: []RegoConfig{{Name: "org", Path: "."}}}, map[string]string{"p.rego": `package mailgate

deny contains "no mail from x" if {
	input.stage == "mail"
	input.envelope.from == "x@example.com"
}

warn contains "everywhere" if input.envelope.from == "w@example.com"
`})
	e := p.set.Load().engines[0].eng.(*regoEngine)
	if e.stages[StageMail] == nil || e.stages[StageRcpt] == nil {
		t.Fatalf("stage queries %v: want mail and rcpt (the warn is bound to no stage)", e.stages)
	}
	d := evaluate(t, p, mailInput("u@example.com", "x@example.com"))
	if d.Outcome != Reject {
		t.Errorf("mail from x: %+v, want reject", d)
	}
	in := rcptInput("u@example.com", "x@example.com", "r@example.org", 0)
	if d := evaluate(t, p, in); d.Outcome != Accept {
		t.Errorf("rcpt with from x: %+v, want accept (the deny is bound to mail)", d)
	}
	in.Envelope.From = "w@example.com"
	if d := evaluate(t, p, in); len(d.Warnings) != 1 {
		t.Errorf("rcpt from w: warnings %+v, want the unbound warn", d.Warnings)
	}

	only := newPolicy(t, Config{Rego: []RegoConfig{{Name: "org", Path: "."}}}, map[string]string{"p.rego": `package mailgate

deny contains "no" if { input.stage == "data"; input.message.size > 10 }
`})
	e = only.set.Load().engines[0].eng.(*regoEngine)
	if e.stages[StageMail] != nil || e.stages[StageRcpt] != nil || e.stages[StageData] == nil {
		t.Errorf("stage queries %v: want data only", e.stages)
	}
}

// TestRegoInputShape: the input a policy sees holds what its references
// reach, and all of it when a reference takes input whole.
func TestRegoInputShape(t *testing.T) {
	in := dataInput("u@example.com", "u@example.com", []string{"u@example.com"},
		map[string][]string{"subject": {"hi"}, "list-unsubscribe": {"<u>"}, "x-other": {"y"}})
	in.Session.TLS = &TLS{Version: "TLS1.3", Cipher: "c"}
	for _, tc := range []struct {
		name, module string
		want         string
	}{
		{"paths", `package mailgate

import input.envelope

deny contains "x" if { envelope.from == "a"; input.session.tls.version == "b" }
warn contains "y" if { not input.message.headers["list-unsubscribe"]; input.auth.user == "c" }
`, `{"auth":{"user":"u@example.com"},"envelope":{"from":"u@example.com"},"message":{"headers":{"list-unsubscribe":["<u>"]}},"session":{"tls":{"cipher":"c","version":"TLS1.3"}}}`}, // tls is built whole
		{"variable key", `package mailgate

deny contains k if { some k, _ in input.message.headers; input.stage == "data" }
`, `{"message":{"headers":{"list-unsubscribe":["<u>"],"subject":["hi"],"x-other":["y"]}},"stage":"data"}`},
		{"whole input", `package mailgate

deny contains "x" if object.get(input, "nothing", false)
`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPolicy(t, Config{Rego: []RegoConfig{{Name: "org", Path: "."}}}, map[string]string{"p.rego": tc.module})
			e := p.set.Load().engines[0].eng.(*regoEngine)
			doc := newDocument(in)
			got, err := ast.JSON(doc.ast(e.shape))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == "" {
				full, _ := json.Marshal(doc.in)
				want = string(full)
			}
			var gotV, wantV any
			b, _ := json.Marshal(got)
			_ = json.Unmarshal(b, &gotV)
			_ = json.Unmarshal([]byte(want), &wantV)
			gb, _ := json.Marshal(gotV)
			wb, _ := json.Marshal(wantV)
			if string(gb) != string(wb) {
				t.Errorf("input\n got %s\nwant %s", gb, wb)
			}
			if _, err := p.Evaluate(context.Background(), in); err != nil {
				t.Errorf("Evaluate: %v", err)
			}
		})
	}
}

// TestRegoInputShape_PerStage: a stage's input leaves out what only the
// rules bound to other stages read, and keeps what unbound rules and
// functions read.
func TestRegoInputShape_PerStage(t *testing.T) {
	module := `package mailgate

deny contains "helo" if { input.stage == "mail"; input.session.helo == "x" }
deny contains "rcpt" if { input.rcpt.domain == "x"; input.stage == "rcpt" }
warn contains "size" if { input.message.size > limit }
limit := 10 if input.auth.user == "big@example.com" else := 5
`
	p := newPolicy(t, Config{Rego: []RegoConfig{{Name: "org", Path: "."}}}, map[string]string{"p.rego": module})
	e := p.set.Load().engines[0].eng.(*regoEngine)
	keys := func(s *inputShape) []string {
		var ks []string
		for k := range s.keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	for st, want := range map[Stage][]string{
		StageMail: {"auth", "message", "session", "stage"},
		StageRcpt: {"auth", "message", "rcpt", "stage"},
		StageData: {"auth", "message"}, // only rules bound to mail and rcpt read the stage
		"other":   {"auth", "message", "rcpt", "session", "stage"},
	} {
		if got := keys(e.inputShape(st)); !reflect.DeepEqual(got, want) {
			t.Errorf("stage %s: input keys %v, want %v", st, got, want)
		}
	}
	helo := mailInput("", "a@example.com")
	helo.Session.HELO = "x"
	rcpt := rcptInput("", "a@example.com", "b@x", 1)
	rcpt.Rcpt.Domain = "x"
	for _, tc := range []struct {
		in   Input
		want Outcome
	}{{helo, Reject}, {rcpt, Reject}} {
		if d, err := p.Evaluate(context.Background(), tc.in); err != nil || d.Outcome != tc.want {
			t.Errorf("stage %s: %+v %v, want %s", tc.in.Stage, d, err, tc.want)
		}
	}
}
