package peertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultTimeout bounds every external command run by Swaks, Curl,
// PythonSMTP and DKIMVerify.
const DefaultTimeout = 60 * time.Second

// pythonPath is the Debian system interpreter: python3-dkim installs the dkim
// module for it, not for a pyenv or virtualenv python3 that may come first in
// PATH.
const pythonPath = "/usr/bin/python3"

// tool describes how to find one integration peer and which Debian package
// provides it.
type tool struct {
	bin    string   // executable name, or an absolute path
	pkg    string   // Debian package
	python string   // if set, a Python module that pythonPath must import
	node   string   // if set, a module that node must require (with NodePath)
	files  []string // files that must exist (a Java library's jars)
}

// NodePath is where Debian's node-* packages put their modules (NODE_PATH
// for node scripts that require them).
const NodePath = "/usr/share/nodejs"

// PHPMailerAutoload is Debian's PHPMailer (libphp-phpmailer) autoloader.
const PHPMailerAutoload = "/usr/share/php/libphp-phpmailer/autoload.php"

// JakartaMailClasspath is the classpath of Debian's Jakarta Mail (Java
// Mail) and its activation framework.
const JakartaMailClasspath = "/usr/share/java/jakarta-mail.jar:/usr/share/java/jakarta-activation.jar"

var tools = map[string]tool{
	"smtp-sink":        {bin: "smtp-sink", pkg: "postfix"},
	"smtp-source":      {bin: "smtp-source", pkg: "postfix"},
	"postfix":          {bin: "postfix", pkg: "postfix"},
	"postconf":         {bin: "postconf", pkg: "postfix"},
	"swaks":            {bin: "swaks", pkg: "swaks libio-socket-ssl-perl libnet-ssleay-perl libauthen-sasl-perl"},
	"curl":             {bin: "curl", pkg: "curl"},
	"python3":          {bin: "python3", pkg: "python3"},
	"python3-dkim":     {bin: pythonPath, pkg: "python3-dkim python3-nacl", python: "dkim, nacl"},
	"opendkim":         {bin: "opendkim", pkg: "opendkim"},
	"opendkim-testkey": {bin: "opendkim-testkey", pkg: "opendkim-tools"},
	"redis-server":     {bin: "redis-server", pkg: "redis-server"},
	"openssl":          {bin: "openssl", pkg: "openssl"},
	"haproxy":          {bin: "haproxy", pkg: "haproxy"},
	"promtool":         {bin: "promtool", pkg: "prometheus"},
	"bash":             {bin: "bash", pkg: "bash"},
	// Submission clients of the client matrix.
	"msmtp":      {bin: "msmtp", pkg: "msmtp"},
	"mutt":       {bin: "mutt", pkg: "mutt"},
	"nodemailer": {bin: "node", pkg: "nodejs node-nodemailer", node: "nodemailer"},
	"phpmailer": {bin: "php", pkg: "php-cli libphp-phpmailer",
		files: []string{PHPMailerAutoload}},
	"jakarta-mail": {bin: "java", pkg: "openjdk-17-jre-headless libjakarta-mail-java",
		files: []string{"/usr/share/java/jakarta-mail.jar", "/usr/share/java/jakarta-activation.jar"}},
}

// Tools lists the names Require accepts.
func Tools() []string {
	names := make([]string, 0, len(tools))
	for n := range tools {
		names = append(names, n)
	}
	return names
}

// inCI reports whether missing peers must fail rather than skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// lookPath finds bin in PATH, then in the sbin directories that a non-root
// PATH often lacks.
func lookPath(bin string) (string, error) {
	if strings.HasPrefix(bin, "/") {
		if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("peertest: %s: not an executable", bin)
		}
		return bin, nil
	}
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"} {
		p := dir + "/" + bin
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("peertest: %s: %w", bin, exec.ErrNotFound)
}

var (
	probeMu    sync.Mutex
	probeCache = map[string]error{}
)

// probe checks one known tool, running its Python import check once per
// test binary.
func probe(name string) (string, error) { return probeTool(name, tools[name]) }

func probeTool(name string, tl tool) (string, error) {
	p, err := lookPath(tl.bin)
	if err != nil {
		return p, err
	}
	for _, f := range tl.files {
		if _, err := os.Stat(f); err != nil {
			return p, fmt.Errorf("peertest: %s: %w", name, err)
		}
	}
	if tl.python == "" && tl.node == "" {
		return p, nil
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if err, ok := probeCache[name]; ok {
		return p, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	what := "import " + tl.python
	if tl.python != "" {
		cmd = exec.CommandContext(ctx, p, "-c", "import "+tl.python)
	} else {
		what = "load " + tl.node
		cmd = exec.CommandContext(ctx, p, "-e", "require("+strconv.Quote(tl.node)+")")
		cmd.Env = append(os.Environ(), "NODE_PATH="+NodePath)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("peertest: %s cannot %s: %w: %s", p, what, err, bytes.TrimSpace(out))
	}
	probeCache[name] = err
	return p, err
}

// Require skips the test, loudly, unless every named tool is installed; with
// CI=true it fails the test instead. Valid names are listed by [Tools]:
// smtp-sink, smtp-source, postfix, postconf, swaks, curl, python3 (the
// first in PATH, as a script runs it), python3-dkim (meaning
// /usr/bin/python3 can import dkim and nacl, which dkimpy needs for
// Ed25519), opendkim, opendkim-testkey, redis-server, openssl, haproxy,
// promtool, bash, and the submission clients msmtp, mutt, nodemailer (node
// can require Debian's nodemailer from [NodePath]), phpmailer (php and
// Debian's PHPMailer, [PHPMailerAutoload]) and jakarta-mail (java and
// Debian's Jakarta Mail jars, [JakartaMailClasspath]). An unknown name is a
// bug in the test and fails it.
func Require(t testing.TB, names ...string) {
	t.Helper()
	require(t, tools, names...)
}

func require(t testing.TB, table map[string]tool, names ...string) {
	t.Helper()
	for _, name := range names {
		tl, ok := table[name]
		if !ok {
			t.Fatalf("peertest: Require: unknown tool %q (known: %v)", name, Tools())
		}
		if _, err := probeTool(name, tl); err != nil {
			missing(t, fmt.Sprintf("integration peer %s not installed; install with apt-get install %s (%v)", name, tl.pkg, err))
		}
	}
}

// missing skips (or, in CI, fails) with msg, printing it to stderr too so a
// skip is visible without -v.
func missing(t testing.TB, msg string) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI=true: %s", msg)
	}
	fmt.Fprintf(os.Stderr, "\n*** SKIP %s: %s\n\n", t.Name(), msg)
	t.Skipf("SKIP: %s", msg)
}

