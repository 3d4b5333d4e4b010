package main

// Tests of the operations examples: the Prometheus alerting rules (with
// promtool) and the Grafana dashboard, against a real scrape of a running
// mailgate.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/internal/peertest"
)

const (
	rulesFile     = "../../examples/prometheus/mailgate-rules.yml"
	rulesTestFile = "../../examples/prometheus/mailgate-rules.test.yml"
	dashboardFile = "../../examples/grafana/mailgate.json"
)

// TestPrometheusRules checks the alerting rules with promtool and runs
// their unit tests (mailgate-rules.test.yml).
func TestPrometheusRules(t *testing.T) {
	peertest.Require(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", rulesFile},
		{"test", "rules", rulesTestFile},
	} {
		out, err := exec.Command("promtool", args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// ruleExprs returns the expr of every rule in a rules file: "expr: X" on
// one line, or "expr: |" followed by more indented lines.
func ruleExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		trimmed := strings.TrimLeft(l, " ")
		v, ok := strings.CutPrefix(trimmed, "expr:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if v != "|" {
			exprs = append(exprs, v)
			continue
		}
		indent := len(l) - len(trimmed)
		var block []string
		for i+1 < len(lines) {
			next := lines[i+1]
			if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
				break
			}
			block = append(block, next)
			i++
		}
		exprs = append(exprs, strings.Join(block, "\n"))
	}
	return exprs
}

// dashboardExprs returns every PromQL query of the dashboard: panel
// targets and template variable queries.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			// label_values(METRIC{…}, label): the metric is what matters.
			q := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
			exprs = append(exprs, q[:strings.LastIndex(q, ",")])
		}
	}
	return exprs
}

var (
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "offset": true, "bool": true}
)

