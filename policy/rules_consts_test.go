package policy

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestRuleConstantActions: an action expression that reads no variable is
// evaluated once at load and gives the same actions as one evaluated per
// message; one that reads the input is evaluated per message.
func TestRuleConstantActions(t *testing.T) {
	src := `rule "tag" {
  stage          = "data"
  when           = true
  action         = "accept"
  add_headers    = { "X-B" = lower("TWO"), "X-A" = "one" }
  remove_headers = ["X-Old"]
  dkim_domain    = envelope.from_domain
}
`
	path := filepath.Join(t.TempDir(), "r.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := compileRuleFiles([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	r := e.byStage[StageData][0]
	if _, ok := r.consts["add_headers"]; !ok {
		t.Errorf("add_headers not evaluated at load: consts %v", r.consts)
	}
	if _, ok := r.consts["dkim_domain"]; ok {
		t.Errorf("dkim_domain reads the input but was evaluated at load")
	}
	want := Actions{AddHeaders: []Header{{Name: "X-A", Value: "one"}, {Name: "X-B", Value: "two"}}, RemoveHeaders: []string{"X-Old"}}
	for _, from := range []string{"a@one.example", "b@two.example"} {
		in := dataInput("", from, []string{from}, nil).Normalize()
		res, err := e.eval(context.Background(), newDocument(in))
		if err != nil {
			t.Fatal(err)
		}
		want.DKIMDomain = domainOf(from)
		if !reflect.DeepEqual(res.actions, want) {
			t.Errorf("from %s: actions %+v, want %+v", from, res.actions, want)
		}
		// What an evaluation's caller does with its actions never
		// reaches the constant ones.
		res.actions.AddHeaders[0].Value = "changed"
		res.actions.AddHeaders = append(res.actions.AddHeaders, Header{Name: "X-C", Value: "three"})
	}
	if c := (Actions{AddHeaders: want.AddHeaders, RemoveHeaders: want.RemoveHeaders}); !reflect.DeepEqual(r.constActs, c) {
		t.Errorf("constant actions changed by evaluations: %+v, want %+v", r.constActs, c)
	}
}
