// Package quota counts what senders send, for the quota blocks of the
// configuration: it keeps the counters, in process memory or in Redis, and
// implements reserve / commit / release over them. It knows nothing of SMTP
// or of the policy input document: package policy evaluates each quota's
// key and when expressions, builds Requests and hands the proxy a
// Reservation to end.
//
// # Algorithm
//
// Every window ("200/1h") is a sliding window kept as 60 buckets of
// 1/60 of its period (at least one second each, so a window under a
// minute has fewer buckets: a 30s window is 30 buckets of 1s). A unit
// committed at time t lands in the bucket of t and is counted while that
// bucket is one of the span+1 most recent ones (span: the 60 buckets, or
// fewer), so for between one period and one period plus one bucket after
// t: the count never forgets a unit early, and so never admits more than
// the limit in any window of the period's length. The error bound is one
// way only: a unit can be counted up to period/60 longer than the period
// (1 minute for a 1h window, 24 minutes for 24h).
//
// Both stores compute in whole milliseconds of the now passed in: the
// bucket width is rounded up to a millisecond (so that 60 buckets always
// cover the period; for a period that is not a multiple of 60 ms a unit
// may count up to 60 ms longer than the bound above), a unit committed at
// t goes into bucket floor(t/width), and at now the buckets counted are
// those whose index is above floor(now/width) - span - 1. Buckets ahead
// of now (committed by an instance whose clock is ahead) are counted too.
// The two stores give identical answers (TestStoresAgree).
//
// Reserved units (between Reserve and Commit or Release) count as used, so
// concurrent transactions can never together exceed a limit: with a shared
// store, a quota of 100 lets exactly 100 through whatever the number of
// instances and clients. A reservation nobody ends (an instance that
// crashed) expires after its ttl; Commit counts the units of a part
// whether its reservation is still there, expired or unknown (the mail
// went out), so Commit must be called once per id: a second Commit counts
// again. Release of an unknown or ended id does nothing. Reserving twice
// under one id adds the amounts up, and one Commit or Release ends both.
// Requests on one counter and window in one Reserve are checked in order,
// each seeing the units of the ones before it.
//
// RetryAfter walks the window's committed buckets oldest first to the one
// whose leaving frees enough room. When the committed units alone cannot
// free enough (reservations of others hold the room, or the request is
// larger than the limit), it is an estimate: when the last committed
// units leave, and at least one bucket width, since reservations usually
// end within seconds.
//
// # Memory bound
//
// Memory tracks at most WithMaxKeys (quota, key) pairs (DefaultMaxKeys,
// 200,000), each with its windows and at most WithMaxRemembered recipient
// hashes (DefaultMaxRemembered, 10,000, 16 bytes each plus an index past 8).
// Past the cap the least recently written pair is forgotten, counts and
// all: the price of a bound is that a key unused long enough to be the
// least recent may be admitted again early. Pairs whose buckets all left
// their windows, with nothing reserved and no recipient still remembered,
// are dropped by later writes (two per write, from the least recent end).
// BenchmarkMemoryBound (1,000,000 senders with three quotas of one to two
// windows each, one remembered recipient) measures about 410 bytes of
// live heap per tracked pair: about 80 MB at the default cap with that
// configuration, plus 16 bytes per remembered recipient.
//
// # Redis layout
//
// Every key starts with the prefix given to NewRedis, then "quota:" and
// the quota name with bytes outside [A-Za-z0-9_.-] written %XX (so names
// parse back):
//
//	PREFIXquota:QUOTA:KIND:PERIODMS:KEY  hash, one per counter and window
//	    "<bucket index>" -> committed units of that bucket
//	    "r:<id>"         -> "<units> <expiry ms>" of a reservation
//	    "c"  -> the sum of the buckets present
//	    "r"  -> the sum of the reservations present
//	    "lo" -> every bucket below this index has been dropped
//	    "hi" -> no bucket above this index
//	    "nx" -> no reservation expires before this ms (0: none)
//	    "mx" -> no reservation expires after this ms (0: none)
//	PREFIXquota:QUOTA:seen:KEY           sorted set, NewRecipients memory
//	    hex of 64 bits of SHA-256(recipient) -> ms of the last commit to it
//
// The running totals make a call O(1) in the number of buckets and
// reservations of a hash: buckets that left the window since the last
// call are read by index (HMGET lo..now's oldest-1) and dropped, and the
// whole hash is read only when a reservation may have expired (now >= nx;
// since a Commit or Release leaves nx behind, that is about once per
// reservation ttl on a busy hash), when the hash has no totals (written
// by an older version: rebuilt on first use), or on the refusal path for
// RetryAfter. A hash whose buckets all left and whose reservations all
// ended is deleted; otherwise its PEXPIRE is when its last bucket leaves
// or its last reservation could expire (mx, which a Commit or Release
// may leave up to one ttl late), whichever is later; a seen set keeps at
// most WithMaxRemembered members and expires Remember after its latest
// commit. So Redis holds nothing for a key idle longer than its longest
// window (or its remember, or the ttl of its last reservation). Reserve,
// Commit and Release are each one call of the script (one round trip;
// WithBatch shares round trips between calls, see Redis); Keys and Reset
// SCAN. The scripts use the
// caller's clock, so instances need NTP-synchronized clocks: the error
// bound grows by their skew. Redis Cluster is not supported (one script
// touches the keys of several quotas and keys, in any slots). Tested with
// Redis 7.0.
package quota

