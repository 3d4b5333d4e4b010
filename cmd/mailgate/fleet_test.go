package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

const (
	fleetPassword = "fleet test password"
	// fleetPolling is the instances' bundle polling interval: a published
	// bundle is in force everywhere within it (plus a download and a
	// compile, fleetActivationSlack).
	fleetPolling         = time.Second
	fleetActivationSlack = 2 * time.Second
)

// fleet is examples/fleet/run.sh running with this test binary as
// mailgate.
type fleet struct {
	dir, front string
	smtp       []string // each instance's own SMTP address (mg1, mg2, mg3)
	env        []string // run.sh's environment, for publish.sh
	out        *peertest.Buffer
}

// startFleet runs examples/fleet/run.sh on free loopback ports with sink
// as the upstream, and waits until HAProxy sees all three instances UP.
func startFleet(t *testing.T, sink string) *fleet {
	t.Helper()
	ports := func(n int) string {
		var p []string
		for range n {
			p = append(p, strconv.Itoa(peertest.FreePort(t)))
		}
		return strings.Join(p, " ")
	}
	f := &fleet{dir: t.TempDir(), out: &peertest.Buffer{}}
	frontPort, smtpPorts := ports(1), ports(3)
	f.front = "127.0.0.1:" + frontPort
	for _, p := range strings.Fields(smtpPorts) {
		f.smtp = append(f.smtp, "127.0.0.1:"+p)
	}
	f.env = append(os.Environ(),
		"MAILGATE="+os.Args[0], "MAILGATE_TEST_RUN_MAIN=1",
		"FLEET_DIR="+f.dir, "FLEET_FRONT_PORT="+frontPort, "FLEET_REDIS_PORT="+ports(1),
		"FLEET_UPSTREAM="+sink, "FLEET_SMTP_PORTS="+smtpPorts, "FLEET_METRICS_PORTS="+ports(3),
		"FLEET_BUNDLE_PORT="+ports(1), "FLEET_BUNDLE_POLLING="+fleetPolling.String(),
		"FLEET_PASSWORD="+fleetPassword)
	t.Cleanup(func() { // runs after run.sh has stopped
		if t.Failed() {
			t.Logf("run.sh:\n%s", f.out.String())
			for _, l := range []string{"mg1.log", "mg2.log", "mg3.log", "haproxy.log", "bundle-server.log"} {
				b, _ := os.ReadFile(filepath.Join(f.dir, l))
				t.Logf("%s:\n%s", l, b)
			}
		}
	})
	cmd := exec.Command("../../examples/fleet/run.sh")
	cmd.Env = f.env
	cmd.Stdout, cmd.Stderr = f.out, f.out
	peertest.Start(t, cmd, 30*time.Second) // its own process group: stopped whole
	// UP means /readyz said 200: the instance has its first bundle.
	sock := filepath.Join(f.dir, "haproxy.sock")
	for _, s := range []string{"mg1", "mg2", "mg3"} {
		waitServer(t, sock, "mailgate", s, "UP")
	}
	return f
}

func waitServer(t *testing.T, sock, backend, server, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if last = haproxyStatus(sock, backend, server); last == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("HAProxy server %s/%s is %q, want %q", backend, server, last, want)
}

// submit sends one message through the fleet as user and returns swaks'
// output and exit code (0: the message got 250).
func (f *fleet) submit(t *testing.T, user, password, subject string) (string, int) {
	t.Helper()
	return peertest.Swaks(t, "--server", f.front, "--auth", "PLAIN", "--auth-user", user,
		"--auth-password", password, "--from", user, "--to", "bob@example.net",
		"--header", "From: "+user, "--header", "Subject: "+subject, "--timeout", "20")
}

// rcptVia opens a transaction as alice on instance n (1-based) itself,
// behind HAProxy's back, sending the PROXY v2 header HAProxy would send,
// and quits after RCPT: the policy's verdict on rcpt, nothing delivered.
// It returns swaks' output and exit code (0: RCPT got 250).
func (f *fleet) rcptVia(t *testing.T, n int, rcpt string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(f.smtp[n-1])
	if err != nil {
		t.Fatal(err)
	}
	return peertest.Swaks(t, "--server", f.smtp[n-1], "--proxy-version", "2", "--proxy-family", "AF_INET",
		"--proxy-source", "192.0.2.7", "--proxy-source-port", "40000", "--proxy-dest", host, "--proxy-dest-port", port,
		"--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password", fleetPassword,
		"--from", "alice@example.com", "--to", rcpt, "--quit-after", "RCPT", "--timeout", "20")
}

// publish signs policyDir into the fleet's bundle server with
// examples/fleet/publish.sh, with run.sh's key unless signingKey names
// another.
func (f *fleet) publish(t *testing.T, policyDir, revision, signingKey string) {
	t.Helper()
	cmd := exec.Command("../../examples/fleet/publish.sh", policyDir, revision)
	cmd.Env = f.env
	if signingKey != "" {
		cmd.Env = append(slices.Clip(cmd.Env), "FLEET_SIGNING_KEY="+signingKey)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("publish.sh %s %s: %v\n%s", policyDir, revision, err, out)
	}
}

