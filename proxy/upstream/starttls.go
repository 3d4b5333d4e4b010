package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
)

// errStartTLSNotOffered is returned when a starttls upstream does not
// advertise STARTTLS: mailgate never falls back to plaintext.
var errStartTLSNotOffered = errors.New("STARTTLS not offered by upstream")

// startTLS speaks the plaintext part of a STARTTLS upstream itself (greeting,
// EHLO with our name, STARTTLS) and returns the TLS connection after the
// handshake. go-smtp's NewClientStartTLS would do the same but greets with
// "EHLO localhost" and keeps the TLS connection to itself; mailgate writes
// message bodies to that connection directly (see dotWriter).
//
// Anything the upstream sent after its reply to STARTTLS is refused: it
// would otherwise be read as if it had come over TLS (response injection,
// CVE-2011-0411's client-side twin).
func startTLS(ctx context.Context, raw net.Conn, helo string, cfg *tls.Config) (*tls.Conn, error) {
	tp := textproto.NewConn(raw)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := tp.PrintfLine("EHLO %s", helo); err != nil {
		return nil, err
	}
	_, ext, err := tp.ReadResponse(250)
	if err != nil {
		return nil, fmt.Errorf("ehlo: %w", err)
	}
	if !offersStartTLS(ext) {
		return nil, errStartTLSNotOffered
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("starttls: %w", err)
	}
	if tp.R.Buffered() > 0 {
		return nil, errors.New("upstream sent data after its STARTTLS reply")
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// offersStartTLS reports whether the EHLO reply text (the greeting line,
// then one extension per line) lists STARTTLS.
func offersStartTLS(ext string) bool {
	lines := strings.Split(ext, "\n")
	for _, l := range lines[1:] {
		if kw, _, _ := strings.Cut(strings.TrimSpace(l), " "); strings.EqualFold(kw, "STARTTLS") {
			return true
		}
	}
	return false
}

// greetedConn hands go-smtp's client a greeting it already got: the client
// reads one when it starts, but over a STARTTLS connection the upstream's
// greeting came before TLS (startTLS read it).
type greetedConn struct {
	net.Conn
	greeting []byte
}

func (c *greetedConn) Read(b []byte) (int, error) {
	if len(c.greeting) > 0 {
		n := copy(b, c.greeting)
		c.greeting = c.greeting[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
