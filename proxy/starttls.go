package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

var errClientQuit = errors.New("proxy: client quit before STARTTLS")

// startTLS speaks the plaintext part of a starttls listener's dialogue
// itself (RFC 3207) and returns the connection once TLS is up. Before TLS
// only EHLO/HELO, STARTTLS, NOOP, RSET and QUIT are accepted; AUTH, MAIL
// and the rest get 530 5.7.0. Doing this here, rather than in go-smtp,
// lets the strict reader (clientConn) sit above TLS, and makes sure that
// plaintext pipelined after STARTTLS (CVE-2011-0411) is discarded.
//
// Each line must arrive within command_timeout of the wait for it (bytes
// do not extend it), and the whole dialogue with the TLS handshake within
// loginDeadline.
func (s *Server) startTLS(l *listener, raw net.Conn, loginDeadline time.Time) (*tls.Conn, error) {
	lim := &s.cfg.Limits
	br := bufio.NewReaderSize(raw, 1024)
	write := func(lines ...string) error {
		_ = raw.SetWriteDeadline(time.Now().Add(lim.commandTimeout))
		_, err := raw.Write([]byte(strings.Join(lines, "\r\n") + "\r\n"))
		return err
	}
	if err := write(fmt.Sprintf("220 %s ESMTP mailgate", s.cfg.Hostname)); err != nil {
		return nil, err
	}
	helo := false
	errs := 0
	for {
		dl := time.Now().Add(lim.commandTimeout)
		if loginDeadline.Before(dl) {
			dl = loginDeadline
		}
		_ = raw.SetReadDeadline(dl)
		line, err := readStrictLine(br, 512)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(loginDeadline):
				_ = write(loginTimeoutReply)
			case errors.As(err, &ne) && ne.Timeout():
				_ = write("421 4.4.2 Idle timeout, closing connection")
			case errors.Is(err, errBadLine):
				_ = write("550 5.6.0 Bare CR, bare LF, NUL or an over-long line received, closing connection")
			}
			return nil, err
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			if strings.TrimSpace(arg) == "" {
				err = write("501 5.5.4 EHLO needs a domain")
				break
			}
			helo = true
			err = write(
				"250-"+s.cfg.Hostname,
				"250-PIPELINING",
				fmt.Sprintf("250-SIZE %d", lim.MaxMessageSize),
				"250-8BITMIME",
				"250-ENHANCEDSTATUSCODES",
				"250 STARTTLS")
		case "HELO":
			if strings.TrimSpace(arg) == "" {
				err = write("501 5.5.4 HELO needs a domain")
				break
			}
			helo = true
			err = write("250 " + s.cfg.Hostname)
		case "STARTTLS":
			if !helo {
				err = write("503 5.5.1 Send EHLO first")
				break
			}
			if arg != "" {
				err = write("501 5.5.4 STARTTLS takes no argument")
				break
			}
			if n := br.Buffered(); n > 0 {
				// RFC 3207 §5: commands pipelined after STARTTLS belong to
				// the plaintext session and must not survive into TLS.
				_, _ = br.Discard(n)
				s.log.Warn("discarded plaintext pipelined after STARTTLS", "remote", raw.RemoteAddr().String(), "bytes", n)
			}
			if err := write("220 2.0.0 Ready to start TLS"); err != nil {
				return nil, err
			}
			tc := tls.Server(raw, s.deps.TLS)
			ctx, cancel := handshakeContext(lim.handshakeTimeout, loginDeadline)
			defer cancel()
			if err := tc.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			_ = raw.SetDeadline(time.Time{})
			return tc, nil
		case "NOOP":
			err = write("250 2.0.0 OK")
		case "RSET":
			err = write("250 2.0.0 OK")
		case "QUIT":
			_ = write("221 2.0.0 Bye")
			return nil, errClientQuit
		case "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "VRFY", "EXPN":
			errs++
			err = write("530 5.7.0 Must issue a STARTTLS command first")
		default:
			errs++
			err = write("502 5.5.1 Command not recognized")
		}
		if err != nil {
			return nil, err
		}
		if errs > 10 {
			_ = write("421 4.7.0 Too many errors, closing connection")
			return nil, errors.New("too many errors before STARTTLS")
		}
	}
}

var errBadLine = errors.New("proxy: bare CR/LF, NUL or over-long line")

// readStrictLine reads one CRLF-terminated line of at most max bytes and
// returns it without the CRLF. A bare CR or LF, or a NUL, is errBadLine.
func readStrictLine(br *bufio.Reader, max int) (string, error) {
	b, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errBadLine
		}
		return "", err
	}
	if len(b) > max || len(b) < 2 || b[len(b)-2] != '\r' {
		return "", errBadLine
	}
	b = b[:len(b)-2]
	for _, c := range b {
		if c == '\r' || c == 0 {
			return "", errBadLine
		}
	}
	return string(b), nil
}
