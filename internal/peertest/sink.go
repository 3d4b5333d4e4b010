package peertest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SinkOptions configures fault injection and announced extensions of an
// smtp-sink. The zero value is a well-behaved ESMTP server that accepts and
// records everything. Command names are SMTP verbs, case-insensitive:
// CONNECT, HELO, EHLO, LHLO, MAIL, RCPT, VRFY, DATA, "." (end of data), RSET,
// NOOP, QUIT.
type SinkOptions struct {
	// HardRejectCommands get a 5xx reply (smtp-sink -f; implies
	// NoPipelining). The reply is HardRejectReply.
	HardRejectCommands []string
	// SoftRejectCommands get a 4xx reply (smtp-sink -r; implies
	// NoPipelining). The reply is SoftRejectReply.
	SoftRejectCommands []string
	// DisconnectCommands make the sink close the connection without replying
	// (smtp-sink -q). With "." the message has been received in full and is
	// recorded although the client never saw a reply: the ambiguous case a
	// relay must treat as 4xx.
	DisconnectCommands []string
	// Reply421Commands make the sink reply 421 and disconnect
	// (smtp-sink -Q).
	Reply421Commands []string
	// HardRejectReply replaces "500 5.3.0 Error: command failed" (-B).
	HardRejectReply string
	// SoftRejectReply replaces "450 4.3.0 Error: command failed" (-b).
	SoftRejectReply string
	// Delays pause before replying to a command (-W command:seconds, one
	// flag per entry; delays for the same command add up).
	Delays []Delay
	// AbortAfterData, when true, makes the sink wait AbortDelaySeconds after
	// its 354 reply to DATA, then reply 550 and stop reading, before the
	// client sends "." (-A).
	AbortAfterData    bool
	AbortDelaySeconds int
	// DataReadDelaySeconds delays the first read after DATA (-H); combine
	// with a large message to exercise client write timeouts.
	DataReadDelaySeconds int

	// NoESMTP disables EHLO (-e); No8BitMIME (-8), NoPipelining (-p),
	// NoEnhancedStatusCodes (-E), NoDSN (-N), NoAuth (-a), NoXCLIENT (-C) and
	// NoXFORWARD (-F) remove one EHLO keyword each. smtp-sink never announces
	// SMTPUTF8, STARTTLS, SIZE or CHUNKING.
	NoESMTP, No8BitMIME, NoPipelining, NoEnhancedStatusCodes bool
	NoDSN, NoAuth, NoXCLIENT, NoXFORWARD                     bool

	// Hostname is used in the greeting and EHLO reply (-h; default
	// "smtp-sink").
	Hostname string
	// TimeoutSeconds limits reading a command or writing a reply (-t;
	// smtp-sink's default is 100).
	TimeoutSeconds int
	// MaxConnections bounds simultaneous sessions (-m; default 256); excess
	// connections wait in the listen backlog.
	MaxConnections int
	// Verbose logs every SMTP conversation to the sink's output (-v), which
	// is shown when the test fails.
	Verbose bool
	// CountSessions makes the sink print its running counters (-c) for
	// Sessions.
	CountSessions bool
}

// Delay is a pause before the sink replies to Command.
type Delay struct {
	Command string
	Seconds int
}

