package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/proxy/auth"
)

func TestPasswdMain(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		stdin     string
		wantCode  int
		wantUser  string // "" for a bare hash
		password  string // that the printed hash must verify
		wantError string
	}{
		{"bare_hash", nil, "s3cret\n", 0, "", "s3cret", ""},
		{"crlf_stripped", nil, "s3cret\r\n", 0, "", "s3cret", ""},
		{"no_newline", nil, "s3cret", 0, "", "s3cret", ""},
		{"first_line_only", nil, "first\nsecond\n", 0, "", "first", ""},
		{"spaces_kept", nil, " pass word \n", 0, "", " pass word ", ""},
		{"longest_accepted", nil, strings.Repeat("y", auth.MaxPasswordLen) + "\r\n", 0, "", strings.Repeat("y", auth.MaxPasswordLen), ""},
		{"with_user", []string{"-user", "Alice@Example.com"}, "pw\n", 0, "alice@example.com", "pw", ""},
		{"empty_refused", nil, "\n", 1, "", "", "empty password"},
		{"no_input_refused", nil, "", 1, "", "", "empty password"},
		{"too_long_refused", nil, strings.Repeat("x", auth.MaxPasswordLen+1) + "\n", 1, "", "", "longer than"},
		{"huge_input_refused", nil, strings.Repeat("x", 1<<20), 1, "", "", "longer than"},
		{"bad_user", []string{"-user", "a:b"}, "pw\n", 2, "", "", "-user"},
		{"extra_args", []string{"x"}, "pw\n", 2, "", "", "usage"},
		{"bad_flag", []string{"-nope"}, "pw\n", 2, "", "", "not defined"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := passwdMain(c.args, strings.NewReader(c.stdin), &out, &errb)
			if code != c.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, c.wantCode, errb.String())
			}
			if c.wantError != "" {
				if !strings.Contains(errb.String(), c.wantError) || out.Len() != 0 {
					t.Errorf("stderr %q (stdout %q), want %q", errb.String(), out.String(), c.wantError)
				}
				if pw := strings.TrimSpace(c.stdin); pw != "" && strings.Contains(errb.String(), pw) {
					t.Errorf("stderr echoes the password")
				}
				return
			}
			// The output is a users file line that LoadUsers accepts and
			// whose hash verifies the password.
			line := strings.TrimSuffix(out.String(), "\n")
			user := c.wantUser
			if user == "" {
				user = "someone"
				line = user + ":" + line
			}
			p := filepath.Join(t.TempDir(), "users")
			if err := os.WriteFile(p, []byte(line+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			u, err := auth.LoadUsers(p)
			if err != nil {
				t.Fatalf("LoadUsers(%q): %v", line, err)
			}
			if got, ok := u.Verify(user, c.password); !ok || got != user {
				t.Errorf("printed hash does not verify %q for %q", c.password, user)
			}
			if _, ok := u.Verify(user, c.password+"x"); ok {
				t.Error("printed hash verifies a wrong password")
			}
		})
	}
}
