package policy

import (
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// What a rule's expressions cost per message, cut at load. HCL evaluates
// every expression as written, each operator and literal through cty's
// generic machinery, so the compiled expressions get two rewrites that
// leave every result as HCL gives it (TestEqualityOps, TestOptimize):
// constant sub-expressions are evaluated once (foldConstants), and == and
// != skip cty's deep walks for marks (useFastOps). (*rule).match adds two
// shortcuts of its own: a conjunction stops at its first false operand
// (conjuncts), and an operand v == null / v != null is read from the
// context (nullTest). TestRulesFastMatchesPlain and the differential test
// compare all of it with the rules compiled without (compileRules).

// optimize applies both rewrites to expr and returns the expression to
// evaluate in its place.
func optimize(expr hcl.Expression) hcl.Expression {
	expr = foldConstants(expr)
	useFastOps(expr)
	return expr
}

// foldConstants replaces each sub-expression of expr that reads no
// variable by its value (a LiteralValueExpr with the same source range):
// a quoted string is a template HCL assembles on every evaluation, a list
// of literals a tuple it builds. Only what evaluates without error to a
// wholly known value is folded, so an expression that fails still fails
// at evaluation time, with HCL's diagnostics. The functions rules can
// call are deterministic and do no I/O, so a value computed at load is
// the value every evaluation would compute.
func foldConstants(expr hcl.Expression) hcl.Expression {
	node, ok := expr.(hclsyntax.Expression)
	if !ok {
		return expr
	}
	if v, ok := constValue(node); ok {
		return v
	}
	fold := func(x *hclsyntax.Expression) {
		if v, ok := constValue(*x); ok {
			*x = v
		}
	}
	hclsyntax.VisitAll(node, func(n hclsyntax.Node) hcl.Diagnostics {
		switch e := n.(type) {
		case *hclsyntax.BinaryOpExpr:
			fold(&e.LHS)
			fold(&e.RHS)
		case *hclsyntax.UnaryOpExpr:
			fold(&e.Val)
		case *hclsyntax.FunctionCallExpr:
			for i := range e.Args {
				fold(&e.Args[i])
			}
		case *hclsyntax.TupleConsExpr:
			for i := range e.Exprs {
				fold(&e.Exprs[i])
			}
		case *hclsyntax.IndexExpr:
			fold(&e.Key)
		case *hclsyntax.ConditionalExpr:
			fold(&e.Condition)
			fold(&e.TrueResult)
			fold(&e.FalseResult)
		case *hclsyntax.ParenthesesExpr:
			fold(&e.Expression)
		case *hclsyntax.TemplateExpr:
			for i := range e.Parts {
				fold(&e.Parts[i])
			}
		}
		return nil
	})
	return node
}

// constValue is x as a literal when it reads no variable and evaluates
// without error to a wholly known value; ok is false otherwise, and for
// what is already a literal.
func constValue(x hclsyntax.Expression) (hclsyntax.Expression, bool) {
	if _, ok := x.(*hclsyntax.LiteralValueExpr); ok || x == nil || len(x.Variables()) > 0 {
		return nil, false
	}
	v, diags := x.Value(&hcl.EvalContext{Functions: ruleFunctions})
	if diags.HasErrors() || !v.IsWhollyKnown() || v.IsMarked() {
		return nil, false
	}
	return &hclsyntax.LiteralValueExpr{Val: v, SrcRange: x.Range()}, true
}

// equalOp and notEqualOp are HCL's == and != (cty's stdlib Equal and
// NotEqual: the same parameters, result and refinement) with parameters
// that allow marked values. HCL's own operations copy every operand deep
// to look for marks (UnmarkDeep: a map and a walk over a whole object such
// as auth), which mailgate never sets. useFastOps puts them into a
// compiled expression; everything else about the operator stays HCL's.
var (
	equalOp    = &hclsyntax.Operation{Impl: equalityFunc(false), Type: cty.Bool}
	notEqualOp = &hclsyntax.Operation{Impl: equalityFunc(true), Type: cty.Bool}
)

func equalityFunc(negate bool) function.Function {
	param := func(name string) function.Parameter {
		return function.Parameter{Name: name, Type: cty.DynamicPseudoType, AllowUnknown: true, AllowDynamicType: true, AllowNull: true, AllowMarked: true}
	}
	return function.New(&function.Spec{
		Params: []function.Parameter{param("a"), param("b")},
		Type:   function.StaticReturnType(cty.Bool),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			v := equals(args[0], args[1])
			if negate {
				v = v.Not()
			}
			if !v.IsKnown() {
				// stdlib's RefineResult, applied only where it can refine
				// anything: a known result is already not null.
				v = v.RefineNotNull()
			}
			return v, nil
		},
	})
}

