package quota

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Both stores do their arithmetic in whole milliseconds on the caller's
// clock, with the same formulas, so that they agree bit for bit: the Redis
// store runs them in Lua (whose numbers are doubles, exact up to 2^53 ms),
// the memory store in Go. The helpers here are the Go side.

// widthMs is w's bucket width in milliseconds, rounded up so that 60
// buckets always cover at least the period (rounding down would forget a
// unit up to 59 ms early).
func widthMs(w Window) int64 {
	return ceilMs(w.BucketWidth())
}

// periodMs is w's period in whole milliseconds, rounded up; it names the
// window's counters.
func periodMs(w Window) int64 {
	return ceilMs(w.Period)
}

func ceilMs(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// ttlMs is a reservation's lifetime in whole milliseconds, rounded up.
func ttlMs(ttl time.Duration) int64 { return ceilMs(max(ttl, 0)) }

// bucketIndex is floor(nowMs/width).
func bucketIndex(nowMs, width int64) int64 {
	q := nowMs / width
	if nowMs%width != 0 && nowMs < 0 {
		q--
	}
	return q
}

// spanOf is the number of buckets that cover w's period: Buckets, or
// fewer for a period under a minute, whose buckets are a second wide
// (a 30s window is 30 buckets of 1s). A unit counts while its bucket is
// one of the span+1 most recent ones.
func spanOf(w Window) int64 {
	p, width := periodMs(w), widthMs(w)
	return (p + width - 1) / width
}

// oldestCounted is the oldest bucket index still counted at nowMs.
func oldestCounted(nowMs, width, span int64) int64 {
	return bucketIndex(nowMs, width) - span
}

// leavesAt is when the units of bucket idx stop counting, in ms.
func leavesAt(idx, width, span int64) int64 {
	return (idx + span + 1) * width
}

// bucket is the committed count of one bucket index.
type bucket struct {
	idx int64
	n   int64
}

// retryAfterMs walks the counted buckets (ascending, all counted at nowMs)
// oldest first until need units have left. When the committed units alone
// cannot free need (reservations of others hold the room, or the request
// is larger than the limit), the answer is an estimate: when the last
// committed units leave, and at least one bucket width.
func retryAfterMs(buckets []bucket, nowMs, width, span, need int64) int64 {
	var freed, last int64
	for _, b := range buckets {
		freed += b.n
		last = leavesAt(b.idx, width, span) - nowMs
		if freed >= need {
			return last
		}
	}
	return max(last, width)
}

// recipientHash is the 64-bit hash a store remembers instead of the
// address: the first 8 bytes of its SHA-256, so that finding a second
// address that passes for a remembered one costs about 2^32 hashes per
// free recipient rather than nothing (FNV collisions are cheap).
func recipientHash(rcpt string) uint64 {
	sum := sha256.Sum256([]byte(rcpt))
	return binary.BigEndian.Uint64(sum[:8])
}

// remembers reports whether r asks for the recipient memory of
// NewRecipients.
func remembers(c Counter, rcpt string, remember time.Duration) bool {
	return c.Kind == NewRecipients && rcpt != "" && remember > 0
}

// errNegative refuses a request or part with a negative amount.
var errNegative = errors.New("quota: negative amount")

func checkRequests(reqs []Request) error {
	for i := range reqs {
		r := &reqs[i]
		if r.Amount < 0 {
			return fmt.Errorf("%w: %s/%s %d", errNegative, r.Counter.Quota, r.Counter.Kind, r.Amount)
		}
		for _, w := range r.Windows {
			if w.Period <= 0 {
				return fmt.Errorf("quota: %s/%s: window period %v must be positive", r.Counter.Quota, r.Counter.Kind, w.Period)
			}
		}
	}
	return nil
}

func checkParts(parts []Part) error {
	for i := range parts {
		p := &parts[i]
		if p.Amount < 0 {
			return fmt.Errorf("%w: %s/%s %d", errNegative, p.Counter.Quota, p.Counter.Kind, p.Amount)
		}
		for _, w := range p.Windows {
			if w.Period <= 0 {
				return fmt.Errorf("quota: %s/%s: window period %v must be positive", p.Counter.Quota, p.Counter.Kind, w.Period)
			}
		}
	}
	return nil
}

// Option configures NewMemory and NewRedis.
type Option func(*options)

type options struct {
	maxKeys       int
	maxRemembered int
	batch         time.Duration
	log           *slog.Logger
}

// Defaults of the options.
const (
	// DefaultMaxKeys bounds the (quota, key) pairs a Memory store tracks.
	DefaultMaxKeys = 200_000
	// DefaultMaxRemembered bounds the recipients remembered per key.
	DefaultMaxRemembered = 10_000
)

// WithMaxKeys bounds the (quota, key) pairs a Memory store tracks; past
// it the least recently used pair is forgotten. n <= 0 keeps the default.
// The Redis store ignores it (bound Redis with maxmemory and the key
// expiry).
func WithMaxKeys(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxKeys = n
		}
	}
}

// WithMaxRemembered bounds the recipients remembered per key for
// NewRecipients; past it the one committed to longest ago is forgotten.
// n <= 0 keeps the default.
func WithMaxRemembered(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxRemembered = n
		}
	}
}

// WithBatch makes a Redis store's Commit and Release queue their work
// and return at once; the queue is applied interval after the first
// queued call, in one round trip (sooner when 256 are queued), and by
// Flush and Close. See Store for what Commit and Release then guarantee.
// interval <= 0 keeps them synchronous (the default). Memory ignores it.
func WithBatch(interval time.Duration) Option {
	return func(o *options) { o.batch = interval }
}

// WithLogger gives a store a logger, for what it cannot return: the
// commits and releases a failed flush lost (WithBatch). The default is
// slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{maxKeys: DefaultMaxKeys, maxRemembered: DefaultMaxRemembered, log: slog.Default()}
	for _, f := range opts {
		f(&o)
	}
	return o
}
