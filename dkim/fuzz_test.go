package dkim

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzSigningDomain fuzzes the header parser and From domain extraction.
// The seed corpus is under testdata/fuzz/FuzzSigningDomain; run with
// go test -fuzz FuzzSigningDomain ./dkim.
func FuzzSigningDomain(f *testing.F) {
	for _, s := range []string{
		"From: a@example.com\r\n\r\n",
		"From: \"A, B\" <a@Example.COM>\r\nTo: b@example.net\r\n\r\nbody\r\n",
		"From: a@example.com\r\nFrom: b@example.com\r\n\r\n",
		"From: a@example.com, b@example.org\r\n\r\n",
		"from:\r\n =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>\r\n\r\n",
		"From: g: a@example.com;\r\n\r\n",
		"From: a@[192.0.2.1]\r\n\r\n",
		"\tFrom: a@example.com\r\n\r\n",
		"From: a@example.com\n\n",
		"Subject: no from\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, header []byte) {
		d, err := SigningDomain(header)
		if err != nil {
			if !errors.Is(err, ErrFromHeader) && !errors.Is(err, ErrHeader) && !errors.Is(err, ErrLineEnding) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			if d != "" {
				t.Fatalf("domain %q with error", d)
			}
			return
		}
		if d == "" || d != strings.ToLower(d) || strings.HasSuffix(d, ".") {
			t.Fatalf("domain %q not normalized", d)
		}
		for i := 0; i < len(d); i++ {
			if d[i] >= 0x80 {
				t.Fatalf("domain %q not in A-labels", d)
			}
		}
		if n, err := normalizeDomain(d); err != nil || n != d {
			t.Fatalf("normalizeDomain(%q) = %q, %v", d, n, err)
		}
		if !bytes.Contains(bytes.ToLower(header), []byte("from")) {
			t.Fatalf("domain %q from a header without From", d)
		}
	})
}

func TestSigningDomain(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{"From: a@example.com\r\n\r\n", "example.com", nil},
		{"From: a@example.com\r\n", "example.com", nil},
		{"From : a@example.com\r\n", "example.com", nil},
		{"From:\r\n  Alice\r\n <a@Sub.Example.COM>\r\n\r\n", "sub.example.com", nil},
		{"From: a@b\xc3\xbccher.example\r\n", "xn--bcher-kva.example", nil},
		{"From: \"a@evil.test\"@example.com\r\n", "example.com", nil},
		// net/mail refuses CFWS inside an addr-spec (RFC 5322 obs syntax): refused, not guessed.
		{"From: a@(comment)example.com (x)\r\n", "", ErrFromHeader},
		{"From: a@example.com (Alice)\r\n", "example.com", nil},
		{"To: a@example.com\r\n", "", ErrFromHeader},
		{"From: a@example.com\r\nfrom: a@example.com\r\n", "", ErrFromHeader},
		{" continuation first\r\n", "", ErrHeader},
		{"no colon here\r\n", "", ErrHeader},
		{"From: a@example.com\n", "", ErrLineEnding},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			d, err := SigningDomain([]byte(tc.in))
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if d != tc.want {
				t.Fatalf("domain %q, want %q", d, tc.want)
			}
		})
	}
}
