// Package proxy is mailgate's SMTP side: listeners, TLS, AUTH, limits, the
// go-smtp session, spooling, header hygiene and the upstream transaction
// that mirrors the client's. It is the only place where errors become SMTP
// replies (see reply.go).
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
)

// Server runs every configured listener.
type Server struct {
	cfg  Config
	deps Deps
	log  *slog.Logger

	mu        sync.Mutex
	conns     map[*clientConn]struct{}
	pending   map[net.Conn]struct{} // accepted, not yet handed to go-smtp (TLS, pre-STARTTLS)
	perIP     map[netip.Addr]int
	total     int
	listeners []*listener
	closed    bool
	dsn       bool           // advertise DSN: every upstream offered it at start
	wg        sync.WaitGroup // accept loops and hand-overs
}

type listener struct {
	cfg  *ListenerConfig
	ln   net.Listener
	smtp *smtp.Server
	ch   *chanListener
}

// New builds a Server. cfg must have passed Validate.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Relay == nil {
		return nil, errors.New("proxy: no upstream relay")
	}
	if uc, ok := deps.Relay.(UpstreamCounters); ok {
		deps.Metrics.watchUpstreams(uc)
	}
	for _, l := range cfg.Listeners {
		if l.TLSMode() != TLSNone && deps.TLS == nil {
			return nil, fmt.Errorf("proxy: listener %q: tls = %q needs a certificate", l.Name, l.TLSMode())
		}
	}
	return &Server{
		cfg:     cfg,
		deps:    deps,
		log:     deps.Logger,
		conns:   make(map[*clientConn]struct{}),
		pending: make(map[net.Conn]struct{}),
		perIP:   make(map[netip.Addr]int),
	}, nil
}

// Listen opens every listener's socket, so that a caller knows the ports
// are bound before Serve, and asks the upstreams whether they offer DSN
// (probeDSN), so that the probe's connection is ready in the pool when
// Listen returns. Addresses with port 0 get a free port; Addrs reports
// them.
func (s *Server) Listen() error {
	for i := range s.cfg.Listeners {
		lc := &s.cfg.Listeners[i]
		ln, err := net.Listen("tcp", lc.Address)
		if err != nil {
			for _, l := range s.listeners {
				l.ln.Close()
			}
			s.listeners = nil
			return fmt.Errorf("proxy: listener %q: %w", lc.Name, err)
		}
		if len(lc.proxies) > 0 {
			ln = proxyListener(ln, lc.proxies)
		}
		s.listeners = append(s.listeners, &listener{cfg: lc, ln: ln})
	}
	dsn := s.probeDSN()
	s.mu.Lock()
	s.dsn = dsn
	s.mu.Unlock()
	return nil
}

// Addrs returns the bound address of each listener by name.
func (s *Server) Addrs() map[string]string {
	m := make(map[string]string, len(s.listeners))
	for _, l := range s.listeners {
		m[l.cfg.Name] = l.ln.Addr().String()
	}
	return m
}

// Serve accepts connections until Shutdown. It calls Listen if needed.
func (s *Server) Serve(ctx context.Context) error {
	if s.listeners == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, 2*len(s.listeners))
	// Under s.mu: Shutdown may run while Serve starts and reads what is
	// set here.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	for _, l := range s.listeners {
		l.ch = newChanListener(l.ln.Addr())
		l.smtp = s.newSMTPServer(l)
		s.log.Info("listening", "listener", l.cfg.Name, "address", l.ln.Addr().String(),
			"tls", l.cfg.TLSMode(), "auth", l.cfg.AuthMode())
		go func() { errc <- l.smtp.Serve(l.ch) }()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			errc <- s.acceptLoop(l)
		}()
	}
	s.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func (s *Server) newSMTPServer(l *listener) *smtp.Server {
	srv := smtp.NewServer(backend{s: s, l: l})
	srv.Domain = s.cfg.Hostname
	srv.MaxRecipients = s.cfg.Limits.MaxRecipients
	srv.MaxMessageBytes = s.cfg.Limits.MaxMessageSize
	// clientConn enforces max_line_length in the same pass as its other
	// checks; go-smtp's limit would be a second byte-by-byte pass.
	srv.MaxLineLength = 0
	// mailgate decides itself when AUTH is allowed (see session.authAllowed):
	// go-smtp cannot see TLS through the strict connection wrapper.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	// DSN (RFC 3461) only when the upstreams offer it (see probeDSN).
	srv.EnableDSN = s.dsn
	// Read deadlines are set per read by clientConn; go-smtp's ReadTimeout
	// would cover a whole body.
	srv.ReadTimeout = 0
	srv.WriteTimeout = s.cfg.Limits.commandTimeout
	srv.ErrorLog = log.New(slogWriter{s.log}, "", 0)
	return srv
}

