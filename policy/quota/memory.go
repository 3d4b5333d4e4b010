package quota

import (
	"container/list"
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// Memory is a Store in process memory, for a single instance. One mutex
// guards everything: a message's Reserve and Commit of three quotas take
// about 1.3µs of CPU together (BenchmarkMemoryReserveCommit), far more
// messages a second than a mail proxy relays, so a lock per key would
// buy nothing worth its complexity.
//
// Its memory is bounded (see the package doc): idle (quota, key) pairs
// are dropped as the least recently used end of an LRU list is checked on
// every write, at most WithMaxKeys pairs are tracked (the least recently
// used one is forgotten to make room, which forgets its counts), and at
// most WithMaxRemembered recipients per key.
type Memory struct {
	opts options

	mu      sync.Mutex
	entries map[entryKey]*list.Element // of *entry
	lru     list.List                  // front: most recently written
	removed uint64                     // entries removed so far
	pends   pendPool
	hashes  hashCache
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory(opts ...Option) *Memory {
	return &Memory{opts: buildOptions(opts), entries: make(map[entryKey]*list.Element)}
}

// sweepPerWrite is how many idle pairs at the LRU end one write may drop:
// more than one so that idle pairs leave faster than writes add them.
const sweepPerWrite = 2

type entryKey struct{ quota, key string }

// entry is the state of one (quota, key): its windows of every kind and
// its remembered recipients.
type entry struct {
	k    entryKey
	wins []winState // by value: one allocation fewer per window
	seen *seenSet   // nil until a recipient is remembered
}

// winState is one (kind, period) window of an entry.
type winState struct {
	kind    Kind
	period  int64     // ms, names the window
	width   int64     // ms
	span    int32     // buckets in the period, see spanOf
	buckets []bucket  // ascending idx, committed units
	pend    []pending // reservations
}

type pending struct {
	id     string
	amount int64
	exp    int64 // ms; counts while exp > now
}

// win finds a window of e; the pointer is good until e.wins changes.
func (e *entry) win(kind Kind, period int64) *winState {
	for i := range e.wins {
		if w := &e.wins[i]; w.kind == kind && w.period == period {
			return w
		}
	}
	return nil
}

// hashCache keeps the recipient hashes of recent calls: a transaction's
// Commit hashes the recipient its Reserve hashed, and SHA-256 costs more
// than the rest of checking a request. A slot is found by a cheap hash of
// the address and holds the address itself, so a hit is exact.
type hashCache struct {
	seed  maphash.Seed
	slots [hashSlots]hashSlot
}

const hashSlots = 64

type hashSlot struct {
	rcpt string
	h    uint64
	ok   bool
}

// hash is recipientHash(rcpt).
func (c *hashCache) hash(rcpt string) uint64 {
	if c.seed == (maphash.Seed{}) {
		c.seed = maphash.MakeSeed()
	}
	s := &c.slots[maphash.String(c.seed, rcpt)%hashSlots]
	if s.ok && s.rcpt == rcpt {
		return s.h
	}
	*s = hashSlot{rcpt: rcpt, h: recipientHash(rcpt), ok: true}
	return s.h
}

// pendPool keeps the arrays of reservation lists that emptied, for the
// next window to reserve: a window holds a reservation only for the
// seconds of a transaction, and without the pool every reservation
// would allocate its list anew. It is bounded, so idle keys hold no
// array.
type pendPool struct{ free [][]pending }

// maxFreePends bounds the arrays a pendPool keeps.
const maxFreePends = 256

// get returns an empty list with room for one reservation.
func (pp *pendPool) get() []pending {
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free[n-1] = nil
		pp.free = pp.free[:n-1]
		return p
	}
	return make([]pending, 0, 1)
}

// put takes back the array of p, whose elements are cleared.
func (pp *pendPool) put(p []pending) {
	if cap(p) == 0 || len(pp.free) >= maxFreePends {
		return
	}
	pp.free = append(pp.free, p[:0])
}

// prune drops buckets that no longer count and expired reservations.
func (w *winState) prune(nowMs int64, pp *pendPool) {
	low := oldestCounted(nowMs, w.width, int64(w.span))
	i := 0
	for i < len(w.buckets) && w.buckets[i].idx < low {
		i++
	}
	if i > 0 {
		w.buckets = append(w.buckets[:0], w.buckets[i:]...)
	}
	j := 0
	for _, p := range w.pend {
		if p.exp > nowMs {
			w.pend[j] = p
			j++
		}
	}
	clear(w.pend[j:])
	w.pend = w.pend[:j]
	if j == 0 {
		pp.put(w.pend)
		w.pend = nil
	}
}

// counted is what w holds at nowMs; prune first.
func (w *winState) counted() (committed, reserved int64) {
	for _, b := range w.buckets {
		committed += b.n
	}
	for _, p := range w.pend {
		reserved += p.amount
	}
	return committed, reserved
}

func (w *winState) reserve(id string, amount, exp int64, pp *pendPool) {
	for i := range w.pend {
		if w.pend[i].id == id {
			w.pend[i].amount += amount
			w.pend[i].exp = exp
			return
		}
	}
	if w.pend == nil {
		w.pend = pp.get()
	}
	w.pend = append(w.pend, pending{id: id, amount: amount, exp: exp})
}

func (w *winState) release(id string, pp *pendPool) {
	for i := range w.pend {
		if w.pend[i].id == id {
			last := len(w.pend) - 1
			if last == 0 {
				// The usual case: give the array back.
				w.pend[0] = pending{}
				pp.put(w.pend)
				w.pend = nil
				return
			}
			copy(w.pend[i:], w.pend[i+1:])
			w.pend[last] = pending{}
			w.pend = w.pend[:last]
			return
		}
	}
}

// add counts n units in bucket idx.
func (w *winState) add(idx, n int64) {
	i := len(w.buckets)
	for i > 0 && w.buckets[i-1].idx > idx {
		i--
	}
	if i > 0 && w.buckets[i-1].idx == idx {
		w.buckets[i-1].n += n
		return
	}
	w.buckets = append(w.buckets, bucket{})
	copy(w.buckets[i+1:], w.buckets[i:])
	w.buckets[i] = bucket{idx: idx, n: n}
}

// idle prunes e at nowMs and reports whether nothing is left.
func (e *entry) idle(nowMs int64, pp *pendPool) bool {
	j := 0
	for i := range e.wins {
		w := &e.wins[i]
		w.prune(nowMs, pp)
		if len(w.buckets) > 0 || len(w.pend) > 0 {
			e.wins[j] = *w
			j++
		}
	}
	clear(e.wins[j:])
	e.wins = e.wins[:j]
	if e.seen != nil && e.seen.idle(nowMs) {
		e.seen = nil
	}
	return len(e.wins) == 0 && e.seen == nil
}

// lookup finds the entry of (quota, key) without creating it.
func (m *Memory) lookup(c Counter) *entry {
	if el, ok := m.entries[entryKey{c.Quota, c.Key}]; ok {
		return el.Value.(*entry)
	}
	return nil
}

// touch finds or creates the entry of (quota, key) and makes it the most
// recently used, evicting the least recently used one past the cap.
func (m *Memory) touch(c Counter) *entry {
	k := entryKey{c.Quota, c.Key}
	if el, ok := m.entries[k]; ok {
		m.lru.MoveToFront(el)
		return el.Value.(*entry)
	}
	for len(m.entries) >= m.opts.maxKeys {
		m.remove(m.lru.Back())
	}
	e := &entry{k: k}
	m.entries[k] = m.lru.PushFront(e)
	return e
}

func (m *Memory) remove(el *list.Element) {
	e := m.lru.Remove(el).(*entry)
	delete(m.entries, e.k)
	m.removed++
}

// sweep drops up to sweepPerWrite idle entries from the LRU end.
func (m *Memory) sweep(nowMs int64) {
	for range sweepPerWrite {
		el := m.lru.Back()
		if el == nil || !el.Value.(*entry).idle(nowMs, &m.pends) {
			return
		}
		m.remove(el)
	}
}

// winOf is the window state of c and w, nil when e is nil or has none.
func winOf(e *entry, c Counter, w Window) *winState {
	if e == nil {
		return nil
	}
	return e.win(c.Kind, periodMs(w))
}

func (e *entry) winOrNew(c Counter, w Window) *winState {
	p := periodMs(w)
	if ws := e.win(c.Kind, p); ws != nil {
		return ws
	}
	e.wins = append(e.wins, winState{kind: c.Kind, period: p, width: widthMs(w), span: int32(spanOf(w))})
	return &e.wins[len(e.wins)-1]
}

// tentKey names a window across entries, for the units earlier requests
// of one Reserve would add.
type tentKey struct {
	quota, key string
	kind       Kind
	period     int64
}

type tent struct {
	k tentKey
	n int64
}

func tentOf(ts []tent, k tentKey) int64 {
	for _, t := range ts {
		if t.k == k {
			return t.n
		}
	}
	return 0
}

func addTent(ts []tent, k tentKey, n int64) []tent {
	for i := range ts {
		if ts[i].k == k {
			ts[i].n += n
			return ts
		}
	}
	return append(ts, tent{k, n})
}

// check evaluates r at nowMs with the tentative units ts of earlier
// requests, and returns the result (Charged is what would be charged).
func (m *Memory) check(e *entry, r *Request, nowMs int64, ts []tent, levels []Level) Result {
	charge := r.Amount
	known := false
	if remembers(r.Counter, r.Recipient, r.Remember) && e != nil && e.seen != nil {
		known = e.seen.knows(m.hashes.hash(r.Recipient), nowMs, ceilMs(r.Remember))
	}
	if known {
		charge = 0
	}
	res := Result{Levels: levels, Fits: true, Charged: charge}
	for j, w := range r.Windows {
		res.Levels[j].Window = w
		var used int64
		var buckets []bucket
		width := widthMs(w)
		if ws := winOf(e, r.Counter, w); ws != nil {
			ws.prune(nowMs, &m.pends)
			c, rv := ws.counted()
			used = c + rv
			buckets = ws.buckets
		}
		used += tentOf(ts, tentKey{r.Counter.Quota, r.Counter.Key, r.Counter.Kind, periodMs(w)})
		res.Levels[j].Used = used
		if !known && used+charge > w.Limit {
			res.Fits = false
			res.Levels[j].RetryAfter = time.Duration(retryAfterMs(buckets, nowMs, width, spanOf(w), used+charge-w.Limit)) * time.Millisecond
		}
	}
	return res
}

// Reserve implements Store.
func (m *Memory) Reserve(_ context.Context, id string, now time.Time, ttl time.Duration, reqs []Request) ([]Result, bool, error) {
	if err := checkRequests(reqs); err != nil {
		return nil, false, err
	}
	nowMs := now.UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	results := make([]Result, len(reqs))
	nlevels := 0
	for i := range reqs {
		nlevels += len(reqs[i].Windows)
	}
	levels := make([]Level, nlevels)
	var tbuf [8]tent
	ts := tbuf[:0]
	// The entries the checks found, for the reservations to reuse unless
	// an entry was removed meanwhile (touch evicts to make room).
	var ebuf [8]*list.Element
	els := ebuf[:0]
	removed := m.removed
	ok := true
	for i := range reqs {
		r := &reqs[i]
		el := m.entries[entryKey{r.Counter.Quota, r.Counter.Key}]
		els = append(els, el)
		var e *entry
		if el != nil {
			e = el.Value.(*entry)
		}
		res := m.check(e, r, nowMs, ts, levels[:len(r.Windows):len(r.Windows)])
		levels = levels[len(r.Windows):]
		if !res.Fits && r.Enforce {
			ok = false
		}
		if res.Fits || !r.Enforce {
			for _, w := range r.Windows {
				ts = addTent(ts, tentKey{r.Counter.Quota, r.Counter.Key, r.Counter.Kind, periodMs(w)}, res.Charged)
			}
		}
		results[i] = res
	}
	exp := nowMs + ttlMs(ttl)
	for i, r := range reqs {
		res := &results[i]
		if !ok {
			res.Charged = 0
			continue
		}
		if res.Charged == 0 || len(r.Windows) == 0 {
			continue
		}
		var e *entry
		if el := els[i]; el != nil && m.removed == removed {
			m.lru.MoveToFront(el)
			e = el.Value.(*entry)
		} else {
			e = m.touch(r.Counter)
		}
		for j, w := range r.Windows {
			e.winOrNew(r.Counter, w).reserve(id, res.Charged, exp, &m.pends)
			res.Levels[j].Used += res.Charged
		}
	}
	m.sweep(nowMs)
	return results, ok, nil
}

// Commit implements Store.
func (m *Memory) Commit(_ context.Context, id string, now time.Time, parts []Part) error {
	if err := checkParts(parts); err != nil {
		return err
	}
	nowMs := now.UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range parts {
		rem := remembers(p.Counter, p.Recipient, p.Remember)
		var e *entry
		if (p.Amount > 0 && len(p.Windows) > 0) || rem {
			e = m.touch(p.Counter)
		} else if e = m.lookup(p.Counter); e == nil {
			continue
		}
		for _, w := range p.Windows {
			ws := winOf(e, p.Counter, w)
			if ws == nil && p.Amount > 0 {
				ws = e.winOrNew(p.Counter, w)
			}
			if ws == nil {
				continue
			}
			ws.release(id, &m.pends)
			if p.Amount > 0 {
				ws.add(bucketIndex(nowMs, ws.width), p.Amount)
			}
		}
		if rem {
			if e.seen == nil {
				e.seen = newSeenSet()
			}
			e.seen.put(m.hashes.hash(p.Recipient), nowMs, ceilMs(p.Remember), m.opts.maxRemembered)
		}
	}
	m.sweep(nowMs)
	return nil
}

// Release implements Store.
func (m *Memory) Release(_ context.Context, id string, parts []Part) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range parts {
		e := m.lookup(p.Counter)
		for _, w := range p.Windows {
			if ws := winOf(e, p.Counter, w); ws != nil {
				ws.release(id, &m.pends)
			}
		}
	}
	return nil
}

