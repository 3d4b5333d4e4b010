package policy

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// TestResult is the result of one policy test: a Rego test_ rule or one
// case of an HCL rules fixture.
type TestResult struct {
	Kind     string `json:"kind"` // "rego" or "rules"
	Location string `json:"location"`
	Name     string `json:"name"`
	Pass     bool   `json:"pass"`
	Skip     bool   `json:"skip,omitempty"`
	Detail   string `json:"detail,omitempty"` // why it failed
}

// TestOptions tunes RunTests.
type TestOptions struct {
	// AllowIO lets Rego tests use I/O built-ins (http.send, …), as
	// allow_io does for an engine.
	AllowIO bool
}

// RunTests runs the policy tests under each directory (or file):
//
//   - Rego: every test_ rule of the .rego modules (with their data.json /
//     data.yaml), through OPA's tester, as `opa test DIR` would, with the
//     same capabilities as the engine (no I/O built-ins unless AllowIO).
//   - HCL rules: every X.test.hcl fixture runs its case blocks against the
//     rules file X.hcl next to it (see the package documentation of
//     fixtures in DOCS-policy.md).
//
// It returns an error only when tests cannot run at all (a module does
// not compile, a fixture does not parse); failing tests are results.
func RunTests(ctx context.Context, paths []string, opts TestOptions) ([]TestResult, error) {
	var all []TestResult
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("policy: test: %w", err)
		}
		rs, err := runRegoTests(ctx, p, opts)
		if err != nil {
			return nil, err
		}
		all = append(all, rs...)
		fixtures := walkFiles(p, func(n string) bool { return strings.HasSuffix(n, ".test.hcl") })
		for _, f := range fixtures {
			if !strings.HasSuffix(f, ".test.hcl") {
				continue
			}
			rs, err := runRuleFixture(ctx, f)
			if err != nil {
				return nil, err
			}
			all = append(all, rs...)
		}
	}
	return all, nil
}

