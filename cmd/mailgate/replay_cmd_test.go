package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseReplayTime(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		err  bool
	}{
		{"", time.Time{}, false},
		{"2026-12-01T08:30:00Z", time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC), false},
		{"2026-12-01T08:30:00+01:00", time.Date(2026, 12, 1, 7, 30, 0, 0, time.UTC), false},
		{"2026-12-01", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), false},
		{"24h", now.Add(-24 * time.Hour), false},
		{"-24h", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseReplayTime(tt.in, now)
		if (err != nil) != tt.err || !got.Equal(tt.want) {
			t.Errorf("parseReplayTime(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

// TestExpandLogs: a glob over rotated logs comes back oldest first, by
// modification time, whatever the names sort like.
func TestExpandLogs(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	for i, name := range []string{"decisions.jsonl.10.gz", "decisions.jsonl.2.gz", "decisions.jsonl.1", "decisions.jsonl"} {
		p := filepath.Join(dir, name)
		writeFile(t, p, "")
		mt := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	got, err := expandLogs([]string{filepath.Join(dir, "decisions.jsonl*")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i] = filepath.Base(got[i])
	}
	if want := "decisions.jsonl.10.gz decisions.jsonl.2.gz decisions.jsonl.1 decisions.jsonl"; strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	if _, err := expandLogs([]string{filepath.Join(dir, "other*")}); err == nil {
		t.Error("a glob matching nothing is not an error")
	}
	if _, err := expandLogs([]string{dir}); err == nil {
		t.Error("a directory is not an error")
	}
}
