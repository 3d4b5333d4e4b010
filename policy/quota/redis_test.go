package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/internal/peertest"
)

// redisServer starts a real redis-server for the test and returns a
// function making stores on it, each under its own prefix.
func redisServer(t testing.TB) (*peertest.Redis, func(t testing.TB, opts ...Option) *Redis) {
	srv := peertest.StartRedis(t)
	var n atomic.Int64
	return srv, func(t testing.TB, opts ...Option) *Redis {
		return NewRedis(newClient(t, srv.Addr()), fmt.Sprintf("test%d:", n.Add(1)), opts...)
	}
}

func newClient(t testing.TB, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: 10 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func TestRedis(t *testing.T) {
	_, newStore := redisServer(t)
	testStore(t, func(t *testing.T, opts ...Option) Store { return newStore(t, opts...) })
}

// TestRedisExactTwoInstances: two clients (two instances of mailgate) on
// one Redis grant exactly the limit between them.
func TestRedisExactTwoInstances(t *testing.T) {
	srv, _ := redisServer(t)
	a := NewRedis(newClient(t, srv.Addr()), "exact:")
	b := NewRedis(newClient(t, srv.Addr()), "exact:")
	testExact(t, a, b)
}

// countHook counts the commands a client sends (scripts: only EVAL and
// EVALSHA).
type countHook struct {
	n       atomic.Int64
	scripts bool
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); !h.scripts || name == "evalsha" || name == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if name := cmd.Name(); !h.scripts || name == "evalsha" || name == "eval" {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// TestRedisOneRoundTrip: once the scripts are cached, Reserve, Commit,
// Release and Levels are one command each, whatever the number of quotas.
func TestRedisOneRoundTrip(t *testing.T) {
	srv, _ := redisServer(t)
	rdb := newClient(t, srv.Addr())
	hook := &countHook{}
	rdb.AddHook(hook)
	s := NewRedis(rdb, "rt:")
	reqs := threeQuotas("alice@example.com", "bob@example.net")
	step := func(name string, f func() error) {
		t.Helper()
		before := hook.n.Load()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n := hook.n.Load() - before; n != 1 {
			t.Errorf("%s: %d commands, want 1", name, n)
		}
	}
	for round := range 2 { // the first round may load the scripts
		var res []Result
		reserve := func() (err error) {
			res, _, err = s.Reserve(ctx, "m", at(0), time.Minute, reqs)
			return err
		}
		commit := func() error { return s.Commit(ctx, "m", at(0), partsOf(reqs, res)) }
		release := func() error { return s.Release(ctx, "m", partsOf(reqs, res)) }
		levels := func() error {
			_, err := s.Levels(ctx, at(0), reqs[0].Counter, reqs[0].Windows)
			return err
		}
		if round == 0 {
			for _, f := range []func() error{reserve, commit, release, levels} {
				if err := f(); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		step("Reserve", reserve)
		step("Release", release)
		step("Reserve", reserve)
		step("Commit", commit)
		step("Levels", levels)
	}
}

// TestRedisLayout: the key names of the package doc, their expiry, and
// no recipient address stored.
func TestRedisLayout(t *testing.T) {
	srv, _ := redisServer(t)
	rdb := newClient(t, srv.Addr())
	s := NewRedis(rdb, "mg:")
	reqs := threeQuotas("alice@example.com", "bob@example.net")
	res, ok, err := s.Reserve(ctx, "m1", at(0), 30*time.Second, reqs)
	if err != nil || !ok {
		t.Fatalf("Reserve: %v %v", ok, err)
	}
	win := "mg:quota:per-sender:messages:3600000:alice@example.com"
	if v, err := rdb.HGet(ctx, win, "r:m1").Result(); err != nil || v != fmt.Sprintf("1 %d", at(30*time.Second).UnixMilli()) {
		t.Errorf("reservation field: %q %v", v, err)
	}
	if err := s.Commit(ctx, "m1", at(0), partsOf(reqs, res)); err != nil {
		t.Fatal(err)
	}
	idx := at(0).UnixMilli() / 60000
	want := map[string]string{fmt.Sprint(idx): "1",
		"lo": fmt.Sprint(idx - 60), "hi": fmt.Sprint(idx), "c": "1", "r": "0", "nx": "0", "mx": "0",
		"ex": fmt.Sprint(at(62 * time.Minute).UnixMilli())}
	if v, err := rdb.HGetAll(ctx, win).Result(); err != nil || !reflect.DeepEqual(v, want) {
		t.Errorf("window hash after commit: %v %v, want %v", v, err, want)
	}
	// PEXPIRE is relative to the caller's clock: the bucket of t0 leaves
	// 61 minutes after t0, and the expiry is set one bucket later (62m)
	// so that it need not move on every call.
	if ttl, err := rdb.PTTL(ctx, win).Result(); err != nil || ttl <= 61*time.Minute || ttl > 62*time.Minute {
		t.Errorf("window ttl %v %v, want in (61m, 62m]", ttl, err)
	}
	seen := "mg:quota:new-rcpts:seen:alice@example.com"
	members, err := rdb.ZRangeWithScores(ctx, seen, 0, -1).Result()
	if err != nil || len(members) != 1 || members[0].Member != hashArg("bob@example.net") || int64(members[0].Score) != at(0).UnixMilli() {
		t.Errorf("seen set: %v %v", members, err)
	}
	if ttl, err := rdb.PTTL(ctx, seen).Result(); err != nil || ttl <= 29*24*time.Hour || ttl > 30*24*time.Hour {
		t.Errorf("seen ttl %v %v, want about 30 days", ttl, err)
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "mg:quota:") {
			t.Errorf("key %q outside the prefix", k)
		}
		if strings.Contains(k, "bob") {
			t.Errorf("recipient address in key %q", k)
		}
	}
	if len(keys) != 5 {
		t.Errorf("%d keys, want 5 (3 windows, 1 recipients window, 1 seen): %q", len(keys), keys)
	}
}

// TestRedisUnavailable: with Redis gone every call fails with an error
// wrapping ErrUnavailable (and the cause); after a restart (an empty
// server that lost the scripts) the store works again.
func TestRedisUnavailable(t *testing.T) {
	srv, _ := redisServer(t)
	s := NewRedis(newClient(t, srv.Addr()), "down:")
	req := msgs(1, perMinute(5))
	if _, ok, err := s.Reserve(ctx, "a", at(0), time.Minute, []Request{req}); err != nil || !ok {
		t.Fatalf("before: %v %v", ok, err)
	}
	srv.Stop()
	calls := map[string]func() error{
		"Reserve": func() error { _, _, err := s.Reserve(ctx, "b", at(0), time.Minute, []Request{req}); return err },
		"Commit":  func() error { return s.Commit(ctx, "a", at(0), []Part{partOf(req)}) },
		"Release": func() error { return s.Release(ctx, "a", []Part{partOf(req)}) },
		"Levels":  func() error { _, err := s.Levels(ctx, at(0), cMsgs, req.Windows); return err },
		"Keys":    func() error { _, err := s.Keys(ctx, "q", 10); return err },
		"Reset":   func() error { return s.Reset(ctx, "q", "k") },
	}
	for name, f := range calls {
		if err := f(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with Redis down: %v, want ErrUnavailable", name, err)
		}
	}
	srv.Restart(t)
	for name, f := range calls {
		if err := f(); err != nil {
			t.Errorf("%s after restart: %v", name, err)
		}
	}
	// The restarted server is empty: b's 1, a's commit 1 and "b" again.
	eqUsed(t, "after restart", storeHelper{t, s}.used(at(0), cMsgs, req.Windows...), 2)

	// Killed while a sender is sending: every failure wraps
	// ErrUnavailable, and sending resumes after the restart.
	type outcome struct{ err error }
	outcomes := make(chan outcome)
	done := make(chan struct{})
	go func() {
		defer close(outcomes)
		big := msgs(1, perMinute(1<<40))
		for i := 0; ; i++ {
			id := fmt.Sprint("w", i)
			_, _, err := s.Reserve(ctx, id, at(time.Second), time.Minute, []Request{big})
			if err == nil {
				err = s.Commit(ctx, id, at(time.Second), []Part{partOf(big)})
			}
			select {
			case outcomes <- outcome{err}:
			case <-done:
				return
			}
		}
	}()
	await := func(what string, ok func(error) bool, n int) {
		t.Helper()
		for n > 0 {
			o := <-outcomes
			if o.err != nil && !errors.Is(o.err, ErrUnavailable) {
				t.Fatalf("%s: %v does not wrap ErrUnavailable", what, o.err)
			}
			if ok(o.err) {
				n--
			}
		}
	}
	await("running", func(err error) bool { return err == nil }, 10)
	srv.Stop()
	await("killed", func(err error) bool { return err != nil }, 3)
	srv.Restart(t)
	await("restarted", func(err error) bool { return err == nil }, 10)
	close(done)
	for range outcomes {
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err := s.Reserve(cancelled, "c", at(0), time.Minute, []Request{req})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v, want ErrUnavailable and context.Canceled", err)
	}
}

// TestStoresAgree runs one random sequence of operations against both
// stores and requires identical answers: the Lua scripts and the Go code
// are one algorithm.
func TestStoresAgree(t *testing.T) {
	_, newStore := redisServer(t)
	stores := []Store{NewMemory(WithMaxRemembered(4)), newStore(t, WithMaxRemembered(4))}
	rng := rand.New(rand.NewPCG(1, 2))
	agree(t, stores, rng, 1500, func() time.Duration { return time.Duration(rng.IntN(3000)) * time.Millisecond })
}

// TestStoresAgreeJumps is TestStoresAgree with clock jumps that the
// Redis store's running totals must survive: idle gaps longer than a
// window (every bucket leaves at once), gaps of a few buckets, and many
// reservations expiring while others live. (A clock going back is not
// covered: the stores drop what expired at different moments, so a
// later call with an earlier clock may see different leftovers; that
// predates the running totals.)
func TestStoresAgreeJumps(t *testing.T) {
	_, newStore := redisServer(t)
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			stores := []Store{NewMemory(WithMaxRemembered(4)), newStore(t, WithMaxRemembered(4))}
			rng := rand.New(rand.NewPCG(seed, 7))
			agree(t, stores, rng, 1500, func() time.Duration {
				switch rng.IntN(40) {
				case 0:
					return time.Duration(rng.IntN(2*3600)) * time.Second
				case 1:
					return time.Duration(rng.IntN(90)) * time.Second
				}
				return time.Duration(rng.IntN(1500)) * time.Millisecond
			})
		})
	}
}

