package proxy_test

import (
	"bufio"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/proxy"
)

// Slow clients (issue 10). A client that sends one byte every few seconds
// used to keep its connection forever, because every byte re-armed the
// read deadline. The timeouts here are short; the bounds the tests check
// are many times longer, so a busy machine does not make them flake.

const (
	// Long enough that a test's own setup (EHLO, STARTTLS, TLS) never
	// trips them on a loaded machine.
	slowCommandTimeout = time.Second
	slowDataTimeout    = time.Second
	slowLoginTimeout   = time.Second
	trickleInterval    = 40 * time.Millisecond
	// giveUp is how long a test waits for the server to end a trickling
	// connection: before the fix it never did.
	giveUp = 5 * time.Second
)

func slowEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return newEnv(t, append([]envOption{func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.CommandTimeout = slowCommandTimeout.String()
		c.Limits.DataTimeout = slowDataTimeout.String()
	}}, opts...)...)
}

// trickle writes one byte of pattern (repeated) every interval until the
// write fails or stop is closed.
func trickle(c net.Conn, pattern string, interval time.Duration, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte{pattern[i%len(pattern)]}); err != nil {
			return
		}
	}
}

// endOf reads from r until the server closes the connection or giveUp
// passes, and returns what the server said and how long it took; ended
// is false when the connection was still open at giveUp.
func endOf(c net.Conn, r *bufio.Reader) (said string, took time.Duration, ended bool) {
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(giveUp))
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := r.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			var ne net.Error
			return b.String(), time.Since(start), !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// expectCutOff trickles pattern into c and checks the server ends the
// connection, with a reply starting with want (if not empty), well before
// giveUp.
func expectCutOff(t *testing.T, c *rawClient, pattern string, want string) {
	t.Helper()
	stop := make(chan struct{})
	defer close(stop)
	go trickle(c.c, pattern, trickleInterval, stop)
	said, took, ended := endOf(c.c, c.r)
	if !ended {
		t.Fatalf("a client sending one byte every %v was still connected after %v (server said %q)", trickleInterval, giveUp, said)
	}
	if want != "" && !strings.HasPrefix(said, want) {
		t.Errorf("cut off after %v with %q, want a reply starting %q", took, said, want)
	}
	t.Logf("cut off after %v with %q", took.Round(time.Millisecond), strings.TrimSpace(said))
}

// TestTrickleCutOff: a client trickling one byte at a time is cut off on
// every path: command_timeout is a deadline for a whole line, a body must
// keep up with min_data_rate, and login_timeout caps everything before a
// login.
func TestTrickleCutOff(t *testing.T) {
	t.Parallel()
	e := slowEnv(t)
	t.Run("relay_command_line", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		expectCutOff(t, c, "X", "421 4.4.2")
	})
	t.Run("starttls_before_tls", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		expectCutOff(t, c, "X", "421 4.4.2")
	})
	t.Run("starttls_after_tls", func(t *testing.T) {
		t.Parallel()
		c := startTLS(t, e)
		expectCutOff(t, c, "X", "421 4.4.2")
	})
	t.Run("implicit_tls", func(t *testing.T) {
		t.Parallel()
		c := dialTLS(t, e.addr["smtps"])
		c.expect("EHLO client.test", 250)
		expectCutOff(t, c, "X", "421 4.4.2")
	})
	t.Run("auth_login_continuation", func(t *testing.T) {
		t.Parallel()
		c := startTLS(t, e)
		c.expect("AUTH LOGIN", 334)
		// The user name, base64, one byte at a time and never ended.
		expectCutOff(t, c, b64(testUser), "")
	})
	t.Run("data_body", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.expect("DATA", 354)
		c.send("From: app@example.com\r\n\r\n")
		// Complete lines, one byte every 40 ms: 25 bytes/s, far below
		// min_data_rate (500 bytes/s).
		expectCutOff(t, c, "slow body\r\n", "451 4.4.2")
		if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
			t.Fatalf("upstream got %d messages", len(msgs))
		}
	})
	t.Run("bdat_chunk", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["relay"])
		if text := c.expect("EHLO client.test", 250); !strings.Contains(text, "CHUNKING") {
			t.Skip("CHUNKING not offered")
		}
		c.expect("MAIL FROM:<app@example.com>", 250)
		c.expect("RCPT TO:<bob@example.net>", 250)
		c.send("BDAT 100000 LAST\r\nFrom: app@example.com\r\n\r\n")
		expectCutOff(t, c, "slow chunk\r\n", "4")
		if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
			t.Fatalf("upstream got %d messages", len(msgs))
		}
	})
}

