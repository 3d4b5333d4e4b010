package policy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// readRecords returns the decision records of the files, in order.
func readRecords(t *testing.T, paths ...string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
			}
			out = append(out, m)
		}
		f.Close()
	}
	return out
}

func logPolicy(t *testing.T, cfg Config, files map[string]string, opts ...Option) (*Policy, string) {
	t.Helper()
	cfg.DecisionLog = "decisions.jsonl"
	p := newPolicy(t, cfg, files, opts...)
	return p, filepath.Join(p.baseDir, "decisions.jsonl")
}

func TestDecisionLog_VersionAndHeaders(t *testing.T) {
	for _, logHeaders := range []bool{true, false} {
		t.Run(fmt.Sprintf("log_headers=%v", logHeaders), func(t *testing.T) {
			p, path := logPolicy(t, Config{LogHeaders: &logHeaders}, nil)
			in := dataInput("", "app@example.com", []string{"app@example.com"},
				map[string][]string{"subject": {"salary review"}, "received": {"a", "b"}})
			evaluate(t, p, in)
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			recs := readRecords(t, path)
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1", len(recs))
			}
			rec := recs[0]
			if rec["version"] != float64(DecisionLogVersion) {
				t.Errorf("version = %v, want %d", rec["version"], DecisionLogVersion)
			}
			hs := rec["input"].(map[string]any)["message"].(map[string]any)["headers"].(map[string]any)
			subj, recv := fmt.Sprint(hs["subject"]), fmt.Sprint(hs["received"])
			if logHeaders {
				if subj != "[salary review]" || recv != "[a b]" || rec["headers_omitted"] != nil {
					t.Errorf("headers %v, headers_omitted %v: want the values", hs, rec["headers_omitted"])
				}
			} else if subj != "[]" || recv != "[ ]" || rec["headers_omitted"] != true {
				t.Errorf("headers %v, headers_omitted %v: want names and counts, values blank", hs, rec["headers_omitted"])
			}
			if got := in.Message.Headers["subject"][0]; got != "salary review" {
				t.Errorf("caller's input changed: %q", got)
			}
		})
	}
}

// TestDecisionLog_ReopenUnderLoad: while 8 goroutines decide, the log is
// renamed and reopened (logrotate's rename + SIGHUP) three times: the
// files hold exactly one line per decision.
func TestDecisionLog_ReopenUnderLoad(t *testing.T) {
	p, path := logPolicy(t, Config{}, nil)
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				in := mailInput("", fmt.Sprintf("w%d-%d@example.com", w, i))
				if _, err := p.Evaluate(context.Background(), in); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var files []string
	for i := range 3 {
		rotated := fmt.Sprintf("%s.%d", path, i)
		if err := os.Rename(path, rotated); err != nil {
			t.Fatal(err)
		}
		files = append(files, rotated)
		if err := p.ReopenDecisionLog(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	files = append(files, path)
	recs := readRecords(t, files...)
	seen := map[string]bool{}
	for _, r := range recs {
		seen[r["input"].(map[string]any)["envelope"].(map[string]any)["from"].(string)] = true
	}
	if len(recs) != workers*each || len(seen) != workers*each {
		t.Fatalf("%d lines, %d distinct decisions across %d files, want %d", len(recs), len(seen), len(files), workers*each)
	}
	if err := p.ReopenDecisionLog(); !errors.Is(err, errClosed) {
		t.Errorf("reopen after Close: %v, want errClosed", err)
	}
}

// TestDecisionLog_SlowDiskNeverStalls: the log is a FIFO nobody reads (a
// disk that stopped): Evaluate keeps returning, the records that do not
// fit in the queue are counted as dropped, and once the reader drains the
// FIFO, lines written + dropped = decisions.
func TestDecisionLog_SlowDiskNeverStalls(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "decisions.jsonl")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	type result struct {
		lines int
		err   error
	}
	opened := make(chan *os.File, 1)
	read := make(chan result, 1)
	release := make(chan struct{})
	go func() {
		f, err := os.Open(path) // pairs with the log's open
		if err != nil {
			read <- result{err: err}
			return
		}
		opened <- f
		<-release // the disk is stuck until then
		n := 0
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			n++
		}
		read <- result{n, sc.Err()}
	}()
	p, err := New(Config{DecisionLog: path}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	f := <-opened
	defer f.Close()
	const total = decisionLogQueue * 3
	for i := range total {
		evaluate(t, p, mailInput("", fmt.Sprintf("u%d@example.com", i)))
	}
	dropped := p.dlog.dropped.Load()
	if dropped == 0 {
		t.Fatalf("no record dropped with the disk stuck for %d decisions", total)
	}
	if got := counterValue(t, p, "mailgate_policy_decision_log_dropped_total", nil); uint64(got) != dropped {
		t.Errorf("mailgate_policy_decision_log_dropped_total = %v, want %d", got, dropped)
	}
	// SIGHUP on a stuck disk: the reopen does not hang the reload.
	p.dlog.reopenWait = 50 * time.Millisecond
	if err := p.ReopenDecisionLog(); !errors.Is(err, errReopenPending) {
		t.Errorf("reopen on a stuck disk: %v, want errReopenPending", err)
	}
	close(release)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	r := <-read
	if r.err != nil {
		t.Fatal(r.err)
	}
	if uint64(r.lines)+dropped != total {
		t.Fatalf("%d lines written + %d dropped != %d decisions", r.lines, dropped, total)
	}
	if !strings.Contains(ErrDecisionLogFull.Error(), "dropped") {
		t.Error("ErrDecisionLogFull should say the record was dropped")
	}
}

// counterValue gathers p's metrics and returns the counter name with the
// labels (all of them given), or -1 when there is none.
func counterValue(t testing.TB, p *Policy, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.Metric {
			if len(m.Label) != len(labels) {
				continue
			}
			for _, l := range m.Label {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m.Counter.GetValue()
		}
	}
	return -1
}
