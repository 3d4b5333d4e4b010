package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

// The test environment of package upstream: fakeUpstream, a real go-smtp
// server in process that records commands and transactions and injects
// faults, the Router built on it (newTestRouter, with checkLeaks), and
// message and TLS helpers. The real smtp-sink comes from internal/peertest.

// fault is what the fake upstream does instead of accepting a command.
type fault struct {
	err   *smtp.SMTPError // reply with this error
	drop  bool            // close the connection without replying
	stall bool            // block until the test ends
}

// recordedTx is one transaction the fake upstream accepted (250 after DATA).
type recordedTx struct {
	helo  string // the EHLO name the session greeted with
	from  string
	opts  smtp.MailOptions
	rcpts []string
	data  []byte
}

// fakeUpstream is a real go-smtp server on 127.0.0.1 that records what it
// receives and injects faults. Hooks are read under mu.
type fakeUpstream struct {
	t    testing.TB
	addr string
	srv  *smtp.Server

	mu       sync.Mutex
	onMail   func(from string) *fault
	onRcpt   func(to string) *fault
	onData   func(data []byte) *fault
	txs      []recordedTx
	conns    []*recConn
	user     string // AUTH PLAIN/LOGIN required when set
	pass     string
	mechs    []string // offered AUTH mechanisms (default PLAIN, LOGIN)
	mechUsed string
	discard  bool

	open    atomic.Int64 // server-side connections open now
	stallCh chan struct{}
	stopped sync.Once
}

type fakeOpts struct {
	tls         *tls.Config // advertise STARTTLS (or serve implicit TLS with implicit)
	implicit    bool
	user, pass  string
	smtputf8    bool
	maxMsgBytes int64
	mechs       []string
	discard     bool // do not keep accepted messages (benchmarks)
}

func startFake(t testing.TB, o fakeOpts) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{t: t, user: o.user, pass: o.pass, mechs: o.mechs, discard: o.discard, stallCh: make(chan struct{})}
	if f.mechs == nil {
		f.mechs = []string{sasl.Plain, sasl.Login}
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &fakeSession{f: f, c: c}, nil
	}))
	srv.Domain = "upstream.test"
	srv.AllowInsecureAuth = o.tls == nil
	srv.EnableSMTPUTF8 = o.smtputf8
	srv.MaxMessageBytes = o.maxMsgBytes
	srv.ErrorLog = testLogger{t}
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	ln = &recListener{Listener: ln, f: f}
	if o.implicit {
		ln = tls.NewListener(ln, o.tls)
	} else {
		srv.TLSConfig = o.tls
	}
	f.srv = srv
	go srv.Serve(ln)
	t.Cleanup(func() {
		f.releaseStalls()
		srv.Close()
	})
	return f
}

func (f *fakeUpstream) releaseStalls() { f.stopped.Do(func() { close(f.stallCh) }) }

func (f *fakeUpstream) set(fn func(f *fakeUpstream)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeUpstream) transactions() []recordedTx {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recordedTx(nil), f.txs...)
}

// commands returns the SMTP verbs each connection received, in order
// (plaintext connections only: a TLS connection records ciphertext).
func (f *fakeUpstream) commands() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][]string
	for _, c := range f.conns {
		out = append(out, c.verbs())
	}
	return out
}

// do runs a fault; it returns the error to reply with, or nil to go on.
func (f *fakeUpstream) do(c *smtp.Conn, ft *fault) error {
	switch {
	case ft == nil:
		return nil
	case ft.stall:
		<-f.stallCh
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 0, 0}, Message: "stalled"}
	case ft.drop:
		c.Conn().Close()
		return errors.New("dropped")
	default:
		return ft.err
	}
}

type fakeSession struct {
	f  *fakeUpstream
	c  *smtp.Conn
	tx *recordedTx
	ok bool // authenticated
}

var _ smtp.AuthSession = (*fakeSession)(nil)

func (s *fakeSession) AuthMechanisms() []string { return s.f.mechs }

