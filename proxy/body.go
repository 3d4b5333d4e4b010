package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// A DATA body is read by mailgate itself, in bulk, instead of by go-smtp's
// byte-at-a-time dataReader (≈ 6 ns per byte, the largest single cost of a
// plain relay). The hand-over works like this:
//
//   - clientConn.Read never hands go-smtp bytes past the end of a DATA
//     command line (it keeps them in held), so when go-smtp writes 354 and
//     calls Session.Data, its buffer holds nothing of the body;
//   - Session.Data reads the body through a bodyReader: straight from the
//     connection (held bytes first), with the same strict checks as every
//     other byte (scan in data mode), dot-unstuffing and end-of-data
//     detection done a line at a time with bytes.IndexByte;
//   - at the end-of-data line the bytes after it (pipelined commands) go
//     back to held behind a synthetic ".\r\n", which is all go-smtp's own
//     dataReader then reads: it ends at once and go-smtp writes the reply.
//
// A body the session stops reading early (a refusal before the end) is
// drained by finish, still strictly, so the stream never falls out of step:
// the rest of a body is never read as commands.

// bodyBufs holds bodyReader buffers between messages.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// endOfData is what go-smtp's dataReader gets once mailgate has read a body.
var endOfData = []byte(".\r\n")

// dot-unstuffing states.
const (
	bodyBOL   = iota // at the beginning of a line
	bodyDot          // a '.' began the line (dropped)
	bodyDotCR        // ".\r" began the line
	bodyMid          // inside a line
)

// bodyReader reads one DATA body from a clientConn; see above.
type bodyReader struct {
	c     *clientConn
	buf   *[]byte
	ready []byte // unstuffed body bytes not yet returned
	state int
	size  int64 // unstuffed bytes so far
	max   int64 // max_message_size; 0: none
	done  bool  // the end-of-data line was read
	err   error // sticky: returned by every later Read
}

// body starts reading a DATA body of at most max bytes (0: no limit). The
// caller must call finish when done with it.
func (c *clientConn) body(max int64) *bodyReader {
	c.startBody(time.Now())
	return &bodyReader{c: c, buf: bodyBufs.Get().(*[]byte), max: max}
}

// Read returns the unstuffed body. At the end-of-data line it returns
// io.EOF; past max_message_size smtp.ErrDataTooLarge; a connection that
// ends early io.ErrUnexpectedEOF; a strictness violation or a timeout the
// clientConn's error (the connection is then done for).
func (r *bodyReader) Read(p []byte) (int, error) {
	for len(r.ready) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.fill()
	}
	n := copy(p, r.ready)
	r.ready = r.ready[n:]
	return n, nil
}

// fill reads one chunk from the connection, checks it and unstuffs it in
// place into ready; it sets done at the end-of-data line and err on failure.
func (r *bodyReader) fill() {
	c := r.c
	buf := *r.buf
	n, rerr := c.readRaw(buf)
	chunk := buf[:n]
	end, _, done := r.walk(chunk, false) // chunk[:end] is body
	if bad, why := c.scan(chunk[:end], modeData); bad >= 0 {
		c.failed.Store(true)
		c.sticky = net.ErrClosed
		r.err = why
		return
	}
	_, out, _ := r.walk(chunk[:end], true)
	r.ready = chunk[:out]
	if done {
		r.done = true
		// Pipelined commands after the body go back to held, behind the
		// end-of-data line go-smtp's own reader is to see.
		rest := make([]byte, 0, len(endOfData)+n-end+len(c.held))
		rest = append(rest, endOfData...)
		rest = append(rest, chunk[end:]...)
		c.held = append(rest, c.held...)
	}
	r.size += int64(len(r.ready))
	if r.max > 0 && r.size > r.max {
		r.ready, r.err = nil, smtp.ErrDataTooLarge
	}
	if rerr != nil && !done {
		r.ready = nil
		r.err = c.bodyReadError(rerr)
	}
}

// walk runs the dot-unstuffing state machine over chunk and returns the
// length of the part that belongs to the body (through the end-of-data
// line when chunk holds it: done). With write it also moves the body bytes
// into place, out of them (the unstuffed output is never longer than what
// was read, so it is written over chunk itself), and keeps the new state;
// without, it only looks.
func (r *bodyReader) walk(chunk []byte, write bool) (end, out int, done bool) {
	st, i := r.state, 0
	if write {
		defer func() { r.state = st }()
	}
	for i < len(chunk) {
		switch st {
		case bodyBOL:
			if chunk[i] == '.' {
				st, i = bodyDot, i+1
				continue
			}
			st = bodyMid
		case bodyDot:
			if chunk[i] == '\r' {
				st, i = bodyDotCR, i+1
				continue
			}
			st = bodyMid
		case bodyDotCR:
			if chunk[i] == '\n' {
				return i + 1, out, true
			}
			// ".\r" then anything but LF is a bare CR, which scan has
			// refused before a write pass.
			st = bodyMid
		case bodyMid:
			j := bytes.IndexByte(chunk[i:], '\n')
			next := len(chunk)
			if j >= 0 {
				next, st = i+j+1, bodyBOL
			}
			if write {
				out += copy(chunk[out:], chunk[i:next])
			}
			i = next
		}
	}
	return len(chunk), out, false
}

// finish drains what is left of the body (strictly, without a size limit)
// so the stream stays in step, and returns the buffer. After it, go-smtp's
// dataReader reads the end-of-data line from held, or the connection's
// error.
func (r *bodyReader) finish() {
	// Past max_message_size the rest is read all the same; nobody reads
	// r.err after finish.
	r.max = 0
	if r.err == smtp.ErrDataTooLarge {
		r.err = nil
	}
	for !r.done && r.err == nil {
		r.fill()
	}
	r.ready = nil
	if r.buf != nil {
		bodyBufs.Put(r.buf)
		r.buf = nil
	}
}

// countingReader counts the message bytes read from the client and keeps
// the first read error.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// clientGone reports whether reading stopped because the client went away
// (EOF or a broken connection mid-message, or go-smtp's ErrDataReset) rather
// than on a refusal of ours (an *smtp.SMTPError: bare line ending, size,
// timeout).
func (c *countingReader) clientGone() bool {
	var se *smtp.SMTPError
	return c.err != nil && !errors.As(c.err, &se)
}
