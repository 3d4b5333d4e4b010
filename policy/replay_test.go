package policy

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

const blockSpam = `rule "block" {
  stage   = "mail"
  when    = contains(["spam@example.com"], envelope.from)
  action  = "reject"
  message = "blocked"
}
rule "paused" {
  stage  = "rcpt"
  when   = rcpt.domain == "paused.example"
  action = "defer"
}
`

// blockSpamAndBad is blockSpam with one rule changed.
var blockSpamAndBad = strings.Replace(blockSpam, `["spam@example.com"]`, `["spam@example.com", "bad@example.com"]`, 1)

// replayFixture decides a small traffic mix with policy A into a decision
// log and returns its bytes.
func replayFixture(t *testing.T) []byte {
	t.Helper()
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	clock := func() time.Time { n++; return start.Add(time.Duration(n) * time.Minute) }
	p, path := logPolicy(t, Config{Rules: []RulesConfig{{Name: "local", Path: "a.hcl"}}},
		map[string]string{"a.hcl": blockSpam}, WithClock(clock))
	for i, from := range []string{"good@example.com", "bad@example.com", "spam@example.com", "bad@example.com", "other@example.com"} {
		in := mailInput("", from)
		in.Session.ID = fmt.Sprintf("s%d", i)
		evaluate(t, p, in)
		rin := rcptInput("", from, "x@paused.example", 0)
		rin.Session.ID = in.Session.ID
		evaluate(t, p, rin)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func replayWith(t *testing.T, rules string, opts ReplayOptions, logs ...[]byte) ReplayReport {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"b.hcl": rules})
	p, err := NewForReplay(Config{Rules: []RulesConfig{{Name: "local", Path: "b.hcl"}}}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := NewReplayer(p, opts)
	for _, l := range logs {
		if err := r.Feed(context.Background(), bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
	}
	return r.Report()
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReplay(t *testing.T) {
	log := replayFixture(t)
	t.Run("same policy: nothing changed", func(t *testing.T) {
		rep := replayWith(t, blockSpam, ReplayOptions{}, log)
		if rep.Replayed != 10 || rep.Changed != 0 || rep.Unchanged[StageMail] != 5 || rep.Unchanged[StageRcpt] != 5 || rep.Unparsable != 0 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("one rule changed: exactly the affected decisions", func(t *testing.T) {
		rep := replayWith(t, blockSpamAndBad, ReplayOptions{}, log)
		if rep.Changed != 2 || len(rep.Changes) != 1 || rep.Unchanged[StageMail] != 3 || rep.Unchanged[StageRcpt] != 5 {
			t.Fatalf("%+v", rep)
		}
		c := rep.Changes[0]
		if c.Label() != "accept → reject (rules:local/block)" || c.Decisions != 2 || c.Senders != 1 || len(c.Examples) != 2 ||
			c.Examples[0].From != "bad@example.com" || c.Examples[0].Session != "s1" || c.Examples[1].Session != "s3" {
			t.Fatalf("change %s %+v", c.Label(), c)
		}
	})
	t.Run("the reverse change names the rule that no longer refuses", func(t *testing.T) {
		rep := replayWith(t, strings.Replace(blockSpam, `"spam@example.com"`, `"nobody@example.com"`, 1), ReplayOptions{}, log)
		if rep.Changed != 1 || rep.Changes[0].Label() != "reject → accept (was rules:local/block)" {
			t.Fatalf("%+v", rep.Changes)
		}
	})
	t.Run("garbage and a truncated last line are counted, not fatal", func(t *testing.T) {
		lines := bytes.SplitAfter(log, []byte("\n"))
		var bad []byte
		bad = append(bad, lines[0]...)
		bad = append(bad, "this is not json\n\n"...)
		for _, l := range lines[1 : len(lines)-2] {
			bad = append(bad, l...)
		}
		last := lines[len(lines)-2]
		bad = append(bad, last[:len(last)/2]...) // the writer died mid-line
		rep := replayWith(t, blockSpamAndBad, ReplayOptions{}, bad)
		if rep.Unparsable != 2 || rep.Replayed != 9 || rep.Changed != 2 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("gzip", func(t *testing.T) {
		rep := replayWith(t, blockSpamAndBad, ReplayOptions{}, gz(t, log))
		if rep.Replayed != 10 || rep.Changed != 2 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("truncated gzip replays what it holds", func(t *testing.T) {
		z := gz(t, bytes.Repeat(log, 50))
		rep := replayWith(t, blockSpam, ReplayOptions{}, z[:len(z)/2])
		if rep.TruncatedFiles != 1 || rep.Replayed == 0 || rep.Changed != 0 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("rotated files in order", func(t *testing.T) {
		lines := bytes.SplitAfter(log, []byte("\n"))
		rep := replayWith(t, blockSpamAndBad, ReplayOptions{}, gz(t, bytes.Join(lines[:4], nil)), bytes.Join(lines[4:], nil))
		if rep.Files != 2 || rep.Replayed != 10 || rep.Changed != 2 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("since, until, limit", func(t *testing.T) {
		// Records are one minute apart from 00:01; bad@ decides at 00:03 and 00:07.
		day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		rep := replayWith(t, blockSpamAndBad, ReplayOptions{Since: day.Add(4 * time.Minute), Until: day.Add(9 * time.Minute)}, log)
		if rep.Replayed != 5 || rep.OutOfRange != 5 || rep.Changed != 1 {
			t.Fatalf("%+v", rep)
		}
		rep = replayWith(t, blockSpamAndBad, ReplayOptions{Limit: 4}, log)
		if rep.Replayed != 4 || rep.Changed != 1 {
			t.Fatalf("limit: %+v", rep)
		}
	})
	t.Run("versions", func(t *testing.T) {
		lines := bytes.SplitAfter(log, []byte("\n"))
		newer := bytes.Replace(lines[0], []byte(`"version":1,`), []byte(`"version":2,`), 1)
		older := bytes.Replace(lines[1], []byte(`"version":1,`), nil, 1) // written before the field existed
		newerInput := bytes.Replace(lines[2], []byte(`"input":{"version":1`), []byte(`"input":{"version":2`), 1)
		if bytes.Equal(newer, lines[0]) || bytes.Equal(older, lines[1]) || bytes.Equal(newerInput, lines[2]) {
			t.Fatal("fixture lines changed shape")
		}
		rep := replayWith(t, blockSpam, ReplayOptions{}, bytes.Join([][]byte{newer, older, newerInput}, nil))
		if rep.NewerVer != 2 || rep.Replayed != 1 || rep.Changed != 0 {
			t.Fatalf("%+v", rep)
		}
	})
}

// TestReplay_Deterministic: a Rego rule reading the clock decides on the
// logged time, and quota-dependent rules on the logged quota levels.
func TestReplay_Deterministic(t *testing.T) {
	dir := t.TempDir()
	cutoff := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	writeFiles(t, dir, map[string]string{
		"p.rego": fmt.Sprintf("package mailgate\ndeny contains {\"msg\": \"too late\", \"id\": \"late\"} if time.now_ns() > %d\n", cutoff.UnixNano()),
		"r.hcl": `rule "nearly-full" {
  stage  = "mail"
  when   = length(quota) > 0 && quota["hourly"].messages[0].remaining < 2
  action = "defer"
}
`,
	})
	p, err := NewForReplay(Config{Rego: []RegoConfig{{Name: "org", Path: "p.rego", AllowIO: true}},
		Rules: []RulesConfig{{Name: "local", Path: "r.hcl"}}}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	quota := `{"hourly":{"key":"a","action":"defer","exceeded":false,"messages":[{"window":"10/1h","limit":10,"used":%d,"remaining":%d,"retry_after":0}],"recipients":[],"new_recipients":[]}}`
	rec := func(when time.Time, outcome, engine, rule string, code int, enh string, used int) string {
		return fmt.Sprintf(`{"version":1,"time":%q,"session":"s","stage":"mail","engine":%q,"rule":%q,"outcome":%q,"code":%d,"enhanced_code":%q,"dry_run":false,"input":{"version":1,"stage":"mail","session":{"id":"s","listener":"relay","client_ip":"192.0.2.1","helo":"h","tls":null},"auth":null,"envelope":{"from":"a@example.com","from_domain":"example.com","recipients":[],"size":0,"smtputf8":false},"quota":%s}}`+"\n",
			when.Format(time.RFC3339Nano), engine, rule, outcome, code, enh, fmt.Sprintf(quota, used, 10-used))
	}
	var log bytes.Buffer
	log.WriteString(rec(cutoff.Add(-time.Hour), "accept", "", "", 0, "", 1))
	log.WriteString(rec(cutoff.Add(time.Hour), "reject", "rego:org", "late", 550, "5.7.1", 1))
	log.WriteString(rec(cutoff.Add(-time.Hour), "defer", "rules:local", "nearly-full", 451, "4.7.1", 9))
	// The quota store was down: a defer no candidate could change.
	log.WriteString(rec(cutoff.Add(-time.Hour), "defer", "quota", "hourly", 451, "4.7.1", 0))
	r := NewReplayer(p, ReplayOptions{})
	if err := r.Feed(context.Background(), &log); err != nil {
		t.Fatal(err)
	}
	rep := r.Report()
	if rep.Replayed != 3 || rep.Changed != 0 || rep.Unparsable != 0 || rep.QuotaUnavailable != 1 {
		t.Fatalf("%+v %+v", rep, rep.Changes)
	}
}

// TestReplay_BoundedMemory: the heap after replaying 40,000 records (a
// log of tens of MB, one sender in ten refused by the candidate) is within
// a few MB of the heap after the first 4,000: replay streams.
func TestReplay_BoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a large log")
	}
	const records = 40000
	path := filepath.Join(t.TempDir(), "big.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 1500)
	for i := range records {
		from := fmt.Sprintf("user%d@example.com", i)
		if i%10 == 0 {
			from = fmt.Sprintf("bad%d@bad.example", i)
		}
		fmt.Fprintf(f, `{"version":1,"time":"2026-12-01T00:00:00Z","session":"s%d","stage":"data","outcome":"accept","dry_run":false,"input":{"version":1,"stage":"data","session":{"id":"s%d","listener":"relay","client_ip":"192.0.2.1","helo":"h","tls":null},"auth":null,"envelope":{"from":%q,"from_domain":"","recipients":["r@example.net"],"size":2000,"smtputf8":false},"message":{"headers":{"subject":[%q]},"from_addresses":[],"size":2000},"quota":{}}}`+"\n",
			i, i, from, pad)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"r.hcl": `rule "bad" {
  stage  = "data"
  when   = endswith(envelope.from, "@bad.example")
  action = "reject"
}
`})
	p, err := NewForReplay(Config{Rules: []RulesConfig{{Name: "local", Path: "r.hcl"}}}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var early, late uint64
	r := NewReplayer(p, ReplayOptions{Progress: func(rep ReplayReport) {
		switch rep.Lines {
		case 4000:
			early = heap()
		case records:
			late = heap()
		}
	}})
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := r.Feed(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	rep := r.Report()
	if rep.Replayed != records || rep.Changed != records/10 || rep.Changes[0].Senders != records/10 {
		t.Fatalf("%+v", rep)
	}
	// The senders of the one change (4,000 addresses) are the only state
	// that grows; the log itself is ~65 MB.
	const slack = 4 << 20
	t.Logf("log %d MB, heap after 4,000 records %d KB, after %d: %d KB", fi.Size()>>20, early>>10, records, late>>10)
	if early == 0 || late > early+slack {
		t.Fatalf("heap grew from %d to %d bytes over a %d-byte log", early, late, fi.Size())
	}
}

// TestReplay_IOBuiltinsOff: a candidate using http.send does not compile
// for replay even with allow_io = true, and the error says why.
func TestReplay_IOBuiltinsOff(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": `package mailgate
deny contains "x" if http.send({"method": "GET", "url": "http://127.0.0.1:1/"}).status_code == 200
`})
	cfg := Config{Rego: []RegoConfig{{Name: "org", Path: "p.rego", AllowIO: true}}}
	p, err := New(cfg, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatalf("with allow_io the module compiles for serving: %v", err)
	}
	p.Close()
	if _, err := NewForReplay(cfg, dir, WithLogger(quietLogger())); err == nil || !strings.Contains(err.Error(), "I/O built-ins are off during replay") {
		t.Fatalf("NewForReplay: %v, want the I/O built-ins refused", err)
	}
	if !cfg.Rego[0].AllowIO {
		t.Error("NewForReplay changed the caller's configuration")
	}
}
