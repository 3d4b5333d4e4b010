package quota

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// t0 is the fake clock's start, on a boundary of every bucket width the
// tests use, so that bucket edges fall on round offsets from it.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// newStoreFunc returns a fresh, empty store.
type newStoreFunc func(t *testing.T, opts ...Option) Store

// storeHelper drives one store in a test.
type storeHelper struct {
	t *testing.T
	s Store
}

var ctx = context.Background()

func (h storeHelper) reserve(id string, now time.Time, ttl time.Duration, reqs ...Request) ([]Result, bool) {
	h.t.Helper()
	res, ok, err := h.s.Reserve(ctx, id, now, ttl, reqs)
	if err != nil {
		h.t.Fatalf("Reserve(%s): %v", id, err)
	}
	if len(res) != len(reqs) {
		h.t.Fatalf("Reserve(%s): %d results for %d requests", id, len(res), len(reqs))
	}
	return res, ok
}

func (h storeHelper) commit(id string, now time.Time, parts ...Part) {
	h.t.Helper()
	if err := h.s.Commit(ctx, id, now, parts); err != nil {
		h.t.Fatalf("Commit(%s): %v", id, err)
	}
}

func (h storeHelper) release(id string, parts ...Part) {
	h.t.Helper()
	if err := h.s.Release(ctx, id, parts); err != nil {
		h.t.Fatalf("Release(%s): %v", id, err)
	}
}

func (h storeHelper) used(now time.Time, c Counter, windows ...Window) []int64 {
	h.t.Helper()
	lv, err := h.s.Levels(ctx, now, c, windows)
	if err != nil {
		h.t.Fatalf("Levels: %v", err)
	}
	out := make([]int64, len(lv))
	for i, l := range lv {
		out[i] = l.Used
	}
	return out
}

// send reserves and commits amount units of req at now, requiring that
// the reservation is made.
func (h storeHelper) send(id string, now time.Time, req Request) {
	h.t.Helper()
	if _, ok := h.reserve(id, now, time.Minute, req); !ok {
		h.t.Fatalf("Reserve(%s) refused", id)
	}
	h.commit(id, now, partOf(req))
}

func partOf(r Request) Part {
	return Part{Counter: r.Counter, Windows: r.Windows, Amount: r.Amount, Recipient: r.Recipient, Remember: r.Remember}
}

func eqUsed(t *testing.T, what string, got []int64, want ...int64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: used %v, want %v", what, got, want)
	}
}

var (
	perMinute = func(n int64) Window { return Window{Limit: n, Period: time.Minute} }
	perHour   = func(n int64) Window { return Window{Limit: n, Period: time.Hour} }
	cMsgs     = Counter{Quota: "q", Key: "alice@example.com", Kind: Messages}
	cNew      = Counter{Quota: "q", Key: "alice@example.com", Kind: NewRecipients}
)

func msgs(n int64, windows ...Window) Request {
	return Request{Counter: cMsgs, Windows: windows, Amount: n, Enforce: true}
}

// testStore is the conformance suite both stores pass.
func testStore(t *testing.T, newStore newStoreFunc) {
	t.Run("WindowEdges", func(t *testing.T) { testWindowEdges(t, newStore) })
	t.Run("SeveralWindows", func(t *testing.T) { testSeveralWindows(t, newStore) })
	t.Run("ReserveCommitRelease", func(t *testing.T) { testReserveCommitRelease(t, newStore) })
	t.Run("ReservationExpiry", func(t *testing.T) { testReservationExpiry(t, newStore) })
	t.Run("UnknownIDs", func(t *testing.T) { testUnknownIDs(t, newStore) })
	t.Run("Atomic", func(t *testing.T) { testAtomic(t, newStore) })
	t.Run("Warn", func(t *testing.T) { testWarn(t, newStore) })
	t.Run("RetryAfter", func(t *testing.T) { testRetryAfter(t, newStore) })
	t.Run("NewRecipients", func(t *testing.T) { testNewRecipients(t, newStore) })
	t.Run("RememberedCap", func(t *testing.T) { testRememberedCap(t, newStore) })
	t.Run("KeysReset", func(t *testing.T) { testKeysReset(t, newStore) })
	t.Run("Exact", func(t *testing.T) {
		s := newStore(t)
		testExact(t, s, s)
	})
}

