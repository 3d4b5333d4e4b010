package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
)

type readMode int32

const (
	modeCommand readMode = iota
	modeData
)

// clientConn wraps a client connection above TLS. go-smtp reads every byte
// of the client through it, so it is where mailgate enforces what go-smtp
// does not:
//   - strict line endings: a bare CR, bare LF or NUL makes every later read
//     fail, so no parser above can ever complete a command or a message
//     that contains one;
//   - deadlines that bytes cannot stretch (a client trickling one byte
//     every few seconds must not hold a connection forever):
//     command_timeout is a deadline for a whole command line, set when
//     mailgate starts waiting for the line and not moved by its bytes
//     (Postfix's smtpd_per_record_deadline); a body has a deadline of
//     data_timeout that each byte received extends by 1/min_data_rate
//     seconds, never past data_timeout from now (Postfix's
//     smtpd_min_data_rate); until the client has logged in (AUTH, or
//     EHLO/HELO on a listener without AUTH) every read also ends at
//     login_timeout after the connection was accepted. go-smtp's
//     ReadTimeout is off: it would cover a whole body, and a timeout
//     mid-body would make the rest parse as commands. A deadline is
//     moved only when it would move by 1/16 of its timeout or more
//     (re-arming the runtime timer on every read costs more than the
//     read), so a silent client is cut off after 94-100 % of it;
//   - after a timeout or a protocol violation, reads fail for good, so the
//     rest of a body is never read as commands;
//   - SIGTERM draining: an idle session is told 421 and closed.
type clientConn struct {
	net.Conn
	remote   netip.Addr
	tlsState *tls.ConnectionState // nil until TLS is up

	cmdTimeout  time.Duration
	dataTimeout time.Duration
	// minDataRate is the body rate (bytes/s) that keeps a body's deadline
	// moving; 0: a body must arrive within data_timeout as a whole.
	minDataRate int64
	// loginDeadline is accepted + login_timeout (zero: none); loggedIn
	// lifts it (see markLoggedIn).
	loginDeadline time.Time
	loggedIn      atomic.Bool
	// log, when set, hears why mailgate cut a slow client off.
	log *slog.Logger

	mode atomic.Int32 // readMode
	// failed is set when the stream broke mid-line (bare CR/LF, NUL,
	// EOF): textproto hands a partial last line to go-smtp as if it were
	// complete, so the session refuses every command once this is set.
	failed   atomic.Bool
	inTx     atomic.Bool // a transaction (MAIL given) is open
	draining atomic.Bool
	// rearm makes the next Read set its deadline whatever readDeadline
	// says: drain moved the deadline from another goroutine.
	rearm atomic.Bool

	// read-side state, only touched by the reading goroutine.
	prev     byte
	lineLen  int   // bytes of the current line so far
	maxLine  int   // max_line_length, CRLF included; 0: no limit
	pending  error // delivered on the next Read, after the good prefix
	sticky   error // every later Read returns it
	lineHead []byte
	// chunk follows BDAT payloads in the command stream (see bdat.go).
	chunk bdatState
	// readDeadline is the read deadline last set by Read.
	readDeadline time.Time
	// lineDeadline is when the command line being read must be complete;
	// lineOpen says a line has begun (bytes of it, or the wait for it).
	lineDeadline time.Time
	lineOpen     bool
	// bodyDeadline is when the body being read must be complete; bodyOpen
	// says it applies (reset by every read in command mode).
	bodyDeadline time.Time
	bodyOpen     bool
	// held are bytes read from the connection and not yet handed on (nor
	// scanned): what followed a DATA line, or a body's end (see body.go).
	held []byte
	// dataPending is set when go-smtp writes 354: its next Session.Data
	// is for a DATA body (not BDAT), which the session reads via body.
	dataPending atomic.Bool

	// refused is set once a protocol violation has been answered (see
	// refuse): nothing more is written.
	refused atomic.Bool

	writeMu         sync.Mutex
	replyLines      []byte // "NNN-" lines of a reply not yet written (see Write)
	dropGreeting    bool   // STARTTLS hand-over: go-smtp's 220 was already sent
	closeAfterWrite atomic.Bool
	closeOnce       sync.Once
	onClose         func()
}

