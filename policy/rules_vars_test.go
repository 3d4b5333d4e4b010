package policy

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// TestVarSpecs: a rule's variables are built with the attributes it reads,
// and message.headers with the header names it reads when it only reads
// literal names.
func TestVarSpecs(t *testing.T) {
	for _, tc := range []struct {
		exprs   []string
		attrs   map[string][]string // nil: whole
		headers []string            // of message; nil: all
	}{
		{[]string{`auth != null && auth.user == envelope.from`}, map[string][]string{"auth": nil, "envelope": {"from"}}, nil},
		{[]string{`can(message.headers["list-unsubscribe"])`, `message.size > 1`}, map[string][]string{"message": {"headers", "size"}}, []string{"list-unsubscribe"}},
		{[]string{`can(message.headers["a"])`, `contains(keys(message.headers), "b")`}, map[string][]string{"message": {"headers"}}, nil},
		{[]string{`can(message.headers["a"])`, `length(message) > 0`}, map[string][]string{"message": nil}, nil},
		{[]string{`[for k in ["a"] : message.headers[k]]`}, map[string][]string{"message": {"headers"}}, nil},
	} {
		var trs []hcl.Traversal
		for _, src := range tc.exprs {
			x, diags := hclsyntax.ParseExpression([]byte(src), "t.hcl", hcl.InitialPos)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			trs = append(trs, x.Variables()...)
		}
		got := map[string][]string{}
		var headers []string
		for _, s := range varSpecs(trs, func(string) bool { return false }, nil) {
			sort.Strings(s.attrs)
			got[s.name] = s.attrs
			if s.name == "message" {
				headers = s.headers
			}
		}
		if !reflect.DeepEqual(got, tc.attrs) || !reflect.DeepEqual(headers, tc.headers) {
			t.Errorf("%v: specs %v headers %q, want %v headers %q", tc.exprs, got, headers, tc.attrs, tc.headers)
		}
	}
}

// TestNullTestedVariables: a variable compared only with null is built
// with no attribute, and one also read through an attribute with that
// attribute only; both still compare with null as the input says, and a
// variable also used whole is built whole.
func TestNullTestedVariables(t *testing.T) {
	for _, tc := range []struct {
		src   string
		attrs []string // of auth; nil: whole
	}{
		{`auth != null`, []string{}},
		{`null == auth`, []string{}},
		{`auth == null || auth.user == "a@example.com"`, []string{"user"}},
		{`auth != null && length(auth) == 2`, nil},
		{`auth != null && auth == { user = "a" }`, nil},
	} {
		parsed, diags := hclsyntax.ParseExpression([]byte(tc.src), "t.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		x := optimize(parsed)
		tests := map[hcl.Range]bool{}
		nullTests(x, tests)
		var attrs []string
		found := false
		for _, s := range varSpecs(x.Variables(), func(string) bool { return false }, tests) {
			if s.name == "auth" {
				found, attrs = true, s.attrs
			}
		}
		if !found || !reflect.DeepEqual(attrs, tc.attrs) || (attrs == nil) != (tc.attrs == nil) {
			t.Errorf("%s: auth attrs %#v, want %#v", tc.src, attrs, tc.attrs)
		}
	}

	// Evaluated: a rule whose only use of auth is a null test.
	dir := t.TempDir()
	src := "rule \"anonymous\" {\n  stage  = \"mail\"\n  when   = auth == null\n  action = \"reject\"\n}\n" +
		"rule \"known\" {\n  stage  = \"mail\"\n  when   = auth != null\n  action = \"warn\"\n}\n"
	path := filepath.Join(dir, "r.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := compileRuleFiles([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"", "a@example.com"} {
		res, err := e.eval(context.Background(), newDocument(mailInput(user, "a@example.com")))
		if err != nil {
			t.Fatal(err)
		}
		rejected, warned := res.reject != nil, len(res.warnings) == 1
		if rejected != (user == "") || warned != (user != "") {
			t.Errorf("user %q: rejected %v, warned %v", user, rejected, warned)
		}
	}
}
