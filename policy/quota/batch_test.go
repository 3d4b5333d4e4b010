package quota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// flushed is a Redis store made WithBatch whose reads flush first, so
// that the conformance suite, which reads right after it writes, sees
// every Commit and Release; they are applied by the batch script, several
// per round trip when several were queued.
type flushed struct{ *Redis }

func (f flushed) Reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request) ([]Result, bool, error) {
	if err := f.Flush(ctx); err != nil {
		return nil, false, err
	}
	return f.Redis.Reserve(ctx, id, now, ttl, reqs)
}

func (f flushed) Levels(ctx context.Context, now time.Time, c Counter, windows []Window) ([]Level, error) {
	if err := f.Flush(ctx); err != nil {
		return nil, err
	}
	return f.Redis.Levels(ctx, now, c, windows)
}

func (f flushed) Keys(ctx context.Context, quota string, limit int) ([]string, error) {
	if err := f.Flush(ctx); err != nil {
		return nil, err
	}
	return f.Redis.Keys(ctx, quota, limit)
}

func (f flushed) Reset(ctx context.Context, quota, key string) error {
	if err := f.Flush(ctx); err != nil {
		return err
	}
	return f.Redis.Reset(ctx, quota, key)
}

// TestRedisBatched: a store made WithBatch (an interval no test reaches:
// only Flush applies the queue) passes the conformance suite.
func TestRedisBatched(t *testing.T) {
	_, newStore := redisServer(t)
	testStore(t, func(t *testing.T, opts ...Option) Store {
		return flushed{newStore(t, append(opts, WithBatch(time.Hour))...)}
	})
}

// TestStoresAgreeBatched: the random operations of TestStoresAgree, with
// the commits and releases between two reads applied in one round trip.
func TestStoresAgreeBatched(t *testing.T) {
	_, newStore := redisServer(t)
	stores := []Store{NewMemory(WithMaxRemembered(4)), flushed{newStore(t, WithMaxRemembered(4), WithBatch(time.Hour))}}
	rng := rand.New(rand.NewPCG(3, 4))
	agree(t, stores, rng, 1500, func() time.Duration { return time.Duration(rng.IntN(3000)) * time.Millisecond })
}

