package auth

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisLimiterConfig configures NewRedisLimiter. Zero fields take the
// MemoryLimiter defaults.
type RedisLimiterConfig struct {
	IPFailures   int
	UserFailures int
	Window       time.Duration
	// Prefix starts every key, so several deployments can share a Redis.
	// Default "mailgate:".
	Prefix string
	// Timeout bounds each Redis round trip. Default 500ms.
	Timeout time.Duration
	Logger  *slog.Logger
}

// RedisLimiter is a Limiter whose counters live in Redis, so every
// instance behind a load balancer sees the failures of all of them. It has
// the same fixed windows and the same counting units as MemoryLimiter
// (IPv4 address, IPv6 /64, canonical user name).
//
// When Redis cannot be reached, Allow answers false: AUTH fails closed
// with 454 4.7.0 (temporary) rather than letting guessing run unlimited.
// Each outage is logged.
type RedisLimiter struct {
	rdb *redis.Client
	cfg RedisLimiterConfig
}

var _ Limiter = (*RedisLimiter)(nil)

// incrScript increments a counter and starts its window on the first
// failure, atomically.
var incrScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

// NewRedisLimiter returns a limiter on rdb.
func NewRedisLimiter(rdb *redis.Client, cfg RedisLimiterConfig) *RedisLimiter {
	if cfg.IPFailures <= 0 {
		cfg.IPFailures = DefaultIPFailures
	}
	if cfg.UserFailures <= 0 {
		cfg.UserFailures = DefaultUserFailures
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultFailureWindow
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "mailgate:"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &RedisLimiter{rdb: rdb, cfg: cfg}
}

func (l *RedisLimiter) ipKey(ip netip.Addr) string {
	return l.cfg.Prefix + "authfail:ip:" + ipKey(ip).String()
}

func (l *RedisLimiter) userKey(user string) string {
	return l.cfg.Prefix + "authfail:user:" + userKey(user)
}

func (l *RedisLimiter) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), l.cfg.Timeout)
}

// Allow implements Limiter.
func (l *RedisLimiter) Allow(ip netip.Addr, user string) bool {
	ctx, cancel := l.ctx()
	defer cancel()
	keys := []string{l.ipKey(ip)}
	if user != "" {
		keys = append(keys, l.userKey(user))
	}
	vals, err := l.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		l.cfg.Logger.Error("auth: redis limiter unavailable, refusing AUTH", "err", err)
		return false
	}
	limits := []int{l.cfg.IPFailures, l.cfg.UserFailures}
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // no counter
		}
		if n, err := strconv.Atoi(s); err != nil || n >= limits[i] {
			return false
		}
	}
	return true
}

// Fail implements Limiter.
func (l *RedisLimiter) Fail(ip netip.Addr, user string) {
	ctx, cancel := l.ctx()
	defer cancel()
	window := l.cfg.Window.Milliseconds()
	keys := []string{l.ipKey(ip)}
	if user != "" {
		keys = append(keys, l.userKey(user))
	}
	for _, k := range keys {
		if err := incrScript.Run(ctx, l.rdb, []string{k}, window).Err(); err != nil {
			l.cfg.Logger.Error("auth: redis limiter could not count a failure", "err", err)
			return
		}
	}
}

// Succeed implements Limiter: a login clears the user's counter, never the
// address's (one valid account must not reset guessing against others).
func (l *RedisLimiter) Succeed(_ netip.Addr, user string) {
	if user == "" {
		return
	}
	ctx, cancel := l.ctx()
	defer cancel()
	if err := l.rdb.Del(ctx, l.userKey(user)).Err(); err != nil {
		l.cfg.Logger.Warn("auth: redis limiter could not clear a counter", "err", err)
	}
}