// Levels implements Store. A window's RetryAfter is for a request of one
// unit: non-zero when the window is full.
func (m *Memory) Levels(_ context.Context, now time.Time, c Counter, windows []Window) ([]Level, error) {
	r := Request{Counter: c, Windows: windows, Amount: 1}
	if err := checkRequests([]Request{r}); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.check(m.lookup(c), &r, now.UnixMilli(), nil, make([]Level, len(windows))).Levels, nil
}

// Keys implements Store. It lists the keys the store tracks, which may
// include keys gone idle that no write has swept yet.
func (m *Memory) Keys(_ context.Context, quota string, limit int) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keys []string
	for k := range m.entries {
		if len(keys) >= limit {
			break
		}
		if k.quota == quota {
			keys = append(keys, k.key)
		}
	}
	return keys, nil
}

// Reset implements Store.
func (m *Memory) Reset(_ context.Context, quota, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[entryKey{quota, key}]; ok {
		m.remove(el)
	}
	return nil
}

// Close implements Store: a Memory store has nothing in flight.
func (m *Memory) Close(context.Context) error { return nil }

// len is the number of tracked (quota, key) pairs.
func (m *Memory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// seenSet is the remembered recipients of one key: hash → time of the last
// commit to it, in a min-heap on that time so the oldest is dropped
// first. Small sets (most keys send to a few recipients) are searched
// linearly; pos indexes the heap once it grows past smallSeen.
type seenSet struct {
	pos      map[uint64]int // hash → index in heap; nil while small
	heap     []seen
	remember int64 // ms, of the last put
	newest   int64 // ms, the latest time put
}

// smallSeen is the size up to which a seenSet has no index.
const smallSeen = 8

type seen struct {
	h  uint64
	ms int64
}

func newSeenSet() *seenSet { return &seenSet{} }

// find is the heap index of h, or -1.
func (s *seenSet) find(h uint64) int {
	if s.pos != nil {
		if i, ok := s.pos[h]; ok {
			return i
		}
		return -1
	}
	for i, e := range s.heap {
		if e.h == h {
			return i
		}
	}
	return -1
}

// knows reports whether h was committed to within remember before nowMs.
func (s *seenSet) knows(h uint64, nowMs, remember int64) bool {
	i := s.find(h)
	return i >= 0 && s.heap[i].ms+remember > nowMs
}

// put remembers h at ms (keeping a later time already there), forgets
// what is older than remember and keeps at most maxN.
func (s *seenSet) put(h uint64, ms, remember int64, maxN int) {
	s.remember = remember
	s.newest = max(s.newest, ms)
	if i := s.find(h); i >= 0 {
		if ms > s.heap[i].ms {
			s.heap[i].ms = ms
			s.down(i)
		}
	} else {
		s.heap = append(s.heap, seen{h, ms})
		if s.pos == nil && len(s.heap) > smallSeen {
			s.pos = make(map[uint64]int, len(s.heap))
			for i, e := range s.heap {
				s.pos[e.h] = i
			}
		} else if s.pos != nil {
			s.pos[h] = len(s.heap) - 1
		}
		s.up(len(s.heap) - 1)
	}
	for len(s.heap) > 0 && (s.heap[0].ms+remember <= ms || len(s.heap) > maxN) {
		s.pop()
	}
}

// idle reports whether nothing remembered is still within remember.
func (s *seenSet) idle(nowMs int64) bool {
	return len(s.heap) == 0 || s.newest+s.remember <= nowMs
}

func (s *seenSet) pop() {
	last := len(s.heap) - 1
	if s.pos != nil {
		delete(s.pos, s.heap[0].h)
	}
	if last > 0 {
		s.heap[0] = s.heap[last]
		if s.pos != nil {
			s.pos[s.heap[0].h] = 0
		}
	}
	s.heap = s.heap[:last]
	if last > 0 {
		s.down(0)
	}
}

func (s *seenSet) less(i, j int) bool { return s.heap[i].ms < s.heap[j].ms }

func (s *seenSet) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	if s.pos != nil {
		s.pos[s.heap[i].h] = i
		s.pos[s.heap[j].h] = j
	}
}

func (s *seenSet) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *seenSet) down(i int) {
	n := len(s.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && s.less(r, l) {
			c = r
		}
		if !s.less(c, i) {
			return
		}
		s.swap(i, c)
		i = c
	}
}
