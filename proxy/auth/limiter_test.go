package auth

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for limiter tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestLimiter(ipMax, userMax, entries int) (*MemoryLimiter, *fakeClock) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return NewMemoryLimiter(MemoryLimiterConfig{
		IPFailures: ipMax, UserFailures: userMax, Window: 15 * time.Minute,
		MaxEntries: entries, Now: clk.Now,
	}), clk
}

var (
	ip1 = netip.MustParseAddr("192.0.2.1")
	ip2 = netip.MustParseAddr("192.0.2.2")
)

func TestMemoryLimiter(t *testing.T) {
	t.Run("per_ip", func(t *testing.T) {
		l, _ := newTestLimiter(3, 100, 100)
		for i := range 3 {
			if !l.Allow(ip1, "") {
				t.Fatalf("refused after %d failures, limit 3", i)
			}
			l.Fail(ip1, fmt.Sprintf("user%d", i)) // a different user each time
		}
		if l.Allow(ip1, "") || l.Allow(ip1, "fresh-user") {
			t.Error("ip1 still allowed after 3 failures")
		}
		if !l.Allow(ip2, "fresh-user") {
			t.Error("ip2 refused because of ip1")
		}
	})
	t.Run("per_user", func(t *testing.T) {
		l, _ := newTestLimiter(100, 2, 100)
		// A distributed attack: each failure from another address.
		l.Fail(netip.MustParseAddr("198.51.100.1"), "alice@example.com")
		l.Fail(netip.MustParseAddr("198.51.100.2"), "Alice@Example.com")
		if l.Allow(netip.MustParseAddr("203.0.113.9"), "ALICE@example.com") {
			t.Error("alice still allowed from a new address after 2 failures")
		}
		if !l.Allow(netip.MustParseAddr("203.0.113.9"), "bob@example.com") {
			t.Error("bob refused because of alice")
		}
	})
	t.Run("window_expires", func(t *testing.T) {
		l, clk := newTestLimiter(1, 1, 100)
		l.Fail(ip1, "alice")
		if l.Allow(ip1, "alice") {
			t.Fatal("allowed at the limit")
		}
		clk.Advance(15*time.Minute - time.Second)
		if l.Allow(ip1, "") || l.Allow(ip2, "alice") {
			t.Error("allowed before the window ended")
		}
		clk.Advance(time.Second)
		if !l.Allow(ip1, "alice") {
			t.Error("refused after the window ended")
		}
	})
	t.Run("succeed_resets_user_not_ip", func(t *testing.T) {
		l, _ := newTestLimiter(3, 2, 100)
		l.Fail(ip1, "alice")
		l.Fail(ip1, "alice")
		l.Succeed(ip1, "alice")
		if !l.Allow(ip2, "alice") {
			t.Error("alice still refused after a successful login")
		}
		l.Fail(ip1, "bob")
		if l.Allow(ip1, "") {
			t.Error("success reset the address counter: a valid account would unlock guessing")
		}
	})
	t.Run("ipv6_counted_per_64", func(t *testing.T) {
		l, _ := newTestLimiter(2, 100, 100)
		l.Fail(netip.MustParseAddr("2001:db8:1:2::1"), "")
		l.Fail(netip.MustParseAddr("2001:db8:1:2:ffff::99"), "")
		if l.Allow(netip.MustParseAddr("2001:db8:1:2:abcd::7"), "") {
			t.Error("another address in the same /64 allowed")
		}
		if !l.Allow(netip.MustParseAddr("2001:db8:1:3::1"), "") {
			t.Error("a different /64 refused")
		}
	})
	t.Run("ipv4_mapped_is_ipv4", func(t *testing.T) {
		l, _ := newTestLimiter(1, 100, 100)
		l.Fail(netip.MustParseAddr("::ffff:192.0.2.1"), "")
		if l.Allow(ip1, "") {
			t.Error("IPv4-mapped failure not counted for the IPv4 address")
		}
		if !l.Allow(ip2, "") {
			t.Error("mapped address counted as a /64 covering other IPv4 addresses")
		}
	})
	t.Run("bounded_memory", func(t *testing.T) {
		const max = 50
		l, _ := newTestLimiter(5, 5, max)
		for i := range 10 * max {
			ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
			l.Fail(ip, fmt.Sprintf("user-%d@example.com", i))
		}
		ips, users := l.Len()
		if ips > max || users > max {
			t.Errorf("tables hold %d addresses and %d users, bound %d", ips, users, max)
		}
		// The most recent entries survive eviction.
		n := 10*max - 1
		last := netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)})
		l.Fail(last, "")
		l.Fail(last, "")
		l.Fail(last, "")
		l.Fail(last, "")
		if l.Allow(last, "") {
			t.Error("the most recently used counter was evicted")
		}
	})
	t.Run("huge_user_names_bounded", func(t *testing.T) {
		l, _ := newTestLimiter(1000, 1, 10)
		long := string(make([]byte, 100_000))
		l.Fail(ip1, long)
		for _, k := range l.users.m {
			if n := len(k.Value.(*counter[string]).key); n > maxLimiterKey {
				t.Errorf("stored key of %d bytes, bound %d", n, maxLimiterKey)
			}
		}
		if l.Allow(ip2, long) {
			t.Error("long user name not counted")
		}
	})
}

func TestMemoryLimiterConcurrent(t *testing.T) {
	l, _ := newTestLimiter(1_000_000, 1_000_000, 64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				ip := netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)})
				l.Allow(ip, "u")
				l.Fail(ip, fmt.Sprint("u", i%100))
				l.Succeed(ip, "u")
			}
		})
	}
	wg.Wait()
	if ips, users := l.Len(); ips > 64 || users > 64 {
		t.Errorf("tables grew past the bound: %d, %d", ips, users)
	}
}

func BenchmarkMemoryLimiter(b *testing.B) {
	l, _ := newTestLimiter(20, 10, DefaultMaxEntries)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if l.Allow(ip, "user@example.com") {
			l.Fail(ip, "user@example.com")
		}
		i++
	}
}
