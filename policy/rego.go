package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// ioBuiltins are the built-ins that reach outside the process. They are
// removed from the capabilities unless allow_io is set, so a module using
// one fails to compile, naming the file and line.
var ioBuiltins = map[string]bool{
	"http.send":          true,
	"net.lookup_ip_addr": true,
	"opa.runtime":        true,
}

// capabilities returns the OPA capabilities of an engine.
func capabilities(allowIO bool) *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	if allowIO {
		return caps
	}
	kept := caps.Builtins[:0]
	for _, b := range caps.Builtins {
		if !ioBuiltins[b.Name] {
			kept = append(kept, b)
		}
	}
	caps.Builtins = kept
	return caps
}

// regoFilter keeps .rego modules (test modules only when tests is set) and
// data.json / data.yaml / data.yml files; it skips everything else so an
// example input.json next to a policy never becomes data.
func regoFilter(tests bool) loader.Filter {
	return func(_ string, info fs.FileInfo, _ int) bool {
		if info.IsDir() {
			return strings.HasPrefix(info.Name(), ".") && info.Name() != "." && info.Name() != ".."
		}
		n := info.Name()
		switch {
		case strings.HasSuffix(n, "_test.rego"):
			return !tests
		case strings.HasSuffix(n, ".rego"):
			return false
		case n == "data.json" || n == "data.yaml" || n == "data.yml":
			return false
		}
		return true
	}
}

// loadRego loads modules and data under path. Module names are file paths,
// so compile errors name file:line.
func loadRego(path string, tests bool, caps *ast.Capabilities) (map[string]*ast.Module, storage.Store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, nil, err
	}
	res, err := loader.NewFileLoader().
		WithRegoVersion(ast.RegoV1).
		WithCapabilities(caps).
		WithProcessAnnotation(true).
		Filtered([]string{path}, regoFilter(tests))
	if err != nil {
		return nil, nil, err
	}
	return res.ParsedModules(), inmem.NewFromObjectWithOpts(res.Documents, inmem.OptReturnASTValuesOnRead(true)), nil
}

// regoEngine evaluates one prepared query per stage call: the query of
// the input's stage, which asks only for the results some rule can define
// at that stage. A stage no rule can decide costs no evaluation at all.
type regoEngine struct {
	// stages holds the query of each stage; a nil query means no deny,
	// defer, warn or actions rule applies at that stage.
	stages map[Stage]*stageQuery
	// all asks for every result; it serves an input of another stage.
	all *stageQuery
	// shape is the part of the input the modules refer to; shapes, per
	// stage, the part the rules that can apply at that stage refer to.
	shape  *inputShape
	shapes map[Stage]*inputShape
	// compiler holds the compiled modules every query shares.
	compiler *ast.Compiler
	// store, txn and cache are what every evaluation reads data from: one
	// read transaction on the engine's store, opened at load. The store
	// is never written after load (a reload or a bundle activation builds
	// a new store and a new engine), so the transaction never goes stale
	// and the read lock it holds blocks no writer; it goes away with the
	// engine. The documents read from the store are cached for every
	// evaluation too (storeCache), for the same reason.
	store storage.Store
	txn   storage.Transaction
	cache *storeCache
	// never is the Cancel of every evaluation whose ctx cannot be
	// cancelled: it is never cancelled, and only read. meta is the request
	// metadata of every evaluation: only custom built-ins (there are none)
	// and external data trees read it, nothing writes it, and topdown
	// allocates a new empty map per evaluation otherwise.
	never topdown.Cancel
	meta  map[string]any
}

// stageQuery is one query compiled at load and evaluated by OPA's own
// evaluator (topdown) on every call: what rego.PreparedEvalQuery.Eval
// builds around topdown per call (an evaluation context, a result set
// with a bindings map and one value per expression, JSON for every
// binding) is left out; the bindings are read straight from topdown's
// result. The query compiler is OPA's, with rego's settings (no strict
// mode on the query, print statements as the module compiler left them).
type stageQuery struct {
	body ast.Body
	qc   ast.QueryCompiler
	// vars maps each result variable of the query (deny, dfr, warn,
	// actions) to the variable the query compiler rewrote it to.
	vars map[string]ast.Var
}

