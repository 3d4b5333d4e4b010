package policy

import (
	"net/netip"
	"regexp"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// ruleFunctions are the functions HCL rule expressions may call. None does
// I/O; all are deterministic.
//
// The parameters of our own functions allow marked values: mailgate marks
// no value, and a parameter that does not allow them makes cty walk every
// argument twice per call (ContainsMarked, UnmarkDeep) — a whole list or
// map for contains and length.
var ruleFunctions = map[string]function.Function{
	"lower":         stringMap(strings.ToLower, true),
	"upper":         stringMap(strings.ToUpper, true),
	"trimspace":     stringMap(strings.TrimSpace, false),
	"split":         stdlib.SplitFunc,
	"join":          stdlib.JoinFunc,
	"format":        stdlib.FormatFunc,
	"keys":          stdlib.KeysFunc,
	"lookup":        stdlib.LookupFunc,
	"coalesce":      stdlib.CoalesceFunc,
	"length":        lengthFunc,
	"try":           tryfunc.TryFunc,
	"can":           tryfunc.CanFunc,
	"startswith":    stringPredicate(strings.HasPrefix),
	"endswith":      stringPredicate(strings.HasSuffix),
	"contains":      containsFunc,
	"regex":         regexFunc,
	"domain":        domainFunc,
	"cidr_contains": cidrContainsFunc,
}

// stringMap is cty's stdlib lower, upper or trimspace (f, and dynamic
// as the stdlib parameter's AllowDynamicType) with a parameter that allows
// marked values: the same result and refinement, without the walks. It
// refines an unknown result itself (not null) rather than through a
// RefineResult, which would refine every known result too, an allocation
// per call for nothing (TestStringMapFuncs).
func stringMap(f func(string) string, dynamic bool) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "str", Type: cty.String, AllowDynamicType: dynamic, AllowMarked: true, AllowUnknown: true}},
		Type:   function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if !args[0].IsKnown() {
				return cty.UnknownVal(cty.String).RefineNotNull(), nil
			}
			return cty.StringVal(f(args[0].AsString())), nil
		},
	})
}

func stringPredicate(f func(s, affix string) bool) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "str", Type: cty.String, AllowMarked: true}, {Name: "affix", Type: cty.String, AllowMarked: true}},
		Type:   function.StaticReturnType(cty.Bool),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			return cty.BoolVal(f(args[0].AsString(), args[1].AsString())), nil
		},
	})
}

// containsFunc is contains(string, substring) or contains(list, value).
// Its parameters allow a value of unknown type, so at load, on a list not
// known yet (a for expression over the input), it is an unknown bool, not
// of unknown type: a when a && contains(…) is then split into conjuncts
// and stops at a false a (see conjuncts). A null argument is still refused.
var containsFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "haystack", Type: cty.DynamicPseudoType, AllowMarked: true, AllowDynamicType: true}, {Name: "needle", Type: cty.DynamicPseudoType, AllowMarked: true, AllowDynamicType: true}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		h, n := args[0], args[1]
		if h.Type() == cty.String {
			if n.Type() != cty.String {
				return cty.NilVal, function.NewArgErrorf(1, "contains on a string needs a string, got %s", n.Type().FriendlyName())
			}
			return cty.BoolVal(strings.Contains(h.AsString(), n.AsString())), nil
		}
		if !h.CanIterateElements() {
			return cty.NilVal, function.NewArgErrorf(0, "contains needs a string, list or set, got %s", h.Type().FriendlyName())
		}
		if nt := n.Type(); (nt == cty.String || nt == cty.Bool) && !h.Type().IsMapType() && !h.Type().IsObjectType() {
			// Fast path for the common list-of-strings case, and for a
			// list of bools (contains([for … : test], false)): compare
			// the Go values directly instead of stdlib.Contains, which
			// calls cty.Value.Equals per element through a second
			// function call.
			for it := h.ElementIterator(); it.Next(); {
				_, e := it.Element()
				switch {
				case !e.IsKnown():
					return cty.UnknownVal(cty.Bool), nil
				case e.IsNull() || e.Type() != nt:
					continue
				case nt == cty.String && e.AsString() == n.AsString(), nt == cty.Bool && e.True() == n.True():
					return cty.True, nil
				}
			}
			return cty.False, nil
		}
		return stdlib.Contains(h, n)
	},
})

// memo caches a parse of rule constants: patterns and prefixes are almost
// always literals, so each is parsed once per process. It keeps at most
// 4096 entries.
type memo[T any] struct {
	mu sync.RWMutex
	m  map[string]T
}

func (c *memo[T]) get(k string, parse func(string) (T, error)) (T, error) {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := parse(k)
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]T{}
	}
	if len(c.m) < 4096 {
		c.m[k] = v
	}
	c.mu.Unlock()
	return v, nil
}

var (
	regexCache  memo[*regexp.Regexp]
	prefixCache memo[netip.Prefix]
)

// compileRegex compiles p once per process.
func compileRegex(p string) (*regexp.Regexp, error) { return regexCache.get(p, regexp.Compile) }

// regexFunc is regex(pattern, string): whether the RE2 pattern matches.
var regexFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "pattern", Type: cty.String, AllowMarked: true}, {Name: "str", Type: cty.String, AllowMarked: true}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		re, err := compileRegex(args[0].AsString())
		if err != nil {
			return cty.NilVal, function.NewArgError(0, err)
		}
		return cty.BoolVal(re.MatchString(args[1].AsString())), nil
	},
})

// domainFunc is domain(address): the lower-cased domain part, "" if none.
var domainFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "address", Type: cty.String, AllowMarked: true}},
	Type:   function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.StringVal(domainOf(args[0].AsString())), nil
	},
})

// cidrContainsFunc is cidr_contains(prefix, ip).
var cidrContainsFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "prefix", Type: cty.String, AllowMarked: true}, {Name: "ip", Type: cty.String, AllowMarked: true}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		p, err := prefixCache.get(args[0].AsString(), netip.ParsePrefix)
		if err != nil {
			return cty.NilVal, function.NewArgError(0, err)
		}
		ip, err := netip.ParseAddr(args[1].AsString())
		if err != nil {
			return cty.False, nil // an unparsable client address is in no network
		}
		return cty.BoolVal(p.Contains(ip.Unmap())), nil
	},
})

// lengthFunc is length(string | list | map | set | tuple | object): the
// number of characters of a string, else of elements.
var lengthFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "value", Type: cty.DynamicPseudoType, AllowMarked: true}},
	Type:   function.StaticReturnType(cty.Number),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		v := args[0]
		switch {
		case v.Type() == cty.String:
			return stdlib.Strlen(v)
		case v.Type().IsObjectType():
			return cty.NumberIntVal(int64(len(v.Type().AttributeTypes()))), nil
		case v.CanIterateElements():
			return v.Length(), nil
		}
		return cty.NilVal, function.NewArgErrorf(0, "length needs a string or a collection, got %s", v.Type().FriendlyName())
	},
})
