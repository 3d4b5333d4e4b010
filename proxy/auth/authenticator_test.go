package auth

import (
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

// The users of the SMTP-level tests.
const (
	testUser     = "alice@example.com"
	testPassword = "Tr0ub4dor&3 correct horse"
)

// testEnv is a real go-smtp server in-process whose session authenticates
// through an Authenticator, as the proxy's session does.
type testEnv struct {
	auth *Authenticator
	addr string

	mu        sync.Mutex
	successes []string
	failures  int
}

func (e *testEnv) record(user string, failed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if failed {
		e.failures++
	} else {
		e.successes = append(e.successes, user)
	}
}

func (e *testEnv) counts() ([]string, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.successes...), e.failures
}

// NewSession implements smtp.Backend.
func (e *testEnv) NewSession(c *smtp.Conn) (smtp.Session, error) {
	ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String())
	if err != nil {
		return nil, err
	}
	return &testSession{env: e, remote: ap.Addr()}, nil
}

type testSession struct {
	env    *testEnv
	remote netip.Addr
}

var _ smtp.AuthSession = (*testSession)(nil)

func (s *testSession) AuthMechanisms() []string { return s.env.auth.Mechanisms() }
func (s *testSession) Auth(mech string) (sasl.Server, error) {
	return s.env.auth.Server(mech, s.remote,
		func(user string) { s.env.record(user, false) },
		func() { s.env.record("", true) })
}
func (s *testSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *testSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *testSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (s *testSession) Reset()                               {}
func (s *testSession) Logout() error                        { return nil }

// startEnv writes a users file, builds an Authenticator with cfg (its
// UsersFile is filled in) and opts, and serves SMTP on a free loopback port
// until the test ends.
func startEnv(t *testing.T, cfg Config, opts ...Option) *testEnv {
	t.Helper()
	cfg.UsersFile = writeFile(t, "users", testUser+":"+mustArgon2id(t, testPassword)+"\n"+
		"bob@example.com:"+mustBcrypt(t, "bob's password", "2y")+"\n")
	a, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{auth: a}
	srv := smtp.NewServer(env)
	srv.Domain = "mailgate.test"
	srv.AllowInsecureAuth = true // plaintext loopback only; TLS is the proxy's job
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		// Close the listener too: if Serve has not registered it yet,
		// srv.Close alone would leave Serve blocked in Accept.
		srv.Close()
		ln.Close()
		<-done
	})
	return env
}

// client is a raw SMTP client so tests see the exact replies.
type client struct {
	t *testing.T
	c *textproto.Conn
}

func dial(t *testing.T, env *testEnv) *client {
	t.Helper()
	c, err := textproto.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c}
	if code, _ := cl.read(); code != 220 {
		t.Fatalf("greeting %d", code)
	}
	if code, msg := cl.cmd("EHLO client.test"); code != 250 || !strings.Contains(msg, "AUTH PLAIN LOGIN") {
		t.Fatalf("EHLO: %d %q", code, msg)
	}
	return cl
}

func (c *client) read() (int, string) {
	c.t.Helper()
	code, msg, err := c.c.ReadResponse(0)
	if err != nil && code == 0 {
		c.t.Fatalf("read reply: %v", err)
	}
	return code, msg
}

