package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// The test environment of package proxy: env, a running proxy.Server with
// three listeners in front of recUpstream (a real go-smtp server in
// process that records every transaction and injects faults), and
// rawClient, a line-level SMTP client for asserting exact replies. Real
// external peers (smtp-sink, Postfix, swaks) come from internal/peertest.

// recUpstream is the upstream of the unit tests: a real go-smtp server,
// in process, recording every transaction and able to inject faults.
type recUpstream struct {
	t    *testing.T
	srv  *smtp.Server
	addr string

	mu       sync.Mutex
	conns    int
	mails    []string
	rsets    int
	messages []upMessage
	// fault injection, read under mu
	mailErr  error
	rcptErr  func(to string) error
	dataErr  error
	dropData bool
}

type upMessage struct {
	from     string
	opts     smtp.MailOptions
	rcpts    []string
	rcptOpts []smtp.RcptOptions
	data     []byte
}

// String shows a recorded message in failure output.
func (m upMessage) String() string {
	return fmt.Sprintf("from=%s rcpts=%v data=%q", m.from, m.rcpts, m.data)
}

func startUpstream(t *testing.T) *recUpstream { return startUpstreamWith(t, nil) }

// startUpstreamWith starts a recording upstream; configure, if not nil,
// changes its go-smtp server before it serves (e.g. no SMTPUTF8, DSN).
func startUpstreamWith(t *testing.T, configure func(*smtp.Server)) *recUpstream {
	t.Helper()
	u := &recUpstream{t: t}
	u.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		u.mu.Lock()
		u.conns++
		u.mu.Unlock()
		return &recSession{u: u, c: c}, nil
	}))
	u.srv.Domain = "upstream.test"
	u.srv.AllowInsecureAuth = true
	u.srv.EnableSMTPUTF8 = true
	u.srv.MaxLineLength = 0
	u.srv.ErrorLog = testLogger{t}
	if configure != nil {
		configure(u.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	go u.srv.Serve(ln)
	t.Cleanup(func() { u.srv.Close() })
	return u
}

func (u *recUpstream) set(f func(u *recUpstream)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u)
}

func (u *recUpstream) snapshot() (mails []string, msgs []upMessage, conns int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.mails...), append([]upMessage(nil), u.messages...), u.conns
}

type recSession struct {
	u        *recUpstream
	c        *smtp.Conn
	from     string
	opts     smtp.MailOptions
	rcpts    []string
	rcptOpts []smtp.RcptOptions
}

func (s *recSession) Mail(from string, opts *smtp.MailOptions) error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	s.u.mails = append(s.u.mails, from)
	s.from = from
	s.opts = smtp.MailOptions{}
	if opts != nil {
		s.opts = *opts
	}
	return s.u.mailErr
}

func (s *recSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.u.mu.Lock()
	f := s.u.rcptErr
	s.u.mu.Unlock()
	if f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	s.rcpts = append(s.rcpts, to)
	ro := smtp.RcptOptions{}
	if opts != nil {
		ro = *opts
	}
	s.rcptOpts = append(s.rcptOpts, ro)
	return nil
}

func (s *recSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.u.mu.Lock()
	derr, drop := s.u.dataErr, s.u.dropData
	s.u.mu.Unlock()
	if drop {
		s.c.Conn().Close()
		return nil
	}
	if derr != nil {
		return derr
	}
	s.u.mu.Lock()
	s.u.messages = append(s.u.messages, upMessage{from: s.from, opts: s.opts, rcpts: s.rcpts, rcptOpts: s.rcptOpts, data: b})
	s.u.mu.Unlock()
	return nil
}

func (s *recSession) Reset() {
	s.u.mu.Lock()
	s.u.rsets++
	s.u.mu.Unlock()
	s.from, s.rcpts, s.rcptOpts, s.opts = "", nil, nil, smtp.MailOptions{}
}

func (s *recSession) Logout() error { return nil }

type testLogger struct{ t *testing.T }

func (l testLogger) Printf(format string, v ...any) { l.t.Logf("upstream: "+format, v...) }
func (l testLogger) Println(v ...any)               { l.t.Log(v...) }

const (
	testUser     = "alice@example.com"
	testPassword = "correct horse battery staple"
)

// env is a running proxy with three listeners (sub: STARTTLS + AUTH,
// smtps: implicit TLS + AUTH, relay: plaintext trusted loopback without
// AUTH) in front of a recording upstream.
type env struct {
	t    *testing.T
	srv  *proxy.Server
	up   *recUpstream
	addr map[string]string
	logs *peertest.Buffer
	cfg  proxy.Config
}

type envOption func(*proxy.Config, *proxy.Deps)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return newEnvUp(t, startUpstream(t), opts...)
}

