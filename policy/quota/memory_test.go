package quota

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"
	"time"
)

func newMemoryStore(t *testing.T, opts ...Option) Store { return NewMemory(opts...) }

func TestMemory(t *testing.T) { testStore(t, newMemoryStore) }

// TestMemoryMaxKeys: far more keys than the cap never track more than the
// cap, and the least recently written key is the one forgotten.
func TestMemoryMaxKeys(t *testing.T) {
	const maxKeys = 100
	m := NewMemory(WithMaxKeys(maxKeys))
	h := storeHelper{t, m}
	w := perHour(1 << 20)
	req := func(k string) Request {
		return Request{Counter: Counter{Quota: "q", Key: k, Kind: Messages}, Windows: []Window{w}, Amount: 1, Enforce: true}
	}
	h.send("keep", at(0), req("keep"))
	for i := range 50 * maxKeys {
		h.send(fmt.Sprint("m", i), at(time.Second), req(fmt.Sprint("k", i)))
		if i%10 == 0 { // keep "keep" recently used
			h.send(fmt.Sprint("keep", i), at(time.Second), req("keep"))
		}
		if n := m.len(); n > maxKeys {
			t.Fatalf("after %d keys: %d tracked, cap %d", i+2, n, maxKeys)
		}
	}
	if got := h.used(at(time.Second), req("keep").Counter, w)[0]; got != 1+50*maxKeys/10 {
		t.Errorf("recently used key: used %d, want %d", got, 1+50*maxKeys/10)
	}
	if got := h.used(at(time.Second), req("k0").Counter, w)[0]; got != 0 {
		t.Errorf("least recently used key still counted: %d", got)
	}
}

// TestMemoryIdleKeysExpire: keys whose windows emptied, with nothing
// pending and nothing remembered, are dropped by later writes.
func TestMemoryIdleKeysExpire(t *testing.T) {
	m := NewMemory()
	h := storeHelper{t, m}
	w := perMinute(10)
	for i := range 100 {
		c := Counter{Quota: "q", Key: fmt.Sprint("k", i), Kind: NewRecipients}
		h.send(fmt.Sprint("m", i), at(0), Request{Counter: c, Windows: []Window{w}, Amount: 1, Recipient: "r@example.net", Remember: 2 * time.Minute})
	}
	// A pending reservation keeps its key.
	h.reserve("pending", at(0), time.Hour, Request{Counter: Counter{Quota: "q", Key: "pending"}, Windows: []Window{w}, Amount: 1})
	// Writes after the window passed but within Remember drop nothing.
	for i := range 100 {
		h.send(fmt.Sprint("n", i), at(time.Minute+time.Second), Request{Counter: Counter{Quota: "q", Key: "busy"}, Windows: []Window{w}, Amount: 0})
	}
	// Amount 0 creates nothing for "busy".
	if n := m.len(); n != 101 {
		t.Fatalf("within remember: %d tracked, want 101", n)
	}
	// After Remember every write sweeps idle keys from the LRU end.
	for i := range 100 {
		h.send(fmt.Sprint("o", i), at(3*time.Minute), Request{Counter: Counter{Quota: "q", Key: "busy"}, Windows: []Window{w}, Amount: 1})
	}
	if n := m.len(); n != 2 {
		t.Fatalf("after remember: %d tracked, want 2 (busy and pending)", n)
	}
}

// threeQuotas is one message's requests: messages per sender, recipients
// per sender, and new recipients per sender.
func threeQuotas(sender, rcpt string) []Request {
	return []Request{
		{Counter: Counter{Quota: "per-sender", Key: sender, Kind: Messages}, Windows: []Window{perHour(1 << 40), {Limit: 1 << 40, Period: 24 * time.Hour}}, Amount: 1, Enforce: true},
		{Counter: Counter{Quota: "rcpts", Key: sender, Kind: Recipients}, Windows: []Window{perHour(1 << 40)}, Amount: 1, Enforce: true},
		{Counter: Counter{Quota: "new-rcpts", Key: sender, Kind: NewRecipients}, Windows: []Window{{Limit: 1 << 40, Period: 24 * time.Hour}}, Amount: 1, Enforce: true, Recipient: rcpt, Remember: 30 * 24 * time.Hour},
	}
}