func (s *fakeSession) Auth(mech string) (sasl.Server, error) {
	check := func(u, p string) error {
		if u != s.f.user || p != s.f.pass {
			return smtp.ErrAuthFailed
		}
		s.ok = true
		s.f.mu.Lock()
		s.f.mechUsed = mech
		s.f.mu.Unlock()
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, u, p string) error { return check(u, p) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.f.user != "" && !s.ok {
		return smtp.ErrAuthRequired
	}
	s.f.mu.Lock()
	hook := s.f.onMail
	s.f.mu.Unlock()
	if hook != nil {
		if err := s.f.do(s.c, hook(from)); err != nil {
			return err
		}
	}
	s.tx = &recordedTx{helo: s.c.Hostname(), from: from}
	if opts != nil {
		s.tx.opts = *opts
	}
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.f.mu.Lock()
	hook := s.f.onRcpt
	s.f.mu.Unlock()
	if hook != nil {
		if err := s.f.do(s.c, hook(to)); err != nil {
			return err
		}
	}
	s.tx.rcpts = append(s.tx.rcpts, to)
	return nil
}

func (s *fakeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.mu.Lock()
	hook := s.f.onData
	s.f.mu.Unlock()
	if hook != nil {
		if err := s.f.do(s.c, hook(b)); err != nil {
			return err
		}
	}
	s.tx.data = b
	s.f.mu.Lock()
	if !s.f.discard {
		s.f.txs = append(s.f.txs, *s.tx)
	}
	s.f.mu.Unlock()
	s.tx = nil
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as FAKE123"}
}

func (s *fakeSession) Reset()        { s.tx = nil }
func (s *fakeSession) Logout() error { return nil }

// loginServer is a minimal server side of AUTH LOGIN (go-sasl has none).
type loginServer struct {
	check func(u, p string) error
	user  string
	step  int
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.step++
	switch l.step {
	case 1:
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		l.user = string(resp)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.user = string(resp)
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// recListener counts open server connections and records plaintext input.
type recListener struct {
	net.Listener
	f *fakeUpstream
}

func (l *recListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.f.open.Add(1)
	rc := &recConn{Conn: c, f: l.f}
	l.f.mu.Lock()
	l.f.conns = append(l.f.conns, rc)
	l.f.mu.Unlock()
	return rc, nil
}

type recConn struct {
	net.Conn
	f      *fakeUpstream
	mu     sync.Mutex
	in     bytes.Buffer
	closed sync.Once
}

func (c *recConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.in.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recConn) Close() error {
	c.closed.Do(func() { c.f.open.Add(-1) })
	return c.Conn.Close()
}

var smtpVerbs = map[string]bool{"EHLO": true, "HELO": true, "MAIL": true, "RCPT": true, "DATA": true,
	"RSET": true, "QUIT": true, "NOOP": true, "AUTH": true, "STARTTLS": true}

func (c *recConn) verbs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(c.in.Bytes()))
	for sc.Scan() {
		w, _, _ := strings.Cut(sc.Text(), " ")
		w = strings.TrimSpace(strings.ToUpper(w))
		if smtpVerbs[w] {
			out = append(out, w)
		}
	}
	return out
}

type testLogger struct{ t testing.TB }

func (l testLogger) Printf(format string, v ...any) { l.t.Logf("fake upstream: "+format, v...) }
func (l testLogger) Println(v ...any)               { l.t.Log(append([]any{"fake upstream:"}, v...)...) }

func slogFor(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(peertest.LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// cfgFor is a plaintext config for f with short timeouts.
func cfgFor(name, addr string) Config {
	return Config{Name: name, Address: addr, TLS: TLSNone,
		ConnectTimeout: "5s", CommandTimeout: "5s", DataTimeout: "5s"}
}

// newTestRouter builds a Router and registers the leak check: after
// Close, no connection is open on our side, none idle, and every fake
// upstream has seen all its connections closed (maddy's CheckSMTPConnLeak).
func newTestRouter(t testing.TB, cfgs []Config, fakes ...*fakeUpstream) *Router {
	t.Helper()
	r, err := NewRouter(cfgs, WithLogger(slogFor(t)), WithHostname("mailgate.test"))
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	t.Cleanup(func() { checkLeaks(t, r, fakes...) })
	return r
}

func checkLeaks(t testing.TB, r *Router, fakes ...*fakeUpstream) {
	t.Helper()
	for _, f := range fakes {
		f.releaseStalls()
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if st := r.Stats(); st != (Stats{}) {
		t.Errorf("leak: after Close Stats = %+v, want zero", st)
	}
	for _, f := range fakes {
		deadline := time.Now().Add(5 * time.Second)
		for f.open.Load() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := f.open.Load(); n != 0 {
			t.Errorf("leak: upstream %s still has %d open connections after Close", f.addr, n)
		}
	}
}

// msg returns a CRLF message of about size bytes.
func msg(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n\r\n")
	line := strings.Repeat("x", 70) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// relay runs one transaction and fails the test on any error.
func relay(t testing.TB, r *Router, from string, to []string, body []byte) *Reply {
	t.Helper()
	ctx := context.Background()
	tx, err := r.Begin(ctx, "", from, nil)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer tx.Abort()
	for _, rc := range to {
		if err := tx.Rcpt(ctx, rc, nil); err != nil {
			t.Fatalf("Rcpt %s: %v", rc, err)
		}
	}
	rep, err := tx.Data(ctx, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("Data: %v", err)
	}
	return rep
}

// selfSigned returns a server TLS config for 127.0.0.1/localhost and the
// path of its certificate as a PEM CA file.
func selfSigned(t testing.TB) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "upstream.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, caFile
}
