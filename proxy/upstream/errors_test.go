package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestCleanReply(t *testing.T) {
	ec := func(a, b, c int) smtp.EnhancedCode { return smtp.EnhancedCode{a, b, c} }
	long := strings.Repeat("word ", 100)
	for _, tc := range []struct {
		name  string
		stage string
		in    smtp.SMTPError
		want  *smtp.SMTPError // nil: not a valid refusal
	}{
		{"plain", "mail", smtp.SMTPError{Code: 550, EnhancedCode: ec(5, 1, 0), Message: "Sender rejected"},
			&smtp.SMTPError{Code: 550, EnhancedCode: ec(5, 1, 0), Message: "Sender rejected"}},
		{"multiline_code_on_last_line", "rcpt", smtp.SMTPError{Code: 550, Message: "first\n5.1.1 second"},
			&smtp.SMTPError{Code: 550, EnhancedCode: ec(5, 1, 1), Message: "first; second"}},
		{"multiline_code_on_every_line", "rcpt", smtp.SMTPError{Code: 550, EnhancedCode: ec(5, 1, 1), Message: "a\n5.1.1 b\n5.1.1 c"},
			&smtp.SMTPError{Code: 550, EnhancedCode: ec(5, 1, 1), Message: "a; b; c"}},
		{"control_chars_stripped", "data", smtp.SMTPError{Code: 554, EnhancedCode: ec(5, 7, 1), Message: "bad\x00\x07\r\x1b thing\x7f\xff!"},
			&smtp.SMTPError{Code: 554, EnhancedCode: ec(5, 7, 1), Message: "bad thing !"}},
		{"crlf_injection_flattened", "data", smtp.SMTPError{Code: 554, Message: "no\r\n250 2.0.0 ok"},
			&smtp.SMTPError{Code: 554, Message: "no; 250 2.0.0 ok"}},
		{"wrong_class_enhanced_code_dropped", "mail", smtp.SMTPError{Code: 451, EnhancedCode: ec(5, 0, 0), Message: "x"},
			&smtp.SMTPError{Code: 451, Message: "x"}},
		{"capped", "data", smtp.SMTPError{Code: 554, Message: long},
			&smtp.SMTPError{Code: 554, Message: strings.TrimSpace(long[:MaxReplyLen-3]) + "..."}},
		{"empty_text", "mail", smtp.SMTPError{Code: 450, EnhancedCode: ec(4, 0, 0), Message: ""},
			&smtp.SMTPError{Code: 450, EnhancedCode: ec(4, 0, 0), Message: "Upstream server replied without text"}},
		{"rcpt_552_is_452", "rcpt", smtp.SMTPError{Code: 552, EnhancedCode: ec(5, 5, 3), Message: "Too many recipients"},
			&smtp.SMTPError{Code: 452, EnhancedCode: ec(4, 5, 3), Message: "Too many recipients"}},
		{"data_552_stays", "data", smtp.SMTPError{Code: 552, EnhancedCode: ec(5, 3, 4), Message: "Too big"},
			&smtp.SMTPError{Code: 552, EnhancedCode: ec(5, 3, 4), Message: "Too big"}},
		{"421_is_451", "mail", smtp.SMTPError{Code: 421, EnhancedCode: ec(4, 4, 2), Message: "closing"},
			&smtp.SMTPError{Code: 451, EnhancedCode: ec(4, 4, 2), Message: "closing"}},
		{"unexpected_250_not_a_refusal", "data", smtp.SMTPError{Code: 250, Message: "ok"}, nil},
		{"unexpected_354_not_a_refusal", "rcpt", smtp.SMTPError{Code: 354, Message: "go"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := cleanReply(tc.stage, &tc.in)
			if tc.want == nil {
				if ok {
					t.Fatalf("cleanReply = %+v, want not ok", got)
				}
				return
			}
			if !ok || *got != *tc.want {
				t.Fatalf("cleanReply = %+v %v, want %+v", got, ok, tc.want)
			}
			if len(got.Message) > MaxReplyLen {
				t.Errorf("message %d bytes > %d", len(got.Message), MaxReplyLen)
			}
		})
	}
}

