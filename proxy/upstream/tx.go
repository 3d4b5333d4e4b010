package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Reply is the upstream's final reply to a message it accepted. Message is
// cleaned like error replies (one printable line, at most MaxReplyLen
// bytes) and usually holds the upstream's queue id: log it.
type Reply struct {
	Code         int
	EnhancedCode smtp.EnhancedCode
	Message      string
}

// String formats the reply as it appeared on the wire, for logs.
func (r *Reply) String() string {
	if r.EnhancedCode == smtp.EnhancedCodeNotSet {
		return fmt.Sprintf("%d %s", r.Code, r.Message)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
}

// Tx is one upstream mail transaction, mirroring one client transaction.
// Every Tx must end with Data or Abort (Abort after Data is a no-op, so
// `defer tx.Abort()` is the idiom). Its methods are serialized: an Abort
// from another goroutine (go-smtp may call Session.Logout concurrently on
// server shutdown) waits for a running Rcpt or Data; cancel that call's
// ctx to make it return at once.
type Tx struct {
	mu   sync.Mutex
	r    *Router
	pc   *pconn // nil once the transaction is over
	name string
	err  error // sticky transport error
	// utf8 is true when MAIL carried SMTPUTF8: only then may a recipient
	// (or the message's header) be non-ASCII.
	utf8 bool
}

// Begin starts an upstream transaction: it checks out a pooled connection
// to the route's first upstream (or dials, moving to the next upstream
// only when connecting fails) and sends MAIL FROM:<from> with opts.
//
// route "" means all upstreams in config order; a name means that upstream
// only (a policy action); an unknown name returns ErrUnknownRoute. from is
// sent exactly as given ("" is the null sender); it must not contain CR,
// LF, NUL, '<' or '>'. A pooled connection found dead at MAIL (EOF, reset,
// 421) is discarded and MAIL is retried once on a fresh connection: safe,
// since nothing was accepted yet.
//
// opts: SIZE, SMTPUTF8, DSN (RET, ENVID) and AUTH= are passed when the
// upstream advertises them (go-smtp adds BODY=8BITMIME whenever the upstream
// advertises 8BITMIME). SMTPUTF8 is a request, not a need (RFC 6531
// section 3.2; Postfix's smtputf8_autodetect_classes): when the upstream
// does not offer it, MAIL is sent without it if from is all ASCII (then
// Tx.SMTPUTF8 is false and Rcpt refuses non-ASCII recipients), and fails
// with ErrSMTPUTF8 only when from itself is not ASCII. REQUIRETLS requested
// but not offered fails with ErrRequireTLS; BODY=BINARYMIME fails with
// ErrInvalidParameter (DATA cannot carry it).
//
// On error no transaction is open and nothing needs to be aborted.
func (r *Router) Begin(ctx context.Context, route, from string, opts *smtp.MailOptions) (*Tx, error) {
	if err := checkAddress("mail", from); err != nil {
		return nil, err
	}
	if err := checkMailOptions(opts); err != nil {
		return nil, err
	}
	ups, err := r.route(route)
	if err != nil {
		return nil, err
	}
	pc, err := r.connect(ctx, ups, false)
	if err != nil {
		return nil, err
	}
	utf8, err := r.mail(ctx, pc, from, opts)
	if err != nil && pc.reused && deadOnReuse(ctx, pc, err) {
		r.log.LogAttrs(ctx, slog.LevelDebug, "pooled upstream connection dead, retrying on a fresh one",
			slog.String("upstream", pc.up.name), slog.Any("error", err))
		r.discard(pc)
		if pc, err = r.connect(ctx, ups, true); err != nil {
			return nil, err
		}
		utf8, err = r.mail(ctx, pc, from, opts)
	}
	if err != nil {
		if pc.broken {
			r.discard(pc)
		} else {
			r.release(pc) // MAIL refused: no transaction is open
		}
		return nil, err
	}
	pc.messages++
	return &Tx{r: r, pc: pc, name: pc.up.name, utf8: utf8}, nil
}

// deadOnReuse reports whether err on a reused connection means the
// upstream had closed it while idle: the connection broke (transport error,
// or a 421 reply) for a reason other than a timeout or our own context.
func deadOnReuse(ctx context.Context, pc *pconn, err error) bool {
	return pc.broken && ctx.Err() == nil && !errors.Is(err, ErrTimeout)
}

// mail sends (EHLO again if RSET made go-smtp forget it, then) MAIL. utf8
// reports whether MAIL carried SMTPUTF8.
func (r *Router) mail(ctx context.Context, pc *pconn, from string, opts *smtp.MailOptions) (utf8 bool, _ error) {
	end := pc.op(ctx, time.Time{})
	defer end()
	if pc.rehello {
		if err := pc.c.Hello(pc.up.helo); err != nil {
			// A refused EHLO is about our connection, not the client's
			// request: never pass it on as the client's reply.
			pc.broken = true
			return false, transportError(pc.up.name, "ehlo", classify(ctx, err), err)
		}
		pc.rehello = false
	}
	if opts != nil && opts.UTF8 {
		if ok, _ := pc.c.Extension("SMTPUTF8"); !ok {
			// A request, not a need: an all-ASCII sender goes without it
			// (RFC 6531 section 3.2); only what really needs it fails.
			if !isASCII(from) {
				return false, fmt.Errorf("upstream %s: sender: %w", pc.up.name, ErrSMTPUTF8)
			}
			o := *opts
			o.UTF8 = false
			opts = &o
		}
	}
	if opts != nil && opts.RequireTLS {
		if ok, _ := pc.c.Extension("REQUIRETLS"); !ok {
			return false, fmt.Errorf("upstream %s: %w", pc.up.name, ErrRequireTLS)
		}
	}
	before := pc.raw.written.Load()
	if err := pc.c.Mail(from, opts); err != nil {
		return false, pc.failLocal(ctx, "mail", err, before)
	}
	return opts != nil && opts.UTF8, nil
}

// isASCII reports whether s is all US-ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// failLocal is fail, except that an error go-smtp returned before writing
// anything (parameter validation) is ErrInvalidParameter and leaves the
// connection usable.
func (pc *pconn) failLocal(ctx context.Context, stage string, err error, before int64) error {
	var se *smtp.SMTPError
	var ne interface{ Timeout() bool }
	if pc.raw.written.Load() == before && ctx.Err() == nil && !errors.As(err, &se) && !errors.As(err, &ne) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("upstream %s: %s: %w: %v", pc.up.name, stage, ErrInvalidParameter, err)
	}
	return pc.fail(ctx, stage, err)
}

