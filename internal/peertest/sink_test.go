package peertest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSinkReceivesAndRoundTrips(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{})
	body := "line one\n.leading dot\n\nünïcode 8bit\nlast"
	out, code := Swaks(t, "--server", sink.Addr(), "--from", "sender@example.com",
		"--to", "a@example.net,b@example.org", "--header", "Subject: round trip",
		"--body", body)
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	if got := sink.WaitCount(t, 1, 10*time.Second); got != 1 {
		t.Fatalf("count = %d, want 1", got)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("Messages() = %d, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != "sender@example.com" {
		t.Errorf("From = %q", m.From)
	}
	if want := []string{"a@example.net", "b@example.org"}; strings.Join(m.Recipients, ",") != strings.Join(want, ",") {
		t.Errorf("Recipients = %q, want %q", m.Recipients, want)
	}
	if m.ClientAddr != "127.0.0.1" || m.Proto != "ESMTP" {
		t.Errorf("client = %q %q", m.ClientAddr, m.Proto)
	}
	if !bytes.Contains(m.Data, []byte("Subject: round trip\r\n")) {
		t.Errorf("header missing in Data:\n%q", m.Data)
	}
	// swaks ends the body with an extra empty line, so check containment
	// here and the exact bytes with smtplib below.
	if want := strings.ReplaceAll(body, "\n", "\r\n"); !bytes.Contains(m.Data, []byte("\r\n\r\n"+want+"\r\n")) {
		t.Errorf("Data lacks the body:\n got %q\nwant %q", m.Data, want)
	}
}

func TestSinkExactBytes(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{})
	// smtplib dot-stuffs ".dot" and "..two"; the sink must give back the
	// original bytes, 8-bit and long lines included.
	msg := "Subject: exact\r\nX-Long: " + strings.Repeat("x", 900) + "\r\n\r\n.dot\r\n..two\r\n\r\n\xc3\xbc 8bit\r\nlast\r\n"
	script := `
import os, smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
s.sendmail("s@example.com", ["r@example.net"], os.fsencode(sys.argv[2]))
s.quit()
print("sent")
`
	_, port, _ := strings.Cut(sink.Addr(), ":")
	out, code := PythonSMTP(t, script, port, msg)
	if code != 0 {
		t.Fatalf("python exit %d:\n%s", code, out)
	}
	sink.WaitCount(t, 1, 10*time.Second)
	if got := sink.Messages()[0].Data; string(got) != msg {
		t.Errorf("Data round trip:\n got %q\nwant %q", got, msg)
	}
}

func TestSinkFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opts      SinkOptions
		wantReply string // a reply line swaks must show
		wantCount int
	}{
		{"rcpt hard reject", SinkOptions{HardRejectCommands: []string{"RCPT"}}, "<** 500 5.3.0", 0},
		{"rcpt hard reject custom reply", SinkOptions{HardRejectCommands: []string{"rcpt"}, HardRejectReply: "550 5.1.1 no such user"}, "<** 550 5.1.1 no such user", 0},
		{"rcpt soft reject", SinkOptions{SoftRejectCommands: []string{"RCPT"}}, "<** 450 4.3.0", 0},
		{"mail soft reject", SinkOptions{SoftRejectCommands: []string{"MAIL"}}, "<** 450 4.3.0", 0},
		{"end of data hard reject still records", SinkOptions{HardRejectCommands: []string{"."}}, "<** 500 5.3.0", 1},
		{"disconnect at DATA", SinkOptions{DisconnectCommands: []string{"DATA"}}, "Remote host closed connection unexpectedly", 0},
		{"disconnect at end of data records", SinkOptions{DisconnectCommands: []string{"."}}, "Remote host closed connection unexpectedly", 1},
		{"421 at RCPT", SinkOptions{Reply421Commands: []string{"RCPT"}}, "<** 421", 0},
		{"abort after DATA", SinkOptions{AbortAfterData: true}, "550", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := StartSink(t, tc.opts)
			out, code := Swaks(t, "--server", sink.Addr(), "--from", "s@example.com", "--to", "r@example.net")
			if code == 0 {
				t.Errorf("swaks succeeded against a faulty sink:\n%s", out)
			}
			if !strings.Contains(out, tc.wantReply) {
				t.Errorf("swaks output lacks %q:\n%s", tc.wantReply, out)
			}
			if tc.wantCount > 0 {
				sink.WaitCount(t, tc.wantCount, 10*time.Second)
			}
			if got := sink.Count(); got != tc.wantCount {
				t.Errorf("Count() = %d, want %d", got, tc.wantCount)
			}
		})
	}
}

func TestSinkDelayDoesNotCountInFlight(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{Delays: []Delay{{Command: "DATA", Seconds: 2}}})
	done := make(chan string, 1)
	go func() {
		out, _ := Swaks(t, "--server", sink.Addr(), "--from", "s@example.com", "--to", "r@example.net")
		done <- out
	}()
	// The transaction's file exists from MAIL on but is still open: it
	// must not count until "." closes it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(sink.Dir())
		if len(ents) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no in-flight dump file appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := sink.Count(); c != 0 {
		t.Errorf("in-flight transaction counted: Count() = %d", c)
	}
	out := <-done
	if !strings.Contains(out, "<-  250 2.0.0 Ok") {
		t.Errorf("delayed transaction failed:\n%s", out)
	}
	sink.WaitCount(t, 1, 10*time.Second)
}

