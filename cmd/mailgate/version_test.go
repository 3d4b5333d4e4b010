package main

import (
	"bytes"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/dkim"
)

func TestVersionCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	// The default build has crypto/rsa only; -tags openssl adds OpenSSL
	// and auto picks it (CI tests both builds).
	backends := "\ndkim rsa backends: go; auto uses: go\n"
	if slices.Contains(dkim.RSABackends(), "openssl") {
		backends = "\ndkim rsa backends: go, openssl (OpenSSL "
	}
	for _, want := range []string{"mailgate ", "\ncommit: ", "\ngo: " + runtime.Version() + "\n", backends} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if code := run([]string{"version", "extra"}, nil, &out, &errb); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
}

func TestBuildInfoWrite(t *testing.T) {
	var b bytes.Buffer
	buildInfo{Version: "v1.2.3", Commit: "abc123", Modified: true, GoVersion: "go1.26.8",
		RSABackends: []string{"go", "openssl"}, OpenSSL: "OpenSSL 3.0.22 25 Aug 2026", RSADefault: "openssl"}.write(&b)
	want := "mailgate v1.2.3\ncommit: abc123 (modified)\ngo: go1.26.8\ndkim rsa backends: go, openssl (OpenSSL 3.0.22 25 Aug 2026); auto uses: openssl\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
