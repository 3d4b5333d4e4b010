package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mailgate/mailgate/policy"
)

// logList is the repeatable -log flag.
type logList []string

func (l *logList) String() string     { return strings.Join(*l, ",") }
func (l *logList) Set(s string) error { *l = append(*l, s); return nil }

// policyReplay runs "mailgate policy replay". Exit status 0 when no
// replayed decision changed, 1 when one did, 2 on error.
func policyReplay(ctx context.Context, args []string, stdout, stderr io.Writer, load func(string) (policy.Config, string, error)) int {
	fs := flag.NewFlagSet("mailgate policy replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file with the candidate policy block (required)")
	var logs logList
	fs.Var(&logs, "log", "decision log file or glob, plain or .gz (required; repeatable; rotated files oldest first)")
	since := fs.String("since", "", "replay records at or after this time (RFC 3339, a date, or a duration ago like 24h)")
	until := fs.String("until", "", "replay records before this time (same forms as -since)")
	limit := fs.Int("limit", 0, "stop after this many replayed decisions (0: all)")
	format := fs.String("format", "text", "output: text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" || len(logs) == 0 || fs.NArg() > 0 || (*format != "text" && *format != "json") || *limit < 0 {
		fs.Usage()
		return 2
	}
	now := time.Now()
	var opts policy.ReplayOptions
	var err error
	if opts.Since, err = parseReplayTime(*since, now); err != nil {
		fmt.Fprintln(stderr, "mailgate policy replay: -since:", err)
		return 2
	}
	if opts.Until, err = parseReplayTime(*until, now); err != nil {
		fmt.Fprintln(stderr, "mailgate policy replay: -until:", err)
		return 2
	}
	opts.Limit = *limit
	files, err := expandLogs(logs)
	if err != nil {
		fmt.Fprintln(stderr, "mailgate policy replay:", err)
		return 2
	}
	cfg, baseDir, err := load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	p, err := policy.NewForReplay(cfg, baseDir, policy.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer p.Close()
	if p.Revisions() != nil {
		// Bundle engines: replay with what the server has now.
		if err := p.Reload(); err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
	}
	prog := newProgress(stderr, files)
	opts.Progress = prog.update
	r := policy.NewReplayer(p, opts)
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			prog.clear()
			fmt.Fprintln(stderr, "mailgate policy replay:", err)
			return 2
		}
		prog.file = name
		err = r.Feed(ctx, f)
		f.Close()
		if err != nil {
			prog.clear()
			fmt.Fprintf(stderr, "mailgate policy replay: %s: %v\n", name, err)
			return 2
		}
	}
	prog.clear()
	rep := r.Report()
	if rep.Replayed == 0 && rep.Lines > 0 && rep.Unparsable == rep.Lines {
		// Single bad lines are skipped; a log with no record at all is
		// the wrong file, and must not pass a CI gate as "no change".
		fmt.Fprintf(stderr, "mailgate policy replay: none of the %d lines is a decision record\n", rep.Lines)
		return 2
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
	} else {
		policy.WriteReplayReport(stdout, rep, *cfgPath)
	}
	if rep.Changed > 0 {
		return 1
	}
	return 0
}

// parseReplayTime reads an RFC 3339 time, a date (UTC midnight) or a
// duration before now; "" is the zero time (no bound).
func parseReplayTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time, a date (2006-01-02) or a duration like 24h", s)
}

// expandLogs expands each -log argument as a glob. The files of one glob
// are ordered by modification time, oldest first (a rotated
// decisions.jsonl.2.gz before decisions.jsonl.1 before decisions.jsonl);
// the arguments keep their order. A pattern matching nothing is an error.
func expandLogs(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		m, err := filepath.Glob(a)
		if err != nil {
			return nil, fmt.Errorf("-log %q: %w", a, err)
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("-log %q: no such file", a)
		}
		mtime := make(map[string]time.Time, len(m))
		for _, f := range m {
			fi, err := os.Stat(f)
			if err != nil {
				return nil, err
			}
			if fi.IsDir() {
				return nil, fmt.Errorf("-log %q: %s is a directory", a, f)
			}
			mtime[f] = fi.ModTime()
		}
		sort.SliceStable(m, func(i, j int) bool {
			if !mtime[m[i]].Equal(mtime[m[j]]) {
				return mtime[m[i]].Before(mtime[m[j]])
			}
			return m[i] > m[j] // same time: .2 before .1
		})
		out = append(out, m...)
	}
	return out, nil
}

// progress writes a progress line to stderr when it is a terminal, at most
// a few times a second.
type progress struct {
	w     io.Writer // nil: not a terminal
	total int64     // bytes of all files
	file  string
	last  time.Time
	shown bool
}

func newProgress(stderr io.Writer, files []string) *progress {
	f, ok := stderr.(*os.File)
	if !ok {
		return &progress{}
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return &progress{}
	}
	p := &progress{w: stderr}
	for _, name := range files {
		if fi, err := os.Stat(name); err == nil {
			p.total += fi.Size()
		}
	}
	return p
}

func (p *progress) update(r policy.ReplayReport) {
	if p.w == nil || time.Since(p.last) < 250*time.Millisecond {
		return
	}
	p.last = time.Now()
	pct := 0.0
	if p.total > 0 {
		pct = 100 * float64(r.BytesRead) / float64(p.total)
	}
	fmt.Fprintf(p.w, "\r\033[Kreplaying %s: %d lines, %d changed (%.0f%%)", filepath.Base(p.file),
		r.Lines, r.Changed, pct)
	p.shown = true
}

func (p *progress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}
