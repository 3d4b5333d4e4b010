package policy

import (
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// TestEqualityOps: equalOp and notEqualOp give what cty's stdlib Equal and
// NotEqual give (value, known-ness, marks, refinement) for every pair of a
// set of operands covering nulls of several types, unknowns (refined or
// not, of known and unknown type), strings that differ only in Unicode
// normalization, numbers, bools, collections and top-level marks. An
// operand with marks nested inside it (which mailgate never builds: no
// value in a rule's context is marked) differs in the result's marks only:
// cty's operations carry the nested marks to the result, ours do not.
func TestEqualityOps(t *testing.T) {
	obj := cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("a@example.com"), "mechanism": cty.StringVal("PLAIN")})
	vals := []cty.Value{
		cty.NullVal(cty.DynamicPseudoType), cty.NullVal(cty.String), cty.NullVal(obj.Type()), cty.NullVal(cty.Bool),
		cty.DynamicVal, cty.UnknownVal(cty.String), cty.UnknownVal(cty.String).RefineNotNull(),
		cty.UnknownVal(cty.Bool), cty.UnknownVal(obj.Type()),
		cty.StringVal(""), cty.StringVal("a@example.com"), cty.StringVal("A@example.com"),
		cty.StringVal("caf\u00e9"), cty.StringVal("cafe\u0301"),
		cty.True, cty.False, cty.NumberIntVal(1), cty.NumberFloatVal(1.0), cty.NumberIntVal(2),
		obj, cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("a@example.com"), "mechanism": cty.StringVal("LOGIN")}),
		cty.ListVal([]cty.Value{cty.StringVal("x")}), cty.TupleVal([]cty.Value{cty.StringVal("x")}),
		cty.StringVal("a@example.com").Mark("secret"), cty.NullVal(cty.String).Mark("secret"),
	}
	deep := cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("a@example.com").Mark("secret"), "mechanism": cty.StringVal("PLAIN")})
	for _, tc := range []struct {
		op, ref *hclsyntax.Operation
	}{{equalOp, hclsyntax.OpEqual}, {notEqualOp, hclsyntax.OpNotEqual}} {
		for _, a := range vals {
			for _, b := range vals {
				got, gerr := tc.op.Impl.Call([]cty.Value{a, b})
				want, werr := tc.ref.Impl.Call([]cty.Value{a, b})
				if (gerr != nil) != (werr != nil) {
					t.Fatalf("%#v, %#v: error %v, HCL's %v", a, b, gerr, werr)
				}
				if !got.RawEquals(want) {
					t.Errorf("%#v vs %#v: %#v, HCL's operation gives %#v", a, b, got, want)
				}
			}
			for _, args := range [][]cty.Value{{a, deep}, {deep, a}} {
				got, gerr := tc.op.Impl.Call(args)
				want, werr := tc.ref.Impl.Call(args)
				want, _ = want.UnmarkDeep()
				if got, _ = got.UnmarkDeep(); (gerr != nil) != (werr != nil) || !got.RawEquals(want) {
					t.Errorf("%#v vs %#v: %#v (%v), HCL's operation gives %#v (%v)", args[0], args[1], got, gerr, want, werr)
				}
			}
		}
	}
	if stdlib.EqualFunc.Params()[0].AllowMarked {
		t.Log("cty's Equal now allows marked values: equalOp may no longer be needed")
	}
}

// TestUseFastOps: the operators of a parsed expression are replaced,
// nested ones included, and the expression's value is unchanged.
func TestUseFastOps(t *testing.T) {
	src := `auth != null && (envelope.from == "a@example.com" || [for a in ["x"] : a == "x"][0]) && "x${auth.user == "b"}" == "xfalse"`
	expr, diags := hclsyntax.ParseExpression([]byte(src), "t.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{
		"auth":     cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("a@example.com")}),
		"envelope": cty.ObjectVal(map[string]cty.Value{"from": cty.StringVal("x@example.com")}),
	}}
	before, diags := expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	useFastOps(expr)
	ops := map[*hclsyntax.Operation]int{}
	hclsyntax.VisitAll(expr.(hclsyntax.Node), func(n hclsyntax.Node) hcl.Diagnostics {
		if b, ok := n.(*hclsyntax.BinaryOpExpr); ok {
			ops[b.Op]++
		}
		return nil
	})
	if ops[hclsyntax.OpEqual] != 0 || ops[hclsyntax.OpNotEqual] != 0 || ops[equalOp] != 4 || ops[notEqualOp] != 1 {
		t.Errorf("operators after useFastOps: %v", ops)
	}
	after, diags := expr.Value(ctx)
	if diags.HasErrors() || !after.RawEquals(before) || !after.True() {
		t.Errorf("value %#v before, %#v after (%v)", before, after, diags)
	}
}