func newClientConn(c net.Conn, remote netip.Addr, maxLine int, cmdTimeout, dataTimeout time.Duration) *clientConn {
	return &clientConn{
		maxLine:     maxLine,
		Conn:        c,
		remote:      remote,
		cmdTimeout:  cmdTimeout,
		dataTimeout: dataTimeout,
		prev:        '\n',
		lineHead:    make([]byte, 0, lineHeadSize),
		chunk:       bdatState{prev: '\n'},
	}
}

func (c *clientConn) setMode(m readMode) { c.mode.Store(int32(m)) }

// Read implements net.Conn with the checks described on clientConn.
func (c *clientConn) Read(b []byte) (int, error) {
	if c.sticky != nil {
		return 0, c.sticky
	}
	if c.pending != nil {
		err := c.pending
		c.pending = nil
		return 0, c.fail(err)
	}
	mode := readMode(c.mode.Load())
	if mode == modeCommand && c.draining.Load() && !c.inTx.Load() {
		c.replyAndClose(replies.ShuttingDown)
		c.sticky = net.ErrClosed
		return 0, c.sticky
	}
	var n int
	var err error
	fromHeld := len(c.held) > 0
	if fromHeld {
		n = copy(b, c.held)
	} else {
		n, err = c.readConn(b, mode)
	}
	// What Read hands on is the command stream, BDAT payloads included:
	// a DATA body is read by bodyReader, never through Read.
	bad, cut, why := c.scanUntil(b[:n], modeCommand, mode == modeCommand)
	if mode == modeCommand {
		c.followLines(b[:n])
	}
	hand := n
	if cut >= 0 {
		// Nothing past a DATA line goes to go-smtp (see body.go).
		hand = cut
	}
	if fromHeld {
		c.held = c.held[hand:]
	} else if hand < n {
		c.held = append([]byte(nil), b[hand:n]...)
	}
	n = hand
	if bad >= 0 {
		// Hand over the good prefix now and the error on the next Read,
		// so that every complete command before the bad byte is answered
		// in order first.
		c.pending = why
		c.failed.Store(true)
		return bad, nil
	}
	if err != nil && c.prev != '\n' {
		c.failed.Store(true)
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if c.draining.Load() && !c.inTx.Load() {
				c.replyAndClose(replies.ShuttingDown)
				c.sticky = net.ErrClosed
				return n, c.sticky
			}
			if mode == modeCommand && c.loginExpired(time.Now()) {
				c.logCut("login_timeout")
				c.replyAndClose(replies.LoginTimeout)
				c.sticky = net.ErrClosed
				return n, c.sticky
			}
			if mode == modeCommand && c.prev != '\n' {
				// Mid-line: go-smtp would take the partial line for a
				// command (bufio hands it on without the error), answer
				// it, then say "Idle timeout". The client only hears why.
				c.logCut("command_timeout")
				c.replyAndClose(replies.LineTimeout)
				c.sticky = net.ErrClosed
				return n, c.sticky
			}
			if mode == modeData {
				c.logCut("data_timeout")
				c.sticky = net.ErrClosed
				return n, replies.DataTimeout
			}
		}
	}
	return n, err
}

// logCut logs that a slow client was cut off by limit.
func (c *clientConn) logCut(limit string) {
	if c.log != nil {
		c.log.Info("slow client cut off", "limit", limit, "mid_line", c.prev != '\n')
	}
}

// markLoggedIn lifts login_timeout: the client authenticated (or, on a
// listener without AUTH, said EHLO/HELO). From then on only the command
// and data deadlines apply.
func (c *clientConn) markLoggedIn() { c.loggedIn.Store(true) }

