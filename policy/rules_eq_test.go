package policy

import (
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// TestOperandValue_MatchesHCL: an == or != operand compared by
// operandValue gives what HCL gives for the expression as written — value
// and whether it fails — for nulls, strings, other types and failing sides.
func TestOperandValue_MatchesHCL(t *testing.T) {
	ectx := &hcl.EvalContext{Functions: ruleFunctions, Variables: map[string]cty.Value{
		"auth":     cty.NullVal(cty.Object(map[string]cty.Type{"user": cty.String})),
		"login":    cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("a@example.com")}),
		"envelope": cty.ObjectVal(map[string]cty.Value{"from": cty.StringVal("a@example.com"), "size": cty.NumberIntVal(1200), "recipients": cty.ListVal([]cty.Value{cty.StringVal("b@example.org")})}),
		"headers":  cty.MapVal(map[string]cty.Value{"subject": cty.ListVal([]cty.Value{cty.StringVal("Hé")})}),
		"unknown":  cty.UnknownVal(cty.String),
	}}
	exprs := []string{
		`auth == null`, `auth != null`, `null == auth`, `login == null`, `login != null`, `null == null`,
		`envelope.from == "a@example.com"`, `envelope.from != "a@example.com"`, `envelope.from == "A@example.com"`,
		`lower(login.user) != lower(envelope.from)`, `"e\u0301" == "é"`, `headers["subject"][0] == "Hé"`,
		`envelope.size == 1200`, `envelope.size != 1200.0`, `envelope.size == "1200"`, `"a" == 1`, `true == true`, `true != false`,
		`envelope.recipients == ["b@example.org"]`, `envelope.recipients == tolist(["b@example.org"])`, `login == {user = "a@example.com"}`,
		`auth.user == "x"`, `headers["x-missing"][0] == null`, `nope == "x"`, `unknown == "x"`, `unknown != null`,
		`envelope.from == auth`, `null != envelope.size`,
	}
	for _, src := range exprs {
		x, diags := hclsyntax.ParseExpression([]byte(src), "t.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", src, diags)
		}
		want, wantDiags := x.Value(ectx)
		got, gotDiags := operandValue(x, ectx)
		if gotDiags.HasErrors() != wantDiags.HasErrors() {
			t.Errorf("%s: errors %v, HCL's %v", src, gotDiags, wantDiags)
			continue
		}
		if !wantDiags.HasErrors() && !got.RawEquals(want) {
			t.Errorf("%s = %#v, HCL gives %#v", src, got, want)
		}
	}
}