// agree runs steps random operations against stores, the clock moving by
// tick() before each, and requires identical answers from all of them.
func agree(t *testing.T, stores []Store, rng *rand.Rand, steps int, tick func() time.Duration) {
	t.Helper()
	windows := []Window{{Limit: 5, Period: 10 * time.Second}, {Limit: 8, Period: time.Minute}, {Limit: 20, Period: time.Hour}}
	counters := []Counter{
		{Quota: "a", Key: "k1", Kind: Messages}, {Quota: "a", Key: "k2", Kind: Messages},
		{Quota: "b", Key: "k1", Kind: Recipients}, {Quota: "c", Key: "k1", Kind: NewRecipients},
	}
	randReq := func() Request {
		c := counters[rng.IntN(len(counters))]
		ws := []Window{windows[rng.IntN(3)]}
		if rng.IntN(2) == 0 {
			ws = append(ws, windows[rng.IntN(3)])
		}
		r := Request{Counter: c, Windows: ws, Amount: rng.Int64N(4), Enforce: rng.IntN(4) != 0}
		if c.Kind == NewRecipients {
			r.Recipient = fmt.Sprint("r", rng.IntN(8))
			r.Remember = 30 * time.Second // a quota's remember is one setting
		}
		return r
	}
	now := t0
	var open []string
	reqsOf := map[string][]Request{}
	for step := range steps {
		now = now.Add(tick())
		answers := make([]any, len(stores))
		op := rng.IntN(4)
		var id string
		switch {
		case op == 0 || len(open) == 0:
			id = fmt.Sprint("m", step)
			reqs := []Request{randReq()}
			for rng.IntN(2) == 0 {
				reqs = append(reqs, randReq())
			}
			ttl := time.Duration(rng.IntN(20)) * time.Second
			for i, s := range stores {
				res, ok, err := s.Reserve(ctx, id, now, ttl, reqs)
				answers[i] = fmt.Sprintf("%+v %v %v", res, ok, err)
			}
			open = append(open, id)
			reqsOf[id] = reqs
		case op == 1 || op == 2:
			i := rng.IntN(len(open))
			id = open[i]
			open = append(open[:i], open[i+1:]...)
			parts := make([]Part, len(reqsOf[id]))
			for j, r := range reqsOf[id] {
				parts[j] = partOf(r)
			}
			for i, s := range stores {
				var err error
				if op == 1 {
					err = s.Commit(ctx, id, now, parts)
				} else {
					err = s.Release(ctx, id, parts)
				}
				answers[i] = err
			}
		default:
			c := counters[rng.IntN(len(counters))]
			for i, s := range stores {
				lv, err := s.Levels(ctx, now, c, windows)
				answers[i] = fmt.Sprintf("%+v %v", lv, err)
			}
		}
		for i := 1; i < len(stores); i++ {
			if !reflect.DeepEqual(answers[0], answers[i]) {
				t.Fatalf("step %d (op %d, id %s, %v): %T %v\n%T %v", step, op, id, now.Sub(t0), stores[0], answers[0], stores[i], answers[i])
			}
		}
	}
}

