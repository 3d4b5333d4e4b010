package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
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

// TestOptimize: an optimized expression evaluates to what HCL gives for
// the expression as written (value, or an error with the same summary),
// in contexts with and without AUTH; constant parts are folded, and a
// constant that fails is left to fail at evaluation.
func TestOptimize(t *testing.T) {
	ctxs := []*hcl.EvalContext{
		{Functions: ruleFunctions, Variables: map[string]cty.Value{
			"auth":     cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal("News@Example.com")}),
			"envelope": cty.MapVal(map[string]cty.Value{"from": cty.StringVal("news@example.com"), "from_domain": cty.StringVal("example.com")}),
			"session":  cty.MapVal(map[string]cty.Value{"helo": cty.StringVal("[192.0.2.1]"), "client_ip": cty.StringVal("127.0.0.1")}),
			"message":  cty.ObjectVal(map[string]cty.Value{"from_addresses": cty.ListVal([]cty.Value{cty.StringVal("a@example.com"), cty.StringVal("b@example.net")})}),
		}},
		{Functions: ruleFunctions, Variables: map[string]cty.Value{
			"auth":     cty.NullVal(cty.Object(map[string]cty.Type{"user": cty.String})),
			"envelope": cty.MapVal(map[string]cty.Value{"from": cty.StringVal(""), "from_domain": cty.StringVal("")}),
			"session":  cty.MapVal(map[string]cty.Value{"helo": cty.StringVal("mail.example.org"), "client_ip": cty.StringVal("::1")}),
			"message":  cty.ObjectVal(map[string]cty.Value{"from_addresses": cty.ListValEmpty(cty.String)}),
		}},
	}
	cases := []struct {
		src   string
		folds bool // some sub-expression is constant
	}{
		{`auth != null && lower(envelope.from) != lower(auth.user)`, false},
		{`envelope.from == "news@example.com"`, true},
		{`cidr_contains("127.0.0.0/8", session.client_ip)`, true},
		{`regex("^\\[?[0-9.]+\\]?$", session.helo)`, true},
		{`contains(["broken.example", lower("X.EXAMPLE")], envelope.from_domain)`, true},
		{`contains([for a in message.from_addresses : domain(a) == "example.com"], false)`, true},
		{`[for a in ["x", "y"] : upper(a)][1] == "Y"`, true},
		{`startswith(lower("NEWS@"), "news") ? envelope.from : "none"`, true},
		{`can(message.headers["list-unsubscribe"])`, false}, // a literal key is a traversal step
		{`try(auth.user, "anonymous") == "anonymous"`, true},
		{`!(1 + 2 == 3) || envelope.from_domain == "example.com"`, true},
		{`"${envelope.from} via ${"x"}"`, true},
		{`regex("[", session.helo)`, true},          // the invalid pattern still fails at evaluation
		{`lower(1 == 1 ? null : "x") == "x"`, true}, // 1 == 1 folds; the call that fails does not
	}
	for _, tc := range cases {
		orig, diags := hclsyntax.ParseExpression([]byte(tc.src), "t.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", tc.src, diags)
		}
		opt, _ := hclsyntax.ParseExpression([]byte(tc.src), "t.hcl", hcl.InitialPos)
		optimized := optimize(opt)
		literals := func(x hcl.Expression) int {
			n := 0
			hclsyntax.VisitAll(x.(hclsyntax.Node), func(n2 hclsyntax.Node) hcl.Diagnostics {
				if _, ok := n2.(*hclsyntax.LiteralValueExpr); ok {
					n++
				}
				return nil
			})
			return n
		}
		// Folding replaces several nodes by one literal, or a template
		// by a literal: the expression has fewer nodes, or as many
		// with more of them literals.
		nodes := func(x hcl.Expression) int {
			n := 0
			hclsyntax.VisitAll(x.(hclsyntax.Node), func(hclsyntax.Node) hcl.Diagnostics { n++; return nil })
			return n
		}
		folded := nodes(optimized) < nodes(orig) || literals(optimized) > literals(orig)
		if folded != tc.folds {
			t.Errorf("%s: folded %v, want %v", tc.src, folded, tc.folds)
		}
		for i, ctx := range ctxs {
			want, wd := orig.Value(ctx)
			got, gd := optimized.Value(ctx)
			if wd.HasErrors() != gd.HasErrors() || (wd.HasErrors() && wd[0].Summary != gd[0].Summary) {
				t.Errorf("%s, context %d: diagnostics %v, HCL's %v", tc.src, i, gd, wd)
				continue
			}
			if !wd.HasErrors() && !got.RawEquals(want) {
				t.Errorf("%s, context %d: %#v, HCL's %#v", tc.src, i, got, want)
			}
		}
	}
}

