// Package upstream is mailgate's SMTP client to the upstream mail server: a
// pool of authenticated, TLS-protected connections per configured upstream and
// a Router that runs one upstream transaction per client transaction.
//
// mailgate relays synchronously (Postfix's before-queue proxy model): the
// proxy calls [Router.Begin] when the client sends MAIL, [Tx.Rcpt] for every
// RCPT, and [Tx.Data] once the whole message has been received, checked and
// signed. The client gets 250 only after the upstream said 250. A transaction
// the proxy does not finish is rolled back with [Tx.Abort] (RSET), so the
// upstream never delivers a message the client was not told was accepted.
//
// # Errors
//
// Every error from this package maps, through [AsSMTPError], to the reply the
// client must get (the replies mailgate originates are values of the
// catalogue, proxy/replies; docs/replies.md lists them):
//
//   - a non-success reply of the upstream is returned as *smtp.SMTPError with
//     the upstream's code, enhanced code and message, cleaned to a single
//     printable line of at most [MaxReplyLen] bytes. Exceptions: 552 at RCPT
//     becomes 452 4.5.3 (RFC 5321 section 4.5.3.1.10), and 421 becomes 451
//     (the upstream closing its channel must not close the client's);
//   - transport trouble (no upstream reachable, TLS, drop, EOF, or every one
//     of max_connections still in use after connect_timeout) wraps
//     [ErrUnavailable] (451 4.4.1); a timeout wraps [ErrTimeout] (451 4.4.2).
//     Neither ever becomes a 5xx;
//   - requests that can never succeed are refused locally without sending
//     anything: [ErrInvalidAddress] (501 5.1.3 / 5.1.7), [ErrSMTPUTF8]
//     (550 5.6.7, RFC 6531), [ErrRequireTLS] (550 5.7.30, RFC 8689),
//     [ErrInvalidParameter] (501 5.5.4);
//   - [ErrUnknownRoute] and anything unexpected become 451 4.3.0.
package upstream
