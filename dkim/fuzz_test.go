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

// FuzzPlainFromDomain checks the allocation-free path for plain From
// values against net/mail: whatever it accepts, net/mail parses to the
// same domain. The seed corpus is under
// testdata/fuzz/FuzzPlainFromDomain.
func FuzzPlainFromDomain(f *testing.F) {
	for _, s := range []string{
		"a@example.com", "Alice <alice@example.com>", "Alice Smith <a.b+c_d@sub.example-x.com>  ",
		"<a@example.com>", "a..b@example.com", ".a@example.com", "a.@example.com", "a@.example.com",
		"a@example.com.", "Alice  <a@example.com>", "Alice<a@example.com>", " <a@example.com>",
		"A.B. <a@example.com>", "a@b@example.com", "a@example.com, b@example.org", "=?utf-8?q?x?= <a@example.com>",
		"\"A\" <a@example.com>", "a@example.com (A)", "A <a@example.com> x", "a@[192.0.2.1]", "-@-", "a@-example.com",
		"Alice <a@example.com", "Alice a@example.com>", "Alice <<a@example.com>>", "g: a@example.com;",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		fast, ok := plainFromDomain(v)
		if !ok {
			return
		}
		slow, err := parsedFromDomain(v)
		if err != nil {
			t.Fatalf("plainFromDomain(%q) = %q, net/mail refuses it: %v", v, fast, err)
		}
		if fast != slow {
			t.Fatalf("plainFromDomain(%q) = %q, net/mail %q", v, fast, slow)
		}
	})
}

// TestPlainFromDomain pins which From values take the path without
// net/mail; FuzzPlainFromDomain checks they agree with it.
func TestPlainFromDomain(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"a@example.com", "example.com", true},
		{"Alice <alice@Example.COM>", "Example.COM", true},
		{"Alice B. Smith <a.b+c_d@sub.example-x.com>  \t", "sub.example-x.com", true},
		{"<a@example.com>", "example.com", true},
		{"a..b@example.com", "", false},
		{"a@example.com, b@example.org", "", false},
		{"=?utf-8?q?x?= <a@example.com>", "", false},
		{"\"a@evil.test\"@example.com", "", false},
		{"a@example.com (A)", "", false},
		{"Alice  <a@example.com>", "", false},
		{"a@b\xc3\xbccher.example", "", false},
		{"g: a@example.com;", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := plainFromDomain(tc.in)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("plainFromDomain = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
			if ok {
				if slow, err := parsedFromDomain(tc.in); err != nil || slow != got {
					t.Fatalf("net/mail: %q, %v", slow, err)
				}
			}
		})
	}
}
