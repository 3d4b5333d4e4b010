// Package outbox is the demo upstream: instead of relaying, it writes each
// accepted message into a Maildir (https://cr.yp.to/proto/maildir.html),
// so `go run ./cmd/mailgate` works with no mail server at all. It
// implements proxy.Relay.
package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy"
)

var _ proxy.Relay = (*Outbox)(nil)

// Outbox writes messages into the Maildir at Dir.
type Outbox struct {
	dir   string
	seq   atomic.Uint64
	saved func(path string)
}

// Option configures an Outbox.
type Option func(*Outbox)

// WithSaved calls f with the absolute path of every message once it is in
// new/ (the demo prints it, so a newcomer can open the signed message).
// f runs on the session's goroutine before the client gets its 250.
func WithSaved(f func(path string)) Option { return func(o *Outbox) { o.saved = f } }

// New creates the Maildir (tmp, new, cur) if needed.
func New(dir string, opts ...Option) (*Outbox, error) {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
	}
	o := &Outbox{dir: dir}
	for _, opt := range opts {
		opt(o)
	}
	return o, nil
}

// Dir is the Maildir path.
func (o *Outbox) Dir() string { return o.dir }

// Begin implements proxy.Relay.
func (o *Outbox) Begin(_ context.Context, route, from string, _ *smtp.MailOptions) (proxy.RelayTx, error) {
	if route != "" && route != "outbox" {
		return nil, fmt.Errorf("outbox: unknown upstream %q", route)
	}
	return &tx{o: o, from: from}, nil
}

type tx struct {
	o     *Outbox
	from  string
	rcpts []string
}

func (t *tx) Rcpt(_ context.Context, to string, _ *smtp.RcptOptions) error {
	t.rcpts = append(t.rcpts, to)
	return nil
}

func (t *tx) Abort()           {}
func (t *tx) Upstream() string { return "outbox" }

// SMTPUTF8 is true: a Maildir stores any message as is.
func (t *tx) SMTPUTF8() bool { return true }

// Data writes the message to tmp/ and renames it into new/, so a reader
// never sees a partial file.
func (t *tx) Data(_ context.Context, r io.Reader) (string, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	host, _ := os.Hostname()
	name := fmt.Sprintf("%d.M%dP%d_%s.%s", time.Now().Unix(), t.o.seq.Add(1), os.Getpid(), hex.EncodeToString(rnd[:]), host)
	tmp := filepath.Join(t.o.dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("outbox: %w", err)
	}
	_, err = fmt.Fprintf(f, "Return-Path: <%s>\r\nX-Original-To: %s\r\n", t.from, strings.Join(t.rcpts, ", "))
	if err == nil {
		_, err = io.Copy(f, r)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(t.o.dir, "new", name))
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("outbox: %w", err)
	}
	if t.o.saved != nil {
		t.o.saved(filepath.Join(t.o.dir, "new", name))
	}
	return "saved as " + name, nil
}
