package policy

import (
	"path/filepath"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// TestRuleMatch_SameAsHCL: a when expression evaluated conjunct by
// conjunct concludes what HCL concludes evaluating it whole, errors on
// either side of a false operand included.
func TestRuleMatch_SameAsHCL(t *testing.T) {
	whens := []struct {
		when string
		and  bool // evaluated conjunct by conjunct
	}{
		{`regex(envelope.from, "a") && envelope.size > 10`, true},
		{`envelope.size > 10 && regex(envelope.from, "a")`, true},
		{`envelope.size > 10 && regex(session.helo, envelope.from) && envelope.smtputf8`, true},
		{`cidr_contains(envelope.from, session.client_ip) && envelope.size > 10`, true},
		{`envelope.size > 10 && cidr_contains(envelope.from, session.client_ip)`, true},
		{`envelope.size > 10 && envelope.smtputf8 && envelope.from == "a@b.example"`, true},
		{`auth != null && lower(auth.user) == lower(envelope.from)`, true},
		// contains is bool even on a list not known at load.
		{`auth != null && contains([for r in envelope.recipients : domain(r) == domain(auth.user)], false)`, true},
		{`auth != null && contains(envelope.recipients, envelope.from)`, true},
		{`regex(envelope.from, "a") || envelope.size > 10`, false},
		{`envelope.size > 10 && lookup({a = true}, envelope.from, false)`, false}, // not statically bool
	}
	var src string
	for i, w := range whens {
		src += "rule \"r" + string(rune('a'+i)) + "\" {\n  stage = \"mail\"\n  when = " + w.when + "\n  action = \"reject\"\n}\n"
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"r.hcl": src})
	e, err := compileRuleFiles([]string{filepath.Join(dir, "r.hcl")})
	if err != nil {
		t.Fatal(err)
	}
	var inputs []Input
	for _, from := range []string{"a@b.example", "(", "10.0.0.0/8", "x@y.example"} {
		for _, size := range []int64{0, 100} {
			for _, user := range []string{"", "A@B.example"} {
				in := mailInput(user, from)
				in.Envelope.Size, in.Envelope.SMTPUTF8, in.Session.ClientIP = size, size > 0, "10.1.2.3"
				inputs = append(inputs, in.Normalize())
			}
		}
	}
	for i, r := range e.byStage[StageMail] {
		if (r.and != nil) != whens[i].and {
			t.Errorf("%s: conjuncts %d, want split %v", whens[i].when, len(r.and), whens[i].and)
		}
		for _, in := range inputs {
			vars := map[string]cty.Value{}
			for name := range schemaTypes {
				vars[name] = ctyVar(&in, name)
			}
			ectx := &hcl.EvalContext{Variables: vars, Functions: ruleFunctions}
			want, wantErr := evalAs(r.when, ectx, cty.Bool)
			got, gotErr := r.match(ectx)
			if (gotErr != nil) != (wantErr != nil) || gotErr == nil && !got.RawEquals(want) {
				t.Errorf("%s with from %q size %d user %q: match %#v %v, HCL %#v %v",
					whens[i].when, in.Envelope.From, in.Envelope.Size, in.Auth, got, gotErr, want, wantErr)
			}
		}
	}
}
