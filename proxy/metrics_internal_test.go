package proxy

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/proxy/upstream"
)

// TestRefusalRule: the rule label stays bounded by configuration; a Rego
// refusal named after its (possibly input-bearing) message is counted
// under its set name.
func TestRefusalRule(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"sender-matches-login", "sender-matches-login"},
		{"per-login", "per-login"},
		{"deny[sender bob@example.net is not allowed]", "deny"},
		{"defer[mail to broken.example is paused…]", "defer"},
		{"no-external-from", "no-external-from"}, // a Rego "id"
		{"deny-list", "deny-list"},
	} {
		if got := refusalRule(tc.in); got != tc.want {
			t.Errorf("refusalRule(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

type fakeCounters []upstream.UpstreamStats

func (f fakeCounters) UpstreamStats() []upstream.UpstreamStats { return f }

// TestUpstreamMetrics: the pool's counters are read at scrape time, one
// series per upstream, and nothing is exported before a relay is wired.
func TestUpstreamMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	scrape := func() map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if !strings.HasPrefix(mf.GetName(), "mailgate_upstream_") || mf.GetName() == "mailgate_upstream_errors_total" {
				continue
			}
			for _, mt := range mf.GetMetric() {
				v := mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
				got[fmt.Sprintf("%s{%s=%q}", mf.GetName(), mt.GetLabel()[0].GetName(), mt.GetLabel()[0].GetValue())] = v
			}
		}
		return got
	}
	if got := scrape(); len(got) != 0 {
		t.Fatalf("before wiring: %v", got)
	}
	m.watchUpstreams(fakeCounters{
		{Name: "primary", Open: 3, Connections: 20, Reuses: 980},
		{Name: "backup"},
	})
	want := map[string]float64{
		`mailgate_upstream_connections_total{upstream="primary"}`: 20,
		`mailgate_upstream_reuses_total{upstream="primary"}`:      980,
		`mailgate_upstream_connections_open{upstream="primary"}`:  3,
		`mailgate_upstream_connections_total{upstream="backup"}`:  0,
		`mailgate_upstream_reuses_total{upstream="backup"}`:       0,
		`mailgate_upstream_connections_open{upstream="backup"}`:   0,
	}
	if got := scrape(); !maps.Equal(got, want) {
		t.Errorf("scrape = %v, want %v", got, want)
	}
	var nilMetrics *Metrics
	nilMetrics.watchUpstreams(fakeCounters{}) // a nil *Metrics records nothing
}
