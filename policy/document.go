package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/zclconf/go-cty/cty"
)

// Normalize returns a copy of in as engines see it: Version set when zero,
// nil lists and maps made empty (so policies never meet null where the
// contract promises a list), FromDomain and Rcpt.Domain derived from the
// addresses when empty, and domains lower-cased. It never changes an
// address.
func (in Input) Normalize() Input { return in.normalize(true) }

// normalize is Normalize, leaving a nil Quota nil when quota is false (for
// a caller that sets it).
func (in Input) normalize(quota bool) Input {
	if in.Version == 0 {
		in.Version = InputVersion
	}
	if in.Envelope.Recipients == nil {
		in.Envelope.Recipients = []string{}
	}
	if in.Envelope.FromDomain == "" {
		in.Envelope.FromDomain = domainOf(in.Envelope.From)
	} else {
		in.Envelope.FromDomain = strings.ToLower(in.Envelope.FromDomain)
	}
	// Rcpt and Message are copied only to change them: the caller's stay
	// as they were.
	if r := in.Rcpt; r != nil {
		d := r.Domain
		if d == "" {
			d = domainOf(r.Address)
		} else {
			d = strings.ToLower(d)
		}
		if d != r.Domain {
			c := *r
			c.Domain = d
			in.Rcpt = &c
		}
	}
	if in.Quota == nil && quota {
		in.Quota = map[string]QuotaState{}
	}
	if m := in.Message; m != nil && (m.Headers == nil || m.FromAddresses == nil) {
		c := *m
		if c.Headers == nil {
			c.Headers = map[string][]string{}
		}
		if c.FromAddresses == nil {
			c.FromAddresses = []string{}
		}
		in.Message = &c
	}
	return in
}

// domainOf returns the lower-cased domain part of an address, or "" when it
// has none (the null sender "<>" included).
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[i+1:], ">"))
}

// ParseInput decodes a possibly partial Input document from JSON, as used by
// the eval tool and by test fixtures. Missing fields take test defaults
// (session id "test", listener "submission", client 192.0.2.1) and the
// result is normalized. Unknown fields are an error, so a typo in a fixture
// cannot silently test nothing.
func ParseInput(data []byte) (Input, error) {
	in := Input{
		Version: InputVersion,
		Session: Session{ID: "test", Listener: "submission", ClientIP: "192.0.2.1", HELO: "client.example"},
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return Input{}, fmt.Errorf("policy: input: %w", err)
	}
	switch in.Stage {
	case StageMail, StageRcpt, StageData:
	default:
		return Input{}, fmt.Errorf("policy: input: stage %q: want mail, rcpt or data", in.Stage)
	}
	if in.Stage == StageRcpt && in.Rcpt == nil {
		return Input{}, fmt.Errorf("policy: input: stage rcpt needs rcpt")
	}
	if in.Stage == StageData && in.Message == nil {
		in.Message = &Message{}
	}
	return in.Normalize(), nil
}

// ---- Rego: the input as an ast.Value, built directly (no JSON round trip).

func strTerm(s string) *ast.Term {
	if s == "" {
		return ast.InternedEmptyString
	}
	return ast.StringTerm(s)
}

func strArray(ss []string) *ast.Term {
	if len(ss) == 0 {
		return ast.InternedEmptyArray
	}
	ts := make([]*ast.Term, len(ss))
	for i, s := range ss {
		ts[i] = strTerm(s)
	}
	return ast.ArrayTerm(ts...)
}

// keyTerms are the object keys of the input document, built once: terms
// are immutable during evaluation, so every input shares them.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{"version", "stage", "session", "auth", "envelope", "rcpt", "message",
		"id", "listener", "client_ip", "helo", "tls", "cipher", "user", "mechanism", "from", "from_domain",
		"recipients", "size", "smtputf8", "address", "domain", "headers", "from_addresses",
		"quota", "key", "action", "exceeded", "messages", "new_recipients", "window", "limit", "used",
		"remaining", "retry_after"} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

