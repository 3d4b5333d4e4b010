package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// The differential test proves the fast evaluation path (per-stage Rego
// queries, the input built once per Evaluate, the rewritten example policy,
// the HCL evaluation context) decides exactly as the slow, obvious path:
// the example policies as first written (testdata/reference), the Rego one
// evaluated whole through the public OPA API with the input decoded from
// its JSON form on every call, and the HCL rules evaluated as written
// (compileRules without its fast path: no folding, equality operations,
// conjuncts or null tests) with every variable decoded whole from the
// same JSON.

// diffInputs is how many generated inputs each configuration decides.
const diffInputs = 10000

// refEngine is one engine of the reference path.
type refEngine struct {
	spec engineSpec
	pq   *rego.PreparedEvalQuery // rego
	hcl  *rulesEngine            // rules
	hits map[string]int          // rule → times it matched
}

// refRegoQuery asks for every result of the convention; actions through a
// comprehension because it is a complete rule, undefined at most stages.
const refRegoQuery = `deny := data.mailgate.deny; dfr := data.mailgate.defer; warn := data.mailgate.warn; actions := [x | x := data.mailgate.actions]`

func newRefEngine(t *testing.T, s engineSpec) *refEngine {
	t.Helper()
	r := &refEngine{spec: s, hits: map[string]int{}}
	if s.kind == "rules" {
		var err error
		if r.hcl, err = compileRules([]string{filepath.Join("testdata", "reference", "rules.hcl")}, false); err != nil {
			t.Fatal(err)
		}
		return r
	}
	src, err := os.ReadFile(filepath.Join("testdata", "reference", "mailgate.rego"))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := ast.ParseModuleWithOpts("reference/mailgate.rego", string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "reference", "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	pq, err := rego.New(rego.Query(refRegoQuery), rego.ParsedModule(mod), rego.Store(inmem.NewFromObject(data)),
		rego.StrictBuiltinErrors(true), rego.SetRegoVersion(ast.RegoV1)).PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.pq = &pq
	return r
}

