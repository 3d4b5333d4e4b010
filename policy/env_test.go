package policy

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// The test environment of package policy: a Policy built from a Config and
// policy files written to a temporary directory, input documents for each
// stage, and evaluate.

// writeFiles creates files (name → content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newPolicy builds a Policy from cfg with files written to a temp dir.
func newPolicy(t *testing.T, cfg Config, files map[string]string, opts ...Option) *Policy {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	p, err := New(cfg, dir, append([]Option{WithLogger(quietLogger())}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mailInput(user, from string) Input {
	in := Input{Stage: StageMail, Session: Session{ID: "s1", Listener: "submission", ClientIP: "192.0.2.1", HELO: "h"},
		Envelope: Envelope{From: from}}
	if user != "" {
		in.Auth = &Auth{User: user, Mechanism: "PLAIN"}
	}
	return in
}

func rcptInput(user, from, to string, n int) Input {
	in := mailInput(user, from)
	in.Stage = StageRcpt
	for i := range n {
		in.Envelope.Recipients = append(in.Envelope.Recipients, "r"+string(rune('a'+i%26))+"@example.com")
	}
	in.Rcpt = &Rcpt{Address: to}
	return in
}

func dataInput(user, from string, fromHdr []string, headers map[string][]string) Input {
	in := mailInput(user, from)
	in.Stage = StageData
	in.Envelope.Recipients = []string{"x@example.org"}
	in.Message = &Message{Headers: headers, FromAddresses: fromHdr, Size: 1000}
	return in
}

func evaluate(t *testing.T, p *Policy, in Input) Decision {
	t.Helper()
	d, err := p.Evaluate(context.Background(), in)
	if err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	return d
}