// stageTerms are the values of input.stage, built once like keyTerms (OPA
// interns no such strings, so a fresh term would cost two allocations on
// every evaluation).
var stageTerms = map[Stage]*ast.Term{
	StageMail: ast.StringTerm(string(StageMail)),
	StageRcpt: ast.StringTerm(string(StageRcpt)),
	StageData: ast.StringTerm(string(StageData)),
}

func stageTerm(st Stage) *ast.Term {
	if t, ok := stageTerms[st]; ok {
		return t
	}
	return ast.InternedTerm(string(st))
}

func item(k string, v *ast.Term) [2]*ast.Term {
	kt := keyTerms[k]
	if kt == nil {
		kt = ast.StringTerm(k)
	}
	return ast.Item(kt, v)
}

// inputShape is the part of the input document a Rego policy can observe:
// the paths of its references to input. A node with all set is needed
// whole; otherwise only its keys are, each with its own shape. Engines
// compute it once at load (regoInputShape); astValue builds nothing
// outside it.
type inputShape struct {
	all  bool
	keys map[string]*inputShape
}

// fullShape needs the whole document.
var fullShape = &inputShape{all: true}

// get returns the shape of key k, nil when k is not needed.
func (s *inputShape) get(k string) *inputShape {
	if s.all {
		return s
	}
	return s.keys[k]
}

// add records a reference to input: ref[1:] while its keys are strings;
// the node it stops at is needed whole (a variable or number key ranges
// over it, and a reference's value may be used whole).
func (s *inputShape) add(ref ast.Ref) {
	n := s
	for _, t := range ref[1:] {
		if n.all {
			return
		}
		k, ok := t.Value.(ast.String)
		if !ok {
			break
		}
		c := n.keys[string(k)]
		if c == nil {
			if n.keys == nil {
				n.keys = map[string]*inputShape{}
			}
			c = &inputShape{}
			n.keys[string(k)] = c
		}
		n = c
	}
	n.all, n.keys = true, nil
}

// regoInputShape is the shape of input the compiled modules of c refer to.
// The compiler has resolved imports (import input.envelope) into full
// references, so every way a module can read input is a reference rooted
// at input; a bare input (object.get(input, …), walk(input)) needs all.
//
// With a stage (not allStages) the rules bound to another stage (see
// ruleStage) are left out: a conjunct of their body fails at this stage,
// so they are undefined whatever else they read, and OPA's rule index
// skips them without evaluating their body (the per-stage queries rely on
// that too). Imports are always counted.
func regoInputShape(c *ast.Compiler, st Stage) *inputShape {
	s := &inputShape{}
	add := func(x any) {
		ast.WalkRefs(x, func(r ast.Ref) bool {
			if r.HasPrefix(ast.InputRootRef) {
				s.add(r)
			}
			return false
		})
	}
	for _, m := range c.Modules {
		if st == allStages {
			add(m)
			continue
		}
		for _, imp := range m.Imports {
			add(imp)
		}
		for _, r := range m.Rules {
			if rs := ruleStage(r); rs == allStages || rs == st {
				add(r)
			}
		}
	}
	return s
}

// astValue builds the whole Rego input of a normalized Input.
func astValue(in *Input) ast.Value { return astInput(in, fullShape) }

