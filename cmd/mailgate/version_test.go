package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"mailgate ", "\ncommit: ", "\ngo: " + runtime.Version() + "\n", "\ndkim rsa backend: go\n"} {
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
	buildInfo{Version: "v1.2.3", Commit: "abc123", Modified: true, GoVersion: "go1.26.8", RSABackend: "go"}.write(&b)
	want := "mailgate v1.2.3\ncommit: abc123 (modified)\ngo: go1.26.8\ndkim rsa backend: go\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
