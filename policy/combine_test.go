package policy

import (
	"errors"
	"reflect"
	"testing"
)

// TestCombine pins how a chain's results become one decision, without
// running any engine.
func TestCombine(t *testing.T) {
	eng := func(name string, mode Mode, onError OnError) compiledEngine {
		return newCompiledEngine(engineSpec{kind: "rego", name: name, mode: mode, onError: onError}, nil)
	}
	var (
		a    = eng("a", ModeEnforce, OnErrorDefer)
		b    = eng("b", ModeEnforce, OnErrorDefer)
		dry  = eng("dry", ModeDryRun, OnErrorDefer)
		lax  = eng("lax", ModeEnforce, OnErrorAccept)
		dry2 = eng("dry2", ModeDryRun, OnErrorDefer)
		bund = newCompiledEngine(engineSpec{kind: "rego", name: "org", bundle: &bundleSpec{}}, nil)
	)
	reject := &verdict{rule: "r", code: 550, enh: "5.7.1", message: "no"}
	deferral := &verdict{rule: "d", code: 451, enh: "4.7.1", message: "later"}
	sign := Actions{DKIMDomain: "example.com", AddHeaders: []Header{{Name: "X-A", Value: "1"}}}
	warn := []Warning{{Engine: "rego:a", Rule: "w", Message: "careful"}}
	quotaDefer := &Decision{Outcome: Defer, Code: 451, EnhancedCode: "4.7.1", Message: "slow down", Engine: QuotaEngine, Rule: "q"}
	quotaReject := &Decision{Outcome: Reject, Code: 550, EnhancedCode: "5.7.1", Message: "over", Engine: QuotaEngine, Rule: "q"}
	boom := errors.New("boom")
	rejectedBy := func(e string) Decision {
		return Decision{Outcome: Reject, Code: 550, EnhancedCode: "5.7.1", Message: "no", Engine: e, Rule: "r"}
	}
	deferredBy := func(e string) Decision {
		return Decision{Outcome: Defer, Code: 451, EnhancedCode: "4.7.1", Message: "later", Engine: e, Rule: "d"}
	}
	failClosed := Decision{Outcome: Defer, Code: 451, EnhancedCode: "4.3.0", Message: errorDeferMsg, Engine: "rego:a"}

	for _, tc := range []struct {
		name          string
		quota         *Decision
		quotaWarnings []Warning
		engines       []compiledEngine
		runs          []engineRun
		want          Decision
		wantErr       error
		wantOutcomes  []string // per engine result: outcome, or "skipped"
	}{
		{name: "no engines", want: Decision{Outcome: Accept}},
		{name: "all accept, actions merged", engines: []compiledEngine{a, b},
			runs:         []engineRun{{ce: &a, res: engineResult{actions: sign, warnings: warn}}, {ce: &b, res: engineResult{actions: Actions{DKIMDomain: "other.example", Upstream: "u"}}}},
			want:         Decision{Outcome: Accept, Warnings: warn, Actions: Actions{DKIMDomain: "example.com", Upstream: "u", AddHeaders: sign.AddHeaders}},
			wantOutcomes: []string{"accept", "accept"}},
		{name: "reject ends the chain, actions dropped", engines: []compiledEngine{a, b},
			runs:         []engineRun{{ce: &a, res: engineResult{reject: reject, actions: sign}}},
			want:         rejectedBy("rego:a"),
			wantOutcomes: []string{"reject", "skipped"}},
		{name: "a later reject beats an earlier defer", engines: []compiledEngine{a, b},
			runs:         []engineRun{{ce: &a, res: engineResult{deferral: deferral}}, {ce: &b, res: engineResult{reject: reject}}},
			want:         rejectedBy("rego:b"),
			wantOutcomes: []string{"defer", "reject"}},
		{name: "first defer kept", engines: []compiledEngine{a, b},
			runs:         []engineRun{{ce: &a, res: engineResult{deferral: deferral}}, {ce: &b, res: engineResult{deferral: &verdict{rule: "d2", code: 450, enh: "4.2.0"}}}},
			want:         deferredBy("rego:a"),
			wantOutcomes: []string{"defer", "defer"}},
		{name: "reject and defer in one engine: reject", engines: []compiledEngine{a},
			runs:         []engineRun{{ce: &a, res: engineResult{reject: reject, deferral: deferral}}},
			want:         rejectedBy("rego:a"),
			wantOutcomes: []string{"reject"}},
		{name: "dry-run reject is a warning and the outcome when the rest accept", engines: []compiledEngine{dry, a},
			runs: []engineRun{{ce: &dry, res: engineResult{reject: reject, actions: Actions{Upstream: "dry"}}}, {ce: &a, res: engineResult{actions: sign}}},
			want: Decision{Outcome: Reject, Code: 550, EnhancedCode: "5.7.1", Message: "no", Engine: "rego:dry", Rule: "r", DryRun: true, Actions: sign,
				Warnings: []Warning{{Engine: "rego:dry", Rule: "r", Message: "dry-run: would reject (550 5.7.1 no)"}}},
			wantOutcomes: []string{"reject", "accept"}},
		{name: "dry-run reject beats dry-run defer", engines: []compiledEngine{dry, dry2},
			runs: []engineRun{{ce: &dry, res: engineResult{deferral: deferral}}, {ce: &dry2, res: engineResult{reject: reject}}},
			want: Decision{Outcome: Reject, Code: 550, EnhancedCode: "5.7.1", Message: "no", Engine: "rego:dry2", Rule: "r", DryRun: true, Warnings: []Warning{
				{Engine: "rego:dry", Rule: "d", Message: "dry-run: would defer (451 4.7.1 later)"},
				{Engine: "rego:dry2", Rule: "r", Message: "dry-run: would reject (550 5.7.1 no)"}}},
			wantOutcomes: []string{"defer", "reject"}},
		{name: "enforced defer beats dry-run reject", engines: []compiledEngine{dry, a},
			runs: []engineRun{{ce: &dry, res: engineResult{reject: reject}}, {ce: &a, res: engineResult{deferral: deferral}}},
			want: func() Decision {
				d := deferredBy("rego:a")
				d.Warnings = []Warning{{Engine: "rego:dry", Rule: "r", Message: "dry-run: would reject (550 5.7.1 no)"}}
				return d
			}(),
			wantOutcomes: []string{"reject", "defer"}},
		{name: "engine error fails closed", engines: []compiledEngine{a, b},
			runs: []engineRun{{ce: &a, err: boom}}, want: failClosed, wantErr: ErrEngine,
			wantOutcomes: []string{"defer", "skipped"}},
		{name: "engine error with on_error accept continues", engines: []compiledEngine{lax, b},
			runs:         []engineRun{{ce: &lax, err: boom}, {ce: &b, res: engineResult{}}},
			want:         Decision{Outcome: Accept},
			wantOutcomes: []string{"accept", "accept"}},
		{name: "dry-run engine error continues", engines: []compiledEngine{dry, b},
			runs:         []engineRun{{ce: &dry, err: boom}, {ce: &b, res: engineResult{deferral: deferral}}},
			want:         deferredBy("rego:b"),
			wantOutcomes: []string{"accept", "defer"}},
		{name: "quota reject skips every engine", quota: quotaReject, quotaWarnings: warn, engines: []compiledEngine{a, b},
			want: func() Decision {
				d := *quotaReject
				d.Warnings = warn
				return d
			}(),
			wantOutcomes: []string{"reject", "skipped", "skipped"}},
		{name: "quota defer is the first defer", quota: quotaDefer, engines: []compiledEngine{a},
			runs:         []engineRun{{ce: &a, res: engineResult{deferral: deferral}}},
			want:         *quotaDefer,
			wantOutcomes: []string{"defer", "defer"}},
		{name: "an engine reject beats a quota defer", quota: quotaDefer, engines: []compiledEngine{a},
			runs:         []engineRun{{ce: &a, res: engineResult{reject: reject}}},
			want:         rejectedBy("rego:a"),
			wantOutcomes: []string{"defer", "reject"}},
		{name: "message sanitized, defaults when empty", engines: []compiledEngine{a},
			runs:         []engineRun{{ce: &a, res: engineResult{reject: &verdict{rule: "r", code: 554, enh: "5.7.1", message: "bad\r\n250 ok"}}}},
			want:         Decision{Outcome: Reject, Code: 554, EnhancedCode: "5.7.1", Message: "bad 250 ok", Engine: "rego:a", Rule: "r"},
			wantOutcomes: []string{"reject"}},
		{name: "bundle revisions named", engines: []compiledEngine{bund},
			runs:         []engineRun{{ce: &bund, res: engineResult{revision: "7"}}},
			want:         Decision{Outcome: Accept, Revision: "rego:org=7"},
			wantOutcomes: []string{"accept"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, results, err := combine(tc.quota, tc.quotaWarnings, tc.engines, tc.runs, true)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decision\n got %+v\nwant %+v", got, tc.want)
			}
			var outcomes []string
			for _, r := range results {
				if r.Skipped {
					outcomes = append(outcomes, "skipped")
				} else {
					outcomes = append(outcomes, string(r.Outcome))
				}
			}
			if !reflect.DeepEqual(outcomes, tc.wantOutcomes) {
				t.Errorf("engine results %v, want %v", outcomes, tc.wantOutcomes)
			}
			if _, none, _ := combine(tc.quota, tc.quotaWarnings, tc.engines, tc.runs, false); none != nil {
				t.Errorf("results built without want: %+v", none)
			}
		})
	}
}