// testWindowEdges: a unit committed at t counts for at least the period
// and is gone one bucket later, for windows whose bucket is a second (the
// minimum) and 1/60 of the period.
func testWindowEdges(t *testing.T, newStore newStoreFunc) {
	for _, tc := range []struct {
		period time.Duration
		offset time.Duration // of the commit from t0 (a bucket edge)
	}{
		{time.Minute, 0},
		{time.Minute, 999 * time.Millisecond}, // last ms of the bucket
		{30 * time.Second, 500 * time.Millisecond},
		{time.Hour, 0},
		{time.Hour, 59 * time.Second},
		{24 * time.Hour, 23 * time.Minute},
		{61 * time.Second, 0}, // width 1016.67ms, rounded up to 1017
	} {
		t.Run(fmt.Sprintf("%v+%v", tc.period, tc.offset), func(t *testing.T) {
			h := storeHelper{t, newStore(t)}
			w := Window{Limit: 10, Period: tc.period}
			width := w.BucketWidth()
			tc0 := at(tc.offset)
			h.send("m1", tc0, msgs(1, w))
			eqUsed(t, "at commit", h.used(tc0, cMsgs, w), 1)
			eqUsed(t, "one period later", h.used(tc0.Add(tc.period), cMsgs, w), 1)
			// span+1 buckets of the width rounded up to a ms: period +
			// width when the period is a multiple of 60ms.
			gone := time.Duration(spanOf(w)+1) * time.Duration(widthMs(w)) * time.Millisecond
			if tc.period%(60*time.Millisecond) == 0 && gone != tc.period+width {
				t.Fatalf("gone after %v, want period + width %v", gone, tc.period+width)
			}
			eqUsed(t, "period + bucket later", h.used(tc0.Add(gone), cMsgs, w), 0)
		})
	}
	t.Run("ClockAhead", func(t *testing.T) {
		// A unit committed by an instance whose clock is ahead counts at
		// once on the others: skew never lets more through.
		h := storeHelper{t, newStore(t)}
		w := perMinute(10)
		h.send("m1", at(5*time.Second), msgs(1, w))
		eqUsed(t, "seen from behind", h.used(at(0), cMsgs, w), 1)
	})
	t.Run("LastMillisecond", func(t *testing.T) {
		// A unit of bucket b counts until (b+61)*width exactly.
		h := storeHelper{t, newStore(t)}
		w := perMinute(10)
		h.send("m1", at(10*time.Second+300*time.Millisecond), msgs(1, w))
		eqUsed(t, "last ms", h.used(at(71*time.Second-time.Millisecond), cMsgs, w), 1)
		eqUsed(t, "bucket left", h.used(at(71*time.Second), cMsgs, w), 0)
	})
}

// testSeveralWindows: every window must have room.
func testSeveralWindows(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	ws := []Window{perMinute(2), perHour(3)}
	h.send("a", at(0), msgs(1, ws...))
	h.send("b", at(time.Second), msgs(1, ws...))
	res, ok := h.reserve("c", at(2*time.Second), time.Minute, msgs(1, ws...))
	if ok || res[0].Fits || res[0].Charged != 0 {
		t.Fatalf("minute window full: ok=%v %+v", ok, res[0])
	}
	if res[0].Levels[0].RetryAfter == 0 || res[0].Levels[1].RetryAfter != 0 {
		t.Errorf("RetryAfter only on the full window: %+v", res[0].Levels)
	}
	eqUsed(t, "levels of the refusal", []int64{res[0].Levels[0].Used, res[0].Levels[1].Used}, 2, 2)
	h.send("c", at(2*time.Minute), msgs(1, ws...))
	eqUsed(t, "after two minutes", h.used(at(2*time.Minute), cMsgs, ws...), 1, 3)
	res, ok = h.reserve("d", at(3*time.Minute), time.Minute, msgs(1, ws...))
	if ok || res[0].Levels[0].RetryAfter != 0 || res[0].Levels[1].RetryAfter == 0 {
		t.Fatalf("hour window full: ok=%v %+v", ok, res[0])
	}
}