// args converts the options into smtp-sink flags.
func (o SinkOptions) args() ([]string, error) {
	var a []string
	list := func(flag string, cmds []string) error {
		if len(cmds) == 0 {
			return nil
		}
		for _, c := range cmds {
			if err := checkCommand(c); err != nil {
				return err
			}
		}
		a = append(a, flag, strings.Join(cmds, ","))
		return nil
	}
	if err := errors.Join(
		list("-f", o.HardRejectCommands),
		list("-r", o.SoftRejectCommands),
		list("-q", o.DisconnectCommands),
		list("-Q", o.Reply421Commands),
	); err != nil {
		return nil, err
	}
	for _, d := range o.Delays {
		if err := checkCommand(d.Command); err != nil {
			return nil, err
		}
		if d.Seconds < 0 {
			return nil, fmt.Errorf("peertest: negative delay for %s", d.Command)
		}
		a = append(a, "-W", d.Command+":"+strconv.Itoa(d.Seconds))
	}
	if o.HardRejectReply != "" {
		a = append(a, "-B", o.HardRejectReply)
	}
	if o.SoftRejectReply != "" {
		a = append(a, "-b", o.SoftRejectReply)
	}
	if o.AbortAfterData {
		a = append(a, "-A", strconv.Itoa(o.AbortDelaySeconds))
	}
	if o.DataReadDelaySeconds > 0 {
		a = append(a, "-H", strconv.Itoa(o.DataReadDelaySeconds))
	}
	for _, f := range []struct {
		on   bool
		flag string
	}{
		{o.NoESMTP, "-e"}, {o.No8BitMIME, "-8"}, {o.NoPipelining, "-p"},
		{o.NoEnhancedStatusCodes, "-E"}, {o.NoDSN, "-N"}, {o.NoAuth, "-a"},
		{o.NoXCLIENT, "-C"}, {o.NoXFORWARD, "-F"}, {o.Verbose, "-v"},
		{o.CountSessions, "-c"},
	} {
		if f.on {
			a = append(a, f.flag)
		}
	}
	if o.Hostname != "" {
		a = append(a, "-h", o.Hostname)
	}
	if o.TimeoutSeconds > 0 {
		a = append(a, "-t", strconv.Itoa(o.TimeoutSeconds))
	}
	if o.MaxConnections > 0 {
		a = append(a, "-m", strconv.Itoa(o.MaxConnections))
	}
	return a, nil
}

func checkCommand(c string) error {
	if c == "" || strings.ContainsAny(c, ", \t:") {
		return fmt.Errorf("peertest: bad smtp-sink command name %q", c)
	}
	return nil
}

// Sink is a running smtp-sink that records each completed mail transaction
// as one file. It is safe for concurrent use.
type Sink struct {
	t    testing.TB
	addr string
	dir  string
	proc *process
}

// Message is one transaction recorded by a Sink.
type Message struct {
	// Path is the dump file.
	Path string
	// ClientAddr, Proto and Helo come from the X-Client-Addr,
	// X-Client-Proto and X-Helo-Args records.
	ClientAddr, Proto, Helo string
	// MailArgs is the MAIL command's argument as sent ("<a@b> SIZE=12");
	// From is its reverse-path without angle brackets ("" for <>).
	MailArgs, From string
	// RcptArgs holds each RCPT argument in order; Recipients the addresses.
	RcptArgs, Recipients []string
	// Data is the message as received: dot-unstuffed, without the final
	// ".", every line ended by CRLF. smtp-sink drops every CR byte it
	// reads and keeps LF, so a client's bare LF shows up here as CRLF and a
	// bare CR vanishes: assert smuggling defences on the sink's count and
	// on which lines arrived, not on line endings. (The sink itself ends
	// DATA only at a strict CRLF.CRLF.)
	Data []byte
	// Raw is the whole dump file, including smtp-sink's own records and its
	// Received header.
	Raw []byte
}

// sinkUser is the unprivileged user smtp-sink switches to when run as root
// (its -u flag is mandatory then).
const sinkUser = "nobody"