// inputJSON is the JSON form of a normalized input, decoded generically.
func inputJSON(t *testing.T, in *Input) map[string]any {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (r *refEngine) eval(t *testing.T, in *Input) (engineResult, error) {
	t.Helper()
	if r.hcl != nil {
		return r.evalRules(t, in)
	}
	rs, err := r.pq.Eval(context.Background(), rego.EvalInput(inputJSON(t, in)))
	if err != nil {
		return engineResult{}, err
	}
	if len(rs) != 1 {
		return engineResult{}, fmt.Errorf("reference: %d results", len(rs))
	}
	b := rs[0].Bindings
	var res engineResult
	for _, set := range []struct {
		key, name string
		class     byte
		code      int
		enh       string
	}{{"deny", "deny", '5', defaultRejectCode, defaultRejectEnh}, {"dfr", "defer", '4', defaultDeferCode, defaultDeferEnh}, {"warn", "warn", 0, 0, ""}} {
		for _, x := range asList(b[set.key]) {
			v, err := regoVerdict(set.name, x, set.class, set.code, set.enh)
			if err != nil {
				return engineResult{}, err
			}
			r.hits[v.rule]++
			switch {
			case set.name == "deny" && res.reject == nil:
				res.reject = &v
			case set.name == "defer" && res.deferral == nil:
				res.deferral = &v
			case set.name == "warn":
				res.warnings = append(res.warnings, Warning{Rule: v.rule, Message: v.message})
			}
		}
	}
	if acts := asList(b["actions"]); len(acts) == 1 {
		r.hits["actions"]++
		if res.actions, err = regoActions(acts[0]); err != nil {
			return engineResult{}, err
		}
	}
	return res, nil
}

// evalRules evaluates the rules of the input's stage with every variable
// decoded from the input's JSON form into its schema type.
func (r *refEngine) evalRules(t *testing.T, in *Input) (engineResult, error) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	vars := map[string]cty.Value{}
	for name, typ := range schemaTypes {
		raw, ok := fields[name]
		if !ok || string(raw) == "null" {
			vars[name] = cty.NullVal(typ)
			continue
		}
		if vars[name], err = ctyjson.Unmarshal(raw, typ); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	res, err := r.hcl.run(in.Stage, &hcl.EvalContext{Variables: vars, Functions: ruleFunctions})
	if err == nil {
		for _, w := range res.warnings {
			r.hits[w.Rule]++
		}
		for _, v := range []*verdict{res.reject, res.deferral} {
			if v != nil {
				r.hits[v.rule]++
			}
		}
		if res.acceptRule != "" {
			r.hits[res.acceptRule]++
		}
	}
	return res, err
}

// refDecide combines the reference engines as documented on Evaluate: the
// first enforced reject wins and ends the chain, an enforced engine error
// fails closed, then the first enforced defer, then a dry-run reject or
// defer (DryRun set), else accept.
func refDecide(t *testing.T, engines []*refEngine, in Input) Decision {
	t.Helper()
	in = in.Normalize()
	var warnings []Warning
	var acts Actions
	var firstDefer, dryRefusal *Decision
	finish := func(d Decision) Decision {
		if d.Outcome == Accept || d.DryRun {
			d.Actions = acts
		}
		d.Warnings = warnings
		return d
	}
	for _, e := range engines {
		name := e.spec.id()
		dry := e.spec.mode == ModeDryRun
		res, err := e.eval(t, &in)
		if err != nil {
			if dry || e.spec.onError == OnErrorAccept {
				continue
			}
			return finish(Decision{Outcome: Defer, Code: 451, EnhancedCode: "4.3.0", Message: errorDeferMsg, Engine: name})
		}
		for _, w := range res.warnings {
			w.Engine = name
			warnings = append(warnings, w)
		}
		var d *Decision
		if v := res.reject; v != nil {
			d = &Decision{Outcome: Reject, Code: v.code, EnhancedCode: v.enh, Message: sanitizeMessage(v.message, RejectMessage), Engine: name, Rule: v.rule}
		} else if v := res.deferral; v != nil {
			d = &Decision{Outcome: Defer, Code: v.code, EnhancedCode: v.enh, Message: sanitizeMessage(v.message, DeferMessage), Engine: name, Rule: v.rule}
		}
		if dry {
			if d != nil {
				warnings = append(warnings, Warning{Engine: name, Rule: d.Rule,
					Message: fmt.Sprintf("dry-run: would %s (%d %s %s)", d.Outcome, d.Code, d.EnhancedCode, d.Message)})
				if dryRefusal == nil || dryRefusal.Outcome == Defer && d.Outcome == Reject {
					dryRefusal = d
				}
			}
			continue
		}
		acts.Merge(res.actions)
		if d != nil && d.Outcome == Reject {
			return finish(*d)
		}
		if d != nil && firstDefer == nil {
			firstDefer = d
		}
	}
	switch {
	case firstDefer != nil:
		return finish(*firstDefer)
	case dryRefusal != nil:
		d := *dryRefusal
		d.DryRun = true
		return finish(d)
	}
	return finish(Decision{Outcome: Accept})
}

// exampleListeners are the listener names of the example configurations.
func exampleListeners(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("..", "examples", "*.hcl"))
	more, _ := filepath.Glob(filepath.Join("..", "examples", "*", "*.hcl"))
	re := regexp.MustCompile(`(?m)^listener\s+"([^"]+)"`)
	seen := map[string]bool{}
	for _, f := range append(files, more...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			seen[string(m[1])] = true
		}
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) < 3 {
		t.Fatalf("found listeners %v in the example configurations; want submission, submissions and relay at least", out)
	}
	return out
}

// inputGen generates inputs that reach every rule of the examples: users
// and domains of the example data, case variants, non-ASCII and odd
// addresses, headers, 0..N recipients, quota states.
type inputGen struct {
	r         *rand.Rand
	listeners []string
}

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

func (g *inputGen) local() string {
	return pick(g.r, "alice", "bob", "news", "billing", "carol", "sales", "support", "monitor", "ceo", "Alice", "ALICE",
		"NEWS", "ünïcödé", "名前", "a.b+tag", `"quoted local"`, "x", "")
}

