package upstream

import (
	"bytes"
	"errors"
	"net"
	"sync"
)

// errLineEnding is returned by dotWriter for a CR or LF that is not part of
// a CRLF pair: mailgate relays only what its strict reader accepted, so such
// a byte means a bug upstream of here, and the message must not be sent
// (a bare line ending is what SMTP smuggling is made of).
var errLineEnding = errors.New("message has a bare CR or LF")

// dotBufs holds dotWriter output buffers between messages.
var dotBufs = sync.Pool{New: func() any { b := make([]byte, 0, dotFlushAt+dotFlushAt/8); return &b }}

// dotFlushAt is the output size at which dotWriter writes to the wire.
const dotFlushAt = 32 << 10

// corkConn is the connection go-smtp's client and dotWriter write to. A
// message's last bytes are held (hold) and go out with the next write,
// which is the end-of-data line DataCommand's Close writes: one write
// system call where there would be two, for every message.
type corkConn struct {
	net.Conn
	held *[]byte // a dotBufs buffer, or nil
}

// hold makes *buf the prefix of the next Write, which takes ownership of buf.
func (c *corkConn) hold(buf *[]byte) { c.held = buf }

func (c *corkConn) Write(b []byte) (int, error) {
	if c.held == nil {
		return c.Conn.Write(b)
	}
	buf := c.held
	c.held = nil
	out := append(*buf, b...)
	_, err := c.Conn.Write(out)
	*buf = out
	putDotBuf(buf)
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// dotWriter dot-stuffs a CRLF message onto the connection in bulk (RFC 5321
// section 4.5.2): it finds line starts with bytes.IndexByte instead of
// textproto's byte-at-a-time state machine, and writes large chunks straight
// to the connection. It keeps the message's final CRLF back: DataCommand's
// Close, which always follows, writes "\r\n.\r\n" when nothing went through
// its own writer, so the wire carries the message and one end-of-data line.
// A message that does not end in CRLF (BDAT allows it) gets one, as with
// textproto.
type dotWriter struct {
	w      *corkConn
	buf    *[]byte
	bol    bool // the next byte starts a line
	prevCR bool // the last byte was CR (its LF may come in the next Write)
	err    error
}

func newDotWriter(w *corkConn) *dotWriter {
	return &dotWriter{w: w, buf: dotBufs.Get().(*[]byte), bol: true}
}

// Write dot-stuffs p. It returns errLineEnding for a bare CR or LF and the
// connection's error after a failed write; both are sticky.
func (d *dotWriter) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n := len(p)
	out := *d.buf
	for len(p) > 0 {
		if d.prevCR {
			// The CR ended the previous Write; its LF must start this one.
			if p[0] != '\n' {
				d.err = errLineEnding
				return 0, d.err
			}
			out = append(out, '\n')
			p = p[1:]
			d.prevCR, d.bol = false, true
			continue
		}
		if d.bol && p[0] == '.' {
			out = append(out, '.')
		}
		line := p
		lf := bytes.IndexByte(p, '\n')
		if lf >= 0 {
			line = p[:lf+1]
		}
		cr := bytes.IndexByte(line, '\r')
		switch {
		case lf >= 0 && (lf == 0 || cr != lf-1):
			// A complete line has exactly one CR, right before its LF.
			d.err = errLineEnding
			return 0, d.err
		case lf >= 0:
			d.bol = true
		case cr >= 0 && cr != len(line)-1:
			// A partial line may end in CR (its LF comes next), nothing else.
			d.err = errLineEnding
			return 0, d.err
		default:
			d.prevCR, d.bol = cr >= 0, false
		}
		out = append(out, line...)
		p = p[len(line):]
		if len(out) >= dotFlushAt {
			// Bounded memory whatever the size of p.
			*d.buf = out
			if err := d.flush(2); err != nil {
				return 0, err
			}
			out = *d.buf
		}
	}
	*d.buf = out
	return n, nil
}

// flush writes all but the last keep bytes of the pending output.
func (d *dotWriter) flush(keep int) error {
	out := *d.buf
	if len(out) <= keep {
		return nil
	}
	if _, err := d.w.Write(out[:len(out)-keep]); err != nil {
		d.err = err
		return err
	}
	*d.buf = append(out[:0], out[len(out)-keep:]...)
	return nil
}

// finish hands what is pending, except a final CRLF (see dotWriter), to
// the connection to be written with the end-of-data line. A pending CR
// without its LF is a bare CR. d must not be used afterwards.
func (d *dotWriter) finish() error {
	if d.err != nil {
		return d.err
	}
	if d.prevCR {
		d.err = errLineEnding
		return d.err
	}
	if out := *d.buf; bytes.HasSuffix(out, []byte("\r\n")) {
		*d.buf = out[:len(out)-2]
	}
	d.w.hold(d.buf)
	d.buf = nil
	return nil
}

// release returns the buffer to the pool unless finish handed it on.
func (d *dotWriter) release() {
	if d.buf != nil {
		putDotBuf(d.buf)
		d.buf = nil
	}
}

func putDotBuf(b *[]byte) {
	if cap(*b) <= 4*dotFlushAt {
		*b = (*b)[:0]
		dotBufs.Put(b)
	}
}