// StartSink starts smtp-sink on 127.0.0.1 at a free port and stops it in
// t.Cleanup. Each transaction the sink completes (it received the final
// ".") becomes one file in a private directory, whatever reply opts make it
// send; aborted transactions (RSET, disconnect before ".") leave nothing.
func StartSink(t testing.TB, opts SinkOptions) *Sink {
	t.Helper()
	Require(t, "smtp-sink")
	bin, _ := probe("smtp-sink")
	flags, err := opts.args()
	if err != nil {
		t.Fatal(err)
	}
	dir := sinkDir(t)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		args := slices.Clone(flags)
		if os.Geteuid() == 0 {
			args = append(args, "-u", sinkUser)
		}
		// %Y%m%d%H%M%S. keeps names unique across restarts; smtp-sink
		// appends a random hex suffix per transaction.
		args = append(args, "-d", filepath.Join(dir, "%Y%m%d%H%M%S."), addr, "256")
		p, err := startProcess(bin, args...)
		if err != nil {
			t.Fatalf("peertest: start smtp-sink: %v", err)
		}
		lastErr = waitListening(p, addr, 10*time.Second)
		if lastErr == nil {
			s := &Sink{t: t, addr: addr, dir: dir, proc: p}
			t.Cleanup(func() { p.stop(5 * time.Second) })
			logOnFailure(t, "smtp-sink "+addr, p.out.String)
			return s
		}
		p.stop(time.Second)
		out := p.out.String()
		if !strings.Contains(out, "in use") {
			t.Fatalf("peertest: smtp-sink %v did not start: %v\n%s", args, lastErr, out)
		}
		t.Logf("peertest: smtp-sink port %s taken, retrying: %s", addr, out)
	}
	t.Fatalf("peertest: smtp-sink did not start: %v", lastErr)
	return nil
}

// sinkDir makes the dump directory writable by the sink. As root, smtp-sink
// runs as nobody, which cannot enter t.TempDir's 0700 parents, so the
// directory lives directly in os.TempDir and is removed in t.Cleanup.
func sinkDir(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "peertest-sink-")
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u, err := user.Lookup(sinkUser)
	if err != nil {
		t.Fatalf("peertest: smtp-sink user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return dir
}

// Addr is the sink's "127.0.0.1:port".
func (s *Sink) Addr() string { return s.addr }

// Dir is the directory holding the dump files.
func (s *Sink) Dir() string { return s.dir }

// Output is what smtp-sink printed so far (conversations with Verbose).
func (s *Sink) Output() string { return s.proc.out.String() }

// complete lists finished dump files in arrival order. smtp-sink creates a
// transaction's file at MAIL, writes it as data arrives and closes it at
// "." before it sends its reply; an aborted transaction's file is unlinked
// before it is closed (smtp-sink.c mail_file_reset). So a file that the
// process no longer holds open is final, and a message the client saw
// accepted is already counted. Open files are read from /proc after the
// directory listing: a file closed before that read is never reopened.
func (s *Sink) complete() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("peertest: sink: %w", err)
	}
	open := map[string]bool{}
	fdDir := fmt.Sprintf("/proc/%d/fd", s.proc.cmd.Process.Pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil && !s.proc.exited() {
		return nil, fmt.Errorf("peertest: sink: open files: %w", err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil {
			open[target] = true
		}
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, e := range ents {
		p := filepath.Join(s.dir, e.Name())
		if e.IsDir() || open[p] {
			continue
		}
		info, err := e.Info()
		if err != nil { // removed meanwhile: an aborted transaction
			continue
		}
		files = append(files, file{p, info.ModTime()})
	}
	slices.SortFunc(files, func(a, b file) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.path
	}
	return paths, nil
}

// Sessions is the number of SMTP sessions (connections) the sink has seen
// end, from smtp-sink's own counter (-c: "sess=N quit=N mesg=N", printed
// whenever a session ends, a QUIT is executed or a "." is received). It
// needs SinkOptions.CountSessions; a session still open is not counted.
func (s *Sink) Sessions() int {
	out := s.proc.out.String()
	i := strings.LastIndex(out, "sess=")
	if i < 0 {
		return 0
	}
	f := strings.Fields(out[i+len("sess="):])
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		s.t.Errorf("peertest: sink counters %q: %v", out[i:], err)
	}
	return n
}

// Count is the number of transactions the sink has completed. A
// transaction counts from the moment the sink read the final "." (before
// it replied), so right after a client saw the sink's reply no waiting is
// needed; use WaitCount when a relay in between delivers asynchronously.
func (s *Sink) Count() int {
	files, err := s.complete()
	if err != nil {
		s.t.Errorf("%v", err)
	}
	return len(files)
}

// Messages returns the completed transactions, oldest first (by file time,
// one-second resolution on some filesystems).
func (s *Sink) Messages() []Message {
	files, err := s.complete()
	if err != nil {
		s.t.Errorf("%v", err)
	}
	msgs := make([]Message, 0, len(files))
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			s.t.Errorf("peertest: sink: %v", err)
			continue
		}
		m, err := ParseSinkDump(raw)
		if err != nil {
			s.t.Errorf("peertest: sink: %s: %v", p, err)
			continue
		}
		m.Path = p
		msgs = append(msgs, m)
	}
	return msgs
}

