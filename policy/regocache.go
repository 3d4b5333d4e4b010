package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// maxBaseCacheNodes bounds a storeCache: a policy may read the store at a
// reference built from the input (data.users[input.envelope.from]), and
// the cache must not grow with the senders it has seen. Past the bound a
// read goes to the store, as it does on a miss.
const maxBaseCacheNodes = 4096

// storeCache is OPA's cache of documents read from the store (topdown's
// baseCache, the same tree and lookups), shared by every evaluation of one
// engine instead of built anew per evaluation. Sharing is sound because an
// engine's store is never written after load (see regoEngine.static): a
// document read once is the same for every later evaluation. OPA puts only
// what it read from the store here, never a with-replaced value. Safe for
// concurrent use.
type storeCache struct {
	mu    sync.RWMutex
	root  storeCacheNode
	nodes int
}

type storeCacheNode struct {
	value    ast.Value
	children map[ast.Value]*storeCacheNode
}

// Get returns the document at ref, nil when not cached.
func (c *storeCache) Get(ref ast.Ref) ast.Value {
	c.mu.RLock()
	defer c.mu.RUnlock()
	node := &c.root
	for i := range ref {
		node = node.children[ref[i].Value]
		if node == nil {
			return nil
		}
		if node.value != nil {
			if len(ref) == 1 && ast.IsScalar(node.value) {
				return node.value
			}
			v, err := node.value.Find(ref[i+1:])
			if err != nil {
				return nil
			}
			return v
		}
	}
	return nil
}

// Put records the document at ref, unless the cache is full.
func (c *storeCache) Put(ref ast.Ref, value ast.Value) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes+len(ref) > maxBaseCacheNodes {
		return
	}
	node := &c.root
	for i := range ref {
		child, ok := node.children[ref[i].Value]
		if !ok {
			child = &storeCacheNode{}
			if node.children == nil {
				node.children = map[ast.Value]*storeCacheNode{}
			}
			node.children[ref[i].Value] = child
			c.nodes++
		}
		node = child
	}
	node.value, node.children = value, nil
}
