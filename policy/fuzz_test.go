package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseInput: ParseInput never panics, and what it accepts converts to
// both engine representations, with Normalize idempotent.
func FuzzParseInput(f *testing.F) {
	f.Add([]byte(`{"stage":"mail","envelope":{"from":"a@Example.com"}}`))
	f.Add([]byte(`{"stage":"rcpt","rcpt":{"address":"x@y"},"auth":{"user":"u","mechanism":"PLAIN"}}`))
	f.Add([]byte(`{"stage":"data","message":{"headers":{"from":["a"]},"from_addresses":["a@b"]}}`))
	f.Add([]byte(`{"stage":"data","message":null,"session":{"tls":{"version":"TLS1.3"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := ParseInput(data)
		if err != nil {
			return
		}
		if again := in.Normalize(); !reflect.DeepEqual(again, in) {
			t.Fatalf("Normalize not idempotent:\n%+v\n%+v", in, again)
		}
		_ = astValue(&in)
		for name := range schemaTypes {
			v := ctyVar(&in, name)
			if !v.Type().Equals(schemaTypes[name]) {
				t.Fatalf("%s: type %s, want %s", name, v.Type().FriendlyName(), schemaTypes[name].FriendlyName())
			}
		}
	})
}

// FuzzSanitizeMessage: a reply text is one non-empty line of printable
// ASCII no longer than maxMessageLen, whatever a policy returns.
func FuzzSanitizeMessage(f *testing.F) {
	f.Add("you may only send as a@example.com")
	f.Add("bad\r\n250 OK\r\n")
	f.Add("\x00\x7f\u00e9\u2028")
	f.Add(strings.Repeat("x", 1000))
	f.Fuzz(func(t *testing.T, s string) {
		out := sanitizeMessage(s, "fallback")
		if out == "" || len(out) > maxMessageLen {
			t.Fatalf("length %d", len(out))
		}
		for i := 0; i < len(out); i++ {
			if out[i] < 0x20 || out[i] > 0x7e {
				t.Fatalf("byte %#x in %q", out[i], out)
			}
		}
	})
}

// FuzzRulesFastPath: a when expression that loads decides the same with
// the fast path (rules_optimize.go, conjuncts, null tests, variables built
// with the attributes read) as evaluated as written with every variable
// whole, at each stage, with and without AUTH: the same value, or an error
// in both.
func FuzzRulesFastPath(f *testing.F) {
	for _, w := range []string{
		`auth == null && cidr_contains("127.0.0.0/8", session.client_ip) && envelope.from == "monitor@example.com"`,
		`auth != null && lower(envelope.from) != lower(auth.user) && domain(envelope.from) != domain(auth.user)`,
		`contains(["broken.example"], envelope.from_domain)`,
		`regex("^\\[?[0-9.]+\\]?$", session.helo)`,
		`endswith(envelope.from_domain, "example.com")`,
		`null != auth || length(envelope.recipients) > 2`,
		`(auth == null) == (session.tls == null)`,
		`try(auth.user, "") == "" && !can(auth.mechanism)`,
		`[for r in envelope.recipients : domain(r) if r != ""] == ["example.com"]`,
		`"${envelope.from}x" != "x" ? true : auth != null`,
		`lower("A") == "a" && upper(trimspace(" b ")) == "B" && envelope.size >= 0`,
	} {
		f.Add(w)
	}
	f.Fuzz(func(t *testing.T, when string) {
		if strings.ContainsAny(when, "\n\r{}#/") || len(when) > 300 {
			return // one expression on one line, no blocks or comments
		}
		var src strings.Builder
		for _, stage := range []Stage{StageMail, StageRcpt, StageData} {
			fmt.Fprintf(&src, "rule \"r-%s\" {\n  stage = %q\n  when = %s\n  action = \"warn\"\n}\n", stage, stage, when)
		}
		path := filepath.Join(t.TempDir(), "r.hcl")
		if err := os.WriteFile(path, []byte(src.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		plain, perr := compileRules([]string{path}, false)
		fast, ferr := compileRules([]string{path}, true)
		if (perr != nil) != (ferr != nil) {
			t.Fatalf("%s: loads plain: %v, fast: %v", when, perr, ferr)
		}
		if perr != nil {
			return // refused at load by both: nothing to compare
		}
		for _, user := range []string{"", "a@example.com"} {
			for _, in := range []Input{mailInput(user, "a@example.com"), mailInput(user, ""),
				rcptInput(user, "a@example.com", "x@broken.example", 2), dataInput(user, "a@example.com", []string{"a@example.com"}, nil)} {
				compareFastPlain(t, fast, plain, in) // go test -fuzz reports the failing when
			}
		}
	})
}
