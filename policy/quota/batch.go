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
