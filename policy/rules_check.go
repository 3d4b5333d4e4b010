package policy

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// typeCheck evaluates expr at load time against the input schema with
// unknown leaves, so a misspelt attribute (envelope.form), an unknown
// variable, a function called with the wrong types or a result of the wrong
// type is a load error with a source snippet, not a runtime surprise.
//
// rcpt and message are null for rules of other stages (a mail rule reading
// rcpt.address is an error). A second pass evaluates with auth and
// session.tls null, as for an unauthenticated plaintext session, catching
// "auth.user" without an "auth != null" guard.
//
// HCL's && and || stop at an unknown left operand and drop the diagnostics
// of the right one, so every sub-expression is also evaluated on its own,
// except below for expressions, splats and try/can (whose errors are
// expected) and object keys.
//
// guard, when not nil, is the rule's when expression: the null pass of a
// message or action is skipped when the guard is false for such a session
// (the expression is then never evaluated with a null auth).
func typeCheck(expr hcl.Expression, stage Stage, want cty.Type, guard hcl.Expression) hcl.Diagnostics {
	ectx := checkContext(stage)
	vars := ectx.Variables

	var diags hcl.Diagnostics
	seen := map[string]bool{}
	add := func(ds hcl.Diagnostics, note string) {
		for _, d := range ds {
			if d.Severity != hcl.DiagError {
				continue
			}
			key := d.Summary
			if d.Subject != nil {
				key += d.Subject.String()
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			if note != "" {
				c := *d
				c.Detail = fmt.Sprintf("%s (%s)", d.Detail, note)
				d = &c
			}
			diags = append(diags, d)
		}
	}

	v, ds := expr.Value(ectx)
	add(ds, "")
	if !ds.HasErrors() {
		if want == cty.Bool && v.Type() != cty.Bool && v.Type() != cty.DynamicPseudoType {
			// No silent string-to-bool conversion: "yes" would fail only
			// at run time.
			add(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Wrong result type",
				Detail: fmt.Sprintf("The expression must produce bool, not %s.", v.Type().FriendlyName()), Subject: expr.Range().Ptr()}}, "")
		} else if _, err := convert.Convert(v, want); err != nil {
			add(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Wrong result type",
				Detail: fmt.Sprintf("The expression must produce %s: %v.", want.FriendlyName(), err), Subject: expr.Range().Ptr()}}, "")
		}
	}

	if node, ok := expr.(hclsyntax.Node); ok {
		w := &subExprWalker{ectx: ectx}
		hclsyntax.Walk(node, w)
		add(w.diags, "")
	}

	// Unauthenticated, plaintext: auth and session.tls are null.
	nullVars := make(map[string]cty.Value, len(vars))
	for k, v := range vars {
		nullVars[k] = v
	}
	nullVars["auth"] = cty.NullVal(authType)
	nullVars["session"] = cty.ObjectVal(map[string]cty.Value{
		"id": cty.UnknownVal(cty.String), "listener": cty.UnknownVal(cty.String), "client_ip": cty.UnknownVal(cty.String),
		"helo": cty.UnknownVal(cty.String), "tls": cty.NullVal(tlsType),
	})
	nullCtx := &hcl.EvalContext{Variables: nullVars, Functions: ruleFunctions}
	if guard != nil {
		gv, gd := guard.Value(nullCtx)
		if !gd.HasErrors() && gv.IsKnown() && !gv.IsNull() && gv.Type() == cty.Bool && gv.False() {
			return diags
		}
	}
	_, ds = expr.Value(nullCtx)
	add(ds, "when auth or session.tls is null: guard with auth != null")
	return diags
}

// checkContext is the evaluation context of the load-time checks of a
// stage's expressions: every input variable unknown, of its schema type,
// except stage and version, and rcpt and message null outside their
// stages.
func checkContext(stage Stage) *hcl.EvalContext {
	vars := map[string]cty.Value{}
	for name, t := range schemaTypes {
		vars[name] = cty.UnknownVal(t)
	}
	vars["stage"] = cty.StringVal(string(stage))
	vars["version"] = cty.NumberIntVal(InputVersion)
	if stage != StageRcpt {
		vars["rcpt"] = cty.NullVal(rcptType)
	}
	if stage != StageData {
		vars["message"] = cty.NullVal(messageType)
	}
	return &hcl.EvalContext{Variables: vars, Functions: ruleFunctions}
}

// conjuncts splits a when expression a && b && … into its operands, left
// to right, so evaluation can stop at the first false one as HCL's own &&
// would conclude (HCL evaluates both operands of && and then drops the
// right one's errors when the left is false). It returns nil unless every
// right operand has type bool at load time: HCL reports an operand it
// cannot convert to bool even when the other is false, and only a bool
// operand is sure to convert.
func conjuncts(expr hcl.Expression, ectx *hcl.EvalContext) []hcl.Expression {
	and, ok := expr.(*hclsyntax.BinaryOpExpr)
	if !ok || and.Op != hclsyntax.OpLogicalAnd {
		return nil
	}
	if v, diags := and.RHS.Value(ectx); diags.HasErrors() || v.Type() != cty.Bool {
		return nil
	}
	left := conjuncts(and.LHS, ectx)
	if left == nil {
		left = []hcl.Expression{and.LHS}
	}
	return append(left, and.RHS)
}

// subExprWalker evaluates each sub-expression alone (see typeCheck).
type subExprWalker struct {
	ectx  *hcl.EvalContext
	skip  int
	diags hcl.Diagnostics
}

func (w *subExprWalker) Enter(n hclsyntax.Node) hcl.Diagnostics {
	if w.skip > 0 {
		w.skip++
		return nil
	}
	switch t := n.(type) {
	case *hclsyntax.ObjectConsKeyExpr, *hclsyntax.AnonSymbolExpr:
		w.skip = 1
		return nil
	case *hclsyntax.ForExpr, *hclsyntax.SplatExpr:
		w.skip = 1
	case *hclsyntax.FunctionCallExpr:
		if t.Name == "try" || t.Name == "can" {
			w.skip = 1
			return nil
		}
	}
	if e, ok := n.(hclsyntax.Expression); ok {
		_, ds := e.Value(w.ectx)
		w.diags = append(w.diags, ds...)
	}
	return nil
}

func (w *subExprWalker) Exit(hclsyntax.Node) hcl.Diagnostics {
	if w.skip > 0 {
		w.skip--
	}
	return nil
}
