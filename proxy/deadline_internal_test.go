package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// byteConn answers every Read with the next byte of data (then "X"
// forever) and records the read deadlines set on it.
type byteConn struct {
	net.Conn
	data string
	i    int
	set  []time.Time
}

func (c *byteConn) Read(b []byte) (int, error) {
	ch := byte('X')
	if c.i < len(c.data) {
		ch = c.data[c.i]
	}
	c.i++
	b[0] = ch
	return 1, nil
}
func (c *byteConn) SetReadDeadline(t time.Time) error { c.set = append(c.set, t); return nil }

// TestLineDeadlineNotExtendedByBytes: the deadline of a command line is
// set when the wait for it starts; its bytes, however many and however
// slow, never move it. The next line gets a fresh one.
func TestLineDeadlineNotExtendedByBytes(t *testing.T) {
	const timeout = 200 * time.Millisecond
	bc := &byteConn{data: "NOOP\r\n"}
	c := newClientConn(bc, netip.Addr{}, 1000, timeout, timeout)
	buf := make([]byte, 16)
	for range 6 { // "NOOP\r\n", one byte a read
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(timeout / 8)
	}
	if len(bc.set) != 1 {
		t.Fatalf("deadline set %d times while one line trickled in, want once", len(bc.set))
	}
	first := bc.set[0]
	// The next line starts after the CRLF: it gets a fresh deadline, and
	// its bytes do not extend it either.
	for range 8 {
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(timeout / 8)
	}
	if len(bc.set) != 2 || !bc.set[1].After(first) {
		t.Fatalf("deadlines %v: want one more, later, for the second line", bc.set)
	}
}

// TestLoginDeadlineCapsLines: before a login, no line deadline reaches
// past the login deadline; after it, lines get their full timeout.
func TestLoginDeadlineCapsLines(t *testing.T) {
	const timeout = time.Hour
	bc := &byteConn{data: "NOOP\r\nNOOP\r\n"}
	c := newClientConn(bc, netip.Addr{}, 1000, timeout, timeout)
	c.loginDeadline = time.Now().Add(time.Minute)
	buf := make([]byte, 16)
	for range 6 {
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if got := bc.set[len(bc.set)-1]; !got.Equal(c.loginDeadline) {
		t.Fatalf("deadline %v before login, want the login deadline %v", got, c.loginDeadline)
	}
	c.markLoggedIn()
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if got := bc.set[len(bc.set)-1]; got.Sub(c.loginDeadline) < 50*time.Minute {
		t.Fatalf("deadline %v after login, want about an hour from now", got)
	}
}

// TestBodyDeadlineCredit: a body's deadline grows by 1/min_data_rate s per
// byte, never past data_timeout from now.
func TestBodyDeadlineCredit(t *testing.T) {
	c := &clientConn{dataTimeout: 10 * time.Second, minDataRate: 1000}
	now := time.Unix(1000, 0)
	c.startBody(now)
	if want := now.Add(10 * time.Second); !c.bodyDeadline.Equal(want) {
		t.Fatalf("start: %v, want %v", c.bodyDeadline, want)
	}
	// 5 s later, 500 bytes (100 bytes/s, a tenth of the floor): +0.5 s.
	now = now.Add(5 * time.Second)
	c.creditBody(500, now)
	if want := time.Unix(1010, 0).Add(500 * time.Millisecond); !c.bodyDeadline.Equal(want) {
		t.Fatalf("slow client: %v, want %v", c.bodyDeadline, want)
	}
	// A burst cannot bank more than data_timeout ahead of now.
	c.creditBody(1<<30, now)
	if want := now.Add(10 * time.Second); !c.bodyDeadline.Equal(want) {
		t.Fatalf("burst: %v, want capped at %v", c.bodyDeadline, want)
	}
	// min_data_rate 0 would divide by zero: no credit at all.
	c.minDataRate = 0
	c.creditBody(1000, now.Add(time.Second))
	if want := now.Add(10 * time.Second); !c.bodyDeadline.Equal(want) {
		t.Fatalf("no rate: %v, want %v", c.bodyDeadline, want)
	}
}

// deadlineConn answers every Read with one line and records the read
// deadlines set on it.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (c *deadlineConn) Read(b []byte) (int, error)        { return copy(b, "NOOP\r\n"), nil }
func (c *deadlineConn) SetReadDeadline(t time.Time) error { c.set = append(c.set, t); return nil }

// TestReadDeadlineGranularity backs docs/security.md's "a silent client is cut
// off between 94 % and 100 % of the timeout": before every read the
// deadline in force is at least 15/16 of the timeout away, while reads in
// quick succession do not re-arm it; drain forces the next read to set it.
func TestReadDeadlineGranularity(t *testing.T) {
	const timeout = 320 * time.Millisecond
	dc := &deadlineConn{}
	c := newClientConn(dc, netip.Addr{}, 1000, timeout, timeout)
	buf := make([]byte, 64)
	start := time.Now()
	for i := 0; i < 40; i++ {
		before := time.Now()
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		if left := dc.set[len(dc.set)-1].Sub(before); left < timeout*15/16 {
			t.Fatalf("read %d: deadline %v away, want at least %v", i, left, timeout*15/16)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// The deadline moves about every 20 ms (1/16 of the timeout), not on
	// each of the 40 reads.
	most := int(time.Since(start)/(timeout/16)) + 2
	if n := len(dc.set); n < 2 || n > most {
		t.Errorf("deadline set %d times for 40 reads in %v, want 2..%d", n, time.Since(start), most)
	}
	n := len(dc.set)
	c.drain() // sets a deadline of now to wake the reader
	c.draining.Store(false)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if len(dc.set) != n+2 {
		t.Errorf("after drain: %d deadlines set, want the drain's and a fresh one", len(dc.set)-n)
	}
}