// compileStageQuery compiles query against compiler, as rego does for a
// prepared query.
func compileStageQuery(compiler *ast.Compiler, query string) (*stageQuery, error) {
	body, err := ast.ParseBodyWithOpts(query, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return nil, err
	}
	qc := compiler.QueryCompiler().WithContext(ast.NewQueryContext()).WithStrict(false)
	compiled, err := qc.Compile(body)
	if err != nil {
		return nil, err
	}
	sq := &stageQuery{body: compiled, qc: qc, vars: map[string]ast.Var{}}
	for rw, orig := range qc.RewrittenVars() {
		sq.vars[string(orig)] = rw
	}
	for _, name := range resultNames {
		if _, ok := sq.vars[name]; !ok {
			sq.vars[name] = ast.Var(name)
		}
	}
	return sq, nil
}

// inputShape returns the shape of the input the query of stage reads.
func (e *regoEngine) inputShape(stage Stage) *inputShape {
	if s, ok := e.shapes[stage]; ok {
		return s
	}
	return e.shape
}

// query returns the prepared query for stage, nil when nothing can be
// decided there.
func (e *regoEngine) query(stage Stage) *stageQuery {
	if pq, ok := e.stages[stage]; ok {
		return pq
	}
	return e.all
}

// newRegoEngine compiles the modules under s.path and prepares the single
// query that returns deny, defer, warn and actions of package s.pkg.
func newRegoEngine(ctx context.Context, s engineSpec) (*regoEngine, error) {
	mods, store, err := loadRego(s.path, false, capabilities(s.allowIO))
	if err != nil {
		return nil, fmt.Errorf("policy: %s: load: %w", s.id(), err)
	}
	return prepareRego(ctx, s, mods, store)
}

// prepareRego compiles mods (keyed by file name) with the data in store
// and prepares the engine's query. It is shared by path and bundle engines.
func prepareRego(ctx context.Context, s engineSpec, mods map[string]*ast.Module, store storage.Store) (*regoEngine, error) {
	caps := capabilities(s.allowIO)
	if len(mods) == 0 {
		where := s.path
		if s.bundle != nil {
			where = "the bundle"
		}
		return nil, fmt.Errorf("policy: %s: no .rego modules in %s", s.id(), where)
	}
	pkgRef := "data." + s.pkg
	found := false
	names := make([]string, 0, len(mods))
	// kinds records, per result name, whether every rule defining it is a
	// partial set rule (always defined, possibly empty): those are queried
	// directly, the others through a comprehension that turns undefined
	// into empty. Names no rule defines are left out of the query.
	kinds := map[string]bool{}
	// stages records, per result name, the stages its rules can define
	// it at (see ruleStage); allStages when one rule is not bound to a
	// stage.
	stages := map[string]map[Stage]bool{}
	for n, m := range mods {
		names = append(names, n)
		if m.Package.Path.String() != pkgRef {
			continue
		}
		found = true
		for _, r := range m.Rules {
			name := r.Head.Ref().String()
			if _, ok := resultNames[name]; !ok {
				continue
			}
			multi := r.Head.RuleKind() == ast.MultiValue && len(r.Head.Ref()) == 1
			if prev, seen := kinds[name]; seen {
				multi = multi && prev
			}
			kinds[name] = multi
			if stages[name] == nil {
				stages[name] = map[Stage]bool{}
			}
			stages[name][ruleStage(r)] = true
		}
	}
	if !found {
		return nil, fmt.Errorf("policy: %s: no module declares package %s", s.id(), s.pkg)
	}
	sort.Strings(names)
	base := []func(*rego.Rego){
		rego.Store(store),
		rego.Capabilities(caps),
		rego.StrictBuiltinErrors(true),
		rego.SetRegoVersion(ast.RegoV1),
	}
	// A prepared query compiles the modules (OPA's checks, capabilities
	// and strict built-in errors as configured); every stage query is
	// compiled against that one compiler, so a policy is compiled once.
	var compiler *ast.Compiler
	opts := append(base, rego.Query("true"), rego.CompilerHook(func(c *ast.Compiler) { compiler = c }))
	for _, n := range names {
		opts = append(opts, rego.ParsedModule(mods[n]))
	}
	if _, err := rego.New(opts...).PrepareForEval(ctx); err != nil {
		return nil, fmt.Errorf("policy: %s: compile: %w", s.id(), err)
	}
	all, err := compileStageQuery(compiler, resultQuery(pkgRef, kinds))
	if err != nil {
		return nil, fmt.Errorf("policy: %s: compile: %w", s.id(), err)
	}
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: %s: store: %w", s.id(), err)
	}
	e := &regoEngine{all: all, stages: map[Stage]*stageQuery{}, shape: regoInputShape(compiler, allStages), shapes: map[Stage]*inputShape{},
		compiler: compiler, store: store, txn: txn, cache: &storeCache{}, never: topdown.NewCancel(), meta: map[string]any{}}
	for _, st := range []Stage{StageMail, StageRcpt, StageData} {
		e.shapes[st] = regoInputShape(compiler, st)
		sk := map[string]bool{}
		for name, multi := range kinds {
			if stages[name][allStages] || stages[name][st] {
				sk[name] = multi
			}
		}
		if len(sk) == 0 {
			e.stages[st] = nil
			continue
		}
		sq, err := compileStageQuery(compiler, resultQuery(pkgRef, sk))
		if err != nil {
			return nil, fmt.Errorf("policy: %s: compile stage %s: %w", s.id(), st, err)
		}
		e.stages[st] = sq
	}
	return e, nil
}