// TestSlowBodyAtMinDataRate: a body that arrives slowly but above
// min_data_rate is received even though it takes several data_timeouts.
func TestSlowBodyAtMinDataRate(t *testing.T) {
	t.Parallel()
	e := slowEnv(t, func(c *proxy.Config, _ *proxy.Deps) { c.Limits.MinDataRate = 100 })
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	c.expect("MAIL FROM:<app@example.com>", 250)
	c.expect("RCPT TO:<bob@example.net>", 250)
	c.expect("DATA", 354)
	c.send("From: app@example.com\r\n\r\n")
	// 200-byte lines every 100 ms: 2,000 bytes/s for two data_timeouts.
	line := strings.Repeat("z", 198) + "\r\n"
	start := time.Now()
	for time.Since(start) < 2*slowDataTimeout {
		c.send(line)
		time.Sleep(100 * time.Millisecond)
	}
	c.send(".\r\n")
	if code, text := c.reply(); code != 250 {
		t.Fatalf("slow body above min_data_rate: %d %s, want 250", code, text)
	}
}

// TestLoginTimeout: complete lines, each well within command_timeout, do
// not keep a connection that never logs in; once logged in, the cap is
// gone.
func TestLoginTimeout(t *testing.T) {
	t.Parallel()
	// command_timeout is three times login_timeout: what cuts these
	// clients off can only be the login timeout.
	e := slowEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.LoginTimeout = slowLoginTimeout.String()
		c.Limits.CommandTimeout = (3 * slowLoginTimeout).String()
	})
	t.Run("relay_before_ehlo", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["relay"])
		expectLoginCut(t, c)
	})
	t.Run("starttls_before_tls", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["sub"])
		c.expect("EHLO client.test", 250)
		expectLoginCut(t, c)
	})
	t.Run("starttls_after_tls_before_auth", func(t *testing.T) {
		t.Parallel()
		c := startTLS(t, e)
		expectLoginCut(t, c)
	})
	t.Run("implicit_tls_before_auth", func(t *testing.T) {
		t.Parallel()
		c := dialTLS(t, e.addr["smtps"])
		c.expect("EHLO client.test", 250)
		expectLoginCut(t, c)
	})
	t.Run("logged_in_not_cut", func(t *testing.T) {
		t.Parallel()
		c := e.login(t)
		for start := time.Now(); time.Since(start) < 2*slowLoginTimeout; {
			c.expect("NOOP", 250)
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("relay_after_ehlo_not_cut", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, e.addr["relay"])
		c.expect("EHLO client.test", 250)
		for start := time.Now(); time.Since(start) < 2*slowLoginTimeout; {
			c.expect("NOOP", 250)
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// expectLoginCut sends a NOOP every 100 ms and expects 421 for the login
// timeout.
func expectLoginCut(t *testing.T, c *rawClient) {
	t.Helper()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			_ = c.c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.c.Write([]byte("NOOP\r\n")); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	for {
		code, text := c.replyWithin(giveUp - time.Since(start))
		switch code {
		case 250:
			continue
		case 0:
			if strings.Contains(text, "timeout") {
				t.Fatalf("a client that never logs in was still connected after %v", giveUp)
			}
			t.Fatalf("connection ended without a reply: %s", text)
		}
		if code != 421 || !strings.Contains(text, "Login timeout") {
			t.Fatalf("%d %s, want 421 Login timeout", code, text)
		}
		t.Logf("cut off after %v: %s", time.Since(start).Round(time.Millisecond), text)
		return
	}
}

func dialTLS(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn := dialPlain(t, addr)
	c := &rawClient{t: t, c: conn, r: newReader(conn)}
	c.tls()
	if code, text := c.reply(); code != 220 {
		t.Fatalf("greeting: %d %s", code, text)
	}
	return c
}

// TestTrickleDoesNotStarveSlots: 200 trickling connections from four
// loopback addresses (Linux routes all of 127/8 to lo) fill
// max_connections; they are cut off, so a normal client is served, and
// memory and goroutines come back down (loosely: no timing, generous
// bounds).
func TestTrickleDoesNotStarveSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("200 connections")
	}
	const perIP, ips = 50, 4
	e := newEnv(t, func(c *proxy.Config, _ *proxy.Deps) {
		c.Limits.CommandTimeout = "1s"
		c.Limits.LoginTimeout = "2s"
		c.Limits.MaxConnections = perIP * ips
		c.Limits.MaxConnectionsPerIP = perIP
	})
	baseGoroutines := runtime.NumGoroutine()
	heap0 := heapInUse()
	for wave := 1; wave <= 2; wave++ {
		waveStart := time.Now()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		held := 0
		for ip := 2; ip < 2+ips; ip++ {
			local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(ip))}
			for k := range perIP {
				d := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
				conn, err := d.Dial("tcp", e.addr["relay"])
				if err != nil {
					t.Fatalf("trickler from %v: %v", local.IP, err)
				}
				t.Cleanup(func() { conn.Close() })
				r := bufio.NewReader(conn)
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				greeting, err := r.ReadString('\n')
				if err != nil || !strings.HasPrefix(greeting, "220") {
					t.Fatalf("trickler from %v: greeting %q %v", local.IP, greeting, err)
				}
				mu.Lock()
				held++
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer conn.Close()
					if k%2 == 0 {
						// One byte every 200 ms of a line that never ends:
						// command_timeout cuts it.
						go trickle(conn, "X", 200*time.Millisecond, stop)
					} else {
						// A NOOP every 600 ms, each line well within
						// command_timeout: login_timeout cuts it.
						go trickle(conn, "NOOP\r\n", 100*time.Millisecond, stop)
					}
					// Hold on until the server lets go (or the test ends).
					for {
						if _, _, ended := endOf(conn, r); ended {
							return
						}
						select {
						case <-stop:
							return
						default:
						}
					}
				}()
			}
		}
		// Every slot is held: a normal client is turned away now (unless
		// a loaded machine took so long to connect the tricklers that the
		// first ones are gone already)...
		c := dialPlain(t, e.addr["relay"])
		code, text := (&rawClient{t: t, c: c, r: newReader(c)}).reply()
		c.Close()
		switch setup := time.Since(waveStart); {
		case code == 421:
		case setup < 500*time.Millisecond:
			t.Fatalf("wave %d: with %d slots held, a new client got %d %s, want 421", wave, held, code, text)
		default:
			t.Logf("wave %d: setup took %v; new client got %d before the tricklers were cut off", wave, setup, code)
		}
		// ...and served once the tricklers are cut off.
		served := false
		for start := time.Now(); time.Since(start) < 3*giveUp && !served; time.Sleep(100 * time.Millisecond) {
			served = tryServe(t, e.addr["relay"])
		}
		close(stop)
		if !served {
			t.Fatalf("wave %d: a normal client was not served within %v of %d trickling connections", wave, 3*giveUp, held)
		}
		wg.Wait()
	}
	// Nothing grows with the connections that came and went.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseGoroutines+10 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseGoroutines+10 {
		t.Errorf("%d goroutines after the tricklers left, %d before", n, baseGoroutines)
	}
	if heap1 := heapInUse(); heap1 > heap0+32<<20 {
		t.Errorf("heap in use grew from %d to %d bytes", heap0, heap1)
	}
}