// newEnvUp is newEnv in front of the recording upstream up.
func newEnvUp(t *testing.T, up *recUpstream, opts ...envOption) *env {
	t.Helper()
	dir := t.TempDir()
	hash, err := auth.Hash(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte(testUser+":"+hash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &peertest.Buffer{}
	logger := slog.New(slog.NewJSONHandler(io.MultiWriter(logs, peertest.LogWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug}))
	authn, err := auth.New(auth.Config{UsersFile: users}.WithDefaults(), auth.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	router := newTestRouter(t, up.addr, logger)
	cert, err := proxy.SelfSigned("mailgate.test")
	if err != nil {
		t.Fatal(err)
	}
	starttls, implicit, none, none2 := "starttls", "implicit", "none", "none"
	cfg := proxy.Config{
		Hostname: "mailgate.test",
		Listeners: []proxy.ListenerConfig{
			{Name: "sub", Address: "127.0.0.1:0", TLS: &starttls},
			{Name: "smtps", Address: "127.0.0.1:0", TLS: &implicit},
			{Name: "relay", Address: "127.0.0.1:0", TLS: &none, Auth: &none2, TrustedNetworks: []string{"127.0.0.0/8"}},
		},
		Message: proxy.MessageConfig{SpoolDir: dir},
	}
	deps := proxy.Deps{
		Logger: logger,
		TLS:    proxy.NewStaticCertStore(cert).Config(),
		Auth:   authn,
		Relay:  proxy.UpstreamRelay(router),
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	srv := serveProxy(t, cfg, deps)
	return &env{t: t, srv: srv, up: up, addr: srv.Addrs(), logs: logs, cfg: cfg}
}

// newTestRouter is an upstream router to one plaintext upstream at addr.
func newTestRouter(t *testing.T, addr string, logger *slog.Logger) *upstream.Router {
	t.Helper()
	router, err := upstream.NewRouter([]upstream.Config{{Name: "up", Address: addr, TLS: "none"}},
		upstream.WithLogger(logger), upstream.WithHostname("mailgate.test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Close() })
	return router
}

// withUpstream relays to the upstream at addr (an smtp-sink, say) instead
// of the recording one.
func withUpstream(t *testing.T, addr string) envOption {
	return func(_ *proxy.Config, d *proxy.Deps) { d.Relay = proxy.UpstreamRelay(newTestRouter(t, addr, d.Logger)) }
}

// rawClient speaks SMTP byte by byte, so tests can send what no library
// client would.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	if code, text := rc.reply(); code != 220 {
		t.Fatalf("greeting: %d %s", code, text)
	}
	return rc
}

func (c *rawClient) tls() {
	c.t.Helper()
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c = tc
	c.r = bufio.NewReader(tc)
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply; code 0 means the
// connection ended.
func (c *rawClient) reply() (int, string) {
	c.t.Helper()
	return c.replyWithin(10 * time.Second)
}

// replyWithin is reply with its own read deadline. When no reply came in
// time, the code is 0 and the text contains "timeout" (net's "i/o
// timeout"); a deadline already passed reads nothing.
func (c *rawClient) replyWithin(d time.Duration) (int, string) {
	c.t.Helper()
	if d <= 0 {
		return 0, "timeout"
	}
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(append(lines, "EOF: "+err.Error()), "\n")
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			var code int
			fmt.Sscanf(line, "%d", &code)
			return code, strings.Join(lines, "\n")
		}
	}
}

func (c *rawClient) cmd(s string) (int, string) {
	c.t.Helper()
	c.send(s + "\r\n")
	return c.reply()
}

func (c *rawClient) expect(s string, want int) string {
	c.t.Helper()
	code, text := c.cmd(s)
	if code != want {
		c.t.Fatalf("%q: got %d %q, want %d", s, code, text, want)
	}
	return text
}

// closed reports whether the server closed the connection without
// sending anything more.
func (c *rawClient) closed() bool {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.r)
	if len(rest) > 0 {
		c.t.Logf("server sent more before closing: %q", rest)
		return false
	}
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// login does EHLO, STARTTLS, EHLO and AUTH PLAIN on the sub listener.
func (e *env) login(t *testing.T) *rawClient {
	t.Helper()
	c := dialRaw(t, e.addr["sub"])
	c.expect("EHLO client.test", 250)
	c.expect("STARTTLS", 220)
	c.tls()
	c.expect("EHLO client.test", 250)
	c.expect("AUTH PLAIN "+plainIR("", testUser, testPassword), 235)
	return c
}

func plainIR(authz, user, pass string) string {
	return b64(authz + "\x00" + user + "\x00" + pass)
}

const simpleMessage = "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: test\r\n\r\nHello.\r\n"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func dialPlain(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// serveProxy validates cfg, starts a Server on it and shuts it down when
// the test or benchmark ends.
func serveProxy(tb testing.TB, cfg proxy.Config, deps proxy.Deps) *proxy.Server {
	tb.Helper()
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	srv, err := proxy.New(cfg, deps)
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			tb.Errorf("Serve: %v", err)
		}
	}()
	tb.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		cancel()
		<-done
	})
	return srv
}