func checkMailOptions(opts *smtp.MailOptions) error {
	if opts == nil {
		return nil
	}
	if opts.Body == smtp.BodyBinaryMIME {
		return fmt.Errorf("%w: BODY=BINARYMIME cannot be relayed with DATA", ErrInvalidParameter)
	}
	if opts.EnvelopeID != "" {
		for i := 0; i < len(opts.EnvelopeID); i++ {
			if c := opts.EnvelopeID[i]; c < 0x20 || c > 0x7e {
				return fmt.Errorf("%w: ENVID not printable ASCII", ErrInvalidParameter)
			}
		}
	}
	return nil
}

// Upstream returns the name of the upstream this transaction uses.
func (tx *Tx) Upstream() string { return tx.name }

// SMTPUTF8 reports whether the upstream MAIL carried SMTPUTF8: when false,
// a non-ASCII recipient or header field cannot be relayed (RFC 6531
// section 3.4 forbids sending it downgraded).
func (tx *Tx) SMTPUTF8() bool { return tx.utf8 }

// usable returns the error to give when the transaction cannot be used.
func (tx *Tx) usable() error {
	if tx.err != nil {
		return tx.err
	}
	if tx.pc == nil {
		return ErrTxClosed
	}
	return nil
}

// broke ends the transaction after a transport error.
func (tx *Tx) broke(err error) error {
	tx.err = err
	tx.r.discard(tx.pc)
	tx.pc = nil
	return err
}

// Rcpt sends RCPT TO:<to> with opts and returns nil when the upstream
// accepted the recipient. An upstream refusal is a cleaned *smtp.SMTPError
// (552 becomes 452 4.5.3) and the transaction stays usable for further
// recipients; so does ErrSMTPUTF8, for a non-ASCII recipient when MAIL was
// sent without SMTPUTF8 (nothing is sent); a transport error ends the transaction (further calls return
// the same error). to is sent exactly as given and must not contain CR, LF,
// NUL, '<' or '>'.
func (tx *Tx) Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if err := tx.usable(); err != nil {
		return err
	}
	if err := checkAddress("rcpt", to); err != nil {
		return err
	}
	if !tx.utf8 && !isASCII(to) {
		return fmt.Errorf("upstream %s: recipient: %w", tx.name, ErrSMTPUTF8)
	}
	pc := tx.pc
	end := pc.op(ctx, time.Time{})
	before := pc.raw.written.Load()
	err := pc.c.Rcpt(to, opts)
	if err != nil {
		err = pc.failLocal(ctx, "rcpt", err, before)
	}
	end()
	if pc.broken {
		if err == nil {
			err = transportError(pc.up.name, "rcpt", classify(ctx, context.Cause(ctx)), context.Cause(ctx))
		}
		return tx.broke(err)
	}
	return err
}