// allStages marks a rule not bound to one stage.
const allStages Stage = ""

// inputStage is the reference a stage guard tests.
var inputStage = ast.MustParseRef("input.stage")

// ruleStage returns the one stage r can be defined at, or allStages. A rule
// is bound to stage S when a conjunct of its body (not negated, without
// with) is input.stage == "S" (or =, either side): at any other stage that
// conjunct fails, so the rule defines nothing, and OPA's rule index skips
// it without evaluating its body. Default rules and rules with an else
// branch are never bound.
func ruleStage(r *ast.Rule) Stage {
	if r.Default || r.Else != nil {
		return allStages
	}
	for _, x := range r.Body {
		if x.Negated || len(x.With) > 0 || !x.IsCall() || len(x.Operands()) != 2 {
			continue
		}
		if op := x.Operator(); !op.Equal(ast.Equal.Ref()) && !op.Equal(ast.Equality.Ref()) {
			continue
		}
		a, b := x.Operand(0), x.Operand(1)
		if _, ok := a.Value.(ast.Ref); !ok {
			a, b = b, a
		}
		ref, ok := a.Value.(ast.Ref)
		str, isStr := b.Value.(ast.String)
		if ok && isStr && ref.Equal(inputStage) {
			return Stage(str)
		}
	}
	return allStages
}

// resultNames maps the rule names of the convention to query variables.
var resultNames = map[string]string{"deny": "deny", "defer": "dfr", "warn": "warn", "actions": "actions"}

// resultQuery builds the one query evaluated per stage call.
func resultQuery(pkgRef string, kinds map[string]bool) string {
	var parts []string
	for _, name := range []string{"deny", "defer", "warn"} {
		multi, ok := kinds[name]
		switch {
		case !ok:
		case multi:
			parts = append(parts, fmt.Sprintf("%s := %s[%q]", resultNames[name], pkgRef, name))
		default:
			parts = append(parts, fmt.Sprintf("%s := [x | some x in %s[%q]]", resultNames[name], pkgRef, name))
		}
	}
	if _, ok := kinds["actions"]; ok {
		parts = append(parts, fmt.Sprintf("actions := [x | x := %s.actions]", pkgRef))
	}
	if len(parts) == 0 {
		return "true"
	}
	return strings.Join(parts, "; ")
}

// evalTimeKey carries, in a replay's context, the time the replayed
// decision was made: time.now_ns and the other time built-ins see it, so a
// replay decides as the original evaluation did. A context value because
// it belongs to one evaluation, not to the engine, and replay is its only
// setter (withEvalTime, unexported).
type evalTimeKey struct{}

func withEvalTime(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, evalTimeKey{}, t)
}

// noMetrics is shared by every evaluation: nothing reads OPA's metrics, and
// a fresh metrics set per evaluation costs allocations and a lock per timer.
var noMetrics = metrics.NoOp()