// astInput builds the Rego input of a normalized Input, the parts in s
// only. It matches the JSON form of Input: rcpt and message are absent
// outside their stages, auth and session.tls are null when unset.
func astInput(in *Input, s *inputShape) ast.Value {
	o := newObject(s)
	if o.want("version") {
		o.add("version", ast.InternedTerm(in.Version))
	}
	if o.want("stage") {
		o.add("stage", stageTerm(in.Stage))
	}
	if c := s.get("session"); c != nil {
		o.add("session", sessionTerm(&in.Session, c))
	}
	if c := s.get("auth"); c != nil {
		auth := ast.InternedNullTerm
		if in.Auth != nil {
			a := newObject(c)
			a.str("user", in.Auth.User)
			a.str("mechanism", in.Auth.Mechanism)
			auth = a.term()
		}
		o.add("auth", auth)
	}
	if c := s.get("envelope"); c != nil {
		e, env := &in.Envelope, newObject(c)
		env.str("from", e.From)
		env.str("from_domain", e.FromDomain)
		if env.want("recipients") {
			env.add("recipients", strArray(e.Recipients))
		}
		if env.want("size") {
			env.add("size", ast.InternedTerm(int(e.Size)))
		}
		if env.want("smtputf8") {
			env.add("smtputf8", ast.InternedTerm(e.SMTPUTF8))
		}
		o.add("envelope", env.term())
	}
	if c := s.get("rcpt"); c != nil && in.Rcpt != nil {
		r := newObject(c)
		r.str("address", in.Rcpt.Address)
		r.str("domain", in.Rcpt.Domain)
		o.add("rcpt", r.term())
	}
	if c := s.get("message"); c != nil && in.Message != nil {
		m, msg := in.Message, newObject(c)
		if hs := c.get("headers"); hs != nil {
			msg.add("headers", headersTerm(m.Headers, hs))
		}
		if msg.want("from_addresses") {
			msg.add("from_addresses", strArray(m.FromAddresses))
		}
		if msg.want("size") {
			msg.add("size", ast.InternedTerm(int(m.Size)))
		}
		o.add("message", msg.term())
	}
	if c := s.get("quota"); c != nil {
		o.add("quota", quotaTerm(in.Quota, c))
	}
	return ast.NewObject(o.items()...)
}

// object collects the items of one object of the input that its shape
// needs. The items live in an array inside the object, so an object
// built and turned into a term in one function stays on the stack (OPA
// copies the items); no object of the input has more than objectItems
// items, and more would go to extra.
type object struct {
	s     *inputShape
	n     int
	kv    [objectItems][2]*ast.Term
	extra [][2]*ast.Term
}

// objectItems is the most items an object of the input has: the input
// itself (version, stage, session, auth, envelope, rcpt, message, quota).
const objectItems = 8

func newObject(s *inputShape) object { return object{s: s} }

func (o *object) want(k string) bool { return o.s.get(k) != nil }

func (o *object) add(k string, v *ast.Term) {
	if o.n == len(o.kv) {
		o.extra = append(o.extra, item(k, v))
		return
	}
	o.kv[o.n] = item(k, v)
	o.n++
}

// items returns the items added, in order.
func (o *object) items() [][2]*ast.Term {
	if o.extra == nil {
		return o.kv[:o.n]
	}
	return append(o.kv[:o.n:o.n], o.extra...)
}

// str adds a string item when the shape needs it.
func (o *object) str(k, v string) {
	if o.want(k) {
		o.add(k, strTerm(v))
	}
}

func (o *object) term() *ast.Term { return ast.ObjectTerm(o.items()...) }

func sessionTerm(ss *Session, s *inputShape) *ast.Term {
	o := newObject(s)
	o.str("id", ss.ID)
	o.str("listener", ss.Listener)
	o.str("client_ip", ss.ClientIP)
	o.str("helo", ss.HELO)
	if o.want("tls") {
		tls := ast.InternedNullTerm
		if ss.TLS != nil {
			tls = ast.ObjectTerm(item("version", strTerm(ss.TLS.Version)), item("cipher", strTerm(ss.TLS.Cipher)))
		}
		o.add("tls", tls)
	}
	return o.term()
}

