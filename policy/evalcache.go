package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// evalCache is OPA's cache of virtual documents for one evaluation
// (topdown's virtualCache: the same trie of reference terms per frame, the
// same Get, Put, Push, Pop and Keys contract), with its nodes kept for the
// next evaluation instead of allocated anew: the default cache allocates a
// frame, a node and a hash map per cached reference on every evaluation,
// about a tenth of the bytes an evaluation of the example policy
// allocates. An evalCache serves one evaluation at a time (evalCaches
// pools them) and is reset between two.
type evalCache struct {
	frames []*evalCacheNode
	// nodes are the nodes handed out since the last reset; spare holds
	// the ones ready for reuse.
	nodes []*evalCacheNode
	spare []*evalCacheNode
}

var _ topdown.VirtualCache = (*evalCache)(nil)

// evalCacheNode is one trie node. Children are usually few (the rules
// and the function calls of one policy) and found by a linear scan with
// ast.Term.Equal, the key equality topdown's cache uses; past
// evalCacheScan of them (a function called with many arguments) an index
// by ast.Term.Hash, as topdown's hash map has, finds them.
type evalCacheNode struct {
	value     *ast.Term
	undefined bool
	keys      []*ast.Term
	children  []*evalCacheNode
	index     map[int][]int
}

const evalCacheScan = 16

// maxEvalCacheNodes bounds what a pooled evalCache keeps: an evaluation
// that cached more (a policy iterating over thousands of values) leaves
// its cache to the garbage collector rather than pinning it in the pool.
const maxEvalCacheNodes = 1024

var evalCaches = sync.Pool{New: func() any { return &evalCache{} }}

// getEvalCache returns an empty cache with its root frame pushed.
func getEvalCache() *evalCache {
	c := evalCaches.Get().(*evalCache)
	c.Push()
	return c
}

// putEvalCache resets c and pools it. Terms it held stay valid for whoever
// still refers to them (the query's bindings); the cache drops its
// references so it pins none of them.
func putEvalCache(c *evalCache) {
	if len(c.nodes) > maxEvalCacheNodes {
		return
	}
	for _, n := range c.nodes {
		clear(n.keys)
		clear(n.children)
		*n = evalCacheNode{keys: n.keys[:0], children: n.children[:0]}
	}
	c.spare = append(c.spare, c.nodes...)
	clear(c.nodes)
	c.nodes = c.nodes[:0]
	clear(c.frames)
	c.frames = c.frames[:0]
	evalCaches.Put(c)
}

func (c *evalCache) node() *evalCacheNode {
	var n *evalCacheNode
	if k := len(c.spare); k > 0 {
		n = c.spare[k-1]
		c.spare = c.spare[:k-1]
	} else {
		n = &evalCacheNode{}
	}
	c.nodes = append(c.nodes, n)
	return n
}

func (n *evalCacheNode) child(k *ast.Term) *evalCacheNode {
	if n.index != nil {
		for _, i := range n.index[k.Hash()] {
			if n.keys[i].Equal(k) {
				return n.children[i]
			}
		}
		return nil
	}
	for i, x := range n.keys {
		if x.Equal(k) {
			return n.children[i]
		}
	}
	return nil
}

// add appends child c under key k.
func (n *evalCacheNode) add(k *ast.Term, c *evalCacheNode) {
	n.keys = append(n.keys, k)
	n.children = append(n.children, c)
	switch {
	case n.index != nil:
		h := k.Hash()
		n.index[h] = append(n.index[h], len(n.keys)-1)
	case len(n.keys) > evalCacheScan:
		n.index = make(map[int][]int, len(n.keys))
		for i, x := range n.keys {
			h := x.Hash()
			n.index[h] = append(n.index[h], i)
		}
	}
}

// Push pushes a new, empty frame.
func (c *evalCache) Push() { c.frames = append(c.frames, c.node()) }

// Pop drops the top frame and what it cached.
func (c *evalCache) Pop() {
	c.frames[len(c.frames)-1] = nil
	c.frames = c.frames[:len(c.frames)-1]
}

// Get returns the cached value of ref: (nil, true) when ref was recorded
// as undefined, (nil, false) when it is not cached.
func (c *evalCache) Get(ref ast.Ref) (*ast.Term, bool) {
	n := c.frames[len(c.frames)-1]
	for _, k := range ref {
		if n = n.child(k); n == nil {
			return nil, false
		}
	}
	if n.undefined {
		return nil, true
	}
	return n.value, false
}

// Put records value for ref in the top frame; a nil value records ref as
// undefined.
func (c *evalCache) Put(ref ast.Ref, value *ast.Term) {
	n := c.frames[len(c.frames)-1]
	for _, k := range ref {
		next := n.child(k)
		if next == nil {
			next = c.node()
			n.add(k, next)
		}
		n = next
	}
	if value != nil {
		n.value = value
	} else {
		n.undefined = true
	}
}

// Keys returns the references with a value in the top frame.
func (c *evalCache) Keys() []ast.Ref {
	return evalCacheKeys(nil, c.frames[len(c.frames)-1])
}

func evalCacheKeys(root ast.Ref, n *evalCacheNode) []ast.Ref {
	var keys []ast.Ref
	for i, k := range n.keys {
		ref := root.Append(k)
		child := n.children[i]
		if child.value != nil {
			keys = append(keys, ref)
		}
		if len(child.keys) > 0 {
			keys = append(keys, evalCacheKeys(ref, child)...)
		}
	}
	return keys
}