// loginExpired reports whether login_timeout has passed without a login.
func (c *clientConn) loginExpired(now time.Time) bool {
	return !c.loggedIn.Load() && !c.loginDeadline.IsZero() && !now.Before(c.loginDeadline)
}

// followLines keeps the command-line deadline in step with the bytes
// handed on: a line that ended closes it (the next read starts a new one,
// with a fresh deadline); a line that began inside b began now.
func (c *clientConn) followLines(b []byte) {
	if len(b) == 0 {
		return
	}
	if c.prev == '\n' {
		c.lineOpen = false
		return
	}
	if bytes.IndexByte(b, '\n') >= 0 && c.cmdTimeout > 0 {
		c.lineDeadline = time.Now().Add(c.cmdTimeout)
	}
	c.lineOpen = true
}

// startBody gives a body its deadline: data_timeout from now.
func (c *clientConn) startBody(now time.Time) {
	c.bodyOpen = true
	c.bodyDeadline = now.Add(c.dataTimeout)
}

// creditBody extends the body's deadline for n bytes received, at
// min_data_rate, but never past data_timeout from now: a client cannot
// bank time by sending fast and then stall for longer than data_timeout.
func (c *clientConn) creditBody(n int, now time.Time) {
	if n <= 0 || c.minDataRate <= 0 || c.dataTimeout <= 0 {
		return
	}
	dl := c.bodyDeadline.Add(time.Duration(int64(n) * int64(time.Second) / c.minDataRate))
	if limit := now.Add(c.dataTimeout); dl.After(limit) {
		dl = limit
	}
	c.bodyDeadline = dl
}

// readConn reads from the connection under the deadline of mode (see
// clientConn): the current command line's, or the current body's, capped
// by login_timeout while the client has not logged in.
func (c *clientConn) readConn(b []byte, mode readMode) (int, error) {
	now := time.Now()
	var dl time.Time
	timeout := c.cmdTimeout
	if mode == modeData {
		timeout = c.dataTimeout
		if !c.bodyOpen {
			c.startBody(now)
		}
		if timeout > 0 {
			dl = c.bodyDeadline
		}
	} else {
		c.bodyOpen = false
		if !c.lineOpen {
			c.lineOpen = true
			c.lineDeadline = now.Add(timeout)
		}
		if timeout > 0 {
			dl = c.lineDeadline
		}
		if !c.loggedIn.Load() && !c.loginDeadline.IsZero() && (dl.IsZero() || c.loginDeadline.Before(dl)) {
			dl = c.loginDeadline
		}
	}
	c.setReadDeadline(dl, timeout)
	n, err := c.Conn.Read(b)
	if mode == modeData {
		c.creditBody(n, time.Now())
	}
	return n, err
}

// setReadDeadline applies dl unless the deadline in force is at most
// timeout/16 earlier (see clientConn); an earlier dl always applies.
func (c *clientConn) setReadDeadline(dl time.Time, timeout time.Duration) {
	if dl.IsZero() {
		return
	}
	if c.rearm.Swap(false) || dl.Before(c.readDeadline) || dl.Sub(c.readDeadline) >= timeout/16 {
		_ = c.Conn.SetReadDeadline(dl)
		c.readDeadline = dl
	}
}

// readRaw reads a body: held bytes first, then the connection under the
// body's deadline.
func (c *clientConn) readRaw(b []byte) (int, error) {
	if len(c.held) > 0 {
		n := copy(b, c.held)
		c.held = c.held[n:]
		return n, nil
	}
	return c.readConn(b, modeData)
}

// bodyReadError is the error a body reader gives for err from the
// connection: the stream broke mid-body in every case.
func (c *clientConn) bodyReadError(err error) error {
	c.failed.Store(true)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		c.logCut("data_timeout")
		c.sticky = net.ErrClosed
		return replies.DataTimeout
	case errors.Is(err, io.EOF):
		return io.ErrUnexpectedEOF
	}
	return err
}

