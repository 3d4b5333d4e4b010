package policy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// policyMetrics are the policy's own Prometheus metrics: the shadow chain's
// disagreements and errors, and the decision log's drops and write
// errors. They are created with the Policy and registered by the caller
// through Collector (the metrics registry is the caller's).
type policyMetrics struct {
	disagreements *prometheus.CounterVec
	shadowErrors  *prometheus.CounterVec
}

func newPolicyMetrics() *policyMetrics {
	return &policyMetrics{
		// Labels are bounded: three stages, three outcomes each.
		disagreements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_policy_shadow_disagreements_total",
			Help: "Decisions where the shadow policy chain disagreed with the enforced one, by stage and each side's enforced outcome (accept, reject, defer).",
		}, []string{"stage", "enforced", "shadow"}),
		shadowErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_policy_shadow_errors_total",
			Help: "Shadow policy evaluations that failed (never enforced), by stage.",
		}, []string{"stage"}),
	}
}

// Collector returns the policy's metrics for the caller's registry:
// mailgate_policy_shadow_disagreements_total{stage,enforced,shadow},
// mailgate_policy_shadow_errors_total{stage},
// mailgate_policy_decision_log_dropped_total and
// mailgate_policy_decision_log_write_errors_total.
func (p *Policy) Collector() prometheus.Collector {
	logCounter := func(name, help string, n func(*decisionLog) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			if p.dlog == nil {
				return 0
			}
			return float64(n(p.dlog))
		})
	}
	cs := []prometheus.Collector{p.metrics.disagreements, p.metrics.shadowErrors,
		logCounter("mailgate_policy_decision_log_dropped_total",
			"Decision log records dropped because the writer's queue was full (the disk did not keep up).",
			func(l *decisionLog) uint64 { return l.dropped.Load() }),
		logCounter("mailgate_policy_decision_log_write_errors_total",
			"Decision log writes, flushes or reopens the file system refused.",
			func(l *decisionLog) uint64 { return l.writeErrs.Load() }),
	}
	return collectors(cs)
}

// collectors is several collectors registered as one.
type collectors []prometheus.Collector

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}