// BenchmarkRedisReserveCommit: one message's three quotas against a real
// local redis-server (two round trips per message).
func BenchmarkRedisReserveCommit(b *testing.B) {
	_, newStore := redisServer(b)
	benchReserveCommit(b, newStore(b))
}

// BenchmarkRedisMessage runs what mailgate does per one-recipient message
// with the load benchmark's quotas (examples/bench, scenario quota): a
// Reserve at MAIL (per sender in two windows, per client address), a
// Reserve at RCPT (per destination), then the Commit of both, from 20
// concurrent sessions on one sender, one address and one destination. The
// hot windows start full of buckets (one unit in each of the last 60), as
// after an hour of steady traffic. It reports the client's CPU per message
// (cpu-ns/op) and redis-server's (redis-cpu-ns/op, from INFO cpu), for a
// store that makes every call a round trip of its own (sync) and one
// made WithBatch(DefaultBatchInterval), as mailgate does (batch).
func BenchmarkRedisMessage(b *testing.B) {
	b.Run("sync", func(b *testing.B) { benchRedisMessage(b) })
	b.Run("batch", func(b *testing.B) { benchRedisMessage(b, WithBatch(DefaultBatchInterval)) })
}

func benchRedisMessage(b *testing.B, opts ...Option) {
	srv, _ := redisServer(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 32})
	b.Cleanup(func() { rdb.Close() })
	s := NewRedis(rdb, "bench:", opts...)
	mail := []Request{
		{Counter: Counter{Quota: "per-sender", Key: "app@example.com", Kind: Messages}, Windows: []Window{perHour(1 << 40), {Limit: 1 << 40, Period: 24 * time.Hour}}, Amount: 1, Enforce: true},
		{Counter: Counter{Quota: "per-ip", Key: "127.0.0.1", Kind: Messages}, Windows: []Window{perHour(1 << 40)}, Amount: 1, Enforce: true},
	}
	rcpt := []Request{
		{Counter: Counter{Quota: "per-destination", Key: "example.com", Kind: Recipients}, Windows: []Window{perMinute(1 << 40)}, Amount: 1, Enforce: true},
	}
	now := time.Now()
	for _, reqs := range [][]Request{mail, rcpt} {
		for _, r := range reqs {
			for _, w := range r.Windows {
				for k := range int64(Buckets) {
					at := now.Add(-time.Duration(k) * w.BucketWidth())
					p := Part{Counter: r.Counter, Windows: []Window{w}, Amount: 1}
					if err := s.Commit(ctx, "fill", at, []Part{p}); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	}
	redisCPU := func() time.Duration {
		info, err := rdb.Info(ctx, "cpu").Result()
		if err != nil {
			b.Fatal(err)
		}
		var total float64
		for _, line := range strings.Split(info, "\r\n") {
			for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
				if v, ok := strings.CutPrefix(line, f); ok {
					var x float64
					fmt.Sscan(v, &x)
					total += x
				}
			}
		}
		return time.Duration(total * float64(time.Second))
	}
	var n atomic.Int64
	b.SetParallelism(10) // 20 sessions on 2 CPUs
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, rcpu0 := processCPU(), redisCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprint("m", n.Add(1))
			now := time.Now()
			mres, ok, err := s.Reserve(ctx, id+"a", now, time.Minute, mail)
			if err != nil || !ok {
				b.Fatalf("Reserve mail: %v %v", ok, err)
			}
			rres, ok, err := s.Reserve(ctx, id+"b", now, time.Minute, rcpt)
			if err != nil || !ok {
				b.Fatalf("Reserve rcpt: %v %v", ok, err)
			}
			if err := s.Commit(ctx, id+"a", now, partsOf(mail, mres)); err != nil {
				b.Fatal(err)
			}
			if err := s.Commit(ctx, id+"b", now, partsOf(rcpt, rres)); err != nil {
				b.Fatal(err)
			}
		}
	})
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu, rcpu := processCPU()-cpu0, redisCPU()-rcpu0
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(rcpu)/float64(b.N), "redis-cpu-ns/op")
}

// TestRedisOldLayout: a window hash written before the running totals
// (buckets and reservations only) is rebuilt on first use, counts kept.
func TestRedisOldLayout(t *testing.T) {
	srv, _ := redisServer(t)
	rdb := newClient(t, srv.Addr())
	s := NewRedis(rdb, "old:")
	h := storeHelper{t, s}
	w := perHour(10)
	win := "old:quota:q:messages:3600000:alice@example.com"
	idx := at(0).UnixMilli() / 60000
	if err := rdb.HSet(ctx, win, fmt.Sprint(idx-1), "3", "r:x", fmt.Sprintf("2 %d", at(time.Minute).UnixMilli())).Err(); err != nil {
		t.Fatal(err)
	}
	eqUsed(t, "read", h.used(at(0), cMsgs, w), 5)
	h.commit("x", at(0), partOf(msgs(2, w)))
	eqUsed(t, "after commit", h.used(at(0), cMsgs, w), 5)
	eqUsed(t, "after the reservation's expiry", h.used(at(2*time.Minute), cMsgs, w), 5)
	if v, err := rdb.HGet(ctx, win, "c").Result(); err != nil || v != "5" {
		t.Errorf("total c after rebuild: %q %v", v, err)
	}
}
