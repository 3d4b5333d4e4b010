package proxy

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/proxy/upstream"
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
	refusals     *prometheus.CounterVec
	upstreamErrs *prometheus.CounterVec
	dkim         *prometheus.CounterVec
	lockouts     prometheus.Counter
	upstreams    *upstreamCollector
}

// Label values of mailgate_dkim_failures_total{reason}.
var dkimReasons = []string{"no_key", "from_header", "error"}

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
		// Every label is bounded by the configuration: stages and engines
		// are fixed, rule ids are HCL rule names, quota names and Rego
		// ids (see refusalRule).
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_policy_refusals_total",
			Help: "Enforced policy refusals (reject or defer) by stage, engine and rule id.",
		}, []string{"stage", "engine", "rule"}),
		upstreamErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_upstream_errors_total",
			Help: "Upstream transport failures that became a client reply (451), by upstream and kind (timeout, unavailable).",
		}, []string{"upstream", "kind"}),
		dkim: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailgate_dkim_failures_total",
			Help: "Messages refused because signing failed, by reason (no_key, from_header, error).",
		}, []string{"reason"}),
		lockouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailgate_auth_lockouts_total",
			Help: "AUTH attempts refused by the failure limiter (454 4.7.0) before any password was checked; also counted as failures in mailgate_auth_total.",
		}),
	}
	for _, r := range dkimReasons {
		m.dkim.WithLabelValues(r) // exported at 0, so rate() sees the first failure
	}
	m.upstreams = &upstreamCollector{}
	reg.MustRegister(m.connections, m.open, m.transactions, m.duration, m.size, m.auth, m.decisions, m.quota,
		m.refusals, m.upstreamErrs, m.dkim, m.lockouts, m.upstreams)
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

func (m *Metrics) refusal(stage, engine, rule string) {
	if m != nil {
		m.refusals.WithLabelValues(stage, engine, rule).Inc()
	}
}

func (m *Metrics) upstreamError(upstream, kind string) {
	if m != nil {
		m.upstreamErrs.WithLabelValues(upstream, kind).Inc()
	}
}

func (m *Metrics) dkimFailure(reason string) {
	if m != nil {
		m.dkim.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) authLockout() {
	if m != nil {
		m.lockouts.Inc()
	}
}

// refusalRule is the rule label of a refusal. HCL rule names and quota
// names come from the configuration, and so does a Rego refusal's "id";
// a Rego refusal without one is named after its message ("deny[…]"),
// which may carry input (an address), so it is counted under its set
// name alone ("deny", "defer"): the label set stays bounded.
func refusalRule(rule string) string {
	for _, set := range []string{"deny", "defer"} {
		if strings.HasPrefix(rule, set+"[") && strings.HasSuffix(rule, "]") {
			return set
		}
	}
	return rule
}

// UpstreamCounters is implemented by a Relay whose upstream connections
// are counted (the pooled upstream client, through UpstreamRelay). New
// wires it to the metrics.
type UpstreamCounters interface {
	UpstreamStats() []upstream.UpstreamStats
}

// watchUpstreams makes the upstream pool's counters part of every scrape.
func (m *Metrics) watchUpstreams(src UpstreamCounters) {
	if m != nil {
		m.upstreams.src.Store(&src)
	}
}

// upstreamCollector reads the pool's own counters at scrape time: the
// upstream package counts, the proxy owns the metric names.
type upstreamCollector struct {
	src atomic.Pointer[UpstreamCounters]
}

var (
	upstreamConnsDesc = prometheus.NewDesc("mailgate_upstream_connections_total",
		"Upstream connections opened for transactions (connected, greeted, TLS and AUTH done; readiness probes not counted), by upstream.", []string{"upstream"}, nil)
	upstreamReusesDesc = prometheus.NewDesc("mailgate_upstream_reuses_total",
		"Upstream transactions that got an already open connection, by upstream; reuses / (reuses + connections) is the reuse ratio.", []string{"upstream"}, nil)
	upstreamOpenDesc = prometheus.NewDesc("mailgate_upstream_connections_open",
		"Upstream connections open now (idle and in use, including those being opened), by upstream.", []string{"upstream"}, nil)
)

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upstreamConnsDesc
	ch <- upstreamReusesDesc
	ch <- upstreamOpenDesc
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.src.Load()
	if src == nil {
		return
	}
	for _, s := range (*src).UpstreamStats() {
		ch <- prometheus.MustNewConstMetric(upstreamConnsDesc, prometheus.CounterValue, float64(s.Connections), s.Name)
		ch <- prometheus.MustNewConstMetric(upstreamReusesDesc, prometheus.CounterValue, float64(s.Reuses), s.Name)
		ch <- prometheus.MustNewConstMetric(upstreamOpenDesc, prometheus.GaugeValue, float64(s.Open), s.Name)
	}
}