// metricNames returns the metric names a PromQL expression selects:
// identifiers outside strings, label matchers, ranges and grouping
// clauses that are neither functions nor keywords.
func metricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promIdent.FindAllStringSubmatchIndex(e, -1) {
		if m[2] >= 0 { // followed by "(": a function
			continue
		}
		if m[0] > 0 && (e[m[0]-1] >= '0' && e[m[0]-1] <= '9' || e[m[0]-1] == '.') {
			continue // the unit of a duration or part of a number, e.g. 5m, 1e3
		}
		if id := e[m[0]:m[1]]; !promKeywords[id] {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want string
	}{
		{`sum by (le) (rate(a_bucket{x="y{z}", le!="1"}[5m])) / 60`, "a_bucket"},
		{"up{job=\"m\"} == 0", "up"},
		{`x > 5 * sum by (job) (rate(y{r="a or b"}[1h] offset 5m)) unless on(job) z`, "x y z"},
		{`histogram_quantile(0.99, sum without (i) (rate(h_bucket[$__rate_interval])))`, "h_bucket"},
	} {
		if got := strings.Join(metricNames(tc.expr), " "); got != tc.want {
			t.Errorf("metricNames(%s) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// TestOpsMetricsExist: every metric name that a dashboard panel or an
// alerting rule uses is in a real /metrics scrape of a running mailgate
// after traffic that exercises each: relayed mail, a policy refusal, a
// quota refusal, an unavailable upstream, a DKIM failure, failed AUTH and
// a lockout. (Prometheus adds "up" itself, per target.)
func TestOpsMetricsExist(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks", "curl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	dir := t.TempDir()
	writeFile(t, dir+"/rules.hcl", `rule "blocked-sender" {
  stage  = "mail"
  when   = envelope.from == "blocked@example.com"
  action = "reject"
}
rule "to-flaky" {
  stage    = "mail"
  when     = envelope.from == "flaky@example.com"
  action   = "accept"
  upstream = "flaky"
}
`)
	m := startMailgateAuth(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
upstream "flaky" {
  address = "127.0.0.1:1" # nothing listens: unavailable
  tls     = "none"
}
policy {
  rules {
    name = "local"
    path = %q
  }
}
quota "tiny" {
  key      = envelope.from
  when     = envelope.from == "quota@example.com"
  messages = ["1/1h"]
}
dkim {
  key "example.com" "rsa1" { file = "rsa1.pem" }
  unsigned = "reject"
}
metrics {
  address        = "127.0.0.1:0"
  shutdown_delay = "0s"
}
`, dir+"/rules.hcl"), `user_failures = 2`)
	send := func(from string, args ...string) string {
		out, _ := peertest.Swaks(t, append([]string{"--server", m.relay, "--from", from, "--to", "bob@example.net",
			"--header", "From: " + from, "--timeout", "20"}, args...)...)
		return out
	}
	for _, c := range []struct{ from, want string }{
		{"app@example.com", "250 2.0.0 OK"},
		{"blocked@example.com", "550 5.7.1"},
		{"quota@example.com", "250 2.0.0 OK"},
		{"quota@example.com", "451 4.7.1"},
		{"flaky@example.com", "451 4.4.1"},
		{"app@unsigned.example", "550 5.7.1"}, // no DKIM key for the domain
	} {
		if out := send(c.from); !strings.Contains(out, c.want) {
			t.Errorf("from %s: want %q in\n%s", c.from, c.want, out)
		}
	}
	for i := 0; i < 3; i++ { // two failures, then the lockout
		swaks(t, m, "--server", m.sub, "--tls", "--auth", "PLAIN", "--auth-user", e2eUser, "--auth-password", "wrong")
	}

	out, code := peertest.Curl(t, "-sS", "http://"+m.extra["metrics"]+"/metrics")
	if code != 0 {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	scraped := map[string]bool{"up": true}
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		scraped[l[:strings.IndexAny(l, "{ ")]] = true
	}
	// The traffic above counted each of these (not just declared them).
	for _, want := range []string{
		`mailgate_policy_refusals_total{engine="rules:local",rule="blocked-sender",stage="mail"} 1`,
		`mailgate_policy_refusals_total{engine="quota",rule="tiny",stage="mail"} 1`,
		`mailgate_quota_refusals_total{quota="tiny"} 1`,
		`mailgate_upstream_errors_total{kind="unavailable",upstream="flaky"} 1`,
		`mailgate_dkim_failures_total{reason="no_key"} 1`,
		`mailgate_auth_lockouts_total 1`,
		`mailgate_auth_total{mechanism="PLAIN",result="failure"} 3`,
		`mailgate_upstream_connections_total{upstream="sink"} `,
		`mailgate_upstream_reuses_total{upstream="sink"} `,
		`mailgate_upstream_connections_open{upstream="sink"} `,
		`mailgate_upstream_connections_total{upstream="flaky"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	used := map[string][]string{}
	for file, exprs := range map[string][]string{
		rulesFile:     ruleExprs(t, rulesFile),
		dashboardFile: dashboardExprs(t, dashboardFile),
	} {
		if len(exprs) < 5 {
			t.Fatalf("%s: found only %d expressions", file, len(exprs))
		}
		for _, e := range exprs {
			names := metricNames(e)
			if len(names) == 0 {
				t.Errorf("%s: no metric in %q", file, e)
			}
			for _, n := range names {
				used[n] = append(used[n], file)
			}
		}
	}
	var missing []string
	for n, files := range used {
		if !scraped[n] {
			missing = append(missing, fmt.Sprintf("%s (used in %s)", n, strings.Join(files, ", ")))
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not in a real scrape: %s", m)
	}
	// What the issue asks the dashboard and alerts to show.
	for _, n := range []string{"mailgate_transactions_total", "mailgate_transaction_duration_seconds_bucket",
		"mailgate_upstream_errors_total", "mailgate_auth_total", "mailgate_auth_lockouts_total",
		"mailgate_policy_refusals_total", "mailgate_quota_refusals_total", "mailgate_dkim_failures_total",
		"mailgate_connections_open"} {
		if used[n] == nil {
			t.Errorf("neither the dashboard nor the rules use %s", n)
		}
	}
}