import (
	"context"
	"errors"
	"time"
)

// Kind is the quantity a window counts.
type Kind string

// The kinds of quantity.
const (
	// Messages counts transactions (at MAIL, or at the first recipient with
	// the key for a per-recipient key).
	Messages Kind = "messages"
	// Recipients counts accepted recipients.
	Recipients Kind = "recipients"
	// NewRecipients counts recipients the key has not sent to within the
	// quota's remember period.
	NewRecipients Kind = "new_recipients"
)

// Buckets is the number of buckets a window's period is cut into.
const Buckets = 60

// Window is one "COUNT/DURATION" limit.
type Window struct {
	Limit  int64
	Period time.Duration
}

// BucketWidth is the width of one bucket of w: Period/Buckets, at least a
// second.
func (w Window) BucketWidth() time.Duration {
	return max(w.Period/Buckets, time.Second)
}

// Counter names one counted quantity of one key of one quota.
type Counter struct {
	Quota string
	Key   string
	Kind  Kind
}

// Request asks for Amount units of Counter in every one of Windows.
type Request struct {
	Counter Counter
	Windows []Window
	Amount  int64
	// Enforce says the request must fit: when false (a quota whose action
	// is warn) the units are reserved even in a full window, and the Result
	// still says it did not fit.
	Enforce bool
	// Recipient and Remember, for Kind NewRecipients only: when the key
	// committed a message to Recipient (normalized by the caller) within
	// Remember, the request costs nothing.
	Recipient string
	Remember  time.Duration
}

// Level is the state of one window after a check.
type Level struct {
	Window Window
	// Used counts committed and reserved units in the window, including
	// this request's when it was reserved.
	Used int64
	// RetryAfter is, for a window without room for the request, how long
	// until enough units leave it (an estimate when reservations of others
	// hold the room); 0 when the request fits.
	RetryAfter time.Duration
}

// Result is the outcome of one Request.
type Result struct {
	Levels []Level
	// Fits is true when every window has room for the request.
	Fits bool
	// Charged is the number of units reserved: Amount, or 0 for a
	// recipient the key already knows (NewRecipients) or when nothing was
	// reserved.
	Charged int64
}

// Part is one reserved request as a reservation remembers it, so Commit
// and Release know which counters to touch. Amount is what Commit counts:
// the Result's Charged (0 for a recipient the key already knew, whose
// Commit only refreshes the memory of it).
type Part struct {
	Counter   Counter
	Windows   []Window
	Amount    int64
	Recipient string        // NewRecipients: remembered at Commit
	Remember  time.Duration // NewRecipients
}

// ErrUnavailable wraps every failure to reach a shared store (Redis down,
// timeout). Callers apply the quota's on_error.
var ErrUnavailable = errors.New("quota: store unavailable")

// Store keeps the counters. Implementations are safe for concurrent use.
type Store interface {
	// Reserve checks every request at now and, when every enforced
	// request fits in every one of its windows, reserves all of them under
	// id, atomically (one round trip for a shared store). It returns one
	// Result per request, and whether the reservation was made; when an
	// enforced request does not fit, nothing is reserved. Reserved units
	// count as used until Commit or Release, or until ttl has passed.
	Reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request) ([]Result, bool, error)
	// Commit turns the units of id into counted usage at now (units whose
	// reservation expired are counted all the same: the mail went out) and
	// remembers the new recipients.
	//
	// When it returns nil the units are counted, except in a Redis store
	// made WithBatch, where the commit is only queued (the store keeps
	// parts: the caller must not change them): it is applied within the
	// batch interval plus one round trip, by a flush whose failure is
	// logged, not returned (the units are then not counted: their
	// reservation expires after its ttl). Until it is applied the units
	// still count as reserved, so no limit is ever exceeded meanwhile; a
	// crash loses the commits still queued (under-counted like a failed
	// Commit).
	Commit(ctx context.Context, id string, now time.Time, parts []Part) error
	// Release drops the reservation id; nothing is counted. When it
	// returns nil the units are free, except WithBatch, as for Commit:
	// they are freed within the batch interval plus one round trip (or
	// when the reservation expires, if the flush fails or the process
	// dies first), and until then a reservation that would have fit may
	// be refused.
	Release(ctx context.Context, id string, parts []Part) error
	// Levels reports the windows of c at now without changing anything;
	// a window's RetryAfter is for one more unit (non-zero when full).
	Levels(ctx context.Context, now time.Time, c Counter, windows []Window) ([]Level, error)
	// Keys lists the keys that have state for quota (for quota show), in
	// no particular order, at most limit of them.
	Keys(ctx context.Context, quota string, limit int) ([]string, error)
	// Reset forgets every counter, reservation and remembered recipient
	// of key under quota.
	Reset(ctx context.Context, quota, key string) error
	// Close applies what the store still holds for later (the queued
	// commits and releases of a Redis store made WithBatch) before the
	// process exits; Commit and Release keep working after it, each
	// applied at once. It does not close a Redis client, which belongs to
	// the caller.
	Close(ctx context.Context) error
}