// testReserveCommitRelease: reserved units count until Commit (then they
// are usage) or Release (then they are nothing).
func testReserveCommitRelease(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := perMinute(3)
	req := msgs(2, w)
	res, ok := h.reserve("a", at(0), time.Minute, req)
	if !ok || !res[0].Fits || res[0].Charged != 2 || res[0].Levels[0].Used != 2 {
		t.Fatalf("first reserve: ok=%v %+v", ok, res[0])
	}
	eqUsed(t, "reserved", h.used(at(0), cMsgs, w), 2)
	if _, ok := h.reserve("b", at(0), time.Minute, req); ok {
		t.Fatal("second reserve of 2 fitted in 3 with 2 reserved")
	}
	h.release("a", partOf(req))
	eqUsed(t, "released", h.used(at(0), cMsgs, w), 0)
	h.release("a", partOf(req)) // twice: nothing happens
	eqUsed(t, "released twice", h.used(at(0), cMsgs, w), 0)
	if _, ok := h.reserve("b", at(time.Second), time.Minute, req); !ok {
		t.Fatal("reserve after release refused")
	}
	h.commit("b", at(2*time.Second), partOf(req))
	eqUsed(t, "committed", h.used(at(2*time.Second), cMsgs, w), 2)
	h.release("b", partOf(req)) // after commit: nothing to release
	eqUsed(t, "release after commit", h.used(at(2*time.Second), cMsgs, w), 2)
	// Reserving twice under one id adds up, and one Release ends both.
	one := msgs(1, w)
	h.reserve("c", at(3*time.Second), time.Minute, one)
	eqUsed(t, "no room left", h.used(at(3*time.Second), cMsgs, w), 3)
	h.release("c", partOf(one))
	h.reserve("d", at(3*time.Second), time.Minute, Request{Counter: cMsgs, Windows: []Window{perMinute(10)}, Amount: 1, Enforce: true})
	h.reserve("d", at(3*time.Second), time.Minute, Request{Counter: cMsgs, Windows: []Window{perMinute(10)}, Amount: 2, Enforce: true})
	eqUsed(t, "one id reserved twice", h.used(at(3*time.Second), cMsgs, w), 5)
	h.release("d", partOf(one))
	eqUsed(t, "released both", h.used(at(3*time.Second), cMsgs, w), 2)
}

// testReservationExpiry: a reservation nobody ends stops counting after
// ttl; committing it afterwards counts its units all the same.
func testReservationExpiry(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := perHour(3)
	req := msgs(3, w)
	ttl := 30 * time.Second
	if _, ok := h.reserve("a", at(0), ttl, req); !ok {
		t.Fatal("reserve refused")
	}
	eqUsed(t, "just before ttl", h.used(at(ttl-time.Millisecond), cMsgs, w), 3)
	if _, ok := h.reserve("b", at(ttl-time.Millisecond), ttl, msgs(1, w)); ok {
		t.Fatal("reserve fitted before the ttl passed")
	}
	eqUsed(t, "at ttl", h.used(at(ttl), cMsgs, w), 0)
	h.commit("a", at(ttl+time.Second), partOf(req))
	eqUsed(t, "commit after expiry", h.used(at(ttl+time.Second), cMsgs, w), 3)
	if _, ok := h.reserve("c", at(ttl+2*time.Second), ttl, msgs(1, w)); ok {
		t.Fatal("expired-then-committed units did not count")
	}
}

// testUnknownIDs: Commit of an id never reserved counts its parts;
// Release of one changes nothing.
func testUnknownIDs(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := perMinute(5)
	h.release("nobody", partOf(msgs(2, w)))
	eqUsed(t, "release unknown", h.used(at(0), cMsgs, w), 0)
	h.commit("nobody", at(0), partOf(msgs(2, w)))
	eqUsed(t, "commit unknown", h.used(at(0), cMsgs, w), 2)
	h.commit("zero", at(0), partOf(msgs(0, w)))
	eqUsed(t, "commit of nothing", h.used(at(0), cMsgs, w), 2)
	if err := h.s.Commit(ctx, "neg", at(0), []Part{partOf(msgs(-1, w))}); err == nil {
		t.Error("negative amount committed")
	}
	if _, _, err := h.s.Reserve(ctx, "neg", at(0), time.Minute, []Request{msgs(-1, w)}); err == nil {
		t.Error("negative amount reserved")
	}
}

