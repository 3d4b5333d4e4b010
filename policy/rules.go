package policy

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Rule actions of the HCL rules engine.
const (
	actionReject = "reject"
	actionDefer  = "defer"
	actionWarn   = "warn"
	actionAccept = "accept"
)

// DiagnosticsError carries HCL diagnostics with the sources they point
// into, so its Error text shows each problem with a source snippet.
type DiagnosticsError struct {
	Diagnostics hcl.Diagnostics
	Files       map[string]*hcl.File
}

func (e *DiagnosticsError) Error() string {
	var b strings.Builder
	wr := hcl.NewDiagnosticTextWriter(&b, e.Files, 0, false)
	_ = wr.WriteDiagnostics(e.Diagnostics)
	return strings.TrimSpace(b.String())
}

type ruleFileSchema struct {
	Rules []ruleBlock `hcl:"rule,block"`
}

type ruleBlock struct {
	Name          string         `hcl:"name,label"`
	Stage         string         `hcl:"stage"`
	When          hcl.Expression `hcl:"when"`
	Action        string         `hcl:"action"`
	Code          *int           `hcl:"code,optional"`
	EnhancedCode  *string        `hcl:"enhanced_code,optional"`
	Message       *hcl.Attribute `hcl:"message,optional"`
	AddHeaders    *hcl.Attribute `hcl:"add_headers,optional"`
	RemoveHeaders *hcl.Attribute `hcl:"remove_headers,optional"`
	DKIMDomain    *hcl.Attribute `hcl:"dkim_domain,optional"`
	Upstream      *hcl.Attribute `hcl:"upstream,optional"`
	DeclRange     hcl.Range      `hcl:",def_range"`
}

// rule is one compiled, type-checked rule.
type rule struct {
	name  string
	stage Stage
	when  hcl.Expression
	// and holds the operands of a when expression a && b && … (a when
	// that is one null test is its own only operand; nil for another
	// form): see conjuncts and match.
	and []hcl.Expression
	// nulls[i] is and[i] when it is a null test (see nullTest).
	nulls   []nullTest
	action  string
	code    int
	enh     string
	message hcl.Expression // nil: default message
	acts    map[string]hcl.Expression
	// consts holds the values of the action expressions that read no
	// variable (add_headers = { "X-Tag" = "local" }), evaluated by HCL once
	// at load: the functions are deterministic, so every evaluation would
	// give the same value. An expression that fails at load is left to
	// fail at evaluation time, as it did.
	consts map[string]cty.Value
	// constActs is consts decoded, once: actions starts from it.
	constActs Actions
}

// rulesEngine evaluates HCL rules in file order.
type rulesEngine struct {
	byStage map[Stage][]*rule
	// vars lists, per stage, the input variables its rules reference and
	// the attributes they read, so a stage builds only those (a mail rule
	// never pays for headers, nor for the session fields it does not read).
	vars map[Stage][]varSpec
}

// rulesFiles lists the rule files of path: the file itself, or the *.hcl
// files of a directory except *.test.hcl, in lexical order.
func rulesFiles(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	files := walkFiles(path, func(n string) bool {
		return strings.HasSuffix(n, ".hcl") && !strings.HasSuffix(n, ".test.hcl")
	})
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.hcl rule files under %s", path)
	}
	return files, nil
}

// newRulesEngine parses and type-checks every rule of the files at path.
func newRulesEngine(s engineSpec) (*rulesEngine, error) {
	files, err := rulesFiles(s.path)
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", s.id(), err)
	}
	e, err := compileRuleFiles(files)
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", s.id(), err)
	}
	return e, nil
}

func compileRuleFiles(files []string) (*rulesEngine, error) { return compileRules(files, true) }

// compileRules is compileRuleFiles; with fast false the expressions are
// evaluated as written, whole (no optimize, no conjuncts): the reference
// the differential test compares the fast path with.
func compileRules(files []string, fast bool) (*rulesEngine, error) {
	p := hclparse.NewParser()
	var diags hcl.Diagnostics
	var blocks []ruleBlock
	for _, f := range files {
		hf, d := p.ParseHCLFile(f)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		var schema ruleFileSchema
		diags = append(diags, gohcl.DecodeBody(hf.Body, nil, &schema)...)
		blocks = append(blocks, schema.Rules...)
	}
	if diags.HasErrors() {
		return nil, &DiagnosticsError{Diagnostics: diags, Files: p.Files()}
	}
	e := &rulesEngine{byStage: map[Stage][]*rule{}}
	seen := map[string]hcl.Range{}
	for _, b := range blocks {
		r, d := compileRule(b, fast)
		if prev, ok := seen[b.Name]; ok {
			d = append(d, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate rule name",
				Detail: fmt.Sprintf("Rule %q was already defined at %s.", b.Name, prev), Subject: b.DeclRange.Ptr()})
		}
		seen[b.Name] = b.DeclRange
		diags = append(diags, d...)
		if r != nil && !d.HasErrors() {
			e.byStage[r.stage] = append(e.byStage[r.stage], r)
		}
	}
	if diags.HasErrors() {
		return nil, &DiagnosticsError{Diagnostics: diags, Files: p.Files()}
	}
	e.vars = map[Stage][]varSpec{}
	for stage, rules := range e.byStage {
		var trs []hcl.Traversal
		tests := map[hcl.Range]bool{}
		for _, r := range rules {
			exprs := []hcl.Expression{r.when, r.message}
			for _, a := range r.acts {
				exprs = append(exprs, a)
			}
			for _, x := range exprs {
				if x != nil {
					trs = append(trs, x.Variables()...)
					nullTests(x, tests)
				}
			}
		}
		e.vars[stage] = varSpecs(trs, func(string) bool { return false }, tests)
	}
	return e, nil
}

