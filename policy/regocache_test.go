package policy

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// TestStoreCache: what is put is found, at its ref and below it; a full
// cache stops caching; concurrent use is safe (go test -race).
func TestStoreCache(t *testing.T) {
	var c storeCache
	org := ast.MustParseTerm(`{"limits": {"alice": 5}, "name": "x"}`).Value
	c.Put(ast.MustParseRef("data.org"), org)
	if got := c.Get(ast.MustParseRef("data.org")); got == nil || got.Compare(org) != 0 {
		t.Errorf("data.org: %v", got)
	}
	if got := c.Get(ast.MustParseRef("data.org.limits.alice")); got == nil || got.Compare(ast.Number("5")) != 0 {
		t.Errorf("data.org.limits.alice: %v", got)
	}
	for _, miss := range []string{"data.org.limits.bob", "data.other", "data"} {
		if got := c.Get(ast.MustParseRef(miss)); got != nil {
			t.Errorf("%s: %v, want a miss", miss, got)
		}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range maxBaseCacheNodes {
				ref := ast.MustParseRef(fmt.Sprintf("data.users[\"u%d-%d\"]", g, i))
				c.Put(ref, ast.String("v"))
				_ = c.Get(ref)
			}
		}()
	}
	wg.Wait()
	if c.nodes > maxBaseCacheNodes {
		t.Errorf("%d nodes, bound %d", c.nodes, maxBaseCacheNodes)
	}
	late := ast.MustParseRef(`data.users["late"]`)
	c.Put(late, ast.String("v"))
	if c.Get(late) != nil {
		t.Errorf("a full cache still caches")
	}
}

// TestStoreCache_Decisions: with the store's documents cached across
// evaluations, each evaluation still reads the document its own input
// names, and a with-replaced document in one rule neither leaks into the
// cache nor into another evaluation.
func TestStoreCache_Decisions(t *testing.T) {
	p := newPolicy(t, Config{Rego: []RegoConfig{{Name: "org", Path: "."}}}, map[string]string{
		"data.json": `{"senders": {"a@example.com": {"max": 1}, "b@example.com": {"max": 5}}}`,
		"p.rego": `package mailgate

deny contains "unknown sender" if {
	input.stage == "rcpt"
	not data.senders[input.envelope.from]
}

deny contains "too many" if {
	input.stage == "rcpt"
	count(input.envelope.recipients) >= data.senders[input.envelope.from].max
}

over_limit if count(input.envelope.recipients) >= data.senders[input.envelope.from].max

warn contains "what if" if {
	input.stage == "rcpt"
	over_limit with data.senders as {input.envelope.from: {"max": 0}}
}
`,
	})
	ctx := context.Background()
	for range 3 {
		for _, tc := range []struct {
			from string
			n    int
			want Outcome
		}{
			{"a@example.com", 0, Accept},
			{"a@example.com", 1, Reject},
			{"b@example.com", 1, Accept},
			{"b@example.com", 5, Reject},
			{"c@example.com", 0, Reject},
		} {
			d, err := p.Evaluate(ctx, rcptInput("", tc.from, "x@example.org", tc.n))
			if err != nil || d.Outcome != tc.want || d.Outcome == Accept && len(d.Warnings) != 1 {
				t.Errorf("from %s, %d recipients: %+v %v, want %s", tc.from, tc.n, d, err, tc.want)
			}
		}
	}
}
