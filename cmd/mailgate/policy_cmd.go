package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/mailgate/mailgate/policy"
)

const policyUsage = `usage:
  mailgate policy test [-v] [-allow-io] [DIR|FILE ...]
      Run Rego test_ rules (like "opa test") and HCL rule fixtures
      (X.test.hcl next to X.hcl). Default DIR is ".".
      Exit status 1 when a test fails, 2 when tests cannot run.
  mailgate policy eval -config FILE -input FILE.json
      Evaluate one input document (any stage; "-" reads stdin) with the
      policy block of FILE and print the decision and each engine's
      conclusion as JSON. The decision log is not written.
  mailgate policy check -config FILE
      Compile every policy of FILE and report errors.
  mailgate policy replay -config NEW.hcl -log decisions.jsonl [-since T] [-until T]
                         [-limit N] [-format text|json]
      Re-evaluate the decisions of a decision log (plain or .gz; -log repeats
      and takes globs for rotated logs) with the policy block of NEW.hcl and
      print what changed, grouped. Exit status 0 when nothing changed, 1 when
      something did, 2 on error.
  mailgate policy bundle -dir DIR -out FILE [-revision R] [-signing-key KEY]
      Build a (signed) OPA bundle of the policies in DIR for a bundle
      server; see "mailgate policy bundle -h".
`

// policyMain runs "mailgate policy ARGS...". loadPolicyConfig returns the
// policy block of the configuration file at path and the directory that
// relative policy paths resolve against. It returns the exit status.
func policyMain(args []string, stdout, stderr io.Writer, loadPolicyConfig func(path string) (policy.Config, string, error)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	ctx := context.Background()
	switch args[0] {
	case "test":
		return policyTest(ctx, args[1:], stdout, stderr)
	case "eval":
		return policyEval(ctx, args[1:], stdout, stderr, loadPolicyConfig)
	case "check":
		return policyCheck(args[1:], stdout, stderr, loadPolicyConfig)
	case "bundle":
		return policyBundle(ctx, args[1:], stdout, stderr)
	case "replay":
		return policyReplay(ctx, args[1:], stdout, stderr, loadPolicyConfig)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "mailgate policy: unknown command %q\n%s", args[0], policyUsage)
		return 2
	}
}

func policyTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailgate policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "print passing tests too")
	allowIO := fs.Bool("allow-io", false, "allow I/O built-ins (http.send, ...) in Rego tests")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	dirs := fs.Args()
	if len(dirs) == 0 {
		dirs = []string{"."}
	}
	results, err := policy.RunTests(ctx, dirs, policy.TestOptions{AllowIO: *allowIO})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if len(results) == 0 {
		fmt.Fprintln(stderr, "mailgate policy test: no tests found")
		return 2
	}
	if policy.WriteTestReport(stdout, results, *verbose) > 0 {
		return 1
	}
	return 0
}

func loadForTool(name string, args []string, stderr io.Writer, withInput bool, load func(string) (policy.Config, string, error)) (*policy.Policy, string, bool) {
	fs := flag.NewFlagSet("mailgate policy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (required)")
	var inPath *string
	if withInput {
		inPath = fs.String("input", "", "input document, JSON (required; - for stdin)")
	}
	if err := fs.Parse(args); err != nil {
		return nil, "", false
	}
	if *cfgPath == "" || (withInput && *inPath == "") || fs.NArg() > 0 {
		fs.Usage()
		return nil, "", false
	}
	cfg, baseDir, err := load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, "", false
	}
	cfg.DecisionLog = "" // a tool run is not a decision
	p, err := policy.New(cfg, baseDir, policy.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, "", false
	}
	if withInput {
		return p, *inPath, true
	}
	return p, "", true
}

func policyCheck(args []string, stdout, stderr io.Writer, load func(string) (policy.Config, string, error)) int {
	p, _, ok := loadForTool("check", args, stderr, false, load)
	if !ok {
		return 1
	}
	defer p.Close()
	if p.Revisions() != nil && !probeBundles(p, stdout) {
		return 1
	}
	fmt.Fprintln(stdout, "policy OK")
	return 0
}

func policyEval(ctx context.Context, args []string, stdout, stderr io.Writer, load func(string) (policy.Config, string, error)) int {
	p, inPath, ok := loadForTool("eval", args, stderr, true, load)
	if !ok {
		return 2
	}
	defer p.Close()
	if p.Revisions() != nil {
		// Bundle engines: evaluate with what the server has now.
		if err := p.Reload(); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}
	var data []byte
	var err error
	if inPath == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(inPath)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	in, err := policy.ParseInput(data)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	d, engines, evalErr := p.Explain(ctx, in)
	out := struct {
		Decision  policy.Decision       `json:"decision"`
		DecidedBy string                `json:"decided_by"`
		Engines   []policy.EngineResult `json:"engines"`
		Error     string                `json:"error,omitempty"`
	}{Decision: d, DecidedBy: decidedBy(d), Engines: engines}
	if evalErr != nil {
		out.Error = evalErr.Error()
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if errors.Is(evalErr, policy.ErrEngine) {
		return 1
	}
	return 0
}

// decidedBy is the one-line explanation of a decision.
func decidedBy(d policy.Decision) string {
	switch {
	case d.Engine == "":
		return "default accept: no engine objected"
	case d.Rule == "":
		return fmt.Sprintf("%s %s (engine error)", d.Outcome, d.Engine)
	case d.DryRun:
		return fmt.Sprintf("dry-run %s by %s rule %q (not enforced)", d.Outcome, d.Engine, d.Rule)
	default:
		return fmt.Sprintf("%s by %s rule %q", d.Outcome, d.Engine, d.Rule)
	}
}
