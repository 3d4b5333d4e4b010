package outbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOutboxWritesMaildir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "box")
	o, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := o.Begin(context.Background(), "", "a@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.Rcpt(context.Background(), "b@example.net", nil)
	tx.Rcpt(context.Background(), "c@example.net", nil)
	if _, err := tx.Data(context.Background(), strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	if len(files) != 1 {
		t.Fatalf("new/ has %d files", len(files))
	}
	b, _ := os.ReadFile(files[0])
	want := "Return-Path: <a@example.com>\r\nX-Original-To: b@example.net, c@example.net\r\nSubject: x\r\n\r\nbody\r\n"
	if string(b) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
	if _, err := o.Begin(context.Background(), "elsewhere", "a@example.com", nil); err == nil {
		t.Fatal("unknown route accepted")
	}
}

// TestOutboxWithSavedNamesTheFileInNew: the callback gets the path of the
// finished file in new/, never of the partial one in tmp/.
func TestOutboxWithSavedNamesTheFileInNew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "box")
	var saved []string
	o, err := New(dir, WithSaved(func(p string) { saved = append(saved, p) }))
	if err != nil {
		t.Fatal(err)
	}
	tx, err := o.Begin(context.Background(), "", "a@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.Rcpt(context.Background(), "b@example.net", nil)
	if _, err := tx.Data(context.Background(), strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	if len(saved) != 1 || len(files) != 1 || saved[0] != files[0] {
		t.Fatalf("saved %v, new/ holds %v", saved, files)
	}
}