func (c *client) cmd(line string) (int, string) {
	c.t.Helper()
	if err := c.c.PrintfLine("%s", line); err != nil {
		c.t.Fatal(err)
	}
	return c.read()
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// reply formats a reply as "code text" for comparisons.
func reply(code int, msg string) string { return strconv.Itoa(code) + " " + msg }

func smtpReply(e *smtp.SMTPError) string {
	return reply(e.Code, strconv.Itoa(e.EnhancedCode[0])+"."+strconv.Itoa(e.EnhancedCode[1])+"."+strconv.Itoa(e.EnhancedCode[2])+" "+e.Message)
}

var (
	reply235     = "235 2.0.0 Authentication succeeded"
	reply535     = smtpReply(ErrAuthFailed)
	reply501     = smtpReply(ErrMalformedAuth)
	reply454     = smtpReply(ErrTooManyFailures)
	userChal     = "334 " + b64("Username:")
	passwordChal = "334 " + b64("Password:")
)

func TestAuthenticatorSMTP(t *testing.T) {
	// Each case is a dialogue on a fresh server: lines sent and the
	// reply each must get.
	type exch struct{ send, want string }
	cases := []struct {
		name          string
		dialogue      []exch
		wantSuccesses []string
		wantFailures  int
	}{
		{"plain_initial_response", []exch{
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPassword), reply235},
		}, []string{testUser}, 0},
		{"plain_after_empty_challenge", []exch{
			{"AUTH PLAIN", "334 "},
			{b64("\x00" + testUser + "\x00" + testPassword), reply235},
		}, []string{testUser}, 0},
		{"plain_user_case_folded", []exch{
			{"AUTH PLAIN " + b64("\x00ALICE@example.com\x00"+testPassword), reply235},
		}, []string{testUser}, 0},
		{"login_challenges", []exch{
			{"AUTH LOGIN", userChal},
			{b64(testUser), passwordChal},
			{b64(testPassword), reply235},
		}, []string{testUser}, 0},
		{"login_initial_response", []exch{
			{"AUTH LOGIN " + b64(testUser), passwordChal},
			{b64(testPassword), reply235},
		}, []string{testUser}, 0},
		{"bcrypt_user", []exch{
			{"auth plain " + b64("\x00bob@example.com\x00bob's password"), reply235},
		}, []string{"bob@example.com"}, 0},
		{"wrong_password", []exch{
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00wrong"), reply535},
		}, nil, 1},
		{"unknown_user_same_reply", []exch{
			{"AUTH PLAIN " + b64("\x00nobody@example.com\x00"+testPassword), reply535},
			{"AUTH LOGIN " + b64("nobody@example.com"), passwordChal},
			{b64(testPassword), reply535},
		}, nil, 2},
		{"plain_authzid_mismatch", []exch{
			{"AUTH PLAIN " + b64("bob@example.com\x00"+testUser+"\x00"+testPassword), reply535},
		}, nil, 1},
		{"malformed_plain", []exch{
			{"AUTH PLAIN " + b64(testUser+"\x00"+testPassword), reply501},
		}, nil, 1},
		{"malformed_login_empty_user", []exch{
			{"AUTH LOGIN", userChal},
			{"=", reply501},
		}, nil, 1},
		{"unknown_mechanism", []exch{
			{"AUTH CRAM-MD5", "504 5.7.4 Unsupported authentication mechanism"},
		}, nil, 0},
		{"cancelled", []exch{
			{"AUTH LOGIN", userChal},
			{"*", "501 5.0.0 Negotiation cancelled"},
		}, nil, 0},
		{"retry_after_failure", []exch{
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00nope"), reply535},
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPassword), reply235},
		}, []string{testUser}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := startEnv(t, Config{})
			cl := dial(t, env)
			for i, x := range c.dialogue {
				if got := reply(cl.cmd(x.send)); got != x.want {
					t.Fatalf("exchange %d: reply %q, want %q", i, got, x.want)
				}
			}
			cl.cmd("QUIT")
			succ, fails := env.counts()
			if strings.Join(succ, ",") != strings.Join(c.wantSuccesses, ",") || fails != c.wantFailures {
				t.Errorf("successes %q failures %d, want %q %d", succ, fails, c.wantSuccesses, c.wantFailures)
			}
		})
	}
}