func (e *regoEngine) eval(ctx context.Context, doc *document) (engineResult, error) {
	// A stage no rule is bound to is not evaluated. ctx cancels the
	// evaluation through topdown's Cancel: context.AfterFunc costs nothing
	// when ctx cannot be cancelled, and nothing more than a registration
	// when it can (rego starts a goroutine per evaluation to watch ctx).
	pq := e.query(doc.in.Stage)
	if pq == nil {
		return engineResult{}, nil
	}
	cancel := e.never
	if ctx.Done() != nil {
		cancel = topdown.NewCancel()
		stop := context.AfterFunc(ctx, cancel.Cancel)
		defer stop()
	}
	// The virtual document cache is OPA's contract with nodes reused
	// from one evaluation to the next (evalcache.go).
	vc := getEvalCache()
	defer putEvalCache(vc)
	q := topdown.NewQuery(pq.body).
		WithQueryCompiler(pq.qc).
		WithCompiler(e.compiler).
		WithStore(e.store).
		WithTransaction(e.txn).
		WithMetrics(noMetrics).
		WithStrictBuiltinErrors(true).
		WithBaseCache(e.cache).
		WithVirtualCache(vc).
		WithInput(ast.NewTerm(doc.ast(e.inputShape(doc.in.Stage)))).
		WithCancel(cancel).
		WithRequestMetadata(e.meta)
	if t, ok := ctx.Value(evalTimeKey{}).(time.Time); ok {
		q = q.WithTime(t)
	}
	// One variable captured by the callback: one allocation, not two.
	var got struct {
		b topdown.QueryResult
		n int
	}
	err := q.Iter(ctx, func(r topdown.QueryResult) error {
		got.n++
		got.b = r
		return nil
	})
	if err != nil {
		return engineResult{}, err
	}
	if got.n != 1 {
		return engineResult{}, fmt.Errorf("%w: query returned %d results", ErrInvalidResult, got.n)
	}
	b := got.b
	binding := func(name string) ([]any, error) {
		t, ok := b[pq.vars[name]]
		if !ok {
			return nil, nil
		}
		v, err := resultJSON(t)
		return asList(v), err
	}
	var res engineResult
	xs, err := binding("deny")
	if err != nil {
		return engineResult{}, err
	}
	for _, x := range xs {
		v, err := regoVerdict("deny", x, '5', defaultRejectCode, defaultRejectEnh)
		if err != nil {
			return engineResult{}, err
		}
		if res.reject == nil {
			res.reject = &v
		}
	}
	xs, err = binding("dfr")
	if err != nil {
		return engineResult{}, err
	}
	for _, x := range xs {
		v, err := regoVerdict("defer", x, '4', defaultDeferCode, defaultDeferEnh)
		if err != nil {
			return engineResult{}, err
		}
		if res.deferral == nil {
			res.deferral = &v
		}
	}
	xs, err = binding("warn")
	if err != nil {
		return engineResult{}, err
	}
	for _, x := range xs {
		v, err := regoVerdict("warn", x, 0, 0, "")
		if err != nil {
			return engineResult{}, err
		}
		res.warnings = append(res.warnings, Warning{Rule: v.rule, Message: v.message})
	}
	acts, err := binding("actions")
	if err != nil {
		return engineResult{}, err
	}
	if len(acts) == 1 {
		a, err := regoActions(acts[0])
		if err != nil {
			return engineResult{}, err
		}
		res.actions = a
	}
	return res, nil
}

// resultJSON converts a query binding as OPA's default does (ast.JSON with
// no sorting or copying asked for), except that an
// empty set or array becomes nil, which asList reads as empty too: most
// evaluations accept, and OPA's conversion allocates for every empty result.
func resultJSON(t *ast.Term) (any, error) {
	switch v := t.Value.(type) {
	case ast.Set:
		if v.Len() == 0 {
			return nil, nil
		}
	case *ast.Array:
		if v.Len() == 0 {
			return nil, nil
		}
	}
	return ast.JSON(t.Value)
}

