package policy

import (
	"testing"
)

// BenchmarkDecisionLog is BenchmarkMessage's three stages with the
// decision log on: ns/op is what a session waits, cpu-ns/op what the
// process spends (the writer goroutine included).
func BenchmarkDecisionLog(b *testing.B) {
	cfg := loadExampleConfig(b)
	cfg.DecisionLog = b.TempDir() + "/decisions.jsonl"
	benchMessageWith(b, cfg)
}

// BenchmarkShadow is BenchmarkMessage with the example chain running as
// its own shadow too: what a shadow adds per message.
func BenchmarkShadow(b *testing.B) {
	cfg := loadExampleConfig(b)
	cfg.Shadow = &ShadowConfig{Rego: cfg.Rego, Rules: cfg.Rules}
	p := benchMessageWith(b, cfg)
	if n := counterValue(b, p, "mailgate_policy_shadow_disagreements_total", nil); n > 0 {
		b.Fatalf("the chain disagrees with itself %v times", n)
	}
}

// benchMessageWith runs BenchmarkMessage's loop on a Policy made from
// cfg, closed when the benchmark ends.
func benchMessageWith(b *testing.B, cfg Config) *Policy {
	p := benchPolicy(b, cfg)
	b.Cleanup(func() { _ = p.Close() })
	ins := benchInputs()
	evalLoop(b, p, []Input{ins["mail"], ins["rcpt"], ins["data"]})
	return p
}