// requireRoot skips (fails in CI) unless the test runs as root, which
// starting Postfix needs.
func requireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, what+" needs root (CI runs as root)")
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// port is not reserved: StartSink and StartPostfix retry with a new port when
// another process grabbed it first.
//
// Ports come from below the kernel's ephemeral range when there is room
// (1024 up to ip_local_port_range's start): every test that binds port 0,
// and every outgoing connection, takes its port from the ephemeral range,
// so a port chosen below it is not handed to them in the moment before the
// peer binds it. Within one test binary a port is handed out once.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := belowEphemeral()
	for try := 0; hi > lo && try < 100; try++ {
		port := lo + rand.IntN(hi-lo)
		portsMu.Lock()
		dup := portsGiven[port]
		portsGiven[port] = true
		portsMu.Unlock()
		if dup {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("peertest: FreePort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// belowEphemeral returns [lo, hi): the ports FreePort picks from, or an
// empty range when the ephemeral range cannot be read or leaves no room.
func belowEphemeral() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	start, err := strconv.Atoi(f[0])
	if err != nil || start < 10000 {
		return 0, 0
	}
	return 10000, start
}

// Path returns the absolute path of the named tool (a name accepted by
// Require) after requiring it, for a test that runs the tool itself (with
// exec.Command, to stream its output or keep it running).
func Path(t testing.TB, name string) string {
	t.Helper()
	Require(t, name)
	p, _ := probe(name)
	return p
}

// RunTool runs the named tool (a name accepted by Require) with args and
// stdin, bounded by timeout, and returns its combined stdout and stderr and
// its exit code. A command that cannot start or that times out is reported
// with t.Errorf and returns exit code -1.
func RunTool(t testing.TB, timeout time.Duration, stdin []byte, name string, args ...string) (output string, exitCode int) {
	t.Helper()
	return run(t, timeout, stdin, nil, Path(t, name), args...)
}

// run executes path; env entries are added to the inherited environment.
func run(t testing.TB, timeout time.Duration, stdin []byte, env []string, path string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Errorf("peertest: %s timed out after %v; output:\n%s", path, timeout, out.String())
		return out.String(), -1
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	default:
		t.Errorf("peertest: run %s: %v", path, err)
		return out.String(), -1
	}
}

// Swaks runs swaks with args (for example "--server", sink.Addr(), "--to",
// "a@example.net") and returns its combined output (the full SMTP
// transcript) and exit code. swaks exits 0 only when the whole transaction
// was accepted; its other codes name the failing step (23 MAIL, 24 RCPT,
// 25 DATA and so on, see swaks(1)), so assert on the transcript's reply lines
// ("<** 550 ...") rather than on a specific code.
func Swaks(t testing.TB, args ...string) (output string, exitCode int) {
	t.Helper()
	return RunTool(t, DefaultTimeout, nil, "swaks", args...)
}

// SMTPSource runs Postfix's smtp-source load generator with args, for
// example "-m", "100", "-s", "10", "-f", "a@example.com", "-t",
// "b@example.net", sink.Addr(). It returns the combined output and exit
// code (non-zero when a session failed).
func SMTPSource(t testing.TB, args ...string) (output string, exitCode int) {
	t.Helper()
	return RunTool(t, DefaultTimeout, nil, "smtp-source", args...)
}

// Curl runs curl with args and returns its combined output and exit code.
// Pass -sS and -w as needed; curl exits 0 even on HTTP errors unless -f is
// given.
func Curl(t testing.TB, args ...string) (output string, exitCode int) {
	t.Helper()
	return RunTool(t, DefaultTimeout, nil, "curl", args...)
}

// PythonSMTP runs script with the system /usr/bin/python3 (python3 -c
// script args...), for clients that swaks cannot express: smtplib with
// SMTPUTF8, BDAT, raw socket smuggling attempts. It returns the combined
// output and exit code; sys.argv[1:] are args.
func PythonSMTP(t testing.TB, script string, args ...string) (output string, exitCode int) {
	t.Helper()
	if _, err := lookPath(pythonPath); err != nil {
		missing(t, "integration peer "+pythonPath+" not installed; install with apt-get install python3")
	}
	return run(t, DefaultTimeout, nil, nil, pythonPath, append([]string{"-c", script}, args...)...)
}