// probeDSN decides once, at start, whether mailgate advertises DSN
// (RFC 3461): only when every upstream offers it, so that the NOTIFY,
// ORCPT, RET and ENVID a client sends reach an upstream that honours them
// (go-smtp's client would silently drop them otherwise, and mailgate,
// which never queues, cannot send the "relayed" DSN RFC 3461 section 4.2
// asks of a relay in that case). An upstream that is down at start means
// no DSN until the next start.
func (s *Server) probeDSN() bool {
	p, ok := s.deps.Relay.(ExtensionProber)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), dsnProbeTimeout)
	defer cancel()
	dsn := p.Offers(ctx, "DSN")
	s.log.Info("upstream DSN support probed", "dsn", dsn)
	return dsn
}

// dsnProbeTimeout bounds the start-up probe of the upstreams.
const dsnProbeTimeout = 5 * time.Second

// acceptLoop accepts raw connections, applies connection limits and the
// listener's TLS mode, and hands ready connections to go-smtp.
func (s *Server) acceptLoop(l *listener) error {
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("proxy: accept on %q: %w", l.cfg.Name, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handover(l, raw)
		}()
	}
}

// handover prepares one accepted connection for go-smtp, step by step:
// the PROXY header and trusted_networks (screen), the connection limits
// (admitConn), the listener's TLS mode (secure), then the strict
// connection wrapper (prepare) that goes to go-smtp (start). A connection
// is in s.pending until it reaches go-smtp or fails, so that Shutdown can
// tell it 421; from admitConn on it counts against the limits until it
// closes.
func (s *Server) handover(l *listener, raw net.Conn) {
	accepted := time.Now()
	remote, ok := s.screen(l, raw)
	if !ok {
		return
	}
	if !s.admitConn(l, raw, remote) {
		return
	}
	defer s.trackPending(raw)()
	// Everything up to a login (TLS, STARTTLS, EHLO, AUTH) must be done
	// by then; see clientConn.
	loginDeadline := accepted.Add(s.cfg.Limits.loginTimeout)
	sc, ok := s.secure(l, raw, remote, loginDeadline)
	if !ok {
		raw.Close()
		s.release(remote)
		return
	}
	s.start(l, s.prepare(l, sc, remote, loginDeadline))
}

// screen refuses a connection without a valid PROXY header (on a
// listener behind a proxy) or from outside trusted_networks, and returns
// the client's address.
func (s *Server) screen(l *listener, raw net.Conn) (netip.Addr, bool) {
	if !proxyHeaderOK(raw) {
		s.log.Warn("connection refused: no valid PROXY protocol header", "listener", l.cfg.Name,
			"peer", raw.RemoteAddr().String())
		raw.Close()
		return netip.Addr{}, false
	}
	remote := addrOf(raw.RemoteAddr())
	if len(l.cfg.trusted) > 0 && !inPrefixes(remote, l.cfg.trusted) {
		s.deps.Metrics.connection(l.cfg.Name, "refused_network")
		s.log.Warn("connection refused: not in trusted_networks", "listener", l.cfg.Name, "remote", remote.String())
		writeReply(raw, replies.AccessDenied)
		raw.Close()
		return remote, false
	}
	return remote, true
}

// admitConn counts the connection against the limits (admit), or refuses
// it with 421.
func (s *Server) admitConn(l *listener, raw net.Conn, remote netip.Addr) bool {
	reason, refusal := s.admit(remote)
	if refusal == nil {
		return true
	}
	s.deps.Metrics.connection(l.cfg.Name, "refused_limit")
	s.log.Warn("connection refused: "+reason, "listener", l.cfg.Name, "remote", remote.String())
	writeReply(raw, refusal)
	raw.Close()
	return false
}

// trackPending puts raw in s.pending and returns the function that takes
// it out.
func (s *Server) trackPending(raw net.Conn) (untrack func()) {
	s.mu.Lock()
	s.pending[raw] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.pending, raw)
		s.mu.Unlock()
	}
}

// secured is a connection after its listener's TLS mode applied.
type secured struct {
	conn         net.Conn             // what go-smtp is to speak on
	state        *tls.ConnectionState // nil without TLS
	dropGreeting bool                 // STARTTLS: the client was greeted already
}

// secure applies the listener's TLS mode: the implicit-TLS handshake, or
// the plaintext dialogue up to STARTTLS and its handshake (startTLS). ok
// is false when the client failed or left; the caller closes raw.
func (s *Server) secure(l *listener, raw net.Conn, remote netip.Addr, loginDeadline time.Time) (_ secured, ok bool) {
	lim := &s.cfg.Limits
	switch l.cfg.TLSMode() {
	case TLSImplicit:
		tc := tls.Server(raw, s.deps.TLS)
		ctx, cancel := handshakeContext(lim.handshakeTimeout, loginDeadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.deps.Metrics.connection(l.cfg.Name, "tls_failed")
			s.log.Info("TLS handshake failed", "listener", l.cfg.Name, "remote", remote.String(), "err", err)
			return secured{}, false
		}
		st := tc.ConnectionState()
		return secured{conn: tc, state: &st}, true
	case TLSStartTLS:
		tc, err := s.startTLS(l, raw, loginDeadline)
		if err != nil {
			if !errors.Is(err, errClientQuit) {
				s.log.Info("before STARTTLS", "listener", l.cfg.Name, "remote", remote.String(), "err", err)
			}
			return secured{}, false
		}
		st := tc.ConnectionState()
		return secured{conn: tc, state: &st, dropGreeting: true}, true
	}
	return secured{conn: raw}, true
}