func TestAuthenticatorLimits(t *testing.T) {
	t.Run("limiter_per_ip", func(t *testing.T) {
		env := startEnv(t, Config{IPFailures: 2, UserFailures: 100})
		cl := dial(t, env)
		for _, u := range []string{"x@example.com", "y@example.com"} {
			if got := reply(cl.cmd("AUTH PLAIN " + b64("\x00"+u+"\x00guess"))); got != reply535 {
				t.Fatalf("failure: %q", got)
			}
		}
		// Over the limit: even the right password gets 454, before any
		// credentials are read, and on a new connection too.
		if got := reply(cl.cmd("AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPassword))); got != reply454 {
			t.Errorf("over limit: %q, want %q", got, reply454)
		}
		if got := reply(dial(t, env).cmd("AUTH LOGIN")); got != reply454 {
			t.Errorf("new connection over limit: %q, want %q", got, reply454)
		}
		if succ, fails := env.counts(); len(succ) != 0 || fails != 4 {
			t.Errorf("successes %q failures %d; want none and 4 (throttled attempts count for the session)", succ, fails)
		}
	})
	t.Run("limiter_per_user", func(t *testing.T) {
		// The address limit is high; the per-user limit stops guessing
		// one account's password.
		env := startEnv(t, Config{IPFailures: 100, UserFailures: 2})
		cl := dial(t, env)
		for range 2 {
			cl.cmd("AUTH PLAIN " + b64("\x00"+testUser+"\x00guess"))
		}
		if got := reply(cl.cmd("AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPassword))); got != reply454 {
			t.Errorf("user over limit: %q, want %q", got, reply454)
		}
		if got := reply(cl.cmd("AUTH PLAIN " + b64("\x00bob@example.com\x00bob's password"))); got != reply235 {
			t.Errorf("another user from the same address: %q, want %q", got, reply235)
		}
	})
}

// allowAll is a Limiter that never limits.
type allowAll struct{}

func (allowAll) Allow(netip.Addr, string) bool { return true }
func (allowAll) Fail(netip.Addr, string)       {}
func (allowAll) Succeed(netip.Addr, string)    {}

func TestAuthenticatorOptions(t *testing.T) {
	t.Run("custom_limiter_used", func(t *testing.T) {
		l := NewMemoryLimiter(MemoryLimiterConfig{IPFailures: 1})
		env := startEnv(t, Config{IPFailures: 100}, WithLimiter(l))
		cl := dial(t, env)
		cl.cmd("AUTH PLAIN " + b64("\x00"+testUser+"\x00guess"))
		if got := reply(cl.cmd("AUTH LOGIN")); got != reply454 {
			t.Errorf("custom limiter ignored: %q", got)
		}
	})
	t.Run("invalid_config", func(t *testing.T) {
		if _, err := New(Config{}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New(empty) = %v, want ErrInvalidConfig", err)
		}
	})
	t.Run("bad_users_file", func(t *testing.T) {
		_, err := New(Config{UsersFile: writeFile(t, "users", "u:{PLAIN}x\n")})
		if !errors.Is(err, ErrUnsupportedScheme) {
			t.Errorf("New = %v, want ErrUnsupportedScheme", err)
		}
	})
	t.Run("reload_swaps_and_keeps_old_on_error", func(t *testing.T) {
		path := writeFile(t, "users", "old@example.com:"+mustBcrypt(t, "pw", "2y")+"\n")
		a, err := New(Config{UsersFile: path}, WithLimiter(allowAll{}))
		if err != nil {
			t.Fatal(err)
		}
		write := func(content string) {
			t.Helper()
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write("new@example.com:" + mustBcrypt(t, "pw", "2y") + "\n")
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
		if _, ok := a.users.Load().Verify("new@example.com", "pw"); !ok {
			t.Error("reloaded user refused")
		}
		if _, ok := a.users.Load().Verify("old@example.com", "pw"); ok {
			t.Error("removed user still accepted")
		}
		write("bad line\n")
		if err := a.Reload(); err == nil {
			t.Fatal("bad file reloaded")
		}
		if _, ok := a.users.Load().Verify("new@example.com", "pw"); !ok {
			t.Error("failed reload dropped the users in force")
		}
	})
	t.Run("mechanisms", func(t *testing.T) {
		env := startEnv(t, Config{})
		if got := strings.Join(env.auth.Mechanisms(), " "); got != "PLAIN LOGIN" {
			t.Errorf("Mechanisms = %q", got)
		}
		if env.auth.MaxFailures() != DefaultMaxFailures {
			t.Errorf("MaxFailures = %d", env.auth.MaxFailures())
		}
	})
}

// TestPasswordNeverLogged captures every log record at debug level through
// successes, failures and malformed input on both mechanisms, and checks
// that no password and no AUTH payload (raw or base64) appears.
func TestPasswordNeverLogged(t *testing.T) {
	t.Run("password_never_logged", func(t *testing.T) {
		var buf peertest.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		env := startEnv(t, Config{}, WithLogger(log))
		const wrong = "Wr0ng-Passw0rd-Guess"
		plainOK := "\x00" + testUser + "\x00" + testPassword
		plainBad := "\x00" + testUser + "\x00" + wrong
		malformed := testUser + "\x00" + testPassword
		cl := dial(t, env)
		cl.cmd("AUTH PLAIN " + b64(plainBad))
		cl.cmd("AUTH PLAIN " + b64(malformed))
		cl.cmd("AUTH LOGIN " + b64(testUser))
		cl.cmd(b64(wrong))
		cl.cmd("AUTH PLAIN " + b64(plainOK))
		cl2 := dial(t, env)
		cl2.cmd("AUTH LOGIN")
		cl2.cmd(b64(testUser))
		cl2.cmd(b64(testPassword))

		logs := buf.String()
		for _, secret := range []string{testPassword, wrong, b64(testPassword), b64(wrong),
			b64(plainOK), b64(plainBad), b64(malformed), "Tr0ub4dor"} {
			if strings.Contains(logs, secret) {
				t.Errorf("log contains secret %q:\n%s", secret, logs)
			}
		}
		// The log is not simply empty: it names the user and outcomes.
		for _, want := range []string{"user=" + testUser, "outcome=success", "outcome=invalid_credentials", "outcome=malformed", "mechanism=LOGIN"} {
			if !strings.Contains(logs, want) {
				t.Errorf("log lacks %q:\n%s", want, logs)
			}
		}
	})
}

// TestSwaks authenticates with swaks, a client no one here wrote.
func TestSwaks(t *testing.T) {
	swaks := peertest.Path(t, "swaks")
	env := startEnv(t, Config{})
	host, port, _ := net.SplitHostPort(env.addr)
	cases := []struct {
		name, mech, user, pass string
		wantOK                 bool
		wantReply              string
	}{
		{"plain_ok", "PLAIN", testUser, testPassword, true, "235 2.0.0"},
		{"login_ok", "LOGIN", testUser, testPassword, true, "235 2.0.0"},
		{"plain_wrong", "PLAIN", testUser, "nope", false, reply535},
		{"login_unknown", "LOGIN", "nobody@example.com", testPassword, false, reply535},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := exec.Command(swaks, "--server", host, "--port", port,
				"--ehlo", "client.test", "--auth", c.mech,
				"--auth-user", c.user, "--auth-password", c.pass,
				"--quit-after", "AUTH", "--timeout", "10").CombinedOutput()
			if (err == nil) != c.wantOK {
				t.Errorf("swaks err = %v, want ok=%v\n%s", err, c.wantOK, out)
			}
			if !strings.Contains(string(out), c.wantReply) {
				t.Errorf("swaks output lacks %q:\n%s", c.wantReply, out)
			}
		})
	}
}
