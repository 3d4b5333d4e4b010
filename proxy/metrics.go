package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus metrics. A nil *Metrics records
// nothing, so tests and tools need not create one.
type Metrics struct {
	connections  *prometheus.CounterVec
	open         *prometheus.GaugeVec
	transactions *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	size         prometheus.Histogram
	auth         *prometheus.CounterVec
	decisions    *prometheus.CounterVec
	quota        *prometheus.CounterVec
}

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_connections_total",
			Help: "Client connections by listener and result (accepted, refused_network, refused_limit, tls_failed).",
		}, []string{"listener", "result"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailgate_connections_open",
			Help: "Client connections currently open, by listener.",
		}, []string{"listener"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_transactions_total",
			Help: "Transactions by listener and outcome (relayed, rejected, upstream-refused, failed, aborted).",
		}, []string{"listener", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailgate_transaction_duration_seconds",
			Help:    "Time from MAIL to the final reply, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"outcome"}),
		size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailgate_relayed_message_bytes",
			Help:    "Size of relayed messages as received.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10),
		}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_auth_total",
			Help: "AUTH attempts by mechanism and result (success, failure).",
		}, []string{"mechanism", "result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_policy_decisions_total",
			Help: "Policy decisions by stage and enforced outcome (accept, reject, defer, error).",
		}, []string{"stage", "outcome"}),
		quota: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_quota_refusals_total",
			Help: "Stages refused by a quota, by quota name (never by key: the label set stays bounded).",
		}, []string{"quota"}),
	}
	reg.MustRegister(m.connections, m.open, m.transactions, m.duration, m.size, m.auth, m.decisions, m.quota)
	return m
}

func (m *Metrics) connection(listener, result string) {
	if m != nil {
		m.connections.WithLabelValues(listener, result).Inc()
	}
}

func (m *Metrics) openDelta(listener string, d float64) {
	if m != nil {
		m.open.WithLabelValues(listener).Add(d)
	}
}

func (m *Metrics) transaction(listener, outcome string, started time.Time, size int64) {
	if m == nil {
		return
	}
	m.transactions.WithLabelValues(listener, outcome).Inc()
	m.duration.WithLabelValues(outcome).Observe(time.Since(started).Seconds())
	if outcome == "relayed" {
		m.size.Observe(float64(size))
	}
}

func (m *Metrics) authAttempt(mech, result string) {
	if m != nil {
		m.auth.WithLabelValues(mech, result).Inc()
	}
}

func (m *Metrics) decision(stage, outcome string) {
	if m != nil {
		m.decisions.WithLabelValues(stage, outcome).Inc()
	}
}

func (m *Metrics) quotaRefusal(name string) {
	if m != nil {
		m.quota.WithLabelValues(name).Inc()
	}
}