// headersTerm builds the headers object: every header when s needs all,
// else only the header names s names.
func headersTerm(hs map[string][]string, s *inputShape) *ast.Term {
	kv := make([][2]*ast.Term, 0, len(hs))
	if s.all {
		for k, v := range hs {
			kv = append(kv, item(k, strArray(v)))
		}
	} else {
		for k := range s.keys {
			if v, ok := hs[k]; ok {
				kv = append(kv, item(k, strArray(v)))
			}
		}
	}
	return ast.ObjectTerm(kv...)
}

// quotaTerm builds the quota object: every quota when s needs all, else
// the quotas s names.
func quotaTerm(qs map[string]QuotaState, s *inputShape) *ast.Term {
	if len(qs) == 0 {
		return ast.InternedEmptyObject
	}
	windows := func(ws []QuotaWindow) *ast.Term {
		if len(ws) == 0 {
			return ast.InternedEmptyArray
		}
		ts := make([]*ast.Term, len(ws))
		for i, w := range ws {
			ts[i] = ast.ObjectTerm(item("window", strTerm(w.Window)), item("limit", ast.IntNumberTerm(int(w.Limit))),
				item("used", ast.IntNumberTerm(int(w.Used))), item("remaining", ast.IntNumberTerm(int(w.Remaining))),
				item("retry_after", ast.IntNumberTerm(int(w.RetryAfter))))
		}
		return ast.ArrayTerm(ts...)
	}
	items := make([][2]*ast.Term, 0, len(qs))
	for name, q := range qs {
		if s.get(name) == nil {
			continue
		}
		items = append(items, item(name, ast.ObjectTerm(
			item("key", strTerm(q.Key)), item("action", strTerm(q.Action)),
			item("exceeded", ast.InternedTerm(q.Exceeded)),
			item("messages", windows(q.Messages)), item("recipients", windows(q.Recipients)),
			item("new_recipients", windows(q.NewRecipients)),
		)))
	}
	return ast.ObjectTerm(items...)
}

// ---- HCL: the input as a cty value of the schema type.

var (
	tlsType     = cty.Object(map[string]cty.Type{"version": cty.String, "cipher": cty.String})
	sessionType = cty.Object(map[string]cty.Type{"id": cty.String, "listener": cty.String, "client_ip": cty.String, "helo": cty.String, "tls": tlsType})
	authType    = cty.Object(map[string]cty.Type{"user": cty.String, "mechanism": cty.String})
	envType     = cty.Object(map[string]cty.Type{"from": cty.String, "from_domain": cty.String, "recipients": cty.List(cty.String), "size": cty.Number, "smtputf8": cty.Bool})
	rcptType    = cty.Object(map[string]cty.Type{"address": cty.String, "domain": cty.String})
	messageType = cty.Object(map[string]cty.Type{"headers": cty.Map(cty.List(cty.String)), "from_addresses": cty.List(cty.String), "size": cty.Number})
	windowType  = cty.Object(map[string]cty.Type{"window": cty.String, "limit": cty.Number, "used": cty.Number, "remaining": cty.Number, "retry_after": cty.Number})
	quotaType   = cty.Object(map[string]cty.Type{"key": cty.String, "action": cty.String, "exceeded": cty.Bool,
		"messages": cty.List(windowType), "recipients": cty.List(windowType), "new_recipients": cty.List(windowType)})

	// schemaTypes are the types of the variables HCL expressions see.
	schemaTypes = map[string]cty.Type{
		"version": cty.Number, "stage": cty.String, "session": sessionType, "auth": authType,
		"envelope": envType, "rcpt": rcptType, "message": messageType, "quota": cty.Map(quotaType),
	}
)

// emptyStrList and emptyHeaders are built once: cty values are immutable,
// and each constructor allocates its type anew.
var (
	emptyStrList = cty.ListValEmpty(cty.String)
	emptyHeaders = cty.MapValEmpty(cty.List(cty.String))
)

func strList(ss []string) cty.Value {
	if len(ss) == 0 {
		return emptyStrList
	}
	vs := make([]cty.Value, len(ss))
	for i, s := range ss {
		vs[i] = cty.StringVal(s)
	}
	return cty.ListVal(vs)
}