// asList returns the members of a set or array result (sets come back as
// []any in OPA's canonical, sorted order).
func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// regoVerdict decodes one member of deny, defer or warn: a string message
// or an object {msg, code, enhanced_code, id}. class 0 means warn (codes
// ignored).
func regoVerdict(set string, x any, class byte, code int, enh string) (verdict, error) {
	v := verdict{code: code, enh: enh}
	switch t := x.(type) {
	case string:
		v.message = t
	case map[string]any:
		for k, val := range t {
			switch k {
			case "msg":
				s, ok := val.(string)
				if !ok {
					return v, fmt.Errorf("%w: %s: msg is not a string", ErrInvalidResult, set)
				}
				v.message = s
			case "code":
				n, ok := val.(json.Number)
				i, err := n.Int64()
				if !ok || err != nil {
					return v, fmt.Errorf("%w: %s: code is not an integer", ErrInvalidResult, set)
				}
				v.code = int(i)
			case "enhanced_code":
				s, ok := val.(string)
				if !ok {
					return v, fmt.Errorf("%w: %s: enhanced_code is not a string", ErrInvalidResult, set)
				}
				v.enh = s
			case "id":
				s, ok := val.(string)
				if !ok {
					return v, fmt.Errorf("%w: %s: id is not a string", ErrInvalidResult, set)
				}
				v.rule = s
			}
		}
	default:
		return v, fmt.Errorf("%w: %s member is %T, want string or object", ErrInvalidResult, set, x)
	}
	if v.rule == "" {
		m := v.message
		if len(m) > 60 {
			cut := 60
			for cut > 0 && !utf8.RuneStart(m[cut]) {
				cut--
			}
			m = m[:cut] + "…"
		}
		v.rule = set + "[" + m + "]"
	}
	if class != 0 {
		if err := checkReply(class, v.code, v.enh); err != nil {
			return v, fmt.Errorf("%s %s: %w", set, v.rule, err)
		}
	}
	return v, nil
}

// regoActions decodes the actions object.
func regoActions(x any) (Actions, error) {
	var a Actions
	obj, ok := x.(map[string]any)
	if !ok {
		return a, fmt.Errorf("%w: actions is %T, want object", ErrInvalidResult, x)
	}
	str := func(k string, v any) (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%w: actions.%s is not a string", ErrInvalidResult, k)
		}
		return s, nil
	}
	var err error
	for k, v := range obj {
		switch k {
		case "add_headers":
			switch hs := v.(type) {
			case map[string]any:
				names := make([]string, 0, len(hs))
				for n := range hs {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					s, err := str("add_headers."+n, hs[n])
					if err != nil {
						return a, err
					}
					a.AddHeaders = append(a.AddHeaders, Header{Name: n, Value: s})
				}
			case []any:
				for _, h := range hs {
					o, ok := h.(map[string]any)
					if !ok {
						return a, fmt.Errorf("%w: actions.add_headers item is not an object", ErrInvalidResult)
					}
					n, err1 := str("add_headers.name", o["name"])
					val, err2 := str("add_headers.value", o["value"])
					if err1 != nil || err2 != nil {
						return a, fmt.Errorf("%w: actions.add_headers item needs string name and value", ErrInvalidResult)
					}
					a.AddHeaders = append(a.AddHeaders, Header{Name: n, Value: val})
				}
			default:
				return a, fmt.Errorf("%w: actions.add_headers is %T", ErrInvalidResult, v)
			}
		case "remove_headers":
			l, ok := v.([]any)
			if !ok {
				return a, fmt.Errorf("%w: actions.remove_headers is not a list", ErrInvalidResult)
			}
			for _, x := range l {
				s, err := str("remove_headers", x)
				if err != nil {
					return a, err
				}
				a.RemoveHeaders = append(a.RemoveHeaders, s)
			}
		case "dkim_domain":
			if a.DKIMDomain, err = str(k, v); err != nil {
				return a, err
			}
		case "upstream":
			if a.Upstream, err = str(k, v); err != nil {
				return a, err
			}
		default:
			return a, fmt.Errorf("%w: unknown action %q", ErrInvalidResult, k)
		}
	}
	return a, checkActions(a)
}

// regoFiles lists the files an engine at path depends on, for Watch.
func regoFiles(path string) []string {
	return walkFiles(path, func(n string) bool {
		return strings.HasSuffix(n, ".rego") && !strings.HasSuffix(n, "_test.rego") ||
			n == "data.json" || n == "data.yaml" || n == "data.yml"
	})
}

// walkFiles lists the regular files under path (or path itself) whose base
// name passes keep, skipping hidden directories.
func walkFiles(path string, keep func(string) bool) []string {
	var out []string
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if p != path && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if p == path || keep(d.Name()) {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}