func partsOf(reqs []Request, res []Result) []Part {
	parts := make([]Part, len(reqs))
	for i, r := range reqs {
		parts[i] = partOf(r)
		parts[i].Amount = res[i].Charged
	}
	return parts
}

// benchReserveCommit runs one message (three quotas, one reserve, one
// commit) per iteration over 1000 senders with 10 recipients each, the
// clock advancing 1ms a message.
func benchReserveCommit(b *testing.B, s Store) {
	const senders = 1000
	reqs := make([][]Request, senders*10)
	for i := range reqs {
		reqs[i] = threeQuotas(fmt.Sprintf("sender%d@example.com", i%senders), fmt.Sprintf("rcpt%d@example.net", i/senders))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		id := "msg"
		r := reqs[i%len(reqs)]
		res, ok, err := s.Reserve(ctx, id, now, time.Minute, r)
		if err != nil || !ok {
			b.Fatalf("Reserve: ok=%v %v", ok, err)
		}
		if err := s.Commit(ctx, id, now, partsOf(r, res)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryReserveCommit: the CPU cost of one message's three
// quotas in the memory store.
func BenchmarkMemoryReserveCommit(b *testing.B) { benchReserveCommit(b, NewMemory()) }

// BenchmarkMemoryBound sends one message from each of b.N distinct
// senders (run with -benchtime=1000000x) through a store with the default
// cap, and reports the live heap per tracked key: the bound of the
// package doc is DefaultMaxKeys times it.
func BenchmarkMemoryBound(b *testing.B) {
	m := NewMemory()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		now := t0.Add(time.Duration(i) * time.Microsecond)
		r := threeQuotas(fmt.Sprintf("sender%d@example.com", i), "rcpt@example.net")
		res, _, err := m.Reserve(ctx, "msg", now, time.Minute, r)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Commit(ctx, "msg", now, partsOf(r, res)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := m.len()
	if n > DefaultMaxKeys {
		b.Fatalf("%d entries tracked, cap %d", n, DefaultMaxKeys)
	}
	b.ReportMetric(float64(n), "entries")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(max(n, 1)), "B/entry")
	b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "heap-MiB")
	runtime.KeepAlive(m)
}

// TestSeenSet checks the remembered-recipient heap, past the size where
// it builds its index, against a plain map: same answers to knows after
// every put, the expired forgotten, the oldest dropped at the cap. Time
// strictly increases so that "oldest" has one answer.
func TestSeenSet(t *testing.T) {
	const maxN, remember, hashes = 20, 300, 40
	rng := rand.New(rand.NewPCG(3, 4))
	s := newSeenSet()
	model := map[uint64]int64{}
	now := int64(1000)
	for step := range 3000 {
		now += 1 + rng.Int64N(4)
		h := uint64(rng.IntN(hashes))
		s.put(h, now, remember, maxN)
		model[h] = now
		for k, ms := range model {
			if ms+remember <= now {
				delete(model, k)
			}
		}
		for len(model) > maxN {
			oldest := h
			for k, ms := range model {
				if ms < model[oldest] {
					oldest = k
				}
			}
			delete(model, oldest)
		}
		if len(s.heap) != len(model) {
			t.Fatalf("step %d: %d remembered, model %d", step, len(s.heap), len(model))
		}
		for k := range uint64(hashes) {
			_, want := model[k]
			if got := s.knows(k, now, remember); got != want {
				t.Fatalf("step %d: knows(%d) = %v, want %v", step, k, got, want)
			}
		}
	}
	if s.pos == nil {
		t.Error("the index was never built")
	}
}

// processCPU is the user+system CPU time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestHashCache: the cache answers recipientHash for every address, on a
// miss, on a hit and after another address took the slot.
func TestHashCache(t *testing.T) {
	var c hashCache
	for round := range 3 {
		for i := range 4 * hashSlots {
			rcpt := fmt.Sprintf("rcpt%d@example.net", i%(hashSlots+round*7))
			if got, want := c.hash(rcpt), recipientHash(rcpt); got != want {
				t.Fatalf("round %d: hash(%q) = %x, want %x", round, rcpt, got, want)
			}
		}
	}
}