func (g *inputGen) domain() string {
	return pick(g.r, "example.com", "Example.COM", "example.org", "example.net", "EXAMPLE.NET", "partner.example",
		"broken.example", "BROKEN.example", "xn--bcher-kva.example", "bücher.example", "sub.example.com",
		"notexample.com", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]", "example.com.", "", "a@b.example")
}

func (g *inputGen) addr() string {
	switch g.r.IntN(20) {
	case 0:
		return ""
	case 1:
		return g.local() // no domain at all
	case 2:
		return "<" + g.local() + "@" + g.domain() + ">"
	}
	return g.local() + "@" + g.domain()
}

func (g *inputGen) addrs(max int) []string {
	n := g.r.IntN(max + 1)
	if n == 0 && g.r.IntN(2) == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = g.addr()
	}
	return out
}

func (g *inputGen) windows() []QuotaWindow {
	var ws []QuotaWindow
	for range g.r.IntN(3) {
		limit := int64(pick(g.r, 0, 1, 5, 10, 100, 200))
		used := g.r.Int64N(limit + 3)
		ws = append(ws, QuotaWindow{Window: fmt.Sprintf("%d/1h", limit), Limit: limit, Used: used, Remaining: max(limit-used, 0)})
	}
	return ws
}

func (g *inputGen) input() Input {
	r := g.r
	in := Input{
		Stage: pick(r, StageMail, StageRcpt, StageData),
		Session: Session{
			ID:       fmt.Sprintf("s%d", r.IntN(1000)),
			Listener: pick(r, g.listeners...),
			ClientIP: pick(r, "192.0.2.1", "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "2001:db8::5", "10.1.2.3", "garbage", ""),
			HELO:     pick(r, "client.example", "[192.0.2.1]", "192.0.2.1", "1.2.3.4]", "ünï.example", "", "[IPv6:::1]"),
		},
		Envelope: Envelope{From: g.addr(), Recipients: g.addrs(3), Size: r.Int64N(50000), SMTPUTF8: r.IntN(2) == 0},
	}
	if r.IntN(10) == 0 {
		in.Envelope.Recipients = g.addrs(130) // past the group limits
	}
	if r.IntN(3) != 0 {
		in.Session.TLS = &TLS{Version: pick(r, "TLS1.2", "TLS1.3"), Cipher: "TLS_AES_128_GCM_SHA256"}
	}
	if r.IntN(10) < 7 {
		in.Auth = &Auth{User: g.addr(), Mechanism: pick(r, "PLAIN", "LOGIN")}
		if r.IntN(2) == 0 {
			// A known user sending as themselves: mostly accepted by the
			// Rego policy, so the engines after it decide too.
			in.Auth.User = pick(r, "alice@example.com", "bob@example.com", "news@example.com", "billing@example.com", "Alice@Example.COM")
			in.Envelope.From = pick(r, in.Auth.User, "sales@example.com", "x@example.net", "support@example.org")
		}
	}
	if r.IntN(5) == 0 {
		in.Session.ClientIP, in.Envelope.From, in.Auth = "127.0.0.1", "monitor@example.com", nil
	}
	if r.IntN(8) == 0 {
		in.Envelope.FromDomain = g.domain() // a caller-supplied domain, lower-cased by Normalize
	}
	if r.IntN(4) == 0 {
		in.Quota = map[string]QuotaState{}
		for i := range 1 + r.IntN(2) {
			in.Quota[fmt.Sprintf("q%d", i)] = QuotaState{Key: g.addr(), Action: pick(r, "defer", "reject", "warn"),
				Exceeded: r.IntN(4) == 0, Messages: g.windows(), Recipients: g.windows()}
		}
	}
	switch in.Stage {
	case StageRcpt:
		in.Rcpt = &Rcpt{Address: g.addr()}
		if r.IntN(6) == 0 {
			in.Rcpt.Domain = g.domain()
		}
	case StageData:
		in.Envelope.Size = r.Int64N(200000)
		hs := map[string][]string{}
		for _, h := range []string{"from", "to", "subject", "list-unsubscribe", "date", "message-id", "x-ünï"} {
			if r.IntN(2) == 0 {
				hs[h] = g.addrs(2)
			}
		}
		in.Message = &Message{FromAddresses: g.addrs(3), Size: in.Envelope.Size}
		if in.Auth != nil && r.IntN(2) == 0 {
			in.Message.FromAddresses = []string{pick(r, in.Auth.User, in.Envelope.From, "Sales@Example.com")}
		}
		if r.IntN(5) != 0 {
			in.Message.Headers = hs
		}
	}
	return in
}

func TestDifferential_Examples(t *testing.T) {
	example := loadExampleConfig(t)
	// The same engines enforcing in the other order, errors accepted,
	// so the HCL rules decide too.
	reordered := Config{Rules: []RulesConfig{{Name: "local", Path: "rules.hcl", DeclRange: hcl.Range{Filename: "c.hcl"}}},
		Rego: []RegoConfig{{Name: "org", Path: ".", Mode: ModeDryRun, OnError: OnErrorAccept, DeclRange: hcl.Range{Filename: "c.hcl", Start: hcl.Pos{Byte: 1}}}}}
	listeners := exampleListeners(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		n    int
		seed uint64
	}{
		{"example", example, diffInputs, 1},
		{"rules-first", reordered, diffInputs / 4, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg, examplesDir, WithLogger(quietLogger()))
			if err != nil {
				t.Fatal(err)
			}
			specs, err := tc.cfg.specs(examplesDir)
			if err != nil {
				t.Fatal(err)
			}
			var refs []*refEngine
			for _, s := range specs {
				refs = append(refs, newRefEngine(t, s))
			}
			if tc.name == "rules-first" && refs[0].spec.kind != "rules" {
				t.Fatalf("engine order %s, %s: want the rules first", refs[0].spec.id(), refs[1].spec.id())
			}
			g := &inputGen{r: rand.New(rand.NewPCG(tc.seed, 7)), listeners: listeners}
			outcomes := map[string]int{}
			for i := range tc.n {
				in := g.input()
				want := refDecide(t, refs, in)
				got, _ := p.Evaluate(context.Background(), in)
				got.Revision, got.Reservation, got.Quota = "", nil, nil
				if !reflect.DeepEqual(got, want) {
					js, _ := json.Marshal(in)
					t.Fatalf("input %d decided differently\ninput: %s\nfast:      %+v\nreference: %+v", i, js, got, want)
				}
				outcomes[string(in.Stage)+" "+string(want.Outcome)]++
			}
			t.Logf("%d inputs: %v", tc.n, outcomes)
			// The inputs must exercise every rule, or the comparison
			// proves little.
			for _, r := range refs {
				var missing []string
				for _, rule := range exampleRuleIDs(t, r.spec.kind) {
					if r.hits[rule] == 0 {
						missing = append(missing, rule)
					}
				}
				if len(missing) > 0 {
					t.Errorf("%s: rules never matched by the generated inputs: %v (hits %v)", r.spec.id(), missing, r.hits)
				}
			}
		})
	}
}

// exampleRuleIDs lists the rule ids of the example policy of a kind, read
// from its source so a new rule is covered without editing this test.
func exampleRuleIDs(t *testing.T, kind string) []string {
	t.Helper()
	file, re := "rules.hcl", regexp.MustCompile(`(?m)^rule "([^"]+)"`)
	if kind == "rego" {
		file, re = "mailgate.rego", regexp.MustCompile(`"id": "([^"]+)"`)
	}
	b, err := os.ReadFile(filepath.Join(examplesDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range re.FindAllSubmatch(b, -1) {
		ids = append(ids, string(m[1]))
	}
	if kind == "rego" {
		ids = append(ids, "actions")
	}
	slices.Sort(ids)
	if len(ids) < 5 {
		t.Fatalf("found %d rules in %s", len(ids), file)
	}
	return ids
}