func TestAsSMTPError(t *testing.T) {
	upstream550 := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	for _, tc := range []struct {
		name string
		err  error
		code int
		ec   smtp.EnhancedCode
	}{
		{"upstream_reply_passes", upstream550, 550, smtp.EnhancedCode{5, 1, 1}},
		{"timeout", transportError("a", "rcpt", ErrTimeout, context.DeadlineExceeded), 451, smtp.EnhancedCode{4, 4, 2}},
		{"unavailable", transportError("a", "data", ErrUnavailable, io.EOF), 451, smtp.EnhancedCode{4, 4, 1}},
		{"unavailable_wrapping_5xx_is_still_4xx", transportError("a", "auth", ErrUnavailable, upstream550), 451, smtp.EnhancedCode{4, 4, 1}},
		{"timeout_wins_in_joined_failover", errors.Join(transportError("a", "connect", ErrUnavailable, io.EOF),
			transportError("b", "connect", ErrTimeout, context.DeadlineExceeded)), 451, smtp.EnhancedCode{4, 4, 2}},
		{"bad_sender", checkAddress("mail", "a\r\n"), 501, smtp.EnhancedCode{5, 1, 7}},
		{"bad_rcpt", checkAddress("rcpt", "a>"), 501, smtp.EnhancedCode{5, 1, 3}},
		{"smtputf8", fmt.Errorf("x: %w", ErrSMTPUTF8), 550, smtp.EnhancedCode{5, 6, 7}},
		{"requiretls", fmt.Errorf("x: %w", ErrRequireTLS), 550, smtp.EnhancedCode{5, 7, 30}},
		{"invalid_param", fmt.Errorf("x: %w", ErrInvalidParameter), 501, smtp.EnhancedCode{5, 5, 4}},
		{"unknown_route", fmt.Errorf("%w %q", ErrUnknownRoute, "x"), 451, smtp.EnhancedCode{4, 3, 0}},
		{"tx_closed", ErrTxClosed, 451, smtp.EnhancedCode{4, 3, 0}},
		{"unknown_error_generic", errors.New("secret internal detail"), 451, smtp.EnhancedCode{4, 3, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AsSMTPError(tc.err)
			if got.Code != tc.code || got.EnhancedCode != tc.ec {
				t.Fatalf("AsSMTPError(%v) = %d %v, want %d %v", tc.err, got.Code, got.EnhancedCode, tc.code, tc.ec)
			}
			if strings.Contains(got.Message, "secret") || strings.Contains(got.Message, "upstream a") {
				t.Errorf("internal text leaked to the client: %q", got.Message)
			}
		})
	}
	if AsSMTPError(nil) != nil {
		t.Error("AsSMTPError(nil) != nil")
	}
	t.Run("returns_a_copy", func(t *testing.T) {
		AsSMTPError(upstream550).Code = 250
		if upstream550.Code != 550 {
			t.Error("AsSMTPError returned the original")
		}
	})
	t.Run("transport_error_hides_smtp_cause_from_errors_as", func(t *testing.T) {
		var se *smtp.SMTPError
		if errors.As(transportError("a", "auth", ErrUnavailable, upstream550), &se) {
			t.Error("errors.As finds the upstream's reply to our AUTH: a caller could send it to the client as a 5xx")
		}
	})
	t.Run("failed_upstream_names_the_first_tried", func(t *testing.T) {
		for _, tc := range []struct {
			err  error
			want string
		}{
			{transportError("a", "rcpt", ErrTimeout, context.DeadlineExceeded), "a"},
			{fmt.Errorf("proxy: %w", transportError("b", "data", ErrUnavailable, io.EOF)), "b"},
			{errors.Join(transportError("a", "connect", ErrUnavailable, io.EOF),
				transportError("b", "connect", ErrTimeout, context.DeadlineExceeded)), "a"},
			{upstream550, ""},
			{ErrUnknownRoute, ""},
		} {
			if got := FailedUpstream(tc.err); got != tc.want {
				t.Errorf("FailedUpstream(%v) = %q, want %q", tc.err, got, tc.want)
			}
		}
	})
}

func FuzzCleanText(f *testing.F) {
	f.Add("550-first\r\n550 5.1.1 second\x00")
	f.Add(strings.Repeat("\xff\x07", 300))
	f.Fuzz(func(t *testing.T, s string) {
		out := cleanText(s)
		if len(out) > MaxReplyLen {
			t.Fatalf("len %d > %d", len(out), MaxReplyLen)
		}
		for i := 0; i < len(out); i++ {
			if out[i] < 0x20 || out[i] > 0x7e {
				t.Fatalf("non-printable byte %#x in %q", out[i], out)
			}
		}
	})
}