func TestSinkOptionsValidate(t *testing.T) {
	for _, bad := range []SinkOptions{
		{HardRejectCommands: []string{"RCPT,DATA"}},
		{SoftRejectCommands: []string{""}},
		{Delays: []Delay{{Command: "DATA:3", Seconds: 1}}},
		{Delays: []Delay{{Command: "DATA", Seconds: -1}}},
	} {
		if _, err := bad.args(); err == nil {
			t.Errorf("args(%+v) = nil error", bad)
		}
	}
}

func TestParseSinkDump(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "sink-dump.txt"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseSinkDump(raw)
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "" || m.MailArgs != "<> SIZE=42 BODY=8BITMIME" {
		t.Errorf("null sender: From=%q MailArgs=%q", m.From, m.MailArgs)
	}
	if want := []string{`"odd >person"@example.net`, "b@example.org"}; strings.Join(m.Recipients, "|") != strings.Join(want, "|") {
		t.Errorf("Recipients = %q, want %q", m.Recipients, want)
	}
	if want := "Subject: x\r\n\r\nbody\r\n"; string(m.Data) != want {
		t.Errorf("Data = %q, want %q", m.Data, want)
	}
	for _, bad := range []string{"", "X-Client-Addr: 1\n", "garbage\n", "X-Mail-Args: <a@b>\nX-Rcpt-Args: <c@d>\nReceived: x\n\tby\n"} {
		if _, err := ParseSinkDump([]byte(bad)); err == nil {
			t.Errorf("ParseSinkDump(%q) = nil error", bad)
		}
	}
}

func TestSinkCountsConcurrentLoad(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{})
	const n = 50
	out, code := SMTPSource(t, "-m", "50", "-s", "10", "-f", "load@example.com", "-t", "sink@example.net", sink.Addr())
	if code != 0 {
		t.Fatalf("smtp-source exit %d:\n%s", code, out)
	}
	if got := sink.WaitCount(t, n, 20*time.Second); got != n {
		t.Errorf("Count() = %d, want exactly %d", got, n)
	}
	for _, m := range sink.Messages() {
		if m.From != "load@example.com" || len(m.Recipients) != 1 {
			t.Fatalf("envelope = %q %q", m.From, m.Recipients)
		}
	}
}

// BenchmarkSinkCount measures polling cost with 200 stored messages, the
// price WaitCount pays every 10 ms in load tests.
func BenchmarkSinkCount(b *testing.B) {
	sink := StartSink(b, SinkOptions{})
	if out, code := SMTPSource(b, "-m", "200", "-s", "20", sink.Addr()); code != 0 {
		b.Fatalf("smtp-source: %s", out)
	}
	sink.WaitCount(b, 200, 20*time.Second)
	b.ReportAllocs()
	for b.Loop() {
		if sink.Count() != 200 {
			b.Fatal("count changed")
		}
	}
}

func BenchmarkSinkMessages(b *testing.B) {
	sink := StartSink(b, SinkOptions{})
	if out, code := SMTPSource(b, "-m", "200", "-s", "20", sink.Addr()); code != 0 {
		b.Fatalf("smtp-source: %s", out)
	}
	sink.WaitCount(b, 200, 20*time.Second)
	b.ReportAllocs()
	for b.Loop() {
		if len(sink.Messages()) != 200 {
			b.Fatal("count changed")
		}
	}
}

// TestSinkLineEndings pins down what the sink can and cannot show, so that
// smuggling tests built on it do not assert the impossible.
func TestSinkLineEndings(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{})
	_, port, _ := strings.Cut(sink.Addr(), ":")
	// Raw socket: a bare LF line, a bare CR inside a line, and a fake end
	// of data "\n.\n" that a strict server must not take for the end.
	script := `
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def cmd(line):
    if line is not None:
        s.sendall(line)
    return f.readline().decode()
print(cmd(None).strip())
for c in [b"EHLO x\r\n"]:
    s.sendall(c)
    while True:
        l = f.readline().decode()
        if l[3] == " ": break
print(cmd(b"MAIL FROM:<a@example.com>\r\n").strip())
print(cmd(b"RCPT TO:<b@example.net>\r\n").strip())
print(cmd(b"DATA\r\n").strip())
print(cmd(b"Subject: eol\r\n\r\nbare-lf\nbare\rcr\r\nfake\n.\nend\r\n.\r\n").strip())
s.sendall(b"QUIT\r\n")
`
	out, code := PythonSMTP(t, script, port)
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok") {
		t.Fatalf("raw client exit %d:\n%s", code, out)
	}
	if got := sink.Count(); got != 1 {
		t.Fatalf("Count() right after the 250 = %d, want 1", got)
	}
	want := "Subject: eol\r\n\r\nbare-lf\r\nbarecr\r\nfake\r\n.\r\nend\r\n"
	if got := string(sink.Messages()[0].Data); got != want {
		t.Errorf("Data = %q, want %q", got, want)
	}
}
