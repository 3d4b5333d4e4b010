package policy

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkStageWithoutRules is the cost of a stage no rule of either
// engine is written for (stage mail, with Rego and HCL rules for data
// only): the policy's own bookkeeping, no engine evaluation.
func BenchmarkStageWithoutRules(b *testing.B) {
	dir := b.TempDir()
	for name, src := range map[string]string{
		"p.rego": "package mailgate\n\ndeny contains \"big\" if {\n\tinput.stage == \"data\"\n\tinput.message.size > 100000000\n}\n",
		"r.hcl":  "rule \"big\" {\n  stage  = \"data\"\n  when   = message.size > 100000000\n  action = \"reject\"\n}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	p, err := New(Config{Rego: []RegoConfig{{Name: "org", Path: "p.rego"}}, Rules: []RulesConfig{{Name: "local", Path: "r.hcl"}}}, dir, WithLogger(quietLogger()))
	if err != nil {
		b.Fatal(err)
	}
	in := benchInputs()["mail"]
	ctx := context.Background()
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if d, err := p.Evaluate(ctx, in); err != nil || d.Outcome != Accept {
			b.Fatalf("%+v %v", d, err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}