// ctyVar builds one HCL variable of a normalized Input. rcpt and message
// are typed nulls outside their stages, auth and session.tls typed nulls
// when unset.
func ctyVar(in *Input, name string) cty.Value {
	switch name {
	case "version":
		return cty.NumberIntVal(int64(in.Version))
	case "stage":
		return cty.StringVal(string(in.Stage))
	case "session":
		tls := cty.NullVal(tlsType)
		if in.Session.TLS != nil {
			tls = cty.ObjectVal(map[string]cty.Value{"version": cty.StringVal(in.Session.TLS.Version), "cipher": cty.StringVal(in.Session.TLS.Cipher)})
		}
		return cty.ObjectVal(map[string]cty.Value{
			"id": cty.StringVal(in.Session.ID), "listener": cty.StringVal(in.Session.Listener),
			"client_ip": cty.StringVal(in.Session.ClientIP), "helo": cty.StringVal(in.Session.HELO), "tls": tls,
		})
	case "auth":
		if in.Auth == nil {
			return cty.NullVal(authType)
		}
		return cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal(in.Auth.User), "mechanism": cty.StringVal(in.Auth.Mechanism)})
	case "envelope":
		return cty.ObjectVal(map[string]cty.Value{
			"from": cty.StringVal(in.Envelope.From), "from_domain": cty.StringVal(in.Envelope.FromDomain),
			"recipients": strList(in.Envelope.Recipients), "size": cty.NumberIntVal(in.Envelope.Size),
			"smtputf8": cty.BoolVal(in.Envelope.SMTPUTF8),
		})
	case "rcpt":
		if in.Rcpt == nil {
			return cty.NullVal(rcptType)
		}
		return cty.ObjectVal(map[string]cty.Value{"address": cty.StringVal(in.Rcpt.Address), "domain": cty.StringVal(in.Rcpt.Domain)})
	case "message":
		if in.Message == nil {
			return cty.NullVal(messageType)
		}
		return cty.ObjectVal(map[string]cty.Value{
			"headers": headersCty(in.Message.Headers), "from_addresses": strList(in.Message.FromAddresses), "size": cty.NumberIntVal(in.Message.Size),
		})
	case "quota":
		return quotaCty(in.Quota)
	}
	return cty.NilVal
}

func headersCty(hs map[string][]string) cty.Value {
	if len(hs) == 0 {
		return emptyHeaders
	}
	m := make(map[string]cty.Value, len(hs))
	for k, v := range hs {
		m[k] = strList(v)
	}
	return cty.MapVal(m)
}

func quotaCty(qs map[string]QuotaState) cty.Value {
	if len(qs) == 0 {
		return cty.MapValEmpty(quotaType)
	}
	windows := func(ws []QuotaWindow) cty.Value {
		if len(ws) == 0 {
			return cty.ListValEmpty(windowType)
		}
		vs := make([]cty.Value, len(ws))
		for i, w := range ws {
			vs[i] = cty.ObjectVal(map[string]cty.Value{
				"window": cty.StringVal(w.Window), "limit": cty.NumberIntVal(w.Limit), "used": cty.NumberIntVal(w.Used),
				"remaining": cty.NumberIntVal(w.Remaining), "retry_after": cty.NumberIntVal(w.RetryAfter),
			})
		}
		return cty.ListVal(vs)
	}
	m := make(map[string]cty.Value, len(qs))
	for name, q := range qs {
		m[name] = cty.ObjectVal(map[string]cty.Value{
			"key": cty.StringVal(q.Key), "action": cty.StringVal(q.Action), "exceeded": cty.BoolVal(q.Exceeded),
			"messages": windows(q.Messages), "recipients": windows(q.Recipients), "new_recipients": windows(q.NewRecipients),
		})
	}
	return cty.MapVal(m)
}