// WaitCount waits until the sink has completed at least n transactions, and
// fails the test if that does not happen within timeout. It returns the
// count it saw, which may exceed n.
func (s *Sink) WaitCount(t testing.TB, n int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := s.Count()
		if c >= n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("peertest: sink %s: %d messages after %v, want %d", s.addr, c, timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ErrBadDump is returned by ParseSinkDump for a file that does not have
// smtp-sink's record and Received header layout.
var ErrBadDump = errors.New("peertest: malformed smtp-sink dump")

// ParseSinkDump parses one smtp-sink -d dump file (see smtp-sink(1), DUMP
// FILE FORMAT): X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args and
// X-Rcpt-Args records, a three-line Received header, the message, and one
// empty line.
func ParseSinkDump(raw []byte) (Message, error) {
	m := Message{Raw: raw}
	rest := raw
	next := func() (string, bool) {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		line := string(rest[:i])
		rest = rest[i+1:]
		return line, true
	}
	for {
		line, ok := next()
		if !ok {
			return m, fmt.Errorf("%w: no Received header", ErrBadDump)
		}
		name, val, found := strings.Cut(line, ":")
		val = strings.TrimPrefix(val, " ")
		if !found {
			return m, fmt.Errorf("%w: record %q", ErrBadDump, line)
		}
		switch name {
		case "X-Client-Addr":
			m.ClientAddr = val
		case "X-Client-Proto":
			m.Proto = val
		case "X-Helo-Args":
			m.Helo = val
		case "X-Mail-Args":
			m.MailArgs = val
			m.From = pathAddr(val)
		case "X-Rcpt-Args":
			m.RcptArgs = append(m.RcptArgs, val)
			m.Recipients = append(m.Recipients, pathAddr(val))
		case "Received":
			for range 2 {
				if l, ok := next(); !ok || !strings.HasPrefix(l, "\t") {
					return m, fmt.Errorf("%w: short Received header", ErrBadDump)
				}
			}
			if m.MailArgs == "" || len(m.RcptArgs) == 0 {
				return m, fmt.Errorf("%w: no envelope records", ErrBadDump)
			}
			body, ok := bytes.CutSuffix(rest, []byte("\n"))
			if !ok {
				return m, fmt.Errorf("%w: missing final empty line", ErrBadDump)
			}
			m.Data = bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))
			return m, nil
		default:
			return m, fmt.Errorf("%w: unknown record %q", ErrBadDump, name)
		}
	}
}

// pathAddr extracts the address from a MAIL or RCPT argument such as
// `<"a b"@example.com> SIZE=10`, honouring quoted strings (RFC 5321 4.1.2).
func pathAddr(arg string) string {
	if !strings.HasPrefix(arg, "<") {
		addr, _, _ := strings.Cut(arg, " ")
		return addr
	}
	inQuote := false
	for i := 1; i < len(arg); i++ {
		switch c := arg[i]; {
		case c == '\\' && inQuote:
			i++
		case c == '"':
			inQuote = !inQuote
		case c == '>' && !inQuote:
			return arg[1:i]
		}
	}
	return arg[1:]
}
