package peertest

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer that several goroutines may write to while a
// test reads it: where tests collect a server's log output.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// LogWriter returns a writer that hands each Write to t.Log, without its
// trailing newline: where a logger under test writes into the test's own
// output (shown with -v or when the test failed).
func LogWriter(t testing.TB) io.Writer { return logWriter{t} }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
