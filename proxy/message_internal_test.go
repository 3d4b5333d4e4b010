package proxy

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/proxy/replies"
)

func TestReadHeader(t *testing.T) {
	msg := "From: a@example.com\r\nSubject: folded\r\n  continued\r\nBcc: x@y\r\n\r\nbody\r\n"
	br := bufio.NewReader(strings.NewReader(msg))
	h, err := readHeader(br, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.policyView(0).Headers["subject"]; len(got) != 1 || got[0] != "folded  continued" {
		t.Errorf("subject %q", got)
	}
	rest := new(bytes.Buffer)
	rest.ReadFrom(br)
	if rest.String() != "body\r\n" {
		t.Errorf("body %q", rest.String())
	}
	if h.remove("BCC") != 1 || h.has("bcc") {
		t.Error("remove")
	}
	for name, bad := range map[string]string{
		"continuation_first": " x\r\n\r\n",
		"no_colon":           "From a@example.com\r\n\r\n",
		"space_in_name":      "Bad Name: x\r\n\r\n",
	} {
		if _, err := readHeader(bufio.NewReader(strings.NewReader(bad)), 1000); err != replies.BadHeader {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := readHeader(bufio.NewReader(strings.NewReader(strings.Repeat("X-A: b\r\n", 200)+"\r\n")), 1000); err != replies.HeaderTooBig {
		t.Errorf("big header: %v", err)
	}
}

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"))
	f.Add([]byte("A: b\r\n c\r\n\r\n"))
	f.Add([]byte("\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(bufio.NewReader(bytes.NewReader(data)), 4096)
		if err != nil {
			return
		}
		// What is relayed is exactly what was read: no field gains or
		// loses bytes, and every field ends in CRLF.
		out := h.bytes()
		if !bytes.HasPrefix(data, out[:len(out)-2]) {
			t.Fatalf("header changed: %q → %q", data, out)
		}
		for _, fl := range h.fields {
			if !bytes.HasSuffix(fl.raw, []byte("\r\n")) {
				t.Fatalf("field without CRLF: %q", fl.raw)
			}
		}
		_ = h.policyView(int64(len(data)))
	})
}
