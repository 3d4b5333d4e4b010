package auth

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/internal/peertest"
)

// TestRedisLimiterSharedBetweenInstances: two instances (two limiters on
// one real redis-server) see each other's failures.
func TestRedisLimiterSharedBetweenInstances(t *testing.T) {
	srv := peertest.StartRedis(t)
	newInstance := func() *RedisLimiter {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { rdb.Close() })
		return NewRedisLimiter(rdb, RedisLimiterConfig{IPFailures: 4, UserFailures: 3, Window: 400 * time.Millisecond,
			Prefix: "test:" + t.Name() + ":"})
	}
	a, b := newInstance(), newInstance()
	ip1 := netip.MustParseAddr("192.0.2.1")
	ip2 := netip.MustParseAddr("192.0.2.2")

	t.Run("per_user_across_instances", func(t *testing.T) {
		a.Fail(ip1, "Alice@Example.com")
		b.Fail(ip2, "alice@example.com")
		if !a.Allow(netip.MustParseAddr("192.0.2.3"), "alice@example.com") {
			t.Fatal("refused after 2 of 3 failures")
		}
		a.Fail(ip2, "alice@example.com")
		if b.Allow(netip.MustParseAddr("192.0.2.4"), "ALICE@example.com") {
			t.Fatal("the other instance still allows a user over the limit")
		}
		// A login clears the user's counter, not the address's.
		b.Succeed(ip1, "alice@example.com")
		if !a.Allow(netip.MustParseAddr("192.0.2.5"), "alice@example.com") {
			t.Fatal("user still blocked after a successful login")
		}
	})
	t.Run("per_ipv6_64_across_instances", func(t *testing.T) {
		for i := 0; i < 4; i++ {
			inst := a
			if i%2 == 1 {
				inst = b
			}
			inst.Fail(netip.MustParseAddr("2001:db8:1:2::"+strconv.Itoa(10+i)), "")
		}
		if b.Allow(netip.MustParseAddr("2001:db8:1:2:ffff::1"), "") {
			t.Fatal("the /64 is not limited across instances")
		}
		if !b.Allow(netip.MustParseAddr("2001:db8:1:3::1"), "") {
			t.Fatal("another /64 is limited")
		}
	})
	t.Run("window_expires", func(t *testing.T) {
		ip := netip.MustParseAddr("198.51.100.9")
		for i := 0; i < 4; i++ {
			a.Fail(ip, "")
		}
		if a.Allow(ip, "") {
			t.Fatal("not limited")
		}
		time.Sleep(600 * time.Millisecond)
		if !a.Allow(ip, "") {
			t.Fatal("still limited after the window")
		}
	})
}

// TestRedisLimiterFailsClosed: without Redis, AUTH is refused (454) rather
// than left unlimited.
func TestRedisLimiterFailsClosed(t *testing.T) {
	port := peertest.FreePort(t) // nothing listens there
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1})
	defer rdb.Close()
	l := NewRedisLimiter(rdb, RedisLimiterConfig{Timeout: 200 * time.Millisecond})
	if l.Allow(netip.MustParseAddr("192.0.2.1"), "a@example.com") {
		t.Fatal("allowed with Redis unreachable")
	}
}
