package upstream

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/internal/peertest"
)

func TestSMTPSink(t *testing.T) {
	ctx := context.Background()

	t.Run("one_message_per_successful_data", func(t *testing.T) {
		sink := peertest.StartSink(t, peertest.SinkOptions{})
		r := newTestRouter(t, []Config{cfgFor("sink", sink.Addr())})
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
		got := sink.Messages()
		if len(got) != n {
			t.Fatalf("smtp-sink stored %d messages, want %d", len(got), n)
		}
		for _, m := range got {
			d := string(m.Raw)
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
		opts  peertest.SinkOptions
		stage string // where the error is expected: rcpt or data
		class int    // 4 or 5
		want  error  // sentinel, or nil for an upstream reply
	}{
		{"rcpt_hard_reject_is_5xx", peertest.SinkOptions{HardRejectCommands: []string{"RCPT"}}, "rcpt", 5, nil},
		{"rcpt_soft_reject_is_4xx", peertest.SinkOptions{SoftRejectCommands: []string{"RCPT"}}, "rcpt", 4, nil},
		{"dot_hard_reject_is_5xx", peertest.SinkOptions{HardRejectCommands: []string{"."}}, "data", 5, nil},
		{"dot_soft_reject_is_4xx", peertest.SinkOptions{SoftRejectCommands: []string{"."}}, "data", 4, nil},
		{"data_hard_reject_is_5xx", peertest.SinkOptions{HardRejectCommands: []string{"DATA"}}, "data", 5, nil},
		{"dot_421_is_4xx", peertest.SinkOptions{Reply421Commands: []string{"."}}, "data", 4, nil},
		{"dot_disconnect_is_4xx", peertest.SinkOptions{DisconnectCommands: []string{"."}}, "data", 4, ErrUnavailable},
		{"rcpt_disconnect_is_4xx", peertest.SinkOptions{DisconnectCommands: []string{"RCPT"}}, "rcpt", 4, ErrUnavailable},
		{"rcpt_stall_is_timeout", peertest.SinkOptions{Delays: []peertest.Delay{{Command: "RCPT", Seconds: 3}}}, "rcpt", 4, ErrTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// smtp-sink opens its dump file at MAIL, whatever the
			// outcome: only the reply class is checked here.
			sink := peertest.StartSink(t, tc.opts)
			c := cfgFor("sink", sink.Addr())
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
