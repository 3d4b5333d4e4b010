package proxy

import (
	"strconv"
	"strings"

	"github.com/mailgate/mailgate/proxy/replies"
)

// BDAT (RFC 3030) puts a message's chunks into the command stream:
// "BDAT 28\r\n" is followed by exactly 28 bytes of message, then the next
// command. clientConn.Read sees that stream, so it must know which bytes
// are payload, for two reasons:
//
//   - line state belongs to the message, not to the stream: a chunk may
//     end in CR with the LF at the start of the next chunk (RFC 3030 section
//     2: chunks are arbitrary octet sequences), which is a valid CRLF of
//     the message — while the CR at the end of a chunk followed by the next
//     command's "BDAT" is not a line end at all;
//   - payload is never a command: it gets no source-route rewriting and
//     cannot end a command line.
//
// So the payload of each chunk is scanned strictly (bare CR, bare LF, NUL,
// line length) with the message's own line state, carried from chunk to
// chunk; command lines keep theirs. A CR left pending at the end of a
// chunk is judged by the first byte of the next chunk. It is a bare CR
// when the message ends there (BDAT … LAST) or when anything but a BDAT
// with payload comes next. The parse of a BDAT line mirrors go-smtp's
// handleBdat, so both agree on where the payload is.
//
// One line go-smtp does not read as a command is an AUTH continuation; a
// client that answers a 334 with "BDAT 5" makes the scanner take the next
// 5 bytes for payload. Those are still scanned strictly, and a CR they
// leave pending fails the next line, so the disagreement can only end the
// connection (550), never let a bare CR or LF through.

// lineHeadSize is how many bytes of a command line clientConn keeps: enough
// for every BDAT line go-smtp accepts ("BDAT 4294967295 LAST").
const lineHeadSize = 64

// bdatState is the BDAT side of clientConn's read state.
type bdatState struct {
	left    int64 // payload bytes of the current chunk not yet read
	last    bool  // the current chunk is the LAST one
	prev    byte  // the message's last byte so far ('\n' at its start)
	lineLen int   // bytes of the message's current line so far
}

// scanChunk scans the payload at the start of b (at most chunk.left bytes)
// with the message's line state. It returns how many bytes it took and, on
// a violation, the index of the offending byte.
func (c *clientConn) scanChunk(b []byte) (n, bad int, why error) {
	n = int(min(int64(len(b)), c.chunk.left))
	prev, lineLen := c.prev, c.lineLen
	c.prev, c.lineLen = c.chunk.prev, c.chunk.lineLen
	bad, _, why = c.scanUntil(b[:n], modeData, false)
	c.chunk.prev, c.chunk.lineLen = c.prev, c.lineLen
	c.prev, c.lineLen = prev, lineLen
	if bad >= 0 {
		return n, bad, why
	}
	c.chunk.left -= int64(n)
	if c.chunk.left == 0 && c.chunk.last {
		cr := c.chunk.prev == '\r'
		c.chunk = bdatState{prev: '\n'}
		if cr {
			// The message ends in a bare CR; withhold it, so go-smtp
			// never sees the chunk complete.
			return n, n - 1, replies.BareLineEnding
		}
	}
	return n, -1, nil
}

// commandDone is called at the end of each command line (before its LF is
// handed on). A BDAT that go-smtp will read a chunk for starts a payload;
// any other command ends the message's line state, and a CR still pending
// there is a bare CR.
func (c *clientConn) commandDone() error {
	size, last, isBDAT, err := c.bdatLine()
	if err != nil {
		return err
	}
	pendingCR := c.chunk.prev == '\r'
	if !isBDAT || size == 0 && last {
		c.chunk = bdatState{prev: '\n'}
		if pendingCR {
			return replies.BareLineEnding
		}
		return nil
	}
	c.chunk.left, c.chunk.last = size, last
	return nil
}

// bdatLine parses the command line in lineHead as go-smtp does (parseCmd,
// then handleBdat): isBDAT is true when go-smtp reads size bytes of payload
// after it, which it does for every syntactically valid BDAT, even one it
// refuses (no RCPT yet: 502; too big: 552). A BDAT line longer than
// lineHead is refused as too long: no client needs one.
func (c *clientConn) bdatLine() (size int64, last, isBDAT bool, err error) {
	h := c.lineHead
	if len(h) < 4 || !equalFoldASCII(h[:4], "BDAT") {
		return 0, false, false, nil
	}
	if c.lineLen > len(h) {
		return 0, false, false, replies.LineTooLong
	}
	line := strings.TrimRight(string(h), "\r\n")
	if len(line) <= 5 || line[4] != ' ' {
		return 0, false, false, nil // go-smtp: syntax error or no size, nothing read
	}
	args := strings.Fields(line[5:])
	if len(args) == 0 || len(args) > 2 {
		return 0, false, false, nil
	}
	if len(args) == 2 {
		if !strings.EqualFold(args[1], "LAST") {
			return 0, false, false, nil
		}
		last = true
	}
	n, perr := strconv.ParseUint(args[0], 10, 32)
	if perr != nil {
		return 0, false, false, nil
	}
	return int64(n), last, true, nil
}