// prepare wraps sc in the strict clientConn with the listener's limits,
// and counts it open until it closes, when it also releases its place
// under the connection limits.
func (s *Server) prepare(l *listener, sc secured, remote netip.Addr, loginDeadline time.Time) *clientConn {
	lim := &s.cfg.Limits
	cc := newClientConn(sc.conn, remote, lim.MaxLineLength, lim.commandTimeout, lim.dataTimeout)
	cc.minDataRate = int64(lim.MinDataRate)
	cc.loginDeadline = loginDeadline
	cc.log = s.log.With("listener", l.cfg.Name, "remote", remote.String())
	cc.tlsState = sc.state
	cc.dropGreeting = sc.dropGreeting
	s.deps.Metrics.connection(l.cfg.Name, "accepted")
	s.deps.Metrics.openDelta(l.cfg.Name, 1)
	cc.onClose = func() {
		s.deps.Metrics.openDelta(l.cfg.Name, -1)
		s.mu.Lock()
		delete(s.conns, cc)
		s.mu.Unlock()
		s.release(remote)
	}
	return cc
}

// start registers cc with the server and hands it to the listener's
// go-smtp server; on shutdown it tells the client 421 instead.
func (s *Server) start(l *listener, cc *clientConn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cc.replyAndClose(replies.ShuttingDown)
		return
	}
	s.conns[cc] = struct{}{}
	s.mu.Unlock()
	if !l.ch.push(cc) {
		cc.replyAndClose(replies.ShuttingDown)
	}
}

// handshakeContext bounds a TLS handshake by tls_handshake_timeout and by
// the connection's login deadline, whichever comes first.
func handshakeContext(timeout time.Duration, loginDeadline time.Time) (context.Context, context.CancelFunc) {
	dl := time.Now().Add(timeout)
	if loginDeadline.Before(dl) {
		dl = loginDeadline
	}
	return context.WithDeadline(context.Background(), dl)
}

// admit counts a new connection against max_connections and
// max_connections_per_ip; over a limit, it returns the reason (for the
// log) and the reply.
func (s *Server) admit(ip netip.Addr) (reason string, refusal *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "Service shutting down", replies.RefusedShuttingDown
	}
	if s.total >= s.cfg.Limits.MaxConnections {
		return "Too many connections", replies.TooManyConnections
	}
	if s.perIP[ip] >= s.cfg.Limits.MaxConnectionsPerIP {
		return "Too many connections from your address", replies.TooManyFromAddress
	}
	s.perIP[ip]++
	s.total++
	return "", nil
}

func (s *Server) release(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perIP[ip] <= 1 {
		delete(s.perIP, ip)
	} else {
		s.perIP[ip]--
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown stops accepting, lets transactions in flight finish, tells idle
// sessions 421 and returns when every connection is gone or ctx ends (then
// the rest are closed).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	for _, l := range s.listeners {
		l.ln.Close()
	}
	// Connections still in their TLS handshake or plaintext STARTTLS
	// dialogue hold no transaction: tell them and close.
	s.mu.Lock()
	for c := range s.pending {
		writeReply(c, replies.ShuttingDown)
		c.Close()
	}
	s.mu.Unlock()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		s.mu.Lock()
		conns := make([]*clientConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		if len(conns) == 0 {
			break
		}
		for _, c := range conns {
			c.drain()
		}
		select {
		case <-ctx.Done():
			for _, c := range conns {
				c.Close()
			}
			err = ctx.Err()
		case <-tick.C:
			continue
		}
		break
	}
	// Copied under s.mu (Serve sets them); closed outside it, since
	// closing connections calls back into s.
	s.mu.Lock()
	started := make([]listener, 0, len(s.listeners))
	for _, l := range s.listeners {
		started = append(started, listener{ch: l.ch, smtp: l.smtp})
	}
	s.mu.Unlock()
	for _, l := range started {
		if l.ch != nil {
			l.ch.Close()
		}
		if l.smtp != nil {
			l.smtp.Close()
		}
	}
	s.wg.Wait()
	return err
}

// chanListener feeds go-smtp the connections mailgate accepted and
// prepared itself (limits, TLS, STARTTLS).
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

type backend struct {
	s *Server
	l *listener
}

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	cc, ok := c.Conn().(*clientConn)
	if !ok {
		return nil, errors.New("proxy: connection not prepared")
	}
	if !b.l.cfg.AuthRequired() {
		// go-smtp makes the session at the first EHLO/HELO: on a
		// listener without AUTH, that is the login (see login_timeout).
		cc.markLoggedIn()
	}
	return newSession(b.s, b.l.cfg, cc, c.Hostname()), nil
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func inPrefixes(ip netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// writeReply writes r to a connection go-smtp does not have (yet).
func writeReply(c net.Conn, r *smtp.SMTPError) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte(replies.Line(r) + "\r\n"))
}

// slogWriter adapts go-smtp's ErrorLog to slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn("smtp server", "msg", string(p))
	return len(p), nil
}