// Data sends the message read from r and returns the upstream's final
// reply. r must hold the final message with CRLF line endings; it is
// dot-stuffed on the way. r is read to EOF (or to its first error) before
// Data returns. The whole DATA exchange (354, body, final reply) has
// data_timeout, further bounded by ctx.
//
// Data ends the transaction in every case. On 250 the connection goes back
// to the pool as is (no RSET, no EHLO: RFC 5321 section 3.3 allows the next
// MAIL right away). An upstream refusal is a cleaned *smtp.SMTPError. An
// error reading r closes the upstream connection before the final dot so
// the upstream can never deliver a partial message; it is an internal error
// (451 4.3.0). A connection lost after the final dot is ErrUnavailable (the
// upstream may or may not have queued the message; the client retries).
func (tx *Tx) Data(ctx context.Context, r io.Reader) (*Reply, error) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if err := tx.usable(); err != nil {
		return nil, err
	}
	pc := tx.pc
	end := pc.op(ctx, time.Now().Add(pc.up.s.dataTimeout))
	reply, openTx, err := tx.data(ctx, r)
	end()
	if pc.broken && reply != nil {
		// The upstream said 250 before the connection was poisoned (ctx
		// cancelled at the last moment): the message is accepted, report
		// it as such or the client would retry and duplicate it.
		tx.r.discard(pc)
		tx.pc = nil
		return reply, nil
	}
	if pc.broken {
		if err == nil {
			err = transportError(pc.up.name, "data", classify(ctx, context.Cause(ctx)), context.Cause(ctx))
		}
		return nil, tx.broke(err)
	}
	if openTx {
		// DATA itself was refused: the transaction is still open upstream.
		tx.abort()
		return nil, err
	}
	tx.pc = nil
	tx.r.release(pc)
	return reply, err
}

// errRead marks an error from the message reader.
type readError struct{ err error }

func (e *readError) Error() string { return "upstream: read message: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// copyBufs holds the buffers Data reads messages with.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (tx *Tx) data(ctx context.Context, r io.Reader) (_ *Reply, openTx bool, _ error) {
	pc := tx.pc
	w, err := pc.c.Data()
	if err != nil {
		err = pc.fail(ctx, "data", err)
		return nil, !pc.broken, err
	}
	// The body goes straight to the connection, dot-stuffed in bulk;
	// w.CloseWithResponse then writes the end-of-data line and reads the
	// reply. A pooled buffer, and r hidden behind a plain Reader: io.Copy
	// would otherwise use r's WriteTo (io.MultiReader's allocates 32 KiB
	// per message).
	dw := newDotWriter(pc.wire)
	defer dw.release()
	buf := copyBufs.Get().(*[]byte)
	_, err = io.CopyBuffer(dw, struct{ io.Reader }{r}, *buf)
	copyBufs.Put(buf)
	if err == nil {
		err = dw.finish()
	}
	if err != nil {
		if dw.err != nil && !errors.Is(dw.err, errLineEnding) {
			return nil, false, pc.fail(ctx, "data", dw.err)
		}
		// Never send the final dot after a read error or a bare line
		// ending: close instead.
		pc.broken = true
		return nil, false, &readError{err: err}
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return nil, false, pc.fail(ctx, "data", err)
	}
	return parseReply(resp.StatusText), false, nil
}

// parseReply builds the Reply for a 250 after DATA.
func parseReply(text string) *Reply {
	rep := &Reply{Code: 250}
	if ec, rest, ok := splitEnhanced(text); ok && ec[0] == 2 {
		rep.EnhancedCode, text = ec, rest
	}
	rep.Message = cleanText(text)
	return rep
}

// Abort rolls the upstream transaction back with RSET, for a data-stage
// reject or a client RSET/QUIT/disconnect: the upstream never finishes a
// message the client was not told was accepted. The connection goes back to
// the pool when RSET got 250, else it is closed. Abort waits at most
// min(command_timeout, 10s). It is a no-op when the transaction is already
// over (after Data, or after a transport error).
func (tx *Tx) Abort() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.abort()
}

func (tx *Tx) abort() {
	pc := tx.pc
	if pc == nil {
		return
	}
	tx.pc = nil
	if tx.err == nil {
		tx.err = ErrTxClosed
	}
	pc.raw.setLimit(time.Now().Add(min(pc.up.s.commandTimeout, quitTimeout)))
	err := pc.c.Reset()
	pc.raw.setLimit(time.Time{})
	if err != nil {
		tx.r.discard(pc)
		return
	}
	pc.rehello = true // go-smtp's Reset makes it forget EHLO
	tx.r.release(pc)
}
