package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// TestEvalCacheMatchesTopdown drives evalCache and topdown's own virtual
// cache with the same random Push, Pop, Put, Get and Keys calls, over
// references that share prefixes, and with more children under one node
// than the linear scan serves: every answer must be the same. The caches
// are reused through the pool between rounds, as evaluations reuse them.
func TestEvalCacheMatchesTopdown(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	heads := []*ast.Term{ast.DefaultRootDocument, ast.StringTerm("mailgate"), ast.StringTerm("deny")}
	// Keys of different kinds, equal values built separately (the cache
	// compares terms by value, not by pointer), and enough distinct ones
	// under one node to pass evalCacheScan.
	key := func() *ast.Term {
		switch rng.IntN(4) {
		case 0:
			return ast.StringTerm(fmt.Sprintf("k%d", rng.IntN(3*evalCacheScan)))
		case 1:
			return ast.IntNumberTerm(rng.IntN(5))
		case 2:
			return ast.ArrayTerm(ast.StringTerm("a@example.com"), ast.IntNumberTerm(rng.IntN(3)))
		default:
			return heads[rng.IntN(len(heads))]
		}
	}
	ref := func() ast.Ref {
		r := ast.Ref{heads[0], heads[1]}
		for range rng.IntN(3) {
			r = append(r, key())
		}
		return r
	}
	for round := range 200 {
		got := getEvalCache()
		want := topdown.NewVirtualCache()
		depth := 1
		for op := range 300 {
			switch n := rng.IntN(10); {
			case n == 0:
				got.Push()
				want.Push()
				depth++
			case n == 1 && depth > 1:
				got.Pop()
				want.Pop()
				depth--
			case n < 5:
				r := ref()
				var v *ast.Term
				if rng.IntN(4) > 0 {
					v = ast.IntNumberTerm(op)
				}
				got.Put(r, v)
				want.Put(r, v)
			case n < 9:
				r := ref()
				gv, gu := got.Get(r)
				wv, wu := want.Get(r)
				if gv != wv || gu != wu {
					t.Fatalf("round %d op %d: Get(%v) = %v, %v; topdown: %v, %v", round, op, r, gv, gu, wv, wu)
				}
			default:
				if g, w := refStrings(got.Keys()), refStrings(want.Keys()); !slices.Equal(g, w) {
					t.Fatalf("round %d op %d: Keys() = %v; topdown: %v", round, op, g, w)
				}
			}
		}
		putEvalCache(got)
	}
}

func refStrings(refs []ast.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	slices.Sort(out)
	return out
}

// TestEvalCacheReset: a pooled cache starts empty, whatever the previous
// evaluation left in it.
func TestEvalCacheReset(t *testing.T) {
	r := ast.MustParseRef("data.mailgate.user")
	c := getEvalCache()
	c.Put(r, ast.StringTerm("alice@example.com"))
	c.Push()
	c.Put(ast.MustParseRef("data.mailgate.max_recipients"), nil)
	putEvalCache(c)
	for range 4 {
		c := getEvalCache()
		if v, undefined := c.Get(r); v != nil || undefined {
			t.Fatalf("fresh cache has %v (undefined %v) for %v", v, undefined, r)
		}
		if k := c.Keys(); len(k) != 0 {
			t.Fatalf("fresh cache has keys %v", k)
		}
		putEvalCache(c)
	}
}
