// Package bench holds the load benchmark script run.sh (see README.md).
// The Go test here only keeps the script from rotting: it checks its
// syntax always, and runs a tiny benchmark when MAILGATE_BENCH_SMOKE=1.
package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// TestScriptSyntax runs bash -n on run.sh.
func TestScriptSyntax(t *testing.T) {
	bash := peertest.Path(t, "bash")
	out, err := exec.Command(bash, "-n", "run.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("bash -n run.sh: %v\n%s", err, out)
	}
}

// TestScriptRejectsBadFlags checks the flag parser refuses what it does
// not know before it builds or starts anything.
func TestScriptRejectsBadFlags(t *testing.T) {
	bash := peertest.Path(t, "bash")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown_flag", []string{"-bogus"}, "unknown flag -bogus"},
		{"unknown_scenario", []string{"-scenarios", "ceiling,nope"}, "unknown scenario nope"},
		{"bad_mode", []string{"-mode", "sometimes"}, "-mode must be"},
		{"zero_messages", []string{"-n", "0"}, "-n must be a positive integer"},
		{"negative_pool", []string{"-pool", "-1"}, "-pool must be"},
		{"missing_baseline", []string{"-baseline", "/nonexistent/mailgate"}, "-baseline /nonexistent/mailgate: not a source tree"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(bash, append([]string{"run.sh"}, tc.args...)...).CombinedOutput()
			if err == nil {
				t.Fatalf("run.sh %v succeeded:\n%s", tc.args, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("run.sh %v: want %q in:\n%s", tc.args, tc.want, out)
			}
		})
	}
}

// TestSmoke runs the benchmark for real on 200 messages, ceiling and plain
// relay only, when MAILGATE_BENCH_SMOKE=1. It needs smtp-source,
// smtp-sink and dkimpy (run.sh installs them with apt-get as root).
func TestSmoke(t *testing.T) {
	if os.Getenv("MAILGATE_BENCH_SMOKE") != "1" {
		t.Skip("SKIP: run.sh is a benchmark, not a CI test; set MAILGATE_BENCH_SMOKE=1 to run a 200-message smoke run")
	}
	bash := peertest.Path(t, "bash")
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "run.sh", "-quick", "-n", "200", "-reps", "1",
		"-scenarios", "ceiling,plain,policy-nodkim", "-out", out)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		t.Fatalf("run.sh: %v\n%s", err, buf.String())
	}
	table, err := os.ReadFile(filepath.Join(out, "table.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"machine: ", "ceiling: smtp-source → smtp-sink", "mailgate plain relay",
		"one message per connection", "many messages per connection",
		"mailgate plain relay + Rego/HCL policy (no DKIM)", "the example policies' share"} {
		if !bytes.Contains(table, []byte(want)) {
			t.Errorf("table.md lacks %q:\n%s", want, table)
		}
	}
	f, err := os.Open(filepath.Join(out, "raw.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// header + 3 scenarios x 2 modes
	if len(rows) != 7 {
		t.Fatalf("raw.csv has %d rows, want 7:\n%v", len(rows), rows)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	for _, name := range []string{"scenario", "sink_count", "verified", "cpu_s_per_1k"} {
		if _, ok := col[name]; !ok {
			t.Fatalf("raw.csv has no column %q: %v", name, rows[0])
		}
	}
	for _, r := range rows[1:] {
		if r[col["sink_count"]] != "200" || r[col["verified"]] != "ok" {
			t.Errorf("run %v: sink_count %s, verified %q", r[:3], r[col["sink_count"]], r[col["verified"]])
		}
		if r[col["scenario"]] != "ceiling" && r[col["cpu_s_per_1k"]] == "" {
			t.Errorf("run %v: no CPU figure for mailgate", r[:3])
		}
	}
}