// fail turns a pending protocol violation found by Read into the error the
// reader sees. Read carries commands and BDAT chunks (a DATA body is read
// by bodyReader), so the reply is written here, whatever the mode, and the
// connection closes: go-smtp gets net.ErrClosed, which it answers with
// nothing. (Handing it the *smtp.SMTPError would make it answer a broken
// command line with "421 4.4.0 Connection error".)
func (c *clientConn) fail(err error) error {
	c.sticky = net.ErrClosed
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		c.refuse(se)
	}
	c.Close()
	return net.ErrClosed
}

// refuse answers a protocol violation with se, once: whichever sees the
// violation first — Read, or a session method that finds failed set
// (go-smtp hands it the line before the bad byte) — writes the reply, and
// nothing is written after it. It returns se. The connection is closed by
// the reading goroutine (fail), on go-smtp's next read, which always comes
// since the violation is pending there: closing it from a session method
// would let go-smtp's own Close (on shutdown) race with a BDAT it is still
// handling.
func (c *clientConn) refuse(se *smtp.SMTPError) *smtp.SMTPError {
	if c.refused.CompareAndSwap(false, true) {
		c.writeMu.Lock()
		_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Conn.Write([]byte(replies.Line(se) + "\r\n"))
		c.writeMu.Unlock()
	}
	return se
}

// scan checks b for bare CR, bare LF, NUL and lines longer than maxLine
// (CRLF included), returning the index of the first offending byte or -1.
// A CR at the end of one read is judged by the first byte of the next; the
// offending index is then 0. It works line by line with bytes.IndexByte,
// so the common case costs a few vectorised passes per line; go-smtp's own
// line limit (a byte loop) is switched off in favour of this one.
//
// In command mode it also neutralises source routes (RFC 5321 §4.1.2
// "<@a,@b:user@c>"): go-smtp silently strips them, mailgate refuses them.
// The '@' after the '<' of a MAIL FROM or RCPT TO path becomes 0x01, which
// go-smtp's path parser rejects with 501.
func (c *clientConn) scan(b []byte, mode readMode) (int, error) {
	bad, _, why := c.scanUntil(b, mode, false)
	return bad, why
}

// scanUntil is scan; with stopAtData it stops after a line that begins with
// "DATA" (any case) when more bytes follow, and returns the index after
// that line as cut (else -1): those bytes are left unscanned.
func (c *clientConn) scanUntil(b []byte, mode readMode, stopAtData bool) (bad, cut int, why error) {
	i := 0
	for i < len(b) {
		if mode == modeCommand && c.chunk.left > 0 {
			n, bad, why := c.scanChunk(b[i:])
			if bad >= 0 {
				return i + bad, -1, why
			}
			i += n
			continue
		}
		if c.prev == '\r' && b[i] != '\n' {
			return i, -1, replies.BareLineEnding
		}
		j := bytes.IndexByte(b[i:], '\n')
		end := len(b)
		if j >= 0 {
			end = i + j
		}
		seg := b[i:end]
		bad = -1
		if k := bytes.IndexByte(seg, '\r'); k >= 0 && k != len(seg)-1 {
			bad = k + 1 // the byte after a bare CR
		}
		if k := bytes.IndexByte(seg, 0); k >= 0 && (bad < 0 || k < bad) {
			bad = k
		}
		if bad >= 0 {
			return i + bad, -1, replies.BareLineEnding
		}
		n := c.lineLen + len(seg)
		if j >= 0 {
			n++ // the LF
		}
		if c.maxLine > 0 && n > c.maxLine {
			return i, -1, replies.LineTooLong
		}
		if mode == modeCommand {
			c.watchHead(seg)
		}
		c.lineLen += len(seg)
		if len(seg) > 0 {
			c.prev = seg[len(seg)-1]
		}
		if j < 0 {
			return -1, -1, nil
		}
		if c.prev != '\r' {
			return end, -1, replies.BareLineEnding
		}
		isData := stopAtData && len(c.lineHead) >= 4 && equalFoldASCII(c.lineHead[:4], "DATA")
		if mode == modeCommand {
			if why := c.commandDone(); why != nil {
				// The LF is withheld: the line never completes.
				return end, -1, why
			}
		}
		c.prev, c.lineLen, c.lineHead = '\n', 0, c.lineHead[:0]
		i = end + 1
		if isData && i < len(b) {
			return -1, i, nil
		}
	}
	return -1, -1, nil
}

