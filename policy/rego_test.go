package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

func regoPolicy(t *testing.T, files map[string]string, rc RegoConfig) *Policy {
	t.Helper()
	if rc.Name == "" {
		rc.Name = "org"
	}
	rc.Path = "pol"
	fs := map[string]string{}
	for k, v := range files {
		fs["pol/"+k] = v
	}
	return newPolicy(t, Config{Rego: []RegoConfig{rc}}, fs)
}

func regoLoadErr(t *testing.T, files map[string]string, rc RegoConfig) error {
	t.Helper()
	dir := t.TempDir()
	rc.Name, rc.Path = "org", "pol"
	fs := map[string]string{}
	for k, v := range files {
		fs["pol/"+k] = v
	}
	writeFiles(t, dir, fs)
	_, err := New(Config{Rego: []RegoConfig{rc}}, dir, WithLogger(quietLogger()))
	return err
}

func TestRego_Verdicts(t *testing.T) {
	tests := []struct {
		name    string
		rules   string
		outcome Outcome
		code    int
		enh     string
		msg     string
		rule    string
	}{
		{"string deny gets default 550 5.7.1", `deny contains "no"`, Reject, 550, "5.7.1", "no", "deny[no]"},
		{"object deny with id and codes", `deny contains {"id": "r1", "msg": "auth first", "code": 530, "enhanced_code": "5.7.0"}`, Reject, 530, "5.7.0", "auth first", "r1"},
		{"string defer gets default 451 4.7.1", `defer contains "later"`, Defer, 451, "4.7.1", "later", "defer[later]"},
		{"object defer with codes", `defer contains {"msg": "slow down", "code": 452, "enhanced_code": "4.5.3"}`, Defer, 452, "4.5.3", "slow down", "defer[slow down]"},
		{"deny beats defer", "deny contains \"no\"\ndefer contains \"later\"", Reject, 550, "5.7.1", "no", "deny[no]"},
		{"nothing is accept", `warn contains "hmm"`, Accept, 0, "", "", ""},
		{"rules reading input", `deny contains sprintf("not as %s", [input.envelope.from]) if input.auth.user != input.envelope.from`, Reject, 550, "5.7.1", "not as b@example.com", "deny[not as b@example.com]"},
		{"message sanitized to one printable line", `deny contains "bad\r\n250 OK\u00e9"`, Reject, 550, "5.7.1", "bad 250 OK?", "deny[bad\r\n250 OK\u00e9]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := regoPolicy(t, map[string]string{"p.rego": "package mailgate\n" + tt.rules + "\n"}, RegoConfig{})
			d := evaluate(t, p, mailInput("a@example.com", "b@example.com"))
			if d.Outcome != tt.outcome || d.Code != tt.code || d.EnhancedCode != tt.enh || d.Message != tt.msg || d.Rule != tt.rule {
				t.Errorf("got %s %d %s %q rule %q, want %s %d %s %q rule %q",
					d.Outcome, d.Code, d.EnhancedCode, d.Message, d.Rule, tt.outcome, tt.code, tt.enh, tt.msg, tt.rule)
			}
			if tt.outcome != Accept && d.Engine != "rego:org" {
				t.Errorf("engine %q, want rego:org", d.Engine)
			}
		})
	}
}

func TestRego_Warnings(t *testing.T) {
	p := regoPolicy(t, map[string]string{"p.rego": `package mailgate
warn contains {"id": "w1", "msg": "first"}
warn contains "second"
`}, RegoConfig{})
	d := evaluate(t, p, mailInput("a@example.com", "a@example.com"))
	if d.Outcome != Accept || len(d.Warnings) != 2 {
		t.Fatalf("got %+v, want accept with 2 warnings", d)
	}
	got := map[string]string{}
	for _, w := range d.Warnings {
		got[w.Rule] = w.Message
		if w.Engine != "rego:org" {
			t.Errorf("warning engine %q", w.Engine)
		}
	}
	if got["w1"] != "first" || got["warn[second]"] != "second" {
		t.Errorf("warnings %+v", d.Warnings)
	}
}

