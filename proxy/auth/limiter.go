package auth

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// Limiter counts AUTH failures per client address and per user name and
// says when to stop listening. Implementations must be safe for concurrent
// use. The in-memory one is MemoryLimiter; one backed by Redis can share
// counters between instances behind a load balancer.
type Limiter interface {
	// Allow reports whether an attempt from ip for user may be verified.
	// It is called before any password work. user may be "" when it is
	// not known yet; then only ip is checked.
	Allow(ip netip.Addr, user string) bool
	// Fail records a failed attempt. user may be "" (malformed input).
	Fail(ip netip.Addr, user string)
	// Succeed records a successful login.
	Succeed(ip netip.Addr, user string)
}

// MemoryLimiterConfig configures NewMemoryLimiter. Zero fields take the
// defaults shown.
type MemoryLimiterConfig struct {
	IPFailures   int           // per client address per window; default 20
	UserFailures int           // per user name per window; default 10
	Window       time.Duration // default 15m
	// MaxEntries bounds each of the two tables (addresses, users); when a
	// table is full the least recently touched entry is evicted. Default
	// 65536, a few MiB at most.
	MaxEntries int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Defaults for MemoryLimiterConfig.
const (
	DefaultIPFailures    = 20
	DefaultUserFailures  = 10
	DefaultFailureWindow = 15 * time.Minute
	DefaultMaxEntries    = 65536
)

// maxLimiterKey bounds user-name keys so a table's memory is bounded by
// MaxEntries alone. Longer names share the counter of their prefix, which
// only ever limits more.
const maxLimiterKey = MaxUserLen

// MemoryLimiter is an in-process Limiter with fixed windows: a counter
// starts at its first failure and is forgotten Window later. Memory is
// bounded by MaxEntries per table.
//
// IPv4 addresses are counted one by one; IPv6 addresses by /64, the
// smallest prefix a single client is usually given, so an attacker cannot
// reset its counter by walking through its own subnet. IPv4-mapped IPv6
// addresses count as IPv4. An invalid (zero) address — a Unix socket
// listener — has one shared counter.
//
// Succeed forgets the user's failures but not the address's: otherwise an
// attacker with one valid account could interleave successful logins to
// keep guessing other users' passwords from the same address.
type MemoryLimiter struct {
	cfg   MemoryLimiterConfig
	mu    sync.Mutex
	ips   *lruCounters[netip.Prefix]
	users *lruCounters[string]
}

var _ Limiter = (*MemoryLimiter)(nil)

// NewMemoryLimiter returns a MemoryLimiter with cfg, defaults applied.
func NewMemoryLimiter(cfg MemoryLimiterConfig) *MemoryLimiter {
	if cfg.IPFailures <= 0 {
		cfg.IPFailures = DefaultIPFailures
	}
	if cfg.UserFailures <= 0 {
		cfg.UserFailures = DefaultUserFailures
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultFailureWindow
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &MemoryLimiter{
		cfg:   cfg,
		ips:   newLRUCounters[netip.Prefix](cfg.MaxEntries),
		users: newLRUCounters[string](cfg.MaxEntries),
	}
}

// ipKey is the counting unit for ip: /32 for IPv4, /64 for IPv6.
func ipKey(ip netip.Addr) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

func userKey(user string) string {
	user = CanonicalUser(user)
	if len(user) > maxLimiterKey {
		user = user[:maxLimiterKey]
	}
	return user
}

// Allow implements Limiter.
func (l *MemoryLimiter) Allow(ip netip.Addr, user string) bool {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ips.count(ipKey(ip), now, l.cfg.Window) >= l.cfg.IPFailures {
		return false
	}
	if user != "" && l.users.count(userKey(user), now, l.cfg.Window) >= l.cfg.UserFailures {
		return false
	}
	return true
}

// Fail implements Limiter.
func (l *MemoryLimiter) Fail(ip netip.Addr, user string) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ips.add(ipKey(ip), now, l.cfg.Window)
	if user != "" {
		l.users.add(userKey(user), now, l.cfg.Window)
	}
}

// Succeed implements Limiter.
func (l *MemoryLimiter) Succeed(ip netip.Addr, user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if user != "" {
		l.users.remove(userKey(user))
	}
}

// Len returns the number of address and user counters held, for tests and
// metrics.
func (l *MemoryLimiter) Len() (ips, users int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ips.ll.Len(), l.users.ll.Len()
}

// lruCounters is a size-bounded map of fixed-window counters; the front of
// ll is the most recently touched. Not safe for concurrent use.
type lruCounters[K comparable] struct {
	max int
	m   map[K]*list.Element
	ll  *list.List
}

type counter[K comparable] struct {
	key   K
	n     int
	start time.Time
}

func newLRUCounters[K comparable](max int) *lruCounters[K] {
	return &lruCounters[K]{max: max, m: make(map[K]*list.Element), ll: list.New()}
}

// count returns the failures of k in the current window, dropping an
// expired counter.
func (c *lruCounters[K]) count(k K, now time.Time, window time.Duration) int {
	e, ok := c.m[k]
	if !ok {
		return 0
	}
	ctr := e.Value.(*counter[K])
	if now.Sub(ctr.start) >= window {
		c.ll.Remove(e)
		delete(c.m, k)
		return 0
	}
	return ctr.n
}

func (c *lruCounters[K]) add(k K, now time.Time, window time.Duration) {
	if e, ok := c.m[k]; ok {
		ctr := e.Value.(*counter[K])
		if now.Sub(ctr.start) >= window {
			ctr.n, ctr.start = 0, now
		}
		ctr.n++
		c.ll.MoveToFront(e)
		return
	}
	for c.ll.Len() >= c.max {
		oldest := c.ll.Back()
		c.ll.Remove(oldest)
		delete(c.m, oldest.Value.(*counter[K]).key)
	}
	c.m[k] = c.ll.PushFront(&counter[K]{key: k, n: 1, start: now})
}

func (c *lruCounters[K]) remove(k K) {
	if e, ok := c.m[k]; ok {
		c.ll.Remove(e)
		delete(c.m, k)
	}
}