// equals is cty's Value.Equals, answered without it where its answer is
// plain: for unmarked operands, a null and a known non-null value are not
// equal, and two known strings or bools are equal when their Go values
// are (cty normalizes strings when it builds them). Value.Equals walks
// both operands deep for marks first.
func equals(a, b cty.Value) cty.Value {
	if a.IsMarked() || b.IsMarked() || !a.IsKnown() || !b.IsKnown() {
		return a.Equals(b)
	}
	switch an, bn := a.IsNull(), b.IsNull(); {
	case an && bn:
		return a.Equals(b)
	case an || bn:
		return cty.False
	}
	// (cty.Type values of object types are not comparable with ==, so the
	// type is compared with the primitive types only.)
	switch at, bt := a.Type(), b.Type(); {
	case at == cty.String && bt == cty.String:
		return cty.BoolVal(a.AsString() == b.AsString())
	case at == cty.Bool && bt == cty.Bool:
		return cty.BoolVal(a.True() == b.True())
	}
	return a.Equals(b)
}

// useFastOps replaces HCL's == and != in expr by equalOp and notEqualOp.
func useFastOps(expr hcl.Expression) {
	node, ok := expr.(hclsyntax.Node)
	if !ok {
		return
	}
	hclsyntax.VisitAll(node, func(n hclsyntax.Node) hcl.Diagnostics {
		if b, ok := n.(*hclsyntax.BinaryOpExpr); ok {
			switch b.Op {
			case hclsyntax.OpEqual:
				b.Op = equalOp
			case hclsyntax.OpNotEqual:
				b.Op = notEqualOp
			}
		}
		return nil
	})
}

// nullTests adds to tests the source ranges of the bare variables expr
// compares with null (auth == null, null != auth): such a reference needs
// the variable to be null or not, none of its attributes, so the rules
// engine builds it with only the attributes read elsewhere (varSpecs).
func nullTests(expr hcl.Expression, tests map[hcl.Range]bool) {
	node, ok := expr.(hclsyntax.Node)
	if !ok {
		return
	}
	hclsyntax.VisitAll(node, func(n hclsyntax.Node) hcl.Diagnostics {
		if v, _, ok := nullOperand(n); ok {
			tests[v.Traversal.SourceRange()] = true
		}
		return nil
	})
}

// nullTest is a when operand of the form v == null or v != null (either
// way round) on a bare variable v. Its value is whether v is null, which
// match reads from the evaluation context: HCL's operator would walk all
// of v for marks and convert both operands, a dozen allocations for a
// bool. A known, unmarked value compares with null as cty's Equals does:
// equal exactly when it is null.
type nullTest struct {
	name   string // the variable; "" when the operand is no null test
	isNull bool   // v == null (else v != null)
}

// nullTestOf returns x as a null test, or the zero nullTest.
func nullTestOf(x hcl.Expression) nullTest {
	v, isNull, ok := nullOperand(x)
	if !ok {
		return nullTest{}
	}
	return nullTest{name: v.Traversal.RootName(), isNull: isNull}
}

// nullOperand returns the bare variable x compares with null, either way
// round, and whether the comparison is == (isNull) or !=; ok is false when
// x is no such comparison.
func nullOperand(x any) (v *hclsyntax.ScopeTraversalExpr, isNull, ok bool) {
	b, ok := x.(*hclsyntax.BinaryOpExpr)
	if !ok {
		return nil, false, false
	}
	switch b.Op {
	case equalOp, hclsyntax.OpEqual:
		isNull = true
	case notEqualOp, hclsyntax.OpNotEqual:
	default:
		return nil, false, false
	}
	isNullLit := func(e hclsyntax.Expression) bool {
		l, ok := e.(*hclsyntax.LiteralValueExpr)
		return ok && l.Val.IsNull()
	}
	operand, other := b.LHS, b.RHS
	if isNullLit(operand) {
		operand, other = b.RHS, b.LHS
	}
	v, bare := operand.(*hclsyntax.ScopeTraversalExpr)
	if !isNullLit(other) || !bare || len(v.Traversal) != 1 {
		return nil, false, false
	}
	return v, isNull, true
}
