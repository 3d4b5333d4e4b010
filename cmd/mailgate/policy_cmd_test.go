package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/mailgate/mailgate/policy"
)

// policyTestLoader stands in for the lead's config loading: it decodes the
// policy block of a file and returns the file's directory as base.
func policyTestLoader(path string) (policy.Config, string, error) {
	var root struct {
		Policy policy.Config `hcl:"policy,block"`
	}
	f, diags := hclparse.NewParser().ParseHCLFile(path)
	if !diags.HasErrors() {
		diags = gohcl.DecodeBody(f.Body, nil, &root)
	}
	if diags.HasErrors() {
		return policy.Config{}, "", fmt.Errorf("config: %s", diags.Error())
	}
	return root.Policy, filepath.Dir(path), nil
}

const policyExamplesDir = "../../examples/policies"

func policyRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := policyMain(args, &out, &errb, policyTestLoader)
	return code, out.String(), errb.String()
}

func TestPolicyTest(t *testing.T) {
	t.Run("examples pass", func(t *testing.T) {
		code, out, errs := policyRun(t, "test", policyExamplesDir)
		if code != 0 || !strings.Contains(out, "PASS: ") || !strings.Contains(out, " 0 failed") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
		}
	})
	t.Run("a failing fixture fails the run and is named", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "r.hcl"), []byte("rule \"x\" {\n stage = \"mail\"\n when = true\n action = \"reject\"\n}\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "r.test.hcl"), []byte("case \"expects accept\" {\n input = { stage = \"mail\" }\n outcome = \"accept\"\n}\n"), 0o644)
		code, out, _ := policyRun(t, "test", dir)
		if code != 1 || !strings.Contains(out, "FAIL rules r.test.hcl: expects accept") || !strings.Contains(out, "0 passed, 1 failed") {
			t.Errorf("exit %d, stdout:\n%s", code, out)
		}
	})
	t.Run("no tests is an error", func(t *testing.T) {
		if code, _, _ := policyRun(t, "test", t.TempDir()); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
}

func TestPolicyEval(t *testing.T) {
	cfg := filepath.Join(policyExamplesDir, "policy.hcl")
	tests := []struct {
		input     string
		outcome   policy.Outcome
		decidedBy string
	}{
		{"mail-spoofed.json", policy.Reject, `reject by rego:org rule "envelope-sender-alignment"`},
		{"rcpt-incident.json", policy.Defer, `defer by rego:org rule "incident-deferred-domain"`},
		{"data-bulk.json", policy.Accept, "default accept"},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			code, out, errs := policyRun(t, "eval", "-config", cfg, "-input", filepath.Join(policyExamplesDir, "inputs", tt.input))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			var got struct {
				Decision  policy.Decision       `json:"decision"`
				DecidedBy string                `json:"decided_by"`
				Engines   []policy.EngineResult `json:"engines"`
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if got.Decision.Outcome != tt.outcome || !strings.Contains(got.DecidedBy, tt.decidedBy) || len(got.Engines) != 2 {
				t.Errorf("got %+v (%q), want %s %q", got.Decision, got.DecidedBy, tt.outcome, tt.decidedBy)
			}
		})
	}
	t.Run("missing flags", func(t *testing.T) {
		if code, _, _ := policyRun(t, "eval", "-config", cfg); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
	t.Run("bad input document", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "in.json")
		os.WriteFile(p, []byte(`{"stage": "mail", "envelope": {"form": "x"}}`), 0o644)
		code, _, errs := policyRun(t, "eval", "-config", cfg, "-input", p)
		if code != 2 || !strings.Contains(errs, "form") {
			t.Errorf("exit %d, stderr %q", code, errs)
		}
	})
}

func TestPolicyCheck(t *testing.T) {
	if code, out, errs := policyRun(t, "check", "-config", filepath.Join(policyExamplesDir, "policy.hcl")); code != 0 || !strings.Contains(out, "OK") {
		t.Errorf("exit %d %s %s", code, out, errs)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "r.hcl"), []byte("rule \"x\" {\n stage = \"mail\"\n when = envelope.form == \"\"\n action = \"reject\"\n}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "c.hcl"), []byte("policy {\n rules {\n name = \"r\"\n path = \"r.hcl\"\n }\n}\n"), 0o644)
	code, _, errs := policyRun(t, "check", "-config", filepath.Join(dir, "c.hcl"))
	if code == 0 || !strings.Contains(errs, "envelope.form") || !strings.Contains(errs, "r.hcl line 3") {
		t.Errorf("exit %d, stderr:\n%s", code, errs)
	}
}

func TestPolicyUsage(t *testing.T) {
	if code, _, errs := policyRun(t); code != 2 || !strings.Contains(errs, "usage") {
		t.Errorf("exit %d", code)
	}
	if code, _, _ := policyRun(t, "frobnicate"); code != 2 {
		t.Errorf("exit %d", code)
	}
}