// testAtomic: one enforced request that does not fit reserves nothing of
// the others, enforced or not.
func testAtomic(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	cA := Counter{Quota: "a", Key: "k", Kind: Messages}
	cB := Counter{Quota: "b", Key: "k", Kind: Recipients}
	cC := Counter{Quota: "c", Key: "k", Kind: Messages}
	w := perMinute(2)
	h.send("full", at(0), Request{Counter: cB, Windows: []Window{w}, Amount: 2, Enforce: true})
	reqs := []Request{
		{Counter: cA, Windows: []Window{w}, Amount: 1, Enforce: true},
		{Counter: cB, Windows: []Window{w}, Amount: 1, Enforce: true},
		{Counter: cC, Windows: []Window{w}, Amount: 1},
	}
	res, ok := h.reserve("x", at(time.Second), time.Minute, reqs...)
	if ok {
		t.Fatal("reserved with one enforced request full")
	}
	for i, want := range []bool{true, false, true} {
		if res[i].Fits != want || res[i].Charged != 0 {
			t.Errorf("request %d: fits=%v charged=%d, want fits=%v charged=0", i, res[i].Fits, res[i].Charged, want)
		}
	}
	for _, c := range []Counter{cA, cC} {
		eqUsed(t, c.Quota, h.used(at(time.Second), c, w), 0)
	}
	// Requests on one window in one call see each other.
	two := []Request{
		{Counter: cA, Windows: []Window{w}, Amount: 1, Enforce: true},
		{Counter: cA, Windows: []Window{w}, Amount: 2, Enforce: true},
	}
	res, ok = h.reserve("y", at(time.Second), time.Minute, two...)
	if ok || !res[0].Fits || res[1].Fits || res[1].Levels[0].Used != 1 {
		t.Fatalf("1+2 in a window of 2: ok=%v %+v", ok, res)
	}
	eqUsed(t, "after 1+2", h.used(at(time.Second), cA, w), 0)
	two[1].Amount = 1
	if _, ok := h.reserve("y", at(time.Second), time.Minute, two...); !ok {
		t.Fatal("1+1 in a window of 2 refused")
	}
	eqUsed(t, "after 1+1", h.used(at(time.Second), cA, w), 2)
}

// testWarn: a request that is not enforced is reserved even in a full
// window, and says it did not fit.
func testWarn(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := perMinute(1)
	h.send("a", at(0), msgs(1, w))
	warn := msgs(1, w)
	warn.Enforce = false
	res, ok := h.reserve("b", at(time.Second), time.Minute, warn)
	if !ok || res[0].Fits || res[0].Charged != 1 || res[0].Levels[0].Used != 2 || res[0].Levels[0].RetryAfter != 60*time.Second {
		t.Fatalf("warn over the limit: ok=%v %+v", ok, res[0])
	}
	h.commit("b", at(time.Second), partOf(warn))
	eqUsed(t, "over the limit", h.used(at(time.Second), cMsgs, w), 2)
}