func compileRule(b ruleBlock, fast bool) (*rule, hcl.Diagnostics) {
	r := &rule{name: b.Name, stage: Stage(b.Stage), when: b.When, action: b.Action, acts: map[string]hcl.Expression{}}
	errAt := func(summary, detail string) hcl.Diagnostics {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: b.DeclRange.Ptr()}}
	}
	switch r.stage {
	case StageMail, StageRcpt, StageData:
	default:
		return nil, errAt("Invalid stage", fmt.Sprintf("Rule %q: stage %q must be \"mail\", \"rcpt\" or \"data\".", b.Name, b.Stage))
	}
	var class byte
	switch r.action {
	case actionReject:
		class, r.code, r.enh = '5', defaultRejectCode, defaultRejectEnh
	case actionDefer:
		class, r.code, r.enh = '4', defaultDeferCode, defaultDeferEnh
	case actionWarn, actionAccept:
		if b.Code != nil || b.EnhancedCode != nil {
			return nil, errAt("Code on a non-refusing rule", fmt.Sprintf("Rule %q: code and enhanced_code apply to reject and defer only.", b.Name))
		}
	default:
		return nil, errAt("Invalid action", fmt.Sprintf("Rule %q: action %q must be \"reject\", \"defer\", \"warn\" or \"accept\".", b.Name, b.Action))
	}
	if b.Code != nil {
		r.code = *b.Code
	}
	if b.EnhancedCode != nil {
		r.enh = *b.EnhancedCode
	}
	if class != 0 {
		if err := checkReply(class, r.code, r.enh); err != nil {
			return nil, errAt("Invalid reply code", fmt.Sprintf("Rule %q (%s): %v.", b.Name, r.action, err))
		}
	}
	// Diagnostics are HCL's on the expressions as written; what is
	// evaluated per message is optimized (rules_optimize.go).
	diags := typeCheck(b.When, r.stage, cty.Bool, nil)
	if !diags.HasErrors() && fast {
		r.when = optimize(b.When)
		r.and = conjuncts(r.when, checkContext(r.stage))
		if r.and == nil && nullTestOf(r.when).name != "" {
			r.and = []hcl.Expression{r.when}
		}
		r.nulls = make([]nullTest, len(r.and))
		for i, x := range r.and {
			r.nulls[i] = nullTestOf(x)
		}
	}
	if b.Message != nil {
		r.message = b.Message.Expr
		diags = append(diags, typeCheck(r.message, r.stage, cty.String, b.When)...)
		if fast {
			r.message = optimize(r.message)
		}
	}
	for name, a := range map[string]*hcl.Attribute{"add_headers": b.AddHeaders, "remove_headers": b.RemoveHeaders, "dkim_domain": b.DKIMDomain, "upstream": b.Upstream} {
		if a == nil {
			continue
		}
		if r.action != actionAccept && r.action != actionWarn {
			diags = append(diags, errAt("Action on a refusing rule", fmt.Sprintf("Rule %q: %s applies to accept and warn rules only.", b.Name, name))...)
			continue
		}
		d := typeCheck(a.Expr, r.stage, actionTypes[name], b.When)
		diags = append(diags, d...)
		r.acts[name] = a.Expr
		if fast {
			r.acts[name] = optimize(a.Expr)
		}
		if !d.HasErrors() && len(a.Expr.Variables()) == 0 {
			if v, err := evalAs(r.acts[name], &hcl.EvalContext{Functions: ruleFunctions}, actionTypes[name]); err == nil {
				if r.consts == nil {
					r.consts = map[string]cty.Value{}
				}
				r.consts[name] = v
				setAction(&r.constActs, name, v)
			}
		}
	}
	return r, diags
}

var actionTypes = map[string]cty.Type{
	"add_headers":    cty.Map(cty.String),
	"remove_headers": cty.List(cty.String),
	"dkim_domain":    cty.String,
	"upstream":       cty.String,
}

func (e *rulesEngine) eval(ctx context.Context, doc *document) (engineResult, error) {
	var res engineResult
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if len(e.byStage[doc.in.Stage]) == 0 {
		return res, nil
	}
	// The evaluation context and its maps are pooled, as the quotas' are;
	// after an error the context stays with it (HCL's diagnostics point to
	// it) and is not reused.
	specs := e.vars[doc.in.Stage]
	sc := getEvalScratch()
	fillVars(sc.ectx.Variables, &doc.in, specs, sc.attrs)
	res, err := e.run(doc.in.Stage, &sc.ectx)
	if err == nil {
		putEvalScratch(sc, specs)
	}
	return res, err
}

