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
// 1/60 of its period (at least one second each). A unit committed at time t
// lands in the bucket of t and is counted while that bucket is one of the
// 61 most recent ones, so for between one period and one period plus one
// bucket after t: the count never forgets a unit early, and so never admits
// more than the limit in any window of the period's length. The error bound
// is one way only: a unit can be counted up to period/60 longer than the
// period (1 minute for a 1h window, 24 minutes for 24h).
//
// Reserved units (between Reserve and Commit or Release) count as used, so
// concurrent transactions can never together exceed a limit: with a shared
// store, a quota of 100 lets exactly 100 through whatever the number of
// instances and clients. A reservation nobody ends (an instance that
// crashed) expires after its ttl.
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
// and Release know which counters to touch.
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
	Commit(ctx context.Context, id string, now time.Time, parts []Part) error
	// Release drops the reservation id; nothing is counted.
	Release(ctx context.Context, id string, parts []Part) error
	// Levels reports the windows of c at now without changing anything.
	Levels(ctx context.Context, now time.Time, c Counter, windows []Window) ([]Level, error)
	// Keys lists the keys that have state for quota (for quota show), in
	// no particular order, at most limit of them.
	Keys(ctx context.Context, quota string, limit int) ([]string, error)
	// Reset forgets every counter, reservation and remembered recipient
	// of key under quota.
	Reset(ctx context.Context, quota, key string) error
}
