package auth

import (
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// recorder is an authenticate callback that records its calls and accepts
// only user "u" with password "p".
type recorder struct {
	calls []string
	err   error // returned for a wrong password; default ErrAuthFailed
}

func (r *recorder) plain(identity, user, pass string) error {
	r.calls = append(r.calls, identity+"|"+user)
	return r.check(user, pass)
}

func (r *recorder) login(user, pass string) error {
	r.calls = append(r.calls, user)
	return r.check(user, pass)
}

func (r *recorder) check(user, pass string) error {
	if user == "u" && pass == "p" {
		return nil
	}
	if r.err != nil {
		return r.err
	}
	return ErrAuthFailed
}

// step is one call of Next: the response sent and what must come back.
type step struct {
	response      []byte
	wantChallenge string
	wantDone      bool
	wantErr       error
}

func runSteps(t *testing.T, s sasl.Server, steps []step) {
	t.Helper()
	for i, st := range steps {
		ch, done, err := s.Next(st.response)
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("step %d: err = %v, want %v", i, err, st.wantErr)
		}
		if st.wantErr != nil {
			// go-smtp only passes *smtp.SMTPError through unchanged
			// (type assertion, no unwrapping).
			if _, ok := err.(*smtp.SMTPError); !ok {
				t.Fatalf("step %d: err is %T, want *smtp.SMTPError", i, err)
			}
			return
		}
		if string(ch) != st.wantChallenge || done != st.wantDone {
			t.Fatalf("step %d: Next = %q, %v; want %q, %v", i, ch, done, st.wantChallenge, st.wantDone)
		}
	}
}

func TestPlainServer(t *testing.T) {
	cases := []struct {
		name      string
		steps     []step
		wantCalls int
	}{
		{"initial_response", []step{{response: []byte("\x00u\x00p"), wantDone: true}}, 1},
		{"empty_challenge_then_response", []step{
			{response: nil, wantChallenge: ""},
			{response: []byte("\x00u\x00p"), wantDone: true},
		}, 1},
		{"authzid_equal_to_user", []step{{response: []byte("u\x00u\x00p"), wantDone: true}}, 1},
		{"authzid_equal_to_user_case_folded", []step{{response: []byte("U\x00u\x00p"), wantDone: true}}, 1},
		{"plain_authzid_mismatch", []step{{response: []byte("admin\x00u\x00p"), wantErr: ErrAuthFailed}}, 0},
		{"wrong_password", []step{{response: []byte("\x00u\x00x"), wantErr: ErrAuthFailed}}, 1},
		{"two_fields", []step{{response: []byte("u\x00p"), wantErr: ErrMalformedAuth}}, 0},
		{"four_fields", []step{{response: []byte("\x00u\x00p\x00"), wantErr: ErrMalformedAuth}}, 0},
		{"empty_response", []step{{response: []byte{}, wantErr: ErrMalformedAuth}}, 0},
		{"empty_user", []step{{response: []byte("\x00\x00p"), wantErr: ErrMalformedAuth}}, 0},
		{"empty_password", []step{{response: []byte("\x00u\x00"), wantErr: ErrMalformedAuth}}, 0},
		{"invalid_utf8", []step{{response: []byte("\x00u\xff\x00p"), wantErr: ErrMalformedAuth}}, 0},
		{"over_long_password", []step{{response: []byte("\x00u\x00" + strings.Repeat("p", maxSASLField+1)), wantErr: ErrMalformedAuth}}, 0},
		{"response_after_done", []step{
			{response: []byte("\x00u\x00p"), wantDone: true},
			{response: []byte("\x00u\x00p"), wantErr: ErrMalformedAuth},
		}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			runSteps(t, NewPlainServer(r.plain), c.steps)
			if len(r.calls) != c.wantCalls {
				t.Errorf("authenticate called %d times (%q), want %d", len(r.calls), r.calls, c.wantCalls)
			}
		})
	}
}

func TestLoginServer(t *testing.T) {
	cases := []struct {
		name      string
		steps     []step
		wantCalls int
	}{
		{"challenges", []step{
			{response: nil, wantChallenge: "Username:"},
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte("p"), wantDone: true},
		}, 1},
		{"login_initial_response", []step{
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte("p"), wantDone: true},
		}, 1},
		{"empty_initial_response_is_none", []step{
			{response: []byte{}, wantChallenge: "Username:"},
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte("p"), wantDone: true},
		}, 1},
		{"wrong_password", []step{
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte("x"), wantErr: ErrAuthFailed},
		}, 1},
		{"empty_username", []step{
			{response: nil, wantChallenge: "Username:"},
			{response: []byte{}, wantErr: ErrMalformedAuth},
		}, 0},
		{"empty_password", []step{
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte{}, wantErr: ErrMalformedAuth},
		}, 0},
		{"nul_in_username", []step{
			{response: []byte("u\x00v"), wantErr: ErrMalformedAuth},
		}, 0},
		{"response_after_done", []step{
			{response: []byte("u"), wantChallenge: "Password:"},
			{response: []byte("p"), wantDone: true},
			{response: []byte("p"), wantErr: ErrMalformedAuth},
		}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			runSteps(t, NewLoginServer(r.login), c.steps)
			if len(r.calls) != c.wantCalls {
				t.Errorf("authenticate called %d times, want %d", len(r.calls), c.wantCalls)
			}
		})
	}
}

func TestReplyFor(t *testing.T) {
	internal := errors.New("redis: connection refused at 10.1.2.3")
	cases := []struct {
		name string
		in   error
		want error
	}{
		{"nil", nil, nil},
		{"smtp_error_passes", ErrTooManyFailures, ErrTooManyFailures},
		{"wrapped_smtp_error_unwrapped", errors.Join(internal, ErrAuthUnavailable), ErrAuthUnavailable},
		{"internal_error_hidden", internal, ErrAuthFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := replyFor(c.in)
			if got != c.want { // identity: go-smtp needs the bare pointer
				t.Errorf("replyFor(%v) = %v, want %v", c.in, got, c.want)
			}
		})
	}
}
