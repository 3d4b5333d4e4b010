package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// decisionRecord is one line of the decision log. Input carries auth as
// user and mechanism only: the Input type has no field for a secret.
type decisionRecord struct {
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
	Input        *Input         `json:"input"`
}

var errClosed = errors.New("policy: decision log closed")

// decisionLog appends JSON lines to a file; writes are serialized so lines
// never interleave.
type decisionLog struct {
	mu     sync.Mutex
	f      *os.File
	closed bool
}

func openDecisionLog(path string) (*decisionLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("policy: decision log: %w", err)
	}
	return &decisionLog{f: f}, nil
}

func (l *decisionLog) write(rec *decisionRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("policy: decision log: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errClosed
	}
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("policy: decision log: %w", err)
	}
	return nil
}

func (l *decisionLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.f.Close()
}
