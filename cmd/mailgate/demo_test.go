package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/peertest"
)

// TestDemoDefault runs the embedded default configuration (what
// `go run ./cmd/mailgate` does), on a free port, and submits a message
// with the printed credentials; it must land in the outbox Maildir.
func TestDemoDefault(t *testing.T) {
	cfg, err := loadConfig("default.hcl", defaultConfig, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.baseDir = dir
	cfg.proxy.Listeners[0].Address = "127.0.0.1:0"
	out := &peertest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	bound := make(chan map[string]string, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), out, func(a map[string]string) { bound <- a })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	var addr string
	select {
	case a := <-bound:
		addr = a["submission"]
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "swaks") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	text := out.String()
	m := regexp.MustCompile(`password: (\S+)`).FindStringSubmatch(text)
	if m == nil || !strings.Contains(text, "curl") || !strings.Contains(text, addr) {
		t.Fatalf("demo banner lacks the password, the address or the curl command:\n%s", text)
	}
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "demo@example.com", m[1])); err != nil {
		t.Fatalf("AUTH with the printed password: %v", err)
	}
	msg := "From: demo@example.com\r\nTo: you@example.net\r\nSubject: demo\r\n\r\nhello\r\n"
	if err := c.SendMail("demo@example.com", []string{"you@example.net"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "mailgate-outbox", "new", "*"))
	if len(files) != 1 {
		t.Fatalf("outbox has %d messages, want 1", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !bytes.Contains(got, []byte("Subject: demo")) || !bytes.Contains(got, []byte("Message-ID: <")) {
		t.Fatalf("outbox message:\n%s", got)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "mailgate-outbox", "tmp", "*")); len(tmp) != 0 {
		t.Errorf("files left in tmp/: %v", tmp)
	}
}