// run evaluates the rules of stage in file order against ectx.
func (e *rulesEngine) run(stage Stage, ectx *hcl.EvalContext) (engineResult, error) {
	var res engineResult
	for _, r := range e.byStage[stage] {
		match, err := r.match(ectx)
		if err != nil {
			return engineResult{}, fmt.Errorf("rule %q: when: %w", r.name, err)
		}
		if !match.True() {
			continue
		}
		msg := ""
		if r.message != nil {
			v, err := evalAs(r.message, ectx, cty.String)
			if err != nil {
				return engineResult{}, fmt.Errorf("rule %q: message: %w", r.name, err)
			}
			msg = v.AsString()
		}
		switch r.action {
		case actionReject:
			res.reject = &verdict{rule: r.name, code: r.code, enh: r.enh, message: msg}
			return res, nil // nothing later can beat a reject
		case actionDefer:
			if res.deferral == nil {
				res.deferral = &verdict{rule: r.name, code: r.code, enh: r.enh, message: msg}
			}
		case actionWarn, actionAccept:
			if len(r.acts) > 0 {
				a, err := r.actions(ectx)
				if err != nil {
					return engineResult{}, fmt.Errorf("rule %q: %w", r.name, err)
				}
				res.actions.Merge(a)
			}
			if r.action == actionWarn {
				res.warnings = append(res.warnings, Warning{Rule: r.name, Message: msg})
				continue
			}
			res.acceptRule = r.name
			return res, nil // allow-list: an accept ends this engine's stage
		}
	}
	return res, nil
}

// match evaluates the rule's when expression. A conjunction is evaluated
// operand by operand, each by HCL except null tests (read from ectx, see
// nullTest), and is false at the first false one: the result HCL's &&
// gives (a false operand decides, the others' errors dropped) without
// evaluating the rest. An operand that fails or is not a known bool sends
// the whole expression to HCL, so errors and odd values are HCL's own.
func (r *rule) match(ectx *hcl.EvalContext) (cty.Value, error) {
	for i, x := range r.and {
		if t := r.nulls[i]; t.name != "" {
			if v, ok := ectx.Variables[t.name]; ok && v.IsKnown() && !v.IsMarked() {
				if v.IsNull() != t.isNull {
					return cty.False, nil
				}
				if i == len(r.and)-1 {
					return cty.True, nil
				}
				continue
			}
		}
		v, diags := x.Value(ectx)
		if diags.HasErrors() || !v.IsKnown() || v.IsNull() || v.Type() != cty.Bool {
			break
		}
		if v.False() {
			return cty.False, nil
		}
		if i == len(r.and)-1 {
			return cty.True, nil
		}
	}
	return evalAs(r.when, ectx, cty.Bool)
}

func (r *rule) actions(ectx *hcl.EvalContext) (Actions, error) {
	// The constant actions' slices are clipped: nothing appended to a's
	// can write into them.
	a := r.constActs
	a.AddHeaders, a.RemoveHeaders = slices.Clip(a.AddHeaders), slices.Clip(a.RemoveHeaders)
	for name, expr := range r.acts {
		if _, ok := r.consts[name]; ok {
			continue
		}
		v, err := evalAs(expr, ectx, actionTypes[name])
		if err != nil {
			return a, fmt.Errorf("%s: %w", name, err)
		}
		setAction(&a, name, v)
	}
	return a, checkActions(a)
}

// setAction sets the action name of a from its value v (of actionTypes[name]).
func setAction(a *Actions, name string, v cty.Value) {
	switch name {
	case "add_headers":
		m := v.AsValueMap()
		for _, k := range slices.Sorted(maps.Keys(m)) {
			a.AddHeaders = append(a.AddHeaders, Header{Name: k, Value: m[k].AsString()})
		}
	case "remove_headers":
		for _, x := range v.AsValueSlice() {
			a.RemoveHeaders = append(a.RemoveHeaders, x.AsString())
		}
	case "dkim_domain":
		a.DKIMDomain = v.AsString()
	case "upstream":
		a.Upstream = v.AsString()
	}
}

// evalAs evaluates expr and converts the result to want, refusing null and
// unknown results and null collection elements.
func evalAs(expr hcl.Expression, ectx *hcl.EvalContext, want cty.Type) (cty.Value, error) {
	v, diags := expr.Value(ectx)
	if diags.HasErrors() {
		return cty.NilVal, diags
	}
	if v.IsNull() || !v.IsWhollyKnown() {
		return cty.NilVal, fmt.Errorf("%s: result is null", expr.Range())
	}
	v, err := convert.Convert(v, want)
	if err != nil {
		return cty.NilVal, fmt.Errorf("%s: %w", expr.Range(), err)
	}
	if v.Type().IsCollectionType() {
		for _, x := range v.AsValueSlice() {
			if x.IsNull() {
				return cty.NilVal, fmt.Errorf("%s: null element", expr.Range())
			}
		}
	}
	return v, nil
}