// TestRedisBatchRoundTrips: queued commits and releases cost no command
// until a flush, which sends them in one (256 at most); Close flushes and
// makes later calls synchronous.
func TestRedisBatchRoundTrips(t *testing.T) {
	srv, _ := redisServer(t)
	rdb := newClient(t, srv.Addr())
	hook := &countHook{scripts: true} // not the HELLO of a new connection
	rdb.AddHook(hook)
	s := NewRedis(rdb, "batch:", WithBatch(time.Hour))
	other := NewRedis(newClient(t, srv.Addr()), "batch:") // another instance
	reqs := threeQuotas("alice@example.com", "bob@example.net")
	var parts [][]Part
	for i := range 20 {
		res, ok, err := s.Reserve(ctx, fmt.Sprint("m", i), at(0), time.Minute, reqs)
		if err != nil || !ok {
			t.Fatalf("Reserve: %v %v", ok, err)
		}
		parts = append(parts, partsOf(reqs, res))
	}
	commands := func(what string, want int64) {
		t.Helper()
		if n := hook.n.Swap(0); n != want {
			t.Errorf("%s: %d commands, want %d", what, n, want)
		}
	}
	hook.n.Store(0)
	for i := range 20 {
		var err error
		if i%2 == 0 {
			err = s.Commit(ctx, fmt.Sprint("m", i), at(time.Second), parts[i])
		} else {
			err = s.Release(ctx, fmt.Sprint("m", i), parts[i])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	commands("20 queued ends", 0)
	// Queued: still reserved, so still counted, for every instance.
	eqUsed(t, "queued", storeHelper{t, other}.used(at(time.Second), reqs[0].Counter, reqs[0].Windows...), 20, 20)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	commands("Flush", 1)
	eqUsed(t, "flushed", storeHelper{t, other}.used(at(time.Second), reqs[0].Counter, reqs[0].Windows...), 10, 10)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	commands("Flush of nothing", 0)

	// maxBatch queued start a flush at once; Close sends the rest.
	one := []Part{partOf(msgs(1, perHour(1<<40)))}
	for i := range maxBatch + 1 {
		if err := s.Commit(ctx, fmt.Sprint("b", i), at(time.Second), one); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	commands("maxBatch+1 commits and Close", 2)
	eqUsed(t, "closed", storeHelper{t, other}.used(at(time.Second), cMsgs, perHour(1<<40)), maxBatch+1)
	if err := s.Commit(ctx, "late", at(time.Second), one); err != nil {
		t.Fatal(err)
	}
	commands("Commit after Close", 1)
}

// TestRedisBatchTimer: without Flush, the queue is applied by the timer.
func TestRedisBatchTimer(t *testing.T) {
	srv, _ := redisServer(t)
	s := NewRedis(newClient(t, srv.Addr()), "timer:", WithBatch(time.Millisecond))
	other := NewRedis(newClient(t, srv.Addr()), "timer:")
	w := perMinute(10)
	h := storeHelper{t, s}
	if _, ok := h.reserve("a", at(0), time.Minute, msgs(3, w)); !ok {
		t.Fatal("refused")
	}
	h.release("a", partOf(msgs(3, w)))
	deadline := time.Now().Add(10 * time.Second)
	for (storeHelper{t, other}).used(at(0), cMsgs, w)[0] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("release not applied without Flush")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRedisBatchLost: a flush that cannot reach Redis logs what it lost
// and Flush returns the error; the queue does not keep them.
func TestRedisBatchLost(t *testing.T) {
	srv, _ := redisServer(t)
	var logs bytes.Buffer
	s := NewRedis(newClient(t, srv.Addr()), "lost:", WithBatch(time.Hour),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	req := msgs(1, perMinute(5))
	if _, ok, err := s.Reserve(ctx, "a", at(0), time.Minute, []Request{req}); err != nil || !ok {
		t.Fatalf("Reserve: %v %v", ok, err)
	}
	srv.Stop()
	if err := s.Commit(ctx, "a", at(0), []Part{partOf(req)}); err != nil {
		t.Fatalf("queued Commit: %v", err)
	}
	if err := s.Release(ctx, "b", []Part{partOf(req)}); err != nil {
		t.Fatalf("queued Release: %v", err)
	}
	if err := s.Flush(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Flush with Redis down: %v, want ErrUnavailable", err)
	}
	if !strings.Contains(logs.String(), "quota updates lost") || !strings.Contains(logs.String(), "commits=1 releases=1") {
		t.Errorf("log: %s", logs.String())
	}
	srv.Restart(t)
	h := storeHelper{t, s}
	h.send("c", at(0), req)
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("Flush after restart: %v", err)
	}
	// The restarted server is empty: only c counts.
	eqUsed(t, "after restart", h.used(at(0), cMsgs, req.Windows...), 1)
}

// TestRedisBatchExactTwoInstances: two instances made WithBatch, whose
// concurrent Reserves share round trips, grant exactly the limit.
func TestRedisBatchExactTwoInstances(t *testing.T) {
	srv, _ := redisServer(t)
	a := NewRedis(newClient(t, srv.Addr()), "exact:", WithBatch(time.Millisecond))
	b := NewRedis(newClient(t, srv.Addr()), "exact:", WithBatch(time.Millisecond))
	testExact(t, a, b)
}

// gateHook holds every script until the test lets it go.
type gateHook struct {
	countHook
	gate chan struct{}
}

func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			<-h.gate
		}
		return next(ctx, cmd)
	}
}

// TestRedisBatchSharedReserves: Reserves that arrive while one is on its
// way go together in the next round trip; one whose caller gave up is
// released when its reservation was made.
func TestRedisBatchSharedReserves(t *testing.T) {
	srv, _ := redisServer(t)
	rdb := newClient(t, srv.Addr())
	hook := &gateHook{gate: make(chan struct{})}
	rdb.AddHook(hook)
	s := NewRedis(rdb, "shared:", WithBatch(time.Hour))
	other := storeHelper{t, NewRedis(newClient(t, srv.Addr()), "shared:")}
	w := perMinute(10)
	eqUsed(t, "before", other.used(at(0), cMsgs, w), 0) // loads the script: one command per round trip
	pending := func(n int) {
		t.Helper()
		for {
			s.batch.rmu.Lock()
			got := len(s.batch.rpending)
			s.batch.rmu.Unlock()
			if got == n {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	type reply struct {
		ok  bool
		err error
	}
	replies := make(chan reply, 3)
	reserve := func(ctx context.Context, id string) {
		_, ok, err := s.Reserve(ctx, id, at(0), time.Minute, []Request{msgs(1, w)})
		replies <- reply{ok, err}
	}
	go reserve(ctx, "lead") // held by the gate
	// Wait until the leader is on its way, then queue two behind it.
	for {
		s.batch.rmu.Lock()
		busy := s.batch.rbusy
		s.batch.rmu.Unlock()
		if busy {
			break
		}
		time.Sleep(time.Millisecond)
	}
	go reserve(ctx, "second")
	pending(1)
	gaveUp, cancel := context.WithCancel(ctx)
	go reserve(gaveUp, "gave-up")
	pending(2)
	cancel()
	if r := <-replies; !errors.Is(r.err, context.Canceled) || !errors.Is(r.err, ErrUnavailable) {
		t.Fatalf("caller that gave up: %+v, want ErrUnavailable and context.Canceled", r)
	}
	hook.gate <- struct{}{} // the leader
	hook.gate <- struct{}{} // one round trip for the two that waited
	for range 2 {
		if r := <-replies; !r.ok || r.err != nil {
			t.Errorf("Reserve: %+v", r)
		}
	}
	// The round trips: the leader's, then the shared one.
	close(hook.gate)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// lead and second hold 2; gave-up's unit was released.
	eqUsed(t, "after", other.used(at(0), cMsgs, w), 2)
}

// TestStoresAgreeShared: Reserves that share one call of the script (as
// concurrent Reserves of a batched store do) answer exactly as Memory
// answers them one after the other, whether the script takes them
// together or, when a reservation may expire among them, one by one.
func TestStoresAgreeShared(t *testing.T) {
	_, newStore := redisServer(t)
	// No recipient is forgotten for room here: the stores break ties of
	// commit time differently (RememberedCap tests the cap).
	mem, red := NewMemory(), newStore(t)
	rng := rand.New(rand.NewPCG(5, 6))
	windows := []Window{{Limit: 5, Period: 10 * time.Second}, {Limit: 12, Period: time.Minute}, {Limit: 30, Period: time.Hour}}
	counters := []Counter{
		{Quota: "a", Key: "k1", Kind: Messages}, {Quota: "a", Key: "k2", Kind: Messages},
		{Quota: "b", Key: "k1", Kind: Recipients}, {Quota: "c", Key: "k1", Kind: NewRecipients},
	}
	randReqs := func() []Request {
		var reqs []Request
		for len(reqs) == 0 || rng.IntN(2) == 0 {
			c := counters[rng.IntN(len(counters))]
			ws := []Window{windows[rng.IntN(3)]}
			if rng.IntN(2) == 0 {
				ws = append(ws, windows[rng.IntN(3)])
			}
			r := Request{Counter: c, Windows: ws, Amount: rng.Int64N(3), Enforce: rng.IntN(4) != 0}
			if c.Kind == NewRecipients {
				r.Recipient, r.Remember = fmt.Sprint("r", rng.IntN(8)), 30*time.Second
			}
			reqs = append(reqs, r)
		}
		return reqs
	}
	now := t0
	var open []string
	reqsOf := map[string][]Request{}
	for step := range 1500 {
		now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		switch op := rng.IntN(4); {
		case op == 0 || len(open) == 0:
			calls := make([]*reserveCall, 1+rng.IntN(4))
			want := make([]string, len(calls))
			ttl := time.Duration(rng.IntN(60)) * time.Second // sometimes within the group's span
			for i := range calls {
				if i > 0 {
					now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
				}
				id := fmt.Sprint("m", step, ".", i)
				if i > 0 && rng.IntN(8) == 0 {
					id = fmt.Sprint("m", step, ".", 0) // the same id twice: amounts add up
				}
				reqs := randReqs()
				calls[i] = &reserveCall{id: id, nowMs: now.UnixMilli(), ttlMs: ttlMs(ttl), reqs: reqs}
				res, ok, err := mem.Reserve(ctx, id, now, ttl, reqs)
				want[i] = fmt.Sprintf("%+v %v %v", res, ok, err)
				open = append(open, id)
				reqsOf[id] = append(reqsOf[id], reqs...)
			}
			if err := red.runReserves(ctx, calls); err != nil {
				t.Fatal(err)
			}
			for i, c := range calls {
				if got := fmt.Sprintf("%+v %v %v", c.res, c.ok, c.err); got != want[i] {
					t.Fatalf("step %d, reservation %d of %d (%v): memory %s\nredis %s", step, i, len(calls), now.Sub(t0), want[i], got)
				}
			}
		case op == 1 || op == 2:
			i := rng.IntN(len(open))
			id := open[i]
			open = append(open[:i], open[i+1:]...)
			parts := make([]Part, len(reqsOf[id]))
			for j, r := range reqsOf[id] {
				parts[j] = partOf(r)
			}
			for _, s := range []Store{mem, red} {
				var err error
				if op == 1 {
					err = s.Commit(ctx, id, now, parts)
				} else {
					err = s.Release(ctx, id, parts)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		default:
			c := counters[rng.IntN(len(counters))]
			a, _ := mem.Levels(ctx, now, c, windows)
			b, err := red.Levels(ctx, now, c, windows)
			if err != nil || !reflect.DeepEqual(a, b) {
				t.Fatalf("step %d Levels (%v): memory %+v\nredis %+v %v", step, now.Sub(t0), a, b, err)
			}
		}
	}
}