// logSizes returns the current size of each instance's log.
func (f *fleet) logSizes(t *testing.T) []int64 {
	t.Helper()
	var sizes []int64
	for n := 1; n <= 3; n++ {
		fi, err := os.Stat(filepath.Join(f.dir, fmt.Sprintf("mg%d.log", n)))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fi.Size())
	}
	return sizes
}

// logLine returns the first line of instance n's log past offset that
// holds every part.
func (f *fleet) logLine(n int, offset int64, parts ...string) (string, bool) {
	b, _ := os.ReadFile(filepath.Join(f.dir, fmt.Sprintf("mg%d.log", n)))
	if int64(len(b)) <= offset {
		return "", false
	}
	for _, line := range strings.Split(string(b[offset:]), "\n") {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			return line, true
		}
	}
	return "", false
}

// waitLogLine waits until instance n's log, past offset, has a line
// holding every part, and returns the time that line records.
func (f *fleet) waitLogLine(t *testing.T, n int, offset int64, parts ...string) time.Time {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if line, ok := f.logLine(n, offset, parts...); ok {
			var rec struct{ Time time.Time }
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("mg%d.log: %v: %s", n, err, line)
			}
			return rec.Time
		}
		if time.Now().After(deadline) {
			t.Fatalf("mg%d.log: no line with %q", n, parts)
		}
	}
}