// testRetryAfter: the time until enough committed units leave, walking
// buckets oldest first; one bucket width when reservations hold the room.
func testRetryAfter(t *testing.T, newStore newStoreFunc) {
	w := perMinute(3)
	for _, tc := range []struct {
		name    string
		commits []time.Duration // one unit each
		reserve int64           // units reserved by another id at 30s
		amount  int64
		want    time.Duration
	}{
		{"first unit leaves", []time.Duration{0, 10 * time.Second, 20 * time.Second}, 0, 1, 31 * time.Second},
		{"two units leave", []time.Duration{0, 10 * time.Second, 20 * time.Second}, 0, 2, 41 * time.Second},
		{"same bucket", []time.Duration{5 * time.Second, 5*time.Second + 500*time.Millisecond, 20 * time.Second}, 0, 2, 36 * time.Second},
		{"reservations hold the room", nil, 3, 1, time.Second},
		{"committed then reserved", []time.Duration{0}, 2, 2, 31 * time.Second},
		{"committed not enough", []time.Duration{0}, 2, 3, 31 * time.Second},
		{"larger than the limit", []time.Duration{0, 10 * time.Second}, 0, 5, 41 * time.Second},
		{"larger than the limit, empty", nil, 0, 5, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := storeHelper{t, newStore(t)}
			for i, d := range tc.commits {
				h.send(fmt.Sprint("c", i), at(d), msgs(1, w))
			}
			if tc.reserve > 0 {
				h.reserve("other", at(30*time.Second), time.Minute, msgs(tc.reserve, w))
			}
			res, ok := h.reserve("x", at(30*time.Second), time.Minute, msgs(tc.amount, w))
			if ok {
				t.Fatal("reserved")
			}
			if got := res[0].Levels[0].RetryAfter; got != tc.want {
				t.Errorf("RetryAfter %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("Levels", func(t *testing.T) {
		h := storeHelper{t, newStore(t)}
		h.send("a", at(0), msgs(3, w, perHour(10)))
		lv, err := h.s.Levels(ctx, at(10*time.Second), cMsgs, []Window{w, perHour(10)})
		if err != nil {
			t.Fatal(err)
		}
		if lv[0].Used != 3 || lv[0].RetryAfter != 51*time.Second || lv[1].Used != 3 || lv[1].RetryAfter != 0 {
			t.Errorf("Levels %+v", lv)
		}
		if lv[0].Window != w || lv[1].Window != perHour(10) {
			t.Errorf("Levels windows %+v", lv)
		}
	})
}

// testNewRecipients: a recipient the key committed to within Remember is
// free; others are charged; a released one is not remembered.
func testNewRecipients(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := Window{Limit: 2, Period: 24 * time.Hour}
	rcpt := func(addr string) Request {
		return Request{Counter: cNew, Windows: []Window{w}, Amount: 1, Enforce: true, Recipient: addr, Remember: 2 * time.Hour}
	}
	check := func(now time.Duration, addr string, wantOK bool, wantCharged int64) []Result {
		t.Helper()
		res, ok := h.reserve("chk", at(now), time.Minute, rcpt(addr))
		if ok != wantOK || res[0].Charged != wantCharged {
			t.Fatalf("%v %s: ok=%v charged=%d, want %v %d", now, addr, ok, res[0].Charged, wantOK, wantCharged)
		}
		h.release("chk", partOf(rcpt(addr)))
		return res
	}
	h.send("m1", at(0), rcpt("bob@example.net"))
	check(time.Minute, "bob@example.net", true, 0)
	check(time.Minute, "carol@example.net", true, 1)
	// Released, not committed: carol is still new.
	check(2*time.Minute, "carol@example.net", true, 1)
	h.send("m2", at(3*time.Minute), rcpt("carol@example.net"))
	// Full, but a known recipient still fits and costs nothing.
	res := check(4*time.Minute, "bob@example.net", true, 0)
	if !res[0].Fits || res[0].Levels[0].Used != 2 || res[0].Levels[0].RetryAfter != 0 {
		t.Errorf("known recipient at a full quota: %+v", res[0])
	}
	check(4*time.Minute, "dave@example.net", false, 0)
	// A commit to a known recipient (Amount 0) refreshes the memory.
	h.commit("m3", at(time.Hour), Part{Counter: cNew, Windows: []Window{w}, Recipient: "bob@example.net", Remember: 2 * time.Hour})
	eqUsed(t, "refresh costs nothing", h.used(at(time.Hour), cNew, w), 2)
	// Forgotten after Remember: carol (3m) is new again at 2h3m, bob (1h) not.
	check(2*time.Hour+2*time.Minute+59*time.Second, "carol@example.net", true, 0)
	res = check(2*time.Hour+3*time.Minute, "carol@example.net", false, 0)
	if res[0].Fits {
		t.Errorf("forgotten carol fits a full quota: %+v", res[0])
	}
	check(2*time.Hour+3*time.Minute, "bob@example.net", true, 0)
	check(3*time.Hour, "bob@example.net", false, 0)
	// Another key does not know bob.
	other := rcpt("bob@example.net")
	other.Counter.Key = "mallory@example.com"
	if res, _ := h.reserve("o", at(time.Hour), time.Minute, other); res[0].Charged != 1 {
		t.Errorf("bob known to another key: %+v", res[0])
	}
}

// testRememberedCap: past the per-key cap, the recipient committed to
// longest ago is forgotten.
func testRememberedCap(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t, WithMaxRemembered(3))}
	w := Window{Limit: 100, Period: 24 * time.Hour}
	rcpt := func(i int) Request {
		return Request{Counter: cNew, Windows: []Window{w}, Amount: 1, Enforce: true, Recipient: fmt.Sprintf("r%d@example.net", i), Remember: 24 * time.Hour}
	}
	for i := range 5 {
		h.send(fmt.Sprint("m", i), at(time.Duration(i)*time.Second), rcpt(i))
	}
	for i, want := range []int64{1, 1, 0, 0, 0} {
		res, _ := h.reserve("chk", at(time.Minute), time.Minute, rcpt(i))
		h.release("chk", partOf(rcpt(i)))
		if res[0].Charged != want {
			t.Errorf("r%d charged %d, want %d", i, res[0].Charged, want)
		}
	}
}

