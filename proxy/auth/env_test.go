package auth

import (
	"os"
	"path/filepath"
	"testing"
)

// The test environment of package auth shared by its test files; the
// authenticator's own (startEnv, dial) lives beside its tests in
// authenticator_test.go, and external tools come from internal/peertest.

// writeFile writes content to name in a fresh temp dir and returns its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
