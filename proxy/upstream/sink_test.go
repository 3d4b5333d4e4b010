package upstream

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const smtpSinkPath = "/usr/sbin/smtp-sink"

// requireTool skips loudly when a tool is missing, or fails under CI=true.
func requireTool(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI (apt-get install postfix): %v", path, err)
		}
		t.Skipf("SKIPPING: %s not installed (apt-get install postfix): %v", path, err)
	}
}

// startSink runs Postfix's smtp-sink on a free 127.0.0.1 port with extra
// fault-injection args, dumping each message to a file in the returned
// directory. It is stopped by PID in t.Cleanup.
func startSink(t *testing.T, args ...string) (addr, dir string) {
	t.Helper()
	requireTool(t, smtpSinkPath)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()

	// smtp-sink drops privileges to -u when run as root; that user must
	// be able to write the dump directory, so it cannot be t.TempDir (0700).
	dir, err = os.MkdirTemp("", "mailgate-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	argv := []string{"-d", filepath.Join(dir, "msg.")}
	if os.Geteuid() == 0 {
		argv = append(argv, "-u", "nobody")
	}
	argv = append(argv, args...)
	argv = append(argv, addr, "16")
	cmd := exec.Command(smtpSinkPath, argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start smtp-sink: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if stderr.Len() > 0 {
			t.Logf("smtp-sink stderr: %s", stderr.String())
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink did not listen on %s: %v (%s)", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, dir
}

func dumps(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func TestSMTPSink(t *testing.T) {
	ctx := context.Background()

	t.Run("one_message_per_successful_data", func(t *testing.T) {
		addr, dir := startSink(t)
		r := newTestRouter(t, []Config{cfgFor("sink", addr)})
		const n = 3
		for i := range n {
			body := []byte("Subject: m" + strconv.Itoa(i) + "\r\n\r\n.dot line\r\nbody\r\n")
			rep := relay(t, r, "a@example.com", []string{"b@example.net", "c@example.net"}, body)
			if rep.Code != 250 {
				t.Fatalf("reply = %+v", rep)
			}
		}
		if st := r.Stats(); st.Open != 1 {
			t.Errorf("Stats = %+v: %d messages should share one pooled connection", st, n)
		}
		got := dumps(t, dir)
		if len(got) != n {
			t.Fatalf("smtp-sink stored %d messages, want %d", len(got), n)
		}
		for _, d := range got {
			if !strings.Contains(d, "X-Mail-Args: <a@example.com>") ||
				!strings.Contains(d, "X-Rcpt-Args: <c@example.net>") ||
				!strings.Contains(d, "X-Helo-Args: mailgate.test") ||
				!strings.Contains(d, "\n.dot line\n") {
				t.Errorf("dump = %q", d)
			}
		}
	})

	for _, tc := range []struct {
		name  string
		args  []string
		stage string // where the error is expected: rcpt or data
		class int    // 4 or 5
		want  error  // sentinel, or nil for an upstream reply
	}{
		{"rcpt_hard_reject_is_5xx", []string{"-f", "RCPT"}, "rcpt", 5, nil},
		{"rcpt_soft_reject_is_4xx", []string{"-r", "RCPT"}, "rcpt", 4, nil},
		{"dot_hard_reject_is_5xx", []string{"-f", "."}, "data", 5, nil},
		{"dot_soft_reject_is_4xx", []string{"-r", "."}, "data", 4, nil},
		{"data_hard_reject_is_5xx", []string{"-f", "DATA"}, "data", 5, nil},
		{"dot_421_is_4xx", []string{"-Q", "."}, "data", 4, nil},
		{"dot_disconnect_is_4xx", []string{"-q", "."}, "data", 4, ErrUnavailable},
		{"rcpt_disconnect_is_4xx", []string{"-q", "RCPT"}, "rcpt", 4, ErrUnavailable},
		{"rcpt_stall_is_timeout", []string{"-W", "RCPT:3"}, "rcpt", 4, ErrTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// smtp-sink opens its dump file at MAIL, whatever the
			// outcome: only the reply class is checked here.
			addr, _ := startSink(t, tc.args...)
			c := cfgFor("sink", addr)
			c.CommandTimeout = "500ms"
			r := newTestRouter(t, []Config{c})
			tx, err := r.Begin(ctx, "", "a@example.com", nil)
			if err != nil {
				t.Fatalf("Begin: %v", err)
			}
			defer tx.Abort()
			err = tx.Rcpt(ctx, "b@example.net", nil)
			stage := "rcpt"
			if err == nil {
				stage = "data"
				_, err = tx.Data(ctx, bytes.NewReader(msg(500)))
			}
			if err == nil || stage != tc.stage {
				t.Fatalf("error at %s = %v, want an error at %s", stage, err, tc.stage)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
			var se *smtp.SMTPError
			if tc.want == nil && !errors.As(err, &se) {
				t.Errorf("err = %T %v, want the upstream's reply", err, err)
			}
			if got := AsSMTPError(err); got.Code/100 != tc.class || got.EnhancedCode[0] != tc.class && got.EnhancedCode != smtp.EnhancedCodeNotSet {
				t.Errorf("AsSMTPError = %d %v %q, want class %d", got.Code, got.EnhancedCode, got.Message, tc.class)
			}
		})
	}
}