// testKeysReset: Keys lists the keys with state per quota; Reset forgets
// a key's counters, reservations and recipients.
func testKeysReset(t *testing.T, newStore newStoreFunc) {
	h := storeHelper{t, newStore(t)}
	w := perHour(10)
	// Names that would confuse a parser splitting on ':' or a glob.
	keys := []string{"alice@example.com", "b:ob", "*", "messages:60000:x"}
	for i, k := range keys {
		c := Counter{Quota: "q:1", Key: k, Kind: Messages}
		h.send(fmt.Sprint("m", i), at(0), Request{Counter: c, Windows: []Window{w}, Amount: 1, Enforce: true})
	}
	h.send("other", at(0), Request{Counter: Counter{Quota: "q", Key: "1:messages:60000:y", Kind: Messages}, Windows: []Window{w}, Amount: 1, Enforce: true})
	h.reserve("pending", at(0), time.Hour, Request{Counter: Counter{Quota: "q:1", Key: "b:ob", Kind: Recipients}, Windows: []Window{w}, Amount: 3, Enforce: true})
	h.send("seen", at(0), Request{Counter: Counter{Quota: "q:1", Key: "b:ob", Kind: NewRecipients}, Windows: []Window{w}, Amount: 1, Recipient: "x@example.net", Remember: time.Hour})

	got, err := h.s.Keys(ctx, "q:1", 100)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(keys))
	if !slices.Equal(got, want) {
		t.Errorf("Keys %q, want %q", got, want)
	}
	if got, err := h.s.Keys(ctx, "q:1", 2); err != nil || len(got) != 2 {
		t.Errorf("Keys limit 2: %q %v", got, err)
	}
	if got, err := h.s.Keys(ctx, "q", 100); err != nil || !slices.Equal(got, []string{"1:messages:60000:y"}) {
		t.Errorf("Keys of q: %q %v", got, err)
	}

	if err := h.s.Reset(ctx, "q:1", "b:ob"); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Reset(ctx, "q:1", "*"); err != nil {
		t.Fatal(err)
	}
	got, _ = h.s.Keys(ctx, "q:1", 100)
	slices.Sort(got)
	if want := []string{"alice@example.com", "messages:60000:x"}; !slices.Equal(got, want) {
		t.Errorf("Keys after Reset %q, want %q", got, want)
	}
	for _, kind := range []Kind{Messages, Recipients, NewRecipients} {
		eqUsed(t, "reset "+string(kind), h.used(at(time.Second), Counter{Quota: "q:1", Key: "b:ob", Kind: kind}, w), 0)
	}
	res, _ := h.reserve("r", at(time.Second), time.Minute, Request{Counter: Counter{Quota: "q:1", Key: "b:ob", Kind: NewRecipients}, Windows: []Window{w}, Amount: 1, Recipient: "x@example.net", Remember: time.Hour})
	if res[0].Charged != 1 {
		t.Errorf("recipient remembered after Reset: %+v", res[0])
	}
	eqUsed(t, "other quota untouched", h.used(at(time.Second), Counter{Quota: "q", Key: "1:messages:60000:y", Kind: Messages}, w), 1)
	eqUsed(t, "other key untouched", h.used(at(time.Second), Counter{Quota: "q:1", Key: "messages:60000:x", Kind: Messages}, w), 1)
}

// testExact: 20 goroutines race Reserve+Commit on two stores sharing
// state (the same Memory twice, or two Redis clients) for a limit of 50:
// exactly 50 are granted, however the calls interleave.
func testExact(t *testing.T, a, b Store) {
	const limit, workers, tries = 50, 20, 5
	for round := range 3 {
		c := Counter{Quota: "exact", Key: fmt.Sprint("round", round), Kind: Messages}
		req := Request{Counter: c, Windows: []Window{perHour(limit)}, Amount: 1, Enforce: true}
		var granted atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, workers*tries)
		for g := range workers {
			s := a
			if g%2 == 1 {
				s = b
			}
			wg.Go(func() {
				for i := range tries {
					id := fmt.Sprintf("g%d-%d", g, i)
					_, ok, err := s.Reserve(ctx, id, at(time.Second), time.Minute, []Request{req})
					if err != nil {
						errs <- err
						return
					}
					if !ok {
						continue
					}
					granted.Add(1)
					if err := s.Commit(ctx, id, at(time.Second), []Part{partOf(req)}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if n := granted.Load(); n != limit {
			t.Errorf("round %d: %d granted, want exactly %d", round, n, limit)
		}
		lv, err := a.Levels(ctx, at(time.Second), c, req.Windows)
		if err != nil || lv[0].Used != limit {
			t.Errorf("round %d: Levels %+v %v, want used %d", round, lv, err, limit)
		}
	}
}