// tryServe sends one message over the relay listener; false if the
// server turned the connection away.
func tryServe(t *testing.T, addr string) bool {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	c := &rawClient{t: t, c: conn, r: newReader(conn)}
	if code, _ := c.reply(); code != 220 {
		return false
	}
	c.expect("EHLO normal.test", 250)
	if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\nserved\r\n"); code != 250 {
		t.Fatalf("normal client: %d %s", code, text)
	}
	return true
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestSlowLimitsValidate: the new limits have defaults and refuse
// nonsense at load.
func TestSlowLimitsValidate(t *testing.T) {
	base := func() proxy.Config {
		none := "none"
		return proxy.Config{Hostname: "x", Listeners: []proxy.ListenerConfig{
			{Name: "r", Address: "127.0.0.1:25", TLS: &none, Auth: &none, TrustedNetworks: []string{"127.0.0.1"}}}}
	}
	c := base()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Limits.MinDataRate != proxy.DefaultMinDataRate {
		t.Errorf("min_data_rate default %d, want %d", c.Limits.MinDataRate, proxy.DefaultMinDataRate)
	}
	for _, tc := range []struct {
		name string
		set  func(*proxy.Limits)
		want string
	}{
		{"login_timeout_garbage", func(l *proxy.Limits) { l.LoginTimeout = "soon" }, "login_timeout"},
		{"login_timeout_zero", func(l *proxy.Limits) { l.LoginTimeout = "0s" }, "login_timeout"},
		{"min_data_rate_negative", func(l *proxy.Limits) { l.MinDataRate = -1 }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.set(&c.Limits)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error about %s", err, tc.want)
			}
		})
	}
}
