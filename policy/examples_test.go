package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

const examplesDir = "../examples/policies"

// TestExamples_PolicyTests runs every Rego test and HCL fixture of the
// examples through RunTests, so no example can rot.
func TestExamples_PolicyTests(t *testing.T) {
	results, err := RunTests(context.Background(), []string{examplesDir}, TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range results {
		kinds[r.Kind]++
	}
	if kinds["rego"] < 10 || kinds["rules"] < 5 {
		t.Errorf("found %v tests; the examples have at least 10 Rego tests and 5 fixtures", kinds)
	}
	var out bytes.Buffer
	if failed := WriteTestReport(&out, results, false); failed > 0 {
		t.Errorf("%d example tests failed:\n%s", failed, out.String())
	}
}

// loadExampleConfig decodes examples/policies/policy.hcl as the lead's
// config loader would.
func loadExampleConfig(t testing.TB) Config {
	t.Helper()
	var root struct {
		Policy Config `hcl:"policy,block"`
	}
	f, diags := hclparse.NewParser().ParseHCLFile(filepath.Join(examplesDir, "policy.hcl"))
	if !diags.HasErrors() {
		diags = gohcl.DecodeBody(f.Body, nil, &root)
	}
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return root.Policy
}

// TestExamples_Eval evaluates the example inputs with the example config
// and compares the explain output to golden files (go test -update).
func TestExamples_Eval(t *testing.T) {
	p, err := New(loadExampleConfig(t), examplesDir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	inputs, _ := filepath.Glob(filepath.Join(examplesDir, "inputs", "*.json"))
	if len(inputs) == 0 {
		t.Fatal("no example inputs")
	}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".json")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			in, err := ParseInput(data)
			if err != nil {
				t.Fatal(err)
			}
			d, engines, err := p.Explain(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.MarshalIndent(struct {
				Decision Decision       `json:"decision"`
				Engines  []EngineResult `json:"engines"`
			}{d, engines}, "", "  ")
			got = append(got, '\n')
			golden := filepath.Join("testdata", "examples", name+".golden.json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("explain output differs from %s:\n%s", golden, got)
			}
		})
	}
}

// TestExamples_OPA runs the real `opa test` on the Rego examples when the
// opa binary happens to be installed. It is optional by design (not a
// Debian package), so its absence is a skip even in CI.
func TestExamples_OPA(t *testing.T) {
	opa, err := exec.LookPath("opa")
	if err != nil {
		t.Skip("SKIP: opa binary not on PATH; `opa test` cross-check not run (optional, not packaged for Debian)")
	}
	out, err := exec.Command(opa, "test", examplesDir).CombinedOutput()
	if err != nil {
		t.Fatalf("opa test: %v\n%s", err, out)
	}
}

// TestRunTests_ReportsFailures checks the test tool can fail: a false Rego
// test, a fixture with the wrong expectation, and a runtime error.
func TestRunTests_ReportsFailures(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego":      "package mailgate\n\ndeny contains \"no\" if input.envelope.from == \"bad@example.com\"\n",
		"p_test.rego": "package mailgate_test\n\nimport data.mailgate\n\ntest_passes if { count(mailgate.deny) == 1 with input as {\"envelope\": {\"from\": \"bad@example.com\"}} }\n\ntest_fails if { count(mailgate.deny) == 1 with input as {\"envelope\": {\"from\": \"good@example.com\"}} }\n",
		"r.hcl":       "rule \"spoof\" {\n stage = \"mail\"\n when = envelope.from == \"bad@example.com\"\n action = \"reject\"\n}\n",
		"r.test.hcl": `
case "right" {
  input   = { stage = "mail", envelope = { from = "bad@example.com" } }
  outcome = "reject"
  rule    = "spoof"
}
case "wrong outcome" {
  input   = { stage = "mail", envelope = { from = "good@example.com" } }
  outcome = "reject"
}
case "wrong rule" {
  input   = { stage = "mail", envelope = { from = "bad@example.com" } }
  outcome = "reject"
  rule    = "other"
}
case "typo in input is an error" {
  input   = { stage = "mail", envelope = { form = "bad@example.com" } }
  outcome = "accept"
}
`,
	})
	results, err := RunTests(context.Background(), []string{dir}, TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	failed := WriteTestReport(&out, results, false)
	if failed != 4 {
		t.Errorf("failed = %d, want 4\n%s", failed, out.String())
	}
	for _, want := range []string{
		"FAIL rego data.mailgate_test.test_fails",
		"FAIL rules r.test.hcl: wrong outcome",
		"FAIL rules r.test.hcl: wrong rule",
		"FAIL rules r.test.hcl: typo in input is an error",
		"FAIL: 2 passed, 4 failed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "right") || strings.Contains(out.String(), "test_passes") {
		t.Errorf("passing tests printed without verbose:\n%s", out.String())
	}
}