func TestRego_InvalidResultsFailClosed(t *testing.T) {
	tests := []struct{ name, rules string }{
		{"deny with a 4xx code", `deny contains {"msg": "x", "code": 451}`},
		{"defer with a 5xx code", `defer contains {"msg": "x", "code": 550}`},
		{"deny with a mismatched enhanced code", `deny contains {"msg": "x", "enhanced_code": "4.7.1"}`},
		{"deny member of the wrong type", `deny contains 42`},
		{"header name with a colon", `actions := {"add_headers": {"X-A: b": "c"}}`},
		{"header value with CRLF", `actions := {"add_headers": [{"name": "X-A", "value": "b\r\nBcc: x@example.net"}]}`},
		{"unknown action", `actions := {"drop_message": true}`},
		{"builtin error", `deny contains "x" if to_number("nan?") > 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := regoPolicy(t, map[string]string{"p.rego": "package mailgate\n" + tt.rules + "\n"}, RegoConfig{})
			d, err := p.Evaluate(context.Background(), mailInput("a@example.com", "a@example.com"))
			if !errors.Is(err, ErrEngine) {
				t.Fatalf("err = %v, want ErrEngine", err)
			}
			if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.3.0" {
				t.Errorf("decision %+v, want defer 451 4.3.0", d)
			}
		})
	}
}

func TestRego_Actions(t *testing.T) {
	p := regoPolicy(t, map[string]string{"p.rego": `package mailgate
actions := {
	"add_headers": {"X-B": "2", "X-A": "1"},
	"remove_headers": ["X-Secret"],
	"dkim_domain": input.envelope.from_domain,
	"upstream": "eu",
}
`}, RegoConfig{})
	d := evaluate(t, p, mailInput("a@example.com", "a@Example.com"))
	a := d.Actions
	if len(a.AddHeaders) != 2 || a.AddHeaders[0] != (Header{"X-A", "1"}) || a.AddHeaders[1] != (Header{"X-B", "2"}) ||
		len(a.RemoveHeaders) != 1 || a.DKIMDomain != "example.com" || a.Upstream != "eu" {
		t.Errorf("actions %+v", a)
	}
	t.Run("list form of add_headers keeps order", func(t *testing.T) {
		p := regoPolicy(t, map[string]string{"p.rego": `package mailgate
actions := {"add_headers": [{"name": "X-Z", "value": "1"}, {"name": "X-A", "value": "2"}]}
`}, RegoConfig{})
		a := evaluate(t, p, mailInput("", "a@example.com")).Actions
		if len(a.AddHeaders) != 2 || a.AddHeaders[0].Name != "X-Z" {
			t.Errorf("actions %+v", a)
		}
	})
}

func TestRego_IOBuiltinsRefusedByDefault(t *testing.T) {
	mods := map[string]string{
		"http.send":          `deny contains "x" if http.send({"method": "GET", "url": "http://127.0.0.1:1/"}).status_code == 200`,
		"net.lookup_ip_addr": `deny contains "x" if count(net.lookup_ip_addr("localhost")) > 0`,
		"opa.runtime":        `deny contains "x" if opa.runtime().env.HOME == "/"`,
	}
	for name, rule := range mods {
		t.Run(name+" refused", func(t *testing.T) {
			err := regoLoadErr(t, map[string]string{"io.rego": "package mailgate\n\n" + rule + "\n"}, RegoConfig{})
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "io.rego:3") {
				t.Errorf("error does not name %s at io.rego:3: %v", name, err)
			}
		})
		t.Run(name+" allowed with allow_io", func(t *testing.T) {
			if err := regoLoadErr(t, map[string]string{"io.rego": "package mailgate\n\n" + rule + "\n"}, RegoConfig{AllowIO: true}); err != nil {
				t.Errorf("allow_io = true: %v", err)
			}
		})
	}
}

func TestRego_LoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		rc    RegoConfig
		want  string
	}{
		{"syntax error names file and line", map[string]string{"a.rego": "package mailgate\n\ndeny contains x if {\n"}, RegoConfig{}, "a.rego:4: rego_parse_error"},
		{"compile error names file and line", map[string]string{"a.rego": "package mailgate\n\ndeny contains x if { x := y }\n"}, RegoConfig{}, "a.rego:3"},
		{"package missing", map[string]string{"a.rego": "package other\n\ndeny contains \"x\"\n"}, RegoConfig{}, "no module declares package mailgate"},
		{"no modules", map[string]string{"data.json": "{}"}, RegoConfig{}, "no .rego modules"},
		{"invalid package name", map[string]string{"a.rego": "package mailgate\n"}, RegoConfig{Package: "a-b"}, "invalid package"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := regoLoadErr(t, tt.files, tt.rc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestRego_DataAndPackage(t *testing.T) {
	p := regoPolicy(t, map[string]string{
		"p.rego":    "package corp.mail\n\ndeny contains \"blocked\" if input.rcpt.domain in data.blocked\n",
		"data.json": `{"blocked": ["bad.example"]}`,
		// Not data: only data.json / data.yaml are loaded.
		"input.json": `{"blocked": 42}`,
		// Test modules are not part of the running policy.
		"p_test.rego": "package corp.mail\n\ndeny contains \"from test module\"\n",
	}, RegoConfig{Package: "corp.mail"})
	if d := evaluate(t, p, rcptInput("", "a@example.com", "x@bad.example", 0)); d.Outcome != Reject || d.Message != "blocked" {
		t.Errorf("blocked domain: %+v", d)
	}
	if d := evaluate(t, p, rcptInput("", "a@example.com", "x@good.example", 0)); d.Outcome != Accept {
		t.Errorf("good domain: %+v", d)
	}
}

func TestRego_DataYAML(t *testing.T) {
	p := regoPolicy(t, map[string]string{
		"p.rego":          "package mailgate\n\ndeny contains \"blocked\" if input.rcpt.domain in data.lists.blocked\n",
		"lists/data.yaml": "blocked:\n  - bad.example\n",
	}, RegoConfig{})
	if d := evaluate(t, p, rcptInput("", "a@example.com", "x@bad.example", 0)); d.Outcome != Reject {
		t.Errorf("data.yaml in a subdirectory not loaded under data.lists: %+v", d)
	}
}

func TestRunTests_RegoCapabilities(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego":      "package mailgate\n\nup if http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1/\"})\n",
		"p_test.rego": "package mailgate_test\n\ntest_nothing if true\n",
	})
	if _, err := RunTests(context.Background(), []string{dir}, TestOptions{}); err == nil || !strings.Contains(err.Error(), "http.send") {
		t.Errorf("err = %v, want http.send refused in tests too", err)
	}
	if _, err := RunTests(context.Background(), []string{dir}, TestOptions{AllowIO: true}); err != nil {
		t.Errorf("AllowIO: %v", err)
	}
}

func TestRego_InputShape(t *testing.T) {
	// The Rego input matches the JSON form of Input: absent rcpt/message
	// outside their stages, null auth when unauthenticated, lists never null.
	p := regoPolicy(t, map[string]string{"p.rego": `package mailgate
warn contains "rcpt present" if input.rcpt
warn contains "message present" if input.message
warn contains "auth null" if input.auth == null
warn contains "tls null" if input.session.tls == null
warn contains "recipients is an array" if is_array(input.envelope.recipients)
warn contains sprintf("from_domain %s", [input.envelope.from_domain])
warn contains sprintf("version %d", [input.version])
`}, RegoConfig{})
	d := evaluate(t, p, Input{Stage: StageMail, Envelope: Envelope{From: "a@Example.COM"}})
	got := map[string]bool{}
	for _, w := range d.Warnings {
		got[w.Message] = true
	}
	for _, want := range []string{"auth null", "tls null", "recipients is an array", "from_domain example.com", "version 1"} {
		if !got[want] {
			t.Errorf("missing %q in %v", want, got)
		}
	}
	for _, not := range []string{"rcpt present", "message present"} {
		if got[not] {
			t.Errorf("unexpected %q", not)
		}
	}
}

// TestObjectItemsBeyondArray: an object given more items than its array
// holds keeps every item, in order.
func TestObjectItemsBeyondArray(t *testing.T) {
	o := newObject(fullShape)
	var want []string
	for i := range objectItems + 3 {
		k := fmt.Sprintf("k%d", i)
		o.add(k, strTerm(k))
		want = append(want, k)
	}
	items := o.items()
	if len(items) != len(want) {
		t.Fatalf("%d items, want %d", len(items), len(want))
	}
	for i, it := range items {
		if got := string(it[0].Value.(ast.String)); got != want[i] || !it[1].Equal(it[0]) {
			t.Errorf("item %d = %v: %v, want %s", i, it[0], it[1], want[i])
		}
	}
}
