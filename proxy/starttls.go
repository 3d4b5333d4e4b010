package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
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
	write := func(r *smtp.SMTPError) error {
		_ = raw.SetWriteDeadline(time.Now().Add(lim.commandTimeout))
		_, err := raw.Write([]byte(replies.Line(r) + "\r\n"))
		return err
	}
	if err := write(replies.Greeting.With(s.cfg.Hostname)); err != nil {
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
				_ = write(replies.LoginTimeout)
			case errors.As(err, &ne) && ne.Timeout():
				_ = write(replies.IdleTimeout)
			case errors.Is(err, errBadLine):
				_ = write(replies.BadLineBeforeTLS)
			}
			return nil, err
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			if strings.TrimSpace(arg) == "" {
				err = write(replies.EHLONeedsDomain)
				break
			}
			helo = true
			err = write(replies.EHLOBeforeTLS.With(s.cfg.Hostname, lim.MaxMessageSize))
		case "HELO":
			if strings.TrimSpace(arg) == "" {
				err = write(replies.HELONeedsDomain)
				break
			}
			helo = true
			err = write(replies.HELOBeforeTLS.With(s.cfg.Hostname))
		case "STARTTLS":
			if !helo {
				err = write(replies.SendEHLOFirst)
				break
			}
			if arg != "" {
				err = write(replies.STARTTLSNoArgument)
				break
			}
			if n := br.Buffered(); n > 0 {
				// RFC 3207 §5: commands pipelined after STARTTLS belong to
				// the plaintext session and must not survive into TLS.
				_, _ = br.Discard(n)
				s.log.Warn("discarded plaintext pipelined after STARTTLS", "remote", raw.RemoteAddr().String(), "bytes", n)
			}
			if err := write(replies.ReadyToStartTLS); err != nil {
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
		case "NOOP", "RSET":
			err = write(replies.OK)
		case "QUIT":
			_ = write(replies.Bye)
			return nil, errClientQuit
		case "MAIL", "RCPT", "DATA", "BDAT", "AUTH", "VRFY", "EXPN":
			errs++
			err = write(replies.MustStartTLS)
		default:
			errs++
			err = write(replies.NotRecognized)
		}
		if err != nil {
			return nil, err
		}
		if errs > 10 {
			_ = write(replies.TooManyErrorsBeforeTLS)
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
