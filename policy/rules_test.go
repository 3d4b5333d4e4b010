package policy

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func rulesPolicy(t *testing.T, src string) *Policy {
	t.Helper()
	return newPolicy(t, Config{Rules: []RulesConfig{{Name: "r", Path: "rules.hcl"}}}, map[string]string{"rules.hcl": src})
}

func rulesLoadErr(t *testing.T, src string) error {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"rules.hcl": src})
	_, err := New(Config{Rules: []RulesConfig{{Name: "r", Path: "rules.hcl"}}}, dir, WithLogger(quietLogger()))
	return err
}

func TestRules_TypeCheckAtLoad(t *testing.T) {
	tests := []struct {
		name string
		rule string // body of a rule block
		want []string
	}{
		{"misspelt attribute envelope.form", `stage = "mail"
  when = envelope.form == "x"
  action = "reject"`, []string{"Unsupported attribute", "envelope.form", "rules.hcl line 3"}},
		{"misspelt attribute hidden behind &&", `stage = "mail"
  when = auth != null && lower(envelope.form) != lower(auth.user)
  action = "reject"`, []string{"Unsupported attribute", "envelope.form"}},
		{"unknown variable", `stage = "mail"
  when = envlope.from == "x"
  action = "reject"`, []string{"Unknown variable", "envlope"}},
		{"when is not a bool", `stage = "mail"
  when = envelope.recipients
  action = "reject"`, []string{"Wrong result type", "bool"}},
		{"when is a string", `stage = "mail"
  when = envelope.from
  action = "reject"`, []string{"Wrong result type", "bool, not string"}},
		{"function argument type", `stage = "mail"
  when = lower(envelope.recipients) == "x"
  action = "reject"`, []string{"Invalid function argument"}},
		{"rcpt in a mail rule", `stage = "mail"
  when = rcpt.domain == "x"
  action = "reject"`, []string{"null value"}},
		{"message in a rcpt rule", `stage = "rcpt"
  when = message.size > 10
  action = "reject"`, []string{"null value"}},
		{"auth used without a null guard", `stage = "mail"
  when = lower(auth.user) != lower(envelope.from)
  action = "reject"`, []string{"guard with auth != null"}},
		{"message template misspelt", `stage = "mail"
  when = true
  action = "reject"
  message = "bad ${envelope.form}"`, []string{"Unsupported attribute"}},
		{"unknown function", `stage = "mail"
  when = file("/etc/passwd") != ""
  action = "reject"`, []string{"Call to unknown function"}},
		{"invalid stage", `stage = "helo"
  when = true
  action = "reject"`, []string{"Invalid stage"}},
		{"invalid action", `stage = "mail"
  when = true
  action = "drop"`, []string{"Invalid action"}},
		{"reject with a 4xx code", `stage = "mail"
  when = true
  action = "reject"
  code = 451`, []string{"Invalid reply code"}},
		{"defer with a 5.x.x enhanced code", `stage = "mail"
  when = true
  action = "defer"
  enhanced_code = "5.7.1"`, []string{"Invalid reply code"}},
		{"unknown argument", `stage = "mail"
  when = true
  action = "reject"
  colour = "red"`, []string{"Unsupported argument"}},
		{"actions on a reject rule", `stage = "mail"
  when = true
  action = "reject"
  upstream = "x"`, []string{"Action on a refusing rule"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rulesLoadErr(t, "rule \"x\" {\n  "+tt.rule+"\n}\n")
			if err == nil {
				t.Fatal("loaded; want a load error")
			}
			var de *DiagnosticsError
			if !errors.As(err, &de) && !strings.Contains(tt.want[0], "reply code") {
				t.Errorf("error %T is not a *DiagnosticsError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestRules_TypeCheckAccepts(t *testing.T) {
	ok := []string{
		`auth != null && lower(envelope.from) != lower(auth.user)`,
		`try(lower(auth.user), "") == "x"`,
		`can(auth.user) && endswith(auth.user, "@example.com")`,
		`length([for r in envelope.recipients : r if domain(r) != "example.com"]) > 3`,
		`contains(keys(message.headers), "list-unsubscribe")`,
		`regex("^[a-z]+$", session.helo) || cidr_contains("10.0.0.0/8", session.client_ip)`,
		`session.tls != null && session.tls.version == "TLS1.3"`,
		`lookup(message.headers, "subject", [""])[0] == "x"`,
	}
	for _, when := range ok {
		t.Run(when, func(t *testing.T) {
			src := "rule \"x\" {\n  stage = \"data\"\n  when = " + when + "\n  action = \"warn\"\n}\n"
			if err := rulesLoadErr(t, src); err != nil {
				t.Fatalf("load: %v", err)
			}
		})
	}
}

func TestRules_Functions(t *testing.T) {
	in := dataInput("Alice@Example.COM", "alice@example.com", []string{"alice@example.com"},
		map[string][]string{"subject": {"Hello World"}, "list-unsubscribe": {"<u>"}})
	in.Session.ClientIP = "10.1.2.3"
	tests := []struct {
		when string
		want bool
	}{
		{`auth != null && lower(auth.user) == "alice@example.com"`, true},
		{`upper(envelope.from) == "ALICE@EXAMPLE.COM"`, true},
		{`trimspace("  x \t") == "x"`, true},
		{`lower("ÄB") == "äb" && upper("äb") == "ÄB"`, true},
		{`startswith(envelope.from, "alice@")`, true},
		{`startswith(envelope.from, "bob@")`, false},
		{`endswith(envelope.from, "@example.com")`, true},
		{`endswith(envelope.from, "@example.net")`, false},
		{`contains(envelope.from, "ice@ex")`, true},
		{`contains(envelope.from, "bob")`, false},
		{`contains(envelope.recipients, "x@example.org")`, true},
		{`contains(envelope.recipients, "y@example.org")`, false},
		{`contains(["a", envelope.from], "alice@example.com")`, true},
		{`contains([1, 2], 2)`, true},
		{`contains([for r in envelope.recipients : endswith(r, ".org")], false)`, false},
		{`contains([for r in envelope.recipients : endswith(r, ".org")], true)`, true},
		{`contains([true, "false"], false)`, false},
		{`contains(["x", false], false)`, true},
		{`contains([], false)`, false},
		{`contains(keys(message.headers), "list-unsubscribe")`, true},
		{`contains(keys(message.headers), "x-nope")`, false},
		{`regex("^hello", lower(message.headers["subject"][0]))`, true},
		{`regex("^world", lower(message.headers["subject"][0]))`, false},
		{`try(domain(auth.user), "") == "example.com"`, true},
		{`domain("no-at-sign") == ""`, true},
		{`cidr_contains("10.0.0.0/8", session.client_ip)`, true},
		{`cidr_contains("192.168.0.0/16", session.client_ip)`, false},
		{`cidr_contains("10.0.0.0/8", "not-an-ip")`, false},
		{`length(envelope.recipients) == 1`, true},
		{`length(envelope.from) == 17`, true},
		{`try(message.headers["x-missing"][0], "none") == "none"`, true},
		{`can(message.headers["x-missing"])`, false},
		{`can(message.headers["list-unsubscribe"])`, true},
	}
	for _, tt := range tests {
		t.Run(tt.when, func(t *testing.T) {
			p := rulesPolicy(t, "rule \"f\" {\n  stage = \"data\"\n  when = "+tt.when+"\n  action = \"reject\"\n}\n")
			d := evaluate(t, p, in)
			if got := d.Outcome == Reject; got != tt.want {
				t.Errorf("matched = %v, want %v (decision %+v)", got, tt.want, d)
			}
		})
	}
}

func TestRules_FileOrderAndAcceptShortCircuit(t *testing.T) {
	src := `
rule "warn-first" {
  stage = "mail"
  when = true
  action = "warn"
  message = "w1"
}
rule "defer-early" {
  stage = "mail"
  when = envelope.from == "defer@example.com"
  action = "defer"
}
rule "allow-listed" {
  stage = "mail"
  when = domain(envelope.from) == "trusted.example"
  action = "accept"
}
rule "reject-all" {
  stage = "mail"
  when = true
  action = "reject"
  message = "nope"
}
rule "warn-late" {
  stage = "mail"
  when = true
  action = "warn"
}
`
	p := rulesPolicy(t, src)
	tests := []struct {
		name      string
		from      string
		outcome   Outcome
		rule      string
		nWarnings int
	}{
		{"accept ends evaluation before a later reject", "a@trusted.example", Accept, "", 1},
		{"reject after no accept", "a@other.example", Reject, "reject-all", 1},
		{"reject beats an earlier defer in the same engine", "defer@example.com", Reject, "reject-all", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := evaluate(t, p, mailInput("", tt.from))
			if d.Outcome != tt.outcome || d.Rule != tt.rule || len(d.Warnings) != tt.nWarnings {
				t.Errorf("got %s rule %q warnings %d, want %s %q %d", d.Outcome, d.Rule, len(d.Warnings), tt.outcome, tt.rule, tt.nWarnings)
			}
		})
	}
	t.Run("defaults 550 5.7.1 and message", func(t *testing.T) {
		d := evaluate(t, p, mailInput("", "a@other.example"))
		if d.Code != 550 || d.EnhancedCode != "5.7.1" || d.Message != "nope" || d.Engine != "rules:r" {
			t.Errorf("got %+v", d)
		}
	})
}

func TestRules_StageScoping(t *testing.T) {
	p := rulesPolicy(t, `
rule "rcpt-only" {
  stage = "rcpt"
  when = rcpt.domain == "blocked.example"
  action = "defer"
}
`)
	if d := evaluate(t, p, mailInput("", "x@blocked.example")); d.Outcome != Accept {
		t.Errorf("mail stage: %s, want accept (rule is for rcpt)", d.Outcome)
	}
	d := evaluate(t, p, rcptInput("", "x@a.example", "y@Blocked.Example", 0))
	if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.7.1" {
		t.Errorf("rcpt stage: %+v, want defer 451 4.7.1", d)
	}
}

func TestRules_RuntimeErrorFailsClosed(t *testing.T) {
	p := rulesPolicy(t, `
rule "user-regex" {
  stage = "mail"
  when = regex(envelope.from, "x")
  action = "reject"
}
`)
	d, err := p.Evaluate(context.Background(), mailInput("", "(unclosed@example.com"))
	if !errors.Is(err, ErrEngine) {
		t.Fatalf("err = %v, want ErrEngine", err)
	}
	if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.3.0" {
		t.Errorf("decision %+v, want defer 451 4.3.0", d)
	}
	if strings.Contains(d.Message, "regex") || strings.Contains(d.Message, "unclosed") {
		t.Errorf("reply %q leaks internal detail", d.Message)
	}
}

func TestRules_Actions(t *testing.T) {
	p := rulesPolicy(t, `
rule "tag" {
  stage = "data"
  when = true
  action = "accept"
  add_headers = { "X-Policy" = "r", "X-From-Domain" = envelope.from_domain }
  remove_headers = ["X-Internal"]
  dkim_domain = envelope.from_domain
  upstream = "relay-b"
}
`)
	d := evaluate(t, p, dataInput("a@example.com", "a@Example.com", nil, nil))
	want := Actions{
		AddHeaders:    []Header{{"X-From-Domain", "example.com"}, {"X-Policy", "r"}},
		RemoveHeaders: []string{"X-Internal"}, DKIMDomain: "example.com", Upstream: "relay-b",
	}
	if got := d.Actions; len(got.AddHeaders) != 2 || got.AddHeaders[0] != want.AddHeaders[0] || got.AddHeaders[1] != want.AddHeaders[1] ||
		got.DKIMDomain != want.DKIMDomain || got.Upstream != want.Upstream || len(got.RemoveHeaders) != 1 {
		t.Errorf("actions %+v, want %+v", got, want)
	}
	t.Run("header injection refused", func(t *testing.T) {
		p := rulesPolicy(t, `
rule "tag" {
  stage = "data"
  when = true
  action = "accept"
  add_headers = { "X-Subject" = message.headers["subject"][0] }
}
`)
		in := dataInput("", "a@example.com", nil, map[string][]string{"subject": {"hi\r\nBcc: victim@example.net"}})
		if _, err := p.Evaluate(context.Background(), in); !errors.Is(err, ErrEngine) {
			t.Errorf("err = %v, want ErrEngine for a CRLF in a header value", err)
		}
	})
}

func TestRules_DirectoryAndDuplicates(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"rules/a.hcl":      "rule \"one\" {\n stage = \"mail\"\n when = true\n action = \"warn\"\n}\n",
		"rules/b.hcl":      "rule \"one\" {\n stage = \"mail\"\n when = true\n action = \"warn\"\n}\n",
		"rules/a.test.hcl": "this is not a rules file {",
	})
	_, err := New(Config{Rules: []RulesConfig{{Name: "r", Path: "rules"}}}, dir, WithLogger(quietLogger()))
	if err == nil || !strings.Contains(err.Error(), "Duplicate rule name") {
		t.Fatalf("err = %v, want duplicate rule name", err)
	}
}
