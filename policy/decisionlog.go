package policy

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DecisionLogVersion is the version of the decision log record format
// (the "version" field of every line). It changes only when a field is
// removed or changes meaning; new fields keep it. A record without the
// field was written before it existed and has the layout of version 1.
// Replay reads versions up to this one and skips (and counts) newer ones.
const DecisionLogVersion = 1

// decisionRecord is one line of the decision log. Input carries auth as
// user and mechanism only: the Input type has no field for a secret.
type decisionRecord struct {
	Version      int            `json:"version"`
	Time         time.Time      `json:"time"`
	Session      string         `json:"session"`
	Stage        Stage          `json:"stage"`
	Engine       string         `json:"engine,omitempty"`
	Rule         string         `json:"rule,omitempty"`
	Outcome      Outcome        `json:"outcome"`
	Code         int            `json:"code,omitempty"`
	EnhancedCode string         `json:"enhanced_code,omitempty"`
	DryRun       bool           `json:"dry_run"`
	Revision     string         `json:"revision,omitempty"`
	Error        string         `json:"error,omitempty"`
	Warnings     []Warning      `json:"warnings,omitempty"`
	Engines      []EngineResult `json:"engines,omitempty"`
	// HeadersOmitted is set when log_headers = false blanked the header
	// values of Input.Message (names and counts are kept).
	HeadersOmitted bool `json:"headers_omitted,omitempty"`
	// Shadow is what the shadow chain concluded, when one is configured.
	Shadow *ShadowResult `json:"shadow,omitempty"`
	Input  *Input        `json:"input"`
}

var errClosed = errors.New("policy: decision log closed")

// ErrDecisionLogFull marks a decision record dropped because the writer's
// queue was full (the disk did not keep up). Drops are counted in
// mailgate_policy_decision_log_dropped_total.
var ErrDecisionLogFull = errors.New("policy: decision log queue full, record dropped")

// Decision log tuning. A record is typically 1–3 KB, so a full queue holds
// a few MB.
const (
	decisionLogQueue    = 8192            // records waiting for the writer
	decisionLogBuffer   = 64 << 10        // bufio buffer in front of the file
	decisionLogInterval = 1 * time.Second // longest a written record waits in the buffer
	decisionLogReopen   = 5 * time.Second // longest SIGHUP waits for the writer to reopen
)

// decisionLog appends JSON lines to a file through one writer goroutine,
// so a session never waits for the disk: write marshals the record and
// queues the line; the writer drains the queue into a buffered file and
// flushes whenever the queue runs empty, and at least every
// decisionLogInterval. When the queue is full the record is dropped and
// counted (write returns ErrDecisionLogFull): a stalled disk must not
// stall mail. close drains the queue and flushes, so nothing queued before
// shutdown is lost. reopen (SIGHUP, after logrotate renamed the file)
// reopens the path; lines queued before it go to the old file.
type decisionLog struct {
	path string

	mu     sync.RWMutex // guards closed against sends on q
	closed bool
	q      chan logItem
	done   chan struct{}

	dropped     atomic.Uint64 // records dropped on a full queue
	writeErrs   atomic.Uint64 // lines the file refused
	lastDropLog atomic.Int64  // unix seconds of the last drop reported
	onError     func(error)   // reports a write failure (the writer's own)
	reopenWait  time.Duration // longest reopen waits for the writer
}

// logItem is a line to append, or a reopen request (reopen not nil).
type logItem struct {
	line   []byte
	reopen chan error
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("policy: decision log: %w", err)
	}
	return f, nil
}

func openDecisionLog(path string, onError func(error)) (*decisionLog, error) {
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	l := &decisionLog{path: path, q: make(chan logItem, decisionLogQueue), done: make(chan struct{}), onError: onError,
		reopenWait: decisionLogReopen}
	go l.run(f)
	return l, nil
}

// run is the writer goroutine.
func (l *decisionLog) run(f *os.File) {
	defer close(l.done)
	w := bufio.NewWriterSize(f, decisionLogBuffer)
	t := time.NewTicker(decisionLogInterval)
	defer t.Stop()
	flush := func() {
		if w.Buffered() == 0 {
			return
		}
		if err := w.Flush(); err != nil {
			l.failed(err)
			w.Reset(f) // drop what the file refused rather than retry forever
		}
	}
	for {
		select {
		case it, ok := <-l.q:
			if !ok {
				flush()
				if err := f.Close(); err != nil {
					l.failed(err)
				}
				return
			}
			if it.reopen != nil {
				flush()
				nf, err := openLogFile(l.path)
				if err == nil {
					if cerr := f.Close(); cerr != nil {
						l.failed(cerr)
					}
					f = nf
					w.Reset(f)
				}
				it.reopen <- err
				continue
			}
			if _, err := w.Write(it.line); err != nil {
				l.failed(err)
				w.Reset(f)
			}
			if len(l.q) == 0 {
				flush()
			}
		case <-t.C:
			flush()
		}
	}
}

func (l *decisionLog) failed(err error) {
	l.writeErrs.Add(1)
	if l.onError != nil {
		l.onError(fmt.Errorf("policy: decision log: %w", err))
	}
}

// write queues rec. It never blocks on the disk. It returns errClosed after
// close and ErrDecisionLogFull when the record was dropped; the latter at
// most once a second (every drop is counted), so a slow disk does not
// flood the error log.
func (l *decisionLog) write(rec *decisionRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("policy: decision log: %w", err)
	}
	b = append(b, '\n')
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return errClosed
	}
	select {
	case l.q <- logItem{line: b}:
		return nil
	default:
	}
	n := l.dropped.Add(1)
	now := time.Now().Unix()
	if last := l.lastDropLog.Load(); now > last && l.lastDropLog.CompareAndSwap(last, now) {
		return fmt.Errorf("%w (%d dropped since start)", ErrDecisionLogFull, n)
	}
	return nil
}

// errReopenPending: the writer did not get to a reopen in time.
var errReopenPending = errors.New("policy: decision log: the writer is stalled (slow disk); reopen pending")

// reopen closes the file and opens the path again, after the lines queued
// so far are written to the old file. It waits for the writer at most
// reopenWait: on a stalled disk it returns errReopenPending (the reopen
// happens when the writer gets to it), so SIGHUP's other reloads go on.
func (l *decisionLog) reopen() error {
	done := make(chan error, 1)
	t := time.NewTimer(l.reopenWait)
	defer t.Stop()
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return errClosed
	}
	select {
	case l.q <- logItem{reopen: done}:
	case <-t.C:
		l.mu.RUnlock()
		return fmt.Errorf("%w: the queue is full", errReopenPending)
	}
	l.mu.RUnlock()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errReopenPending
	}
}

// close writes and flushes every queued line, then closes the file.
func (l *decisionLog) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.q)
	l.mu.Unlock()
	<-l.done
	return nil
}
