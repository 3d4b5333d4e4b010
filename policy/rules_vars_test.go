package policy

import (
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
		for _, s := range varSpecs(trs, func(string) bool { return false }) {
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
