package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/mailgate/mailgate/policy/quota"
)

// Reservation is what the quotas of one or more stages reserved. The proxy
// ends every reservation it receives: Commit after the upstream's 250,
// Release on anything else. A nil *Reservation is valid and ends nothing;
// ending one twice is harmless (the second call does nothing).
type Reservation struct {
	store  quota.Store
	now    func() time.Time
	mu     sync.Mutex
	groups []reservedGroup
	// buf backs groups for a transaction's usual two stages (mail and
	// rcpt joined), so neither the reservation nor Join allocates more.
	buf [2]reservedGroup
}

type reservedGroup struct {
	id    string
	parts []quota.Part
}

// Join adds o's units to r and returns the result, so one Commit or
// Release ends both. Either may be nil.
func (r *Reservation) Join(o *Reservation) *Reservation {
	if r == nil {
		return o
	}
	if o == nil || o == r {
		return r
	}
	o.mu.Lock()
	gs := o.groups
	o.groups = nil
	o.mu.Unlock()
	r.mu.Lock()
	r.groups = append(r.groups, gs...)
	r.mu.Unlock()
	return r
}

func (r *Reservation) take() []reservedGroup {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	gs := r.groups
	r.groups = nil
	return gs
}

// Commit counts the reserved units as sent.
func (r *Reservation) Commit(ctx context.Context) error {
	var errs []error
	gs := r.take()
	if len(gs) == 0 {
		return nil
	}
	now := r.now()
	for _, g := range gs {
		if err := r.store.Commit(ctx, g.id, now, g.parts); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Release gives the reserved units back.
func (r *Reservation) Release(ctx context.Context) error {
	var errs []error
	for _, g := range r.take() {
		if err := r.store.Release(ctx, g.id, g.parts); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// quotaCheck is what the quotas concluded for one stage.
type quotaCheck struct {
	states   map[string]QuotaState
	res      *Reservation
	refusal  *Decision // the first enforced quota without room, or a store failure
	warnings []Warning
}

// applies says whether d counts something at stage.
func (d *quotaDef) applies(stage Stage) bool {
	switch stage {
	case StageMail:
		return !d.perRcpt && len(d.messages) > 0
	case StageRcpt:
		return len(d.rcpts) > 0 || len(d.newRcpts) > 0
	}
	return false
}

// checkQuotas evaluates the quotas that apply to doc's stage and reserves
// their units in one call to the store.
func (p *Policy) checkQuotas(ctx context.Context, qs *Quotas, doc *document) quotaCheck {
	var c quotaCheck
	stage := doc.in.Stage
	sq := qs.stage(stage)
	if sq == nil {
		return c
	}
	// The requests of one quota are contiguous in reqs: reqs[first:end].
	type pending struct {
		def        *quotaDef
		key        string
		first, end int
	}
	var (
		reqs    = make([]quota.Request, 0, sq.nreqs)
		buf     [8]pending
		applied = buf[:0]
		evalErr *quotaDef
	)
	// One evaluation context for every quota of the stage, holding the
	// input attributes any of them reads; the context and its maps are
	// reused from one stage to the next (the values are the stage's own).
	var (
		sc   *evalScratch
		ectx *hcl.EvalContext
	)
	if sq.hcl {
		sc = getEvalScratch()
		fillVars(sc.ectx.Variables, &doc.in, sq.vars, sc.attrs)
		ectx = &sc.ectx
	}
	for _, d := range sq.defs {
		key, ok, err := d.evalKey(ectx, &doc.in)
		if err != nil {
			p.log.LogAttrs(ctx, slog.LevelError, "quota key failed", slog.String("quota", d.name),
				slog.String("session", doc.in.Session.ID), slog.Any("error", err))
			if d.onError == OnErrorDefer && evalErr == nil {
				evalErr = d
			}
			continue
		}
		if !ok {
			continue
		}
		pd := pending{def: d, key: key, first: len(reqs)}
		enforce := d.action != "warn"
		if stage == StageMail {
			reqs = appendRequest(reqs, d, key, quota.Messages, d.messages, enforce, "")
		} else {
			reqs = appendRequest(reqs, d, key, quota.Recipients, d.rcpts, enforce, "")
			if len(d.newRcpts) > 0 {
				reqs = appendRequest(reqs, d, key, quota.NewRecipients, d.newRcpts, enforce, strings.ToLower(doc.in.Rcpt.Address))
			}
		}
		pd.end = len(reqs)
		applied = append(applied, pd)
	}
	if sc != nil {
		putEvalScratch(sc, sq.vars)
	}
	if evalErr != nil {
		c.refusal = quotaUnavailable(evalErr.name)
		return c
	}
	if len(reqs) == 0 {
		return c
	}
	id := newReservationID()
	results, reserved, err := p.store.Reserve(ctx, id, p.now(), reservationTTL, reqs)
	if err != nil {
		p.log.LogAttrs(ctx, slog.LevelError, "quota store failed", slog.String("session", doc.in.Session.ID), slog.Any("error", err))
		for _, a := range applied {
			if a.def.onError == OnErrorDefer {
				c.refusal = quotaUnavailable(a.def.name)
				return c
			}
		}
		return c // every quota involved says on_error = "accept"
	}
	c.states = make(map[string]QuotaState, len(applied))
	nparts, nlevels := 0, 0
	for i := range results {
		if reserved && results[i].Charged > 0 {
			nparts++
		}
		nlevels += len(results[i].Levels)
	}
	var parts []quota.Part
	if nparts > 0 {
		parts = make([]quota.Part, 0, nparts)
	}
	// The windows of every quota of the stage, cut into each state's.
	levels := make([]QuotaWindow, nlevels)
	for _, a := range applied {
		st := QuotaState{Key: a.key, Action: a.def.action, Messages: []QuotaWindow{}, Recipients: []QuotaWindow{}, NewRecipients: []QuotaWindow{}}
		var worst time.Duration
		worstText := ""
		for i := a.first; i < a.end; i++ {
			r, res := &reqs[i], &results[i]
			texts := a.def.texts[r.Counter.Kind]
			n := len(res.Levels)
			ws := levels[:n:n]
			levels = levels[n:]
			for j, l := range res.Levels {
				ws[j] = QuotaWindow{Window: texts[j], Limit: l.Window.Limit, Used: l.Used,
					Remaining: max(l.Window.Limit-l.Used, 0), RetryAfter: int64((l.RetryAfter + time.Second - 1) / time.Second)}
				if l.RetryAfter > 0 && (worstText == "" || l.RetryAfter > worst) {
					worst, worstText = l.RetryAfter, kindLabel(r.Counter.Kind)+texts[j]
				}
			}
			switch r.Counter.Kind {
			case quota.Messages:
				st.Messages = ws
			case quota.Recipients:
				st.Recipients = ws
			default:
				st.NewRecipients = ws
			}
			if !res.Fits {
				st.Exceeded = true
			}
			if reserved && res.Charged > 0 {
				parts = append(parts, quota.Part{Counter: r.Counter, Windows: r.Windows, Amount: res.Charged,
					Recipient: r.Recipient, Remember: r.Remember})
			}
		}
		c.states[a.def.name] = st
		if !st.Exceeded {
			p.trips.clear(a.def.name, a.key)
			continue
		}
		if worstText == "" {
			worstText = "limit"
		}
		msg := fmt.Sprintf("quota %s exceeded (%s)", a.def.name, worstText)
		if p.trips.first(a.def.name, a.key) {
			p.log.LogAttrs(ctx, slog.LevelWarn, "quota exceeded", slog.String("quota", a.def.name),
				slog.String("key", a.key), slog.String("window", worstText), slog.String("action", a.def.action),
				slog.Duration("retry_after", worst.Round(time.Second)), slog.String("session", doc.in.Session.ID))
		}
		// As between engines: the first reject wins, else the first defer.
		switch {
		case a.def.action == "warn":
			c.warnings = append(c.warnings, Warning{Engine: QuotaEngine, Rule: a.def.name, Message: msg})
		case a.def.action == "reject" && (c.refusal == nil || c.refusal.Outcome != Reject):
			c.refusal = &Decision{Outcome: Reject, Code: defaultRejectCode, EnhancedCode: defaultRejectEnh,
				Message: msg, Engine: QuotaEngine, Rule: a.def.name}
		case a.def.action == "defer" && c.refusal == nil:
			c.refusal = &Decision{Outcome: Defer, Code: defaultDeferCode, EnhancedCode: defaultDeferEnh,
				Message: msg + ", retry in " + formatRetry(worst), Engine: QuotaEngine, Rule: a.def.name}
		}
	}
	if reserved && len(parts) > 0 {
		r := &Reservation{store: p.store, now: p.now}
		r.buf[0] = reservedGroup{id: id, parts: parts}
		r.groups = r.buf[:1]
		c.res = r
	}
	return c
}

// appendRequest appends d's request for ws of kind k, when it has any.
func appendRequest(reqs []quota.Request, d *quotaDef, key string, k quota.Kind, ws []quota.Window, enforce bool, rcpt string) []quota.Request {
	if len(ws) == 0 {
		return reqs
	}
	r := quota.Request{Counter: quota.Counter{Quota: d.name, Key: key, Kind: k}, Windows: ws, Amount: 1, Enforce: enforce}
	if k == quota.NewRecipients {
		r.Recipient, r.Remember = rcpt, d.remember
	}
	return append(reqs, r)
}

// evalScratch is an evaluation context for quota keys, with the maps
// fillVars fills, kept between stages so that a stage does not build
// them anew. Only the variables' values are the stage's own.
type evalScratch struct {
	ectx  hcl.EvalContext
	attrs map[string]cty.Value
}

var evalScratchPool = sync.Pool{New: func() any {
	return &evalScratch{ectx: hcl.EvalContext{Variables: map[string]cty.Value{}, Functions: ruleFunctions},
		attrs: map[string]cty.Value{}}
}}

func getEvalScratch() *evalScratch { return evalScratchPool.Get().(*evalScratch) }

// putEvalScratch drops the stage's values (they hold its input) and
// returns sc to the pool. fillVars left sc.attrs empty.
func putEvalScratch(sc *evalScratch, specs []varSpec) {
	for _, s := range specs {
		delete(sc.ectx.Variables, s.name)
	}
	evalScratchPool.Put(sc)
}

func kindLabel(k quota.Kind) string {
	switch k {
	case quota.Recipients:
		return "recipients "
	case quota.NewRecipients:
		return "new recipients "
	}
	return ""
}

func quotaUnavailable(name string) *Decision {
	return &Decision{Outcome: Defer, Code: defaultDeferCode, EnhancedCode: defaultDeferEnh,
		Message: "quota " + name + " temporarily unavailable, try again later", Engine: QuotaEngine, Rule: name}
}

// evalKey evaluates when and key; ok is false when the quota does not
// apply (when is false, or the key is empty). ectx holds the input's
// variables unless the key is an input attribute (d.attr), read from in.
func (d *quotaDef) evalKey(ectx *hcl.EvalContext, in *Input) (string, bool, error) {
	if d.attr.root != "" {
		if t := d.whenNull; t.name != "" {
			if null, _ := isNullVar(in, t.name); null != t.isNull {
				return "", false, nil
			}
		}
		if k, ok := d.attr.read(in); ok {
			return k, k != "", nil
		}
		// Its variable is null (auth.user without AUTH): HCL's own error.
		ectx = &hcl.EvalContext{Variables: map[string]cty.Value{d.attr.root: ctyVar(in, d.attr.root)}, Functions: ruleFunctions}
	}
	if d.when != nil {
		v, err := evalAs(d.when, ectx, cty.Bool)
		if err != nil {
			return "", false, fmt.Errorf("when: %w", err)
		}
		if v.False() {
			return "", false, nil
		}
	}
	v, err := evalAs(d.key, ectx, cty.String)
	if err != nil {
		return "", false, fmt.Errorf("key: %w", err)
	}
	k := v.AsString()
	return k, k != "", nil
}

// inputAttr is a quota key that is one string attribute of the input
// (key = envelope.from, session.client_ip, rcpt.domain, auth.user …), the
// common case: evalKey reads it from the input as HCL would give it
// (normalized by cty.NormalizeString, as cty.StringVal does) instead of
// building the variable and evaluating the traversal — half the
// allocations of a quota check (TestQuotaKeyAttr).
type inputAttr struct{ root, attr string }

// attrOf returns key as an inputAttr, or the zero inputAttr.
func attrOf(key hcl.Expression) inputAttr {
	st, ok := key.(*hclsyntax.ScopeTraversalExpr)
	if !ok || len(st.Traversal) != 2 {
		return inputAttr{}
	}
	a, ok := st.Traversal[1].(hcl.TraverseAttr)
	if !ok {
		return inputAttr{}
	}
	ia := inputAttr{root: st.Traversal.RootName(), attr: a.Name}
	if _, ok := ia.read(&Input{Auth: &Auth{}, Rcpt: &Rcpt{}}); !ok {
		return inputAttr{}
	}
	return ia
}

// nullRoot says whether when is a null test on a variable isNullVar knows
// (when = auth != null), which evalKey then reads from the input too.
func nullRoot(when hcl.Expression) bool {
	t := nullTestOf(when)
	_, ok := isNullVar(&Input{}, t.name)
	return ok
}

// isNullVar says whether the variable name of in is null; ok is false for
// a variable it does not know.
func isNullVar(in *Input, name string) (null, ok bool) {
	switch name {
	case "auth":
		return in.Auth == nil, true
	case "rcpt":
		return in.Rcpt == nil, true
	case "message":
		return in.Message == nil, true
	case "session", "envelope":
		return false, true
	}
	return false, false
}

// read returns the attribute of in as cty.StringVal holds it; ok is false
// as for stringAttr.
func (a inputAttr) read(in *Input) (string, bool) {
	s, ok := stringAttr(in, a.root, a.attr)
	if !ok {
		return "", false
	}
	return cty.NormalizeString(s), true
}

// formatRetry rounds up: "45s", "17m", "2h5m".
func formatRetry(d time.Duration) string {
	switch {
	case d <= 0:
		return "1s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64((d+time.Second-1)/time.Second))
	}
	m := int64((d + time.Minute - 1) / time.Minute)
	if m < 60 {
		return fmt.Sprintf("%dm", m)
	}
	if m%60 == 0 {
		return fmt.Sprintf("%dh", m/60)
	}
	return fmt.Sprintf("%dh%dm", m/60, m%60)
}

// reservationPrefix makes reservation ids unique across instances (and
// restarts) sharing a store; reservationSeq within the process.
var (
	reservationPrefix = sync.OnceValue(func() string {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:]) + "-"
	})
	reservationSeq atomic.Uint64
)

func newReservationID() string {
	var b [48]byte
	id := append(b[:0], reservationPrefix()...)
	return string(strconv.AppendUint(id, reservationSeq.Add(1), 36))
}

// tripLog remembers which (quota, key) pairs are over a limit, so the
// warn line is written the first time a key trips, not once per refused
// message. Bounded: when full it forgets everything (a key then logs once
// more).
type tripLog struct {
	mu sync.Mutex
	m  map[string]struct{}
	// n is len(m), for clear to skip the lock when nothing tripped (the
	// usual case: a clear that misses a concurrent first is as if it had
	// run just before it).
	n atomic.Int64
}

const maxTrips = 10000

func (t *tripLog) first(name, key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := name + "\x00" + key
	if _, ok := t.m[k]; ok {
		return false
	}
	if t.m == nil || len(t.m) >= maxTrips {
		t.m = map[string]struct{}{}
	}
	t.m[k] = struct{}{}
	t.n.Store(int64(len(t.m)))
	return true
}

func (t *tripLog) clear(name, key string) {
	if t.n.Load() == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) > 0 {
		delete(t.m, name+"\x00"+key)
		t.n.Store(int64(len(t.m)))
	}
}

// varSpec is one input variable a quota's expressions use, and the
// attributes they read of it (nil: the whole value is needed).
type varSpec struct {
	name  string
	attrs []string
	// headers are the header names read as message.headers["name"] when
	// that is the only way message.headers is read (nil: all headers).
	headers []string
}

// traversalSpecs lists the input variables trs refer to. A variable only
// ever read through an attribute ("envelope.from") is built with just the
// attributes read: quotas are checked on every message, and building the
// whole document for one attribute costs more than the rest of the check.
// The expressions are still evaluated by HCL, on a smaller value.
func traversalSpecs(trs []hcl.Traversal) []varSpec {
	return varSpecs(trs, func(root string) bool { return root == "quota" || root == "message" }, nil)
}

// varSpecs lists the input variables trs refer to, except those skip
// names, as traversalSpecs. A bare variable whose traversal is in
// nullTests (see nullTests) is only compared with null: it needs no
// attribute, only to be null or not.
func varSpecs(trs []hcl.Traversal, skip func(root string) bool, nullTests map[hcl.Range]bool) []varSpec {
	attrs := map[string]map[string]bool{}
	whole := map[string]bool{}
	headers, allHeaders := map[string]bool{}, false
	for _, tr := range trs {
		{
			root := tr.RootName()
			if _, ok := schemaTypes[root]; !ok || skip(root) {
				continue
			}
			if len(tr) < 2 {
				if nullTests[tr.SourceRange()] {
					if attrs[root] == nil {
						attrs[root] = map[string]bool{}
					}
				} else {
					whole[root] = true
				}
				continue
			}
			a, ok := tr[1].(hcl.TraverseAttr)
			if !ok {
				whole[root] = true
				continue
			}
			if attrs[root] == nil {
				attrs[root] = map[string]bool{}
			}
			attrs[root][a.Name] = true
			if root == "message" && a.Name == "headers" {
				if k, ok := headerKey(tr); ok {
					headers[k] = true
				} else {
					allHeaders = true
				}
			}
		}
	}
	var specs []varSpec
	for root := range whole {
		specs = append(specs, varSpec{name: root})
	}
	for root, as := range attrs {
		if whole[root] {
			continue
		}
		vs := varSpec{name: root, attrs: make([]string, 0, len(as))}
		for a := range as {
			vs.attrs = append(vs.attrs, a)
		}
		if root == "message" && as["headers"] && !allHeaders {
			vs.headers = []string{}
			for k := range headers {
				vs.headers = append(vs.headers, k)
			}
		}
		specs = append(specs, vs)
	}
	return specs
}

// headerKey returns name when tr is message.headers["name"]… (a literal
// string index).
func headerKey(tr hcl.Traversal) (string, bool) {
	if len(tr) < 3 {
		return "", false
	}
	ix, ok := tr[2].(hcl.TraverseIndex)
	if !ok || !ix.Key.IsKnown() || ix.Key.IsNull() || ix.Key.Type() != cty.String {
		return "", false
	}
	return ix.Key.AsString(), true
}

// fillVars puts the variables of specs from in into vars: whole values as
// ctyVar builds them, or objects holding just the attributes read. A
// variable that is null (auth without AUTH, rcpt outside its stage) stays
// a typed null. attrs, when not nil, is an empty map it may use as scratch
// (and leaves empty).
func fillVars(vars map[string]cty.Value, in *Input, specs []varSpec, attrs map[string]cty.Value) {
	for _, s := range specs {
		if s.attrs == nil || (s.name == "auth" && in.Auth == nil) || (s.name == "rcpt" && in.Rcpt == nil) || (s.name == "message" && in.Message == nil) {
			vars[s.name] = ctyVar(in, s.name)
			continue
		}
		m := attrs
		if m == nil {
			m = make(map[string]cty.Value, len(s.attrs))
		}
		strs := true
		for _, a := range s.attrs {
			var v cty.Value
			if s.headers != nil && a == "headers" {
				v = headersCty(someHeaders(in.Message.Headers, s.headers))
			} else {
				v = ctyAttr(in, s.name, a)
			}
			strs = strs && v.Type() == cty.String
			m[a] = v
		}
		if len(s.attrs) == 0 {
			// Only compared with null: any non-null value will do.
			vars[s.name] = cty.EmptyObjectVal
		} else if strs {
			// HCL reads a map's elements with attribute syntax too, and a
			// map of strings skips deriving an object type per message.
			vars[s.name] = cty.MapVal(m)
		} else {
			vars[s.name] = cty.ObjectVal(m)
		}
		// MapVal and ObjectVal copy m: it can serve the next variable.
		if attrs != nil {
			for _, a := range s.attrs {
				delete(attrs, a)
			}
		}
	}
}

// someHeaders returns the headers of hs named in names.
func someHeaders(hs map[string][]string, names []string) map[string][]string {
	some := make(map[string][]string, len(names))
	for _, n := range names {
		if v, ok := hs[n]; ok {
			some[n] = v
		}
	}
	return some
}

// ctyAttr is ctyVar(in, root).GetAttr(attr) without building the rest of
// root.
func ctyAttr(in *Input, root, attr string) cty.Value {
	if s, ok := stringAttr(in, root, attr); ok {
		return cty.StringVal(s)
	}
	switch {
	case root == "envelope" && attr == "recipients":
		return strList(in.Envelope.Recipients)
	case root == "message" && attr == "from_addresses":
		return strList(in.Message.FromAddresses)
	case root == "message" && attr == "headers":
		return headersCty(in.Message.Headers)
	}
	return ctyVar(in, root).GetAttr(attr)
}

// stringAttr is the string attribute attr of the input variable root; ok
// is false when root is null in in (auth without AUTH, rcpt outside its
// stage) or attr is no string attribute of it. A switch per level:
// matching root+"."+attr would build the string on every call.
func stringAttr(in *Input, root, attr string) (string, bool) {
	switch root {
	case "session":
		switch attr {
		case "id":
			return in.Session.ID, true
		case "listener":
			return in.Session.Listener, true
		case "client_ip":
			return in.Session.ClientIP, true
		case "helo":
			return in.Session.HELO, true
		}
	case "auth":
		if in.Auth == nil {
			return "", false
		}
		switch attr {
		case "user":
			return in.Auth.User, true
		case "mechanism":
			return in.Auth.Mechanism, true
		}
	case "envelope":
		switch attr {
		case "from":
			return in.Envelope.From, true
		case "from_domain":
			return in.Envelope.FromDomain, true
		}
	case "rcpt":
		if in.Rcpt == nil {
			return "", false
		}
		switch attr {
		case "address":
			return in.Rcpt.Address, true
		case "domain":
			return in.Rcpt.Domain, true
		}
	}
	return "", false
}
