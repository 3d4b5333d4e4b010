package auth

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// needTool returns the path of an external tool, skipping the test loudly
// when it is missing, or failing it when CI=true (CI must have it).
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("required tool %q not found in PATH (CI=true): %v", name, err)
		}
		t.Skipf("SKIPPING: tool %q not installed (%v); install it to run this test", name, err)
	}
	return p
}

// writeFile writes content to name in a fresh temp dir and returns its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