// TestStringMapFuncs: lower, upper and trimspace give what cty's stdlib
// functions give, unknown and dynamic arguments included.
func TestStringMapFuncs(t *testing.T) {
	args := []cty.Value{
		cty.StringVal(" MiXed@Example.COM "), cty.StringVal(""), cty.UnknownVal(cty.String),
		cty.UnknownVal(cty.String).Refine().StringPrefix("ab").NewValue(), cty.DynamicVal,
		cty.NullVal(cty.String), cty.StringVal("Ünïcödé"),
	}
	for name, ref := range map[string]function.Function{"lower": stdlib.LowerFunc, "upper": stdlib.UpperFunc, "trimspace": stdlib.TrimSpaceFunc} {
		for _, a := range args {
			got, gerr := ruleFunctions[name].Call([]cty.Value{a})
			want, werr := ref.Call([]cty.Value{a})
			if (gerr != nil) != (werr != nil) || (gerr == nil && !got.RawEquals(want)) {
				t.Errorf("%s(%#v) = %#v (%v), stdlib %#v (%v)", name, a, got, gerr, want, werr)
			}
		}
	}
}

// TestRulesFastMatchesPlain: rules compiled with the fast path (folded
// constants, equality operations, conjuncts, null tests, variables built
// with the attributes read) decide as the same rules evaluated as written
// with every variable whole, on inputs with and without AUTH, at every
// stage: same outcome, rule, message and error.
func TestRulesFastMatchesPlain(t *testing.T) {
	whens := []string{
		`auth == null`, `auth != null`, `null == auth`, `null != auth`,
		`auth == null && envelope.from == "a@example.com"`,
		`auth != null && lower(auth.user) != lower(envelope.from)`,
		`auth != null && auth.user == null`,
		`auth == null || auth.user == "b@example.com"`,
		`!(auth == null)`,
		`session.tls == null`, `session.tls != null && session.tls.version == "TLS1.3"`,
		`rcpt != null && rcpt.domain == "example.org"`, `message != null && message == null`,
		`auth != null && message != null && contains([for a in message.from_addresses : domain(a) == domain(auth.user)], false)`,
		`envelope == null`, `envelope != null && envelope.from_domain == "example.com"`,
	}
	var src strings.Builder
	for i, w := range whens {
		for _, stage := range []Stage{StageMail, StageRcpt, StageData} {
			if strings.Contains(w, "message.") && stage != StageData || strings.Contains(w, "rcpt.") && stage != StageRcpt {
				continue // null outside its stage: refused at load
			}
			fmt.Fprintf(&src, "rule \"r%d-%s\" {\n  stage = %q\n  when = %s\n  action = \"warn\"\n  message = \"rule %d\"\n}\n", i, stage, stage, w, i)
		}
	}
	path := filepath.Join(t.TempDir(), "r.hcl")
	if err := os.WriteFile(path, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	fast, err := compileRules([]string{path}, true)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := compileRules([]string{path}, false)
	if err != nil {
		t.Fatal(err)
	}
	var ins []Input
	for _, user := range []string{"", "a@example.com", "B@Example.com"} {
		for _, from := range []string{"a@example.com", "b@example.com", ""} {
			ins = append(ins, mailInput(user, from), rcptInput(user, from, "x@example.org", 1),
				dataInput(user, from, []string{from, "c@example.net"}, nil))
		}
	}
	for _, in := range ins {
		compareFastPlain(t, fast, plain, in)
	}
}

// compareFastPlain fails t when a rule of in's stage matches differently
// compiled fast and plain (see compileRules): another value, or an error
// in one only.
func compareFastPlain(t *testing.T, fast, plain *rulesEngine, in Input) {
	t.Helper()
	doc := newDocument(in)
	for _, r := range fast.byStage[in.Stage] {
		p := findRule(plain, in.Stage, r.name)
		got, gerr := r.match(withVars(t, doc, fast, true))
		want, werr := p.match(withVars(t, doc, plain, false))
		if (gerr != nil) != (werr != nil) || (gerr == nil && !got.RawEquals(want)) {
			t.Errorf("%s at %s, auth %+v: fast %#v (%v), as written %#v (%v)", r.name, in.Stage, in.Auth, got, gerr, want, werr)
		}
	}
}

func findRule(e *rulesEngine, st Stage, name string) *rule {
	for _, r := range e.byStage[st] {
		if r.name == name {
			return r
		}
	}
	return nil
}

// withVars is the evaluation context of doc: as the engine builds it when
// fast, else every variable whole.
func withVars(t *testing.T, doc *document, e *rulesEngine, fast bool) *hcl.EvalContext {
	t.Helper()
	vars := map[string]cty.Value{}
	if fast {
		fillVars(vars, &doc.in, e.vars[doc.in.Stage], nil)
	} else {
		for name := range schemaTypes {
			vars[name] = ctyVar(&doc.in, name)
		}
	}
	return &hcl.EvalContext{Variables: vars, Functions: ruleFunctions}
}