// fleetPolicyRollout drives the fleet's policy through its bundle server:
// the first bundle (examples/fleet/policy, revision 1) decides on every
// instance; a new signed bundle is in force on all three within the
// polling interval; a bundle signed with another key is refused by all
// three and the previous policy keeps deciding. Every instance is asked
// directly, not through HAProxy, so none can hide behind another.
func fleetPolicyRollout(t *testing.T, f *fleet) {
	t.Helper()
	const blocked = "550 5.7.1 mail to %s is not allowed by the fleet policy"
	refused := func(n int, domain string) {
		t.Helper()
		out, code := f.rcptVia(t, n, "x@"+domain)
		if want := fmt.Sprintf(blocked, domain); code == 0 || !strings.Contains(out, want) {
			t.Fatalf("mg%d, RCPT x@%s: exit %d, want %q\n%s", n, domain, code, want, out)
		}
	}
	allowed := func(n int, domain string) {
		t.Helper()
		if out, code := f.rcptVia(t, n, "x@"+domain); code != 0 {
			t.Fatalf("mg%d, RCPT x@%s: exit %d, want 250\n%s", n, domain, code, out)
		}
	}

	// Revision 1, the example's policy/: blocked.example only.
	for n := 1; n <= 3; n++ {
		refused(n, "blocked.example")
		allowed(n, "incident.example")
	}

	// Revision 2 adds incident.example, published while the fleet runs.
	rego, err := os.ReadFile("../../examples/fleet/policy/mailgate.rego")
	if err != nil {
		t.Fatal(err)
	}
	pol := t.TempDir()
	writeFile(t, filepath.Join(pol, "mailgate.rego"), string(rego))
	writeFile(t, filepath.Join(pol, "data.json"), `{"blocked_domains": ["blocked.example", "incident.example"]}`)
	offsets := f.logSizes(t)
	f.publish(t, pol, "2", "")
	// Published when the bundle file took its place (written, then renamed).
	fi, err := os.Stat(filepath.Join(f.dir, "bundles", "mail.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	published := fi.ModTime()
	for n := 1; n <= 3; n++ {
		took := f.waitLogLine(t, n, offsets[n-1], `"msg":"policy bundle activated"`, `"revision":"2"`).Sub(published)
		t.Logf("mg%d: revision 2 in force %v after publishing", n, took.Round(time.Millisecond))
		if took > fleetPolling+fleetActivationSlack {
			t.Errorf("mg%d: revision 2 in force %v after publishing; polling is %v", n, took, fleetPolling)
		}
	}
	for n := 1; n <= 3; n++ {
		refused(n, "incident.example")
		refused(n, "blocked.example")
		f.waitLogLine(t, n, offsets[n-1], `"msg":"transaction"`, `"policy_revision":"rego:fleet=2"`)
	}

	// Revision 3, signed with a key the instances do not trust, would
	// unblock everything: every instance refuses it and keeps revision 2.
	otherKey, _ := peertest.RSAKeyPair(t, t.TempDir(), "signing")
	writeFile(t, filepath.Join(pol, "data.json"), `{"blocked_domains": []}`)
	offsets = f.logSizes(t)
	f.publish(t, pol, "3", otherKey)
	for n := 1; n <= 3; n++ {
		f.waitLogLine(t, n, offsets[n-1], `"msg":"policy bundle not activated; keeping the running policy"`, `"revision":"2"`, "verif")
	}
	for n := 1; n <= 3; n++ {
		refused(n, "incident.example")
		allowed(n, "example.net")
		f.waitLogLine(t, n, offsets[n-1], `"msg":"transaction"`, `"policy_revision":"rego:fleet=2"`)
	}
	for n := 1; n <= 3; n++ {
		if _, ok := f.logLine(n, offsets[n-1], `"msg":"policy bundle activated"`, `"revision":"3"`); ok {
			t.Errorf("mg%d activated the bundle signed with another key", n)
		}
	}
}

// TestFleetExample runs examples/fleet: three instances behind HAProxy
// with a shared Redis, their policy from a bundle server. A new signed
// bundle is in force on every instance within the polling interval; one
// signed with another key is refused everywhere (fleetPolicyRollout).
// Then, while clients submit, one instance gets SIGTERM:
// HAProxy takes it out through /readyz, no message that got 250 is lost
// or doubled, and every message is delivered once (clients retry a 4xx or
// a dropped connection, as mail clients do). AUTH lockouts and quotas hold
// across instances.
func TestFleetExample(t *testing.T) {
	peertest.Require(t, "haproxy", "redis-server", "smtp-sink", "swaks", "python3", "openssl")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	f := startFleet(t, sink.Addr())
	fleetPolicyRollout(t, f)

	const clients, perClient = 3, 8
	var (
		mu       sync.Mutex
		accepted = map[string]int{} // subject -> 250s received
		wg       sync.WaitGroup
		sent     = make(chan struct{}, clients*perClient)
	)
	for c := range clients {
		wg.Go(func() {
			for i := range perClient {
				subject := fmt.Sprintf("fleet %d-%d", c, i)
				for try := 0; ; try++ {
					out, code := f.submit(t, "alice@example.com", fleetPassword, subject)
					if code == 0 {
						mu.Lock()
						accepted[subject]++
						mu.Unlock()
						break
					}
					if try == 20 {
						t.Errorf("%s: never accepted:\n%s", subject, out)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				sent <- struct{}{}
			}
		})
	}
	// A third of the way in, stop instance 2.
	for range clients * perClient / 3 {
		<-sent
	}
	pid, err := os.ReadFile(filepath.Join(f.dir, "mg2.pid"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	if err := syscall.Kill(n, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitServer(t, filepath.Join(f.dir, "haproxy.sock"), "mailgate", "mg2", "DOWN")
	wg.Wait()

	delivered := map[string]int{}
	for _, m := range sink.Messages() {
		for _, l := range strings.Split(string(m.Data), "\r\n") {
			if s, ok := strings.CutPrefix(l, "Subject: "); ok {
				delivered[s]++
			}
		}
	}
	if len(accepted) != clients*perClient {
		t.Errorf("%d messages accepted, want %d", len(accepted), clients*perClient)
	}
	for s, n := range accepted {
		if n != 1 || delivered[s] != 1 {
			t.Errorf("%s: accepted %d times, delivered %d times", s, n, delivered[s])
		}
	}
	if len(delivered) != len(accepted) {
		t.Errorf("delivered %d distinct messages, accepted %d", len(delivered), len(accepted))
	}

	// Every instance took part; instance 2 went not-ready before closing,
	// then finished.
	mg2log := filepath.Join(f.dir, "mg2.log")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if b, _ := os.ReadFile(mg2log); bytes.Contains(b, []byte(`"msg":"stopped"`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mg2 did not stop after SIGTERM")
		}
	}
	for _, l := range []string{"mg1.log", "mg2.log", "mg3.log"} {
		b, err := os.ReadFile(filepath.Join(f.dir, l))
		if err != nil {
			t.Fatal(err)
		}
		n := bytes.Count(b, []byte(`"outcome":"relayed"`))
		t.Logf("%s relayed %d", l, n)
		if n == 0 {
			t.Errorf("%s relayed nothing", l)
		}
		if l == "mg2.log" && (!bytes.Contains(b, []byte("shutting down: not ready")) || !bytes.Contains(b, []byte(`"msg":"stopped"`))) {
			t.Errorf("mg2 did not drain through readiness:\n%s", b)
		}
	}

	// Quotas in Redis: trial@ may send 2 an hour, whichever instance
	// (round robin over the two left) takes the message.
	for i := range 2 {
		if out, code := f.submit(t, "trial@example.com", fleetPassword, fmt.Sprintf("trial %d", i)); code != 0 {
			t.Fatalf("trial message %d: exit %d\n%s", i, code, out)
		}
	}
	if out, _ := f.submit(t, "trial@example.com", fleetPassword, "trial 2"); !strings.Contains(out, "451 4.7.1") {
		t.Errorf("third trial message, want 451 4.7.1 (quota):\n%s", out)
	}

	// AUTH lockout in Redis: three failures for bob@ (user_failures = 3),
	// spread over the instances, lock bob out on every instance.
	for range 3 {
		if out, _ := f.submit(t, "bob@example.com", "wrong", "x"); !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("wrong password: want 535\n%s", out)
		}
	}
	for range 2 { // both instances still up
		if out, _ := f.submit(t, "bob@example.com", fleetPassword, "locked"); !strings.Contains(out, "454 4.7.0") {
			t.Errorf("bob after 3 failures, right password: want 454 4.7.0\n%s", out)
		}
	}
	if bytes.Contains([]byte(f.out.String()), []byte(fleetPassword)) {
		t.Error("the password appears in run.sh's output")
	}
}
