package quota

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// DefaultBatchInterval is the flush interval mailgate uses for its Redis
// store (WithBatch): short enough that another instance sees a release
// within a few milliseconds, long enough that a busy instance sends the
// ends of several messages in one round trip.
const DefaultBatchInterval = 2 * time.Millisecond

// maxBatch is the number of queued ends that starts a flush before the
// interval is over; a flush sends at most that many per round trip.
const maxBatch = 256

// flushTimeout bounds the round trips of a flush by the timer (Flush and
// Close use their caller's context).
const flushTimeout = 5 * time.Second

// batch is the queue of Commits and Releases of a Redis store made
// WithBatch. Every Commit and Release appends to it and returns; a timer
// started by the first one queued flushes it interval later, in one round
// trip (or maxBatch at once, sooner).
type batch struct {
	r        *Redis
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	queue   []end
	timer   *time.Timer                // armed while queue is not empty
	closed  bool                       // after Close: Commit and Release are synchronous
	running map[chan struct{}]struct{} // flushes on their way, closed when done

	rmu      sync.Mutex
	rbusy    bool           // a Reserve round trip is on its way
	rpending []*reserveCall // Reserves waiting for the next one
}

// add queues e and reports whether it did (false after Close).
func (b *batch) add(e end) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.queue = append(b.queue, e)
	switch {
	case len(b.queue) >= maxBatch:
		q, done := b.takeLocked()
		go b.apply(q, done)
	case b.timer == nil:
		b.timer = time.AfterFunc(b.interval, b.tick)
	}
	return true
}

// takeLocked empties the queue, disarms the timer, and registers the
// flush of what it took (nil when nothing): the caller sends q, then
// calls finish(done).
func (b *batch) takeLocked() ([]end, chan struct{}) {
	if b.timer != nil {
		b.timer.Stop() // a tick already on its way finds the queue empty
		b.timer = nil
	}
	q := b.queue
	b.queue = nil
	if len(q) == 0 {
		return nil, nil
	}
	done := make(chan struct{})
	if b.running == nil {
		b.running = make(map[chan struct{}]struct{})
	}
	b.running[done] = struct{}{}
	return q, done
}

func (b *batch) finish(done chan struct{}) {
	if done == nil {
		return
	}
	b.mu.Lock()
	delete(b.running, done)
	b.mu.Unlock()
	close(done)
}

func (b *batch) tick() {
	b.mu.Lock()
	q, done := b.takeLocked()
	b.mu.Unlock()
	b.apply(q, done)
}

// apply sends q with a context of its own (failures are logged).
func (b *batch) apply(q []end, done chan struct{}) {
	defer b.finish(done)
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	b.send(ctx, q)
}

// send applies q, at most maxBatch ends per round trip, and logs the ends
// of every round trip that failed: their commits are not counted (their
// reservations expire), their releases hold units until they expire.
func (b *batch) send(ctx context.Context, q []end) error {
	var errs []error
	for len(q) > 0 {
		n := min(len(q), maxBatch)
		if err := b.r.runEnds(ctx, q[:n]); err != nil {
			commits := 0
			for _, e := range q[:n] {
				if e.commit {
					commits++
				}
			}
			b.log.LogAttrs(ctx, slog.LevelWarn, "quota updates lost", slog.Int("commits", commits),
				slog.Int("releases", n-commits), slog.Any("error", err))
			errs = append(errs, err)
		}
		q = q[n:]
	}
	return errors.Join(errs...)
}

// flush sends what is queued and waits for the flushes already on their
// way (not for those started after it).
func (b *batch) flush(ctx context.Context, closing bool) error {
	b.mu.Lock()
	if closing {
		b.closed = true
	}
	q, done := b.takeLocked()
	var wait []chan struct{}
	for ch := range b.running {
		if ch != done {
			wait = append(wait, ch)
		}
	}
	b.mu.Unlock()
	err := b.send(ctx, q)
	b.finish(done)
	for _, ch := range wait {
		select {
		case <-ch:
		case <-ctx.Done():
			return errors.Join(err, unavailable(ctx.Err()))
		}
	}
	return err
}

// Flush applies every Commit and Release that returned before it was
// called, in one round trip per 256 of them, and waits for the flushes
// already on their way: when it returns nil they are all counted. Without
// WithBatch there is nothing to flush.
func (r *Redis) Flush(ctx context.Context) error {
	if r.batch == nil {
		return nil
	}
	return r.batch.flush(ctx, false)
}

// Close implements Store: it flushes (see Flush), and later Commits and
// Releases are one round trip each, as without WithBatch. It does not
// close the Redis client, which belongs to the caller.
func (r *Redis) Close(ctx context.Context) error {
	if r.batch == nil {
		return nil
	}
	return r.batch.flush(ctx, true)
}

// Concurrent Reserves share round trips: while one is on its way, the
// Reserves that arrive wait and then go together, in one call of the
// script (which checks them one after the other, so exactly as if they
// had come one by one). A Reserve alone goes at once, on its own
// context; a shared round trip runs on a context of its own, bounded by
// flushTimeout, and a caller whose context ends meanwhile returns at
// once: should its reservation be made all the same, it is released.

// waiting states of a reserveCall in a shared round trip.
const (
	callWaiting int32 = iota
	callDone
	callAbandoned
)

// reserve checks c now, or in the next shared round trip when one is on
// its way.
func (b *batch) reserve(ctx context.Context, c *reserveCall) ([]Result, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, unavailable(err)
	}
	b.rmu.Lock()
	if b.rbusy {
		c.done = make(chan struct{})
		b.rpending = append(b.rpending, c)
		b.rmu.Unlock()
		select {
		case <-c.done:
			return c.res, c.ok, c.err
		case <-ctx.Done():
			if c.state.CompareAndSwap(callWaiting, callAbandoned) {
				return nil, false, unavailable(ctx.Err())
			}
			<-c.done
			return c.res, c.ok, c.err
		}
	}
	b.rbusy = true
	b.rmu.Unlock()
	err := b.r.runReserves(ctx, []*reserveCall{c})
	b.nextReserves()
	if err != nil {
		return nil, false, err
	}
	return c.res, c.ok, c.err
}

// nextReserves starts the round trip of the Reserves that queued up
// meanwhile, or notes that none is on its way.
func (b *batch) nextReserves() {
	b.rmu.Lock()
	calls := b.rpending
	b.rpending = nil
	if len(calls) == 0 {
		b.rbusy = false
		b.rmu.Unlock()
		return
	}
	b.rmu.Unlock()
	go b.shared(calls)
}

// shared runs calls in one round trip, hands each caller its result (or
// releases what an abandoned caller reserved) and starts the next.
func (b *batch) shared(calls []*reserveCall) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	err := b.r.runReserves(ctx, calls)
	cancel()
	// Releases of abandoned reservations are queued before any caller
	// hears back, so that a Flush after a reply includes them.
	for _, c := range calls {
		if err != nil {
			c.res, c.ok, c.err = nil, false, err
		}
		if !c.state.CompareAndSwap(callWaiting, callDone) && err == nil && c.ok {
			parts := make([]Part, 0, len(c.reqs))
			for i, q := range c.reqs {
				if c.res[i].Charged > 0 {
					parts = append(parts, Part{Counter: q.Counter, Windows: q.Windows, Amount: c.res[i].Charged})
				}
			}
			if !b.add(end{id: c.id, parts: parts}) {
				ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
				b.send(ctx, []end{{id: c.id, parts: parts}})
				cancel()
			}
		}
	}
	for _, c := range calls {
		close(c.done)
	}
	b.nextReserves()
}