// watchHead follows the first bytes of a command line to spot a source
// route (see scan).
func (c *clientConn) watchHead(seg []byte) {
	for k := 0; k < len(seg) && len(c.lineHead) < cap(c.lineHead); k++ {
		if seg[k] == '@' && isPathStart(c.lineHead) {
			seg[k] = 0x01
		}
		c.lineHead = append(c.lineHead, seg[k])
	}
}

// isPathStart reports whether head is "MAIL FROM:<" or "RCPT TO:<", in
// any case, with optional spaces before the '<'.
func isPathStart(head []byte) bool {
	n := len(head)
	if n == 0 || head[n-1] != '<' {
		return false
	}
	s := head[:n-1]
	for len(s) > 0 && s[len(s)-1] == ' ' {
		s = s[:len(s)-1]
	}
	return equalFoldASCII(s, "MAIL FROM:") || equalFoldASCII(s, "RCPT TO:")
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Write implements net.Conn; only go-smtp writes through it, one reply
// line per call. It drops go-smtp's greeting after a STARTTLS hand-over,
// replaces go-smtp's playful texts (rewriteReply, reply.go), holds the
// "NNN-" lines of a multi-line reply until its last line so the whole
// reply leaves in one write (one TLS record, one syscall: an EHLO reply
// is a dozen lines), and closes the connection after a reply that ends
// it.
func (c *clientConn) Write(b []byte) (int, error) {
	if c.refused.Load() {
		return len(b), nil // the refusal was the last reply
	}
	c.writeMu.Lock()
	if c.dropGreeting {
		c.dropGreeting = false
		if len(b) >= 4 && string(b[:4]) == "220 " {
			c.writeMu.Unlock()
			return len(b), nil
		}
	}
	if len(b) >= 4 && b[3] == '-' && bytes.HasSuffix(b, []byte("\r\n")) {
		c.replyLines = append(c.replyLines, b...)
		c.writeMu.Unlock()
		return len(b), nil
	}
	out := rewriteReply(b)
	if len(c.replyLines) > 0 {
		out = append(c.replyLines, out...)
		c.replyLines = c.replyLines[:0]
	}
	if bytes.HasPrefix(out, []byte("354 ")) || bytes.Contains(out, []byte("\n354 ")) {
		c.dataPending.Store(true)
	}
	_, err := c.Conn.Write(out)
	c.writeMu.Unlock()
	if c.closeAfterWrite.Load() {
		c.Close()
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// replyAndClose writes r directly and closes the connection.
func (c *clientConn) replyAndClose(r *smtp.SMTPError) {
	c.writeMu.Lock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Conn.Write([]byte(replies.Line(r) + "\r\n"))
	c.writeMu.Unlock()
	c.Close()
}

// Close closes the connection once and tells the server.
func (c *clientConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// drain asks an idle session to end: if no transaction is open and the
// session is waiting for a command, the blocked read wakes up, replies 421
// and closes. A session inside a transaction finishes it first.
func (c *clientConn) drain() {
	c.draining.Store(true)
	if !c.inTx.Load() && readMode(c.mode.Load()) == modeCommand {
		c.rearm.Store(true)
		_ = c.Conn.SetReadDeadline(time.Now())
	}
}