func runRegoTests(ctx context.Context, path string, opts TestOptions) ([]TestResult, error) {
	hasTests := len(walkFiles(path, func(n string) bool { return strings.HasSuffix(n, "_test.rego") })) > 0
	if !hasTests && !strings.HasSuffix(path, ".rego") {
		return nil, nil
	}
	caps := capabilities(opts.AllowIO)
	mods, store, err := loadRego(path, true, caps)
	if err != nil {
		return nil, fmt.Errorf("policy: test %s: %w", path, err)
	}
	r := tester.NewRunner().
		SetCompiler(ast.NewCompiler().WithCapabilities(caps).WithEnablePrintStatements(true)).
		SetDefaultRegoVersion(ast.RegoV1).
		SetStore(store).
		SetModules(mods).
		RaiseBuiltinErrors(true).
		CapturePrintOutput(true)
	ch, err := r.RunTests(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("policy: test %s: %w", path, err)
	}
	var raw []*tester.Result
	for res := range ch {
		raw = append(raw, res)
	}
	sort.Slice(raw, func(i, j int) bool {
		a, b := raw[i].Location, raw[j].Location
		if a == nil || b == nil {
			return b != nil
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Row < b.Row
	})
	var out []TestResult
	for _, res := range raw {
		tr := TestResult{Kind: "rego", Name: res.Package + "." + res.Name, Pass: res.Pass(), Skip: res.Skip}
		if res.Location != nil {
			tr.Location = fmt.Sprintf("%s:%d", res.Location.File, res.Location.Row)
		}
		switch {
		case res.Error != nil:
			tr.Detail = res.Error.Error()
		case res.Fail && res.FailedAt != nil:
			tr.Detail = fmt.Sprintf("failed at %s: %s", res.FailedAt.Location, res.FailedAt)
		case res.Fail:
			tr.Detail = "test rule is false or undefined"
		}
		if len(res.Output) > 0 && !tr.Pass {
			tr.Detail += "\n" + strings.TrimSpace(string(res.Output))
		}
		out = append(out, tr)
	}
	return out, nil
}

type fixtureFile struct {
	Cases []fixtureCase `hcl:"case,block"`
}

// fixtureCase is one case block of an X.test.hcl file.
type fixtureCase struct {
	Name  string         `hcl:"name,label"`
	Input hcl.Expression `hcl:"input"`
	// Outcome is accept, reject, defer, or error (the engine fails).
	Outcome string `hcl:"outcome"`
	// Rule, when set, is the rule that must have decided (for accept, the
	// accept rule that ended evaluation).
	Rule *string `hcl:"rule,optional"`
	// Message, when set, must be a substring of the reply text.
	Message *string `hcl:"message,optional"`
	// Warnings, when set, lists exactly the rules that must warn.
	Warnings  *[]string `hcl:"warnings,optional"`
	DeclRange hcl.Range `hcl:",def_range"`
}

func runRuleFixture(ctx context.Context, fixture string) ([]TestResult, error) {
	rulesFile := strings.TrimSuffix(fixture, ".test.hcl") + ".hcl"
	eng, err := compileRuleFiles([]string{rulesFile})
	if err != nil {
		return nil, fmt.Errorf("policy: test %s: rules %s: %w", fixture, rulesFile, err)
	}
	p := hclparse.NewParser()
	f, diags := p.ParseHCLFile(fixture)
	var ff fixtureFile
	if !diags.HasErrors() {
		diags = append(diags, gohcl.DecodeBody(f.Body, nil, &ff)...)
	}
	if diags.HasErrors() {
		return nil, fmt.Errorf("policy: test %s: %w", fixture, &DiagnosticsError{Diagnostics: diags, Files: p.Files()})
	}
	var out []TestResult
	for _, c := range ff.Cases {
		tr := TestResult{Kind: "rules", Name: filepath.Base(fixture) + ": " + c.Name,
			Location: fmt.Sprintf("%s:%d", fixture, c.DeclRange.Start.Line)}
		tr.Detail = runCase(ctx, eng, c, p)
		tr.Pass = tr.Detail == ""
		out = append(out, tr)
	}
	return out, nil
}

// runCase returns "" when the case passes, else why it fails.
func runCase(ctx context.Context, eng *rulesEngine, c fixtureCase, p *hclparse.Parser) string {
	v, diags := c.Input.Value(nil)
	if diags.HasErrors() {
		return (&DiagnosticsError{Diagnostics: diags, Files: p.Files()}).Error()
	}
	js, err := ctyjson.Marshal(v, v.Type())
	if err != nil {
		return "input: " + err.Error()
	}
	in, err := ParseInput(js)
	if err != nil {
		return err.Error()
	}
	res, err := eng.eval(ctx, newDocument(in))
	got, rule, msg := Accept, res.acceptRule, ""
	switch {
	case err != nil:
		got, rule, msg = "error", "", err.Error()
	case res.reject != nil:
		got, rule, msg = Reject, res.reject.rule, res.reject.message
	case res.deferral != nil:
		got, rule, msg = Defer, res.deferral.rule, res.deferral.message
	}
	var fails []string
	if string(got) != c.Outcome {
		f := fmt.Sprintf("outcome %s (rule %q), want %s", got, rule, c.Outcome)
		if err != nil {
			f += ": " + err.Error()
		}
		fails = append(fails, f)
	}
	if c.Rule != nil && *c.Rule != rule {
		fails = append(fails, fmt.Sprintf("rule %q, want %q", rule, *c.Rule))
	}
	if c.Message != nil && !strings.Contains(msg, *c.Message) {
		fails = append(fails, fmt.Sprintf("message %q does not contain %q", msg, *c.Message))
	}
	if c.Warnings != nil {
		var gotW []string
		for _, w := range res.warnings {
			gotW = append(gotW, w.Rule)
		}
		if strings.Join(gotW, ",") != strings.Join(*c.Warnings, ",") {
			fails = append(fails, fmt.Sprintf("warnings %q, want %q", gotW, *c.Warnings))
		}
	}
	return strings.Join(fails, "; ")
}

// WriteTestReport prints one line per failing test (every test when
// verbose) and a final summary line "N passed, N failed[, N skipped]". It
// returns the number of failures.
func WriteTestReport(w io.Writer, results []TestResult, verbose bool) int {
	var passed, failed, skipped int
	for _, r := range results {
		switch {
		case r.Skip:
			skipped++
			if verbose {
				fmt.Fprintf(w, "SKIP %s %s (%s)\n", r.Kind, r.Name, r.Location)
			}
		case r.Pass:
			passed++
			if verbose {
				fmt.Fprintf(w, "PASS %s %s (%s)\n", r.Kind, r.Name, r.Location)
			}
		default:
			failed++
			fmt.Fprintf(w, "FAIL %s %s (%s)\n", r.Kind, r.Name, r.Location)
			for _, l := range strings.Split(r.Detail, "\n") {
				fmt.Fprintf(w, "     %s\n", l)
			}
		}
	}
	status := "PASS"
	if failed > 0 {
		status = "FAIL"
	}
	fmt.Fprintf(w, "%s: %d passed, %d failed", status, passed, failed)
	if skipped > 0 {
		fmt.Fprintf(w, ", %d skipped", skipped)
	}
	fmt.Fprintln(w)
	return failed
}
