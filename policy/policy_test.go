package policy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// fixed returns a rules file whose only rule has the given action at stage
// mail (or none for "accept-nothing").
func fixed(action, name string) string {
	if action == "none" {
		return "rule \"" + name + "\" {\n stage = \"mail\"\n when = false\n action = \"warn\"\n}\n"
	}
	return "rule \"" + name + "\" {\n stage = \"mail\"\n when = true\n action = \"" + action + "\"\n message = \"" + name + "\"\n}\n"
}

// broken is a rules file that fails at run time.
const broken = "rule \"boom\" {\n stage = \"mail\"\n when = regex(envelope.from, \"x\")\n action = \"warn\"\n}\n"

type eng struct {
	name, src string
	mode      Mode
	onError   OnError
}

func chainPolicy(t *testing.T, es []eng, opts ...Option) *Policy {
	t.Helper()
	var cfg Config
	files := map[string]string{}
	for _, e := range es {
		cfg.Rules = append(cfg.Rules, RulesConfig{Name: e.name, Path: e.name + ".hcl", Mode: e.mode, OnError: e.onError})
		files[e.name+".hcl"] = e.src
	}
	return newPolicy(t, cfg, files, opts...)
}

func TestChain_CombinationOrder(t *testing.T) {
	tests := []struct {
		name    string
		engines []eng
		outcome Outcome
		engine  string
		rule    string
	}{
		{"no engines accept", nil, Accept, "", ""},
		{"all accept", []eng{{name: "a", src: fixed("none", "x")}, {name: "b", src: fixed("accept", "y")}}, Accept, "", ""},
		{"reject beats an earlier defer", []eng{{name: "a", src: fixed("defer", "d1")}, {name: "b", src: fixed("reject", "r1")}}, Reject, "rules:b", "r1"},
		{"reject beats a later defer", []eng{{name: "a", src: fixed("reject", "r1")}, {name: "b", src: fixed("defer", "d1")}}, Reject, "rules:a", "r1"},
		{"first reject wins", []eng{{name: "a", src: fixed("none", "x")}, {name: "b", src: fixed("reject", "r1")}, {name: "c", src: fixed("reject", "r2")}}, Reject, "rules:b", "r1"},
		{"first defer wins", []eng{{name: "a", src: fixed("defer", "d1")}, {name: "b", src: fixed("defer", "d2")}}, Defer, "rules:a", "d1"},
		{"defer beats accept", []eng{{name: "a", src: fixed("accept", "ok")}, {name: "b", src: fixed("defer", "d1")}}, Defer, "rules:b", "d1"},
		{"accept in one engine does not stop the next", []eng{{name: "a", src: fixed("accept", "ok")}, {name: "b", src: fixed("reject", "r1")}}, Reject, "rules:b", "r1"},
		{"reject before a failing engine wins", []eng{{name: "a", src: fixed("reject", "r1")}, {name: "b", src: broken}}, Reject, "rules:a", "r1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := chainPolicy(t, tt.engines)
			d := evaluate(t, p, mailInput("", "a@example.com"))
			if d.Outcome != tt.outcome || d.Engine != tt.engine || d.Rule != tt.rule {
				t.Errorf("got %s %q %q, want %s %q %q", d.Outcome, d.Engine, d.Rule, tt.outcome, tt.engine, tt.rule)
			}
			if d.DryRun {
				t.Error("DryRun set without a dry-run engine")
			}
		})
	}
}

func TestChain_MixedEnginesInConfigOrder(t *testing.T) {
	src := `
policy {
  rules {
    name = "first"
    path = "first.hcl"
  }
  rego {
    name = "second"
    path = "pol"
  }
}
`
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"first.hcl":  fixed("defer", "from-rules"),
		"pol/p.rego": "package mailgate\n\ndefer contains {\"id\": \"from-rego\", \"msg\": \"x\"}\n",
		"main.hcl":   src,
	})
	var root struct {
		Policy Config `hcl:"policy,block"`
	}
	f, diags := hclparse.NewParser().ParseHCLFile(filepath.Join(dir, "main.hcl"))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if diags := gohcl.DecodeBody(f.Body, nil, &root); diags.HasErrors() {
		t.Fatal(diags)
	}
	p, err := New(root.Policy, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	d := evaluate(t, p, mailInput("", "a@example.com"))
	if d.Engine != "rules:first" {
		t.Errorf("first defer from %s, want rules:first (file order)", d.Engine)
	}
}

func TestChain_DryRun(t *testing.T) {
	t.Run("dry-run reject is not enforced", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: fixed("reject", "r1"), mode: ModeDryRun}})
		d := evaluate(t, p, mailInput("", "a@example.com"))
		if !d.DryRun || d.Outcome != Reject || d.Enforced() != Accept || d.Rule != "r1" {
			t.Errorf("got %+v, want dry-run reject enforced as accept", d)
		}
		if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0].Message, "dry-run: would reject") {
			t.Errorf("warnings %+v, want a dry-run warning", d.Warnings)
		}
	})
	t.Run("enforced defer beats dry-run reject", func(t *testing.T) {
		p := chainPolicy(t, []eng{
			{name: "a", src: fixed("reject", "r1"), mode: ModeDryRun},
			{name: "b", src: fixed("defer", "d1")},
		})
		d := evaluate(t, p, mailInput("", "a@example.com"))
		if d.DryRun || d.Outcome != Defer || d.Engine != "rules:b" {
			t.Errorf("got %+v, want enforced defer from rules:b", d)
		}
		if len(d.Warnings) != 1 {
			t.Errorf("want the dry-run reject as a warning, got %+v", d.Warnings)
		}
	})
	t.Run("dry-run reject does not stop later engines", func(t *testing.T) {
		p := chainPolicy(t, []eng{
			{name: "a", src: fixed("reject", "r1"), mode: ModeDryRun},
			{name: "b", src: fixed("reject", "r2")},
		})
		d := evaluate(t, p, mailInput("", "a@example.com"))
		if d.DryRun || d.Outcome != Reject || d.Rule != "r2" {
			t.Errorf("got %+v, want enforced reject r2", d)
		}
	})
	t.Run("dry-run engine error is not enforced", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: broken, mode: ModeDryRun}})
		d, err := p.Evaluate(context.Background(), mailInput("", "(x"))
		if err != nil || d.Outcome != Accept {
			t.Errorf("got %+v, %v; want accept, nil", d, err)
		}
	})
	t.Run("dry-run actions are not applied", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", mode: ModeDryRun, src: "rule \"t\" {\n stage = \"mail\"\n when = true\n action = \"accept\"\n upstream = \"x\"\n}\n"}})
		if d := evaluate(t, p, mailInput("", "a@example.com")); d.Actions.Upstream != "" {
			t.Errorf("dry-run upstream applied: %+v", d.Actions)
		}
	})
}

func TestChain_OnError(t *testing.T) {
	t.Run("defer fails closed with ErrEngine", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: broken}, {name: "b", src: fixed("none", "x")}})
		d, err := p.Evaluate(context.Background(), mailInput("", "(x"))
		if !errors.Is(err, ErrEngine) {
			t.Fatalf("err = %v, want ErrEngine", err)
		}
		if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.3.0" || d.Engine != "rules:a" {
			t.Errorf("got %+v, want 451 4.3.0 from rules:a", d)
		}
	})
	t.Run("defer is the default", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: broken, onError: ""}})
		if _, err := p.Evaluate(context.Background(), mailInput("", "(x")); !errors.Is(err, ErrEngine) {
			t.Errorf("err = %v, want ErrEngine", err)
		}
	})
	t.Run("accept logs and continues", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: broken, onError: OnErrorAccept}, {name: "b", src: fixed("defer", "d1")}})
		d, err := p.Evaluate(context.Background(), mailInput("", "(x"))
		if err != nil || d.Outcome != Defer || d.Engine != "rules:b" {
			t.Errorf("got %+v, %v; want defer from rules:b, nil", d, err)
		}
	})
	t.Run("cancelled context fails closed", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: fixed("none", "x")}})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := p.Evaluate(ctx, mailInput("", "a@example.com")); !errors.Is(err, ErrEngine) || !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want ErrEngine wrapping context.Canceled", err)
		}
	})
	t.Run("invalid on_error", func(t *testing.T) {
		_, err := New(Config{Rules: []RulesConfig{{Name: "a", Path: "x.hcl", OnError: "ignore"}}}, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "on_error") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestChain_ActionsMerged(t *testing.T) {
	act := func(hdr, dkim, up string) string {
		return "rule \"t\" {\n stage = \"mail\"\n when = true\n action = \"accept\"\n add_headers = {\"" + hdr + "\" = \"1\"}\n remove_headers = [\"X-R-" + hdr + "\"]\n" +
			"dkim_domain = \"" + dkim + "\"\n upstream = \"" + up + "\"\n}\n"
	}
	p := chainPolicy(t, []eng{
		{name: "a", src: act("X-A", "a.example", "up-a")},
		{name: "b", src: act("X-B", "b.example", "up-b")},
	})
	d := evaluate(t, p, mailInput("", "a@example.com"))
	want := Actions{
		AddHeaders:    []Header{{"X-A", "1"}, {"X-B", "1"}},
		RemoveHeaders: []string{"X-R-X-A", "X-R-X-B"},
		DKIMDomain:    "a.example", Upstream: "up-a",
	}
	if !reflect.DeepEqual(d.Actions, want) {
		t.Errorf("actions %+v, want %+v", d.Actions, want)
	}
	t.Run("no actions on defer", func(t *testing.T) {
		p := chainPolicy(t, []eng{{name: "a", src: act("X-A", "a.example", "up-a")}, {name: "b", src: fixed("defer", "d")}})
		if d := evaluate(t, p, mailInput("", "a@example.com")); !reflect.DeepEqual(d.Actions, Actions{}) {
			t.Errorf("actions on defer: %+v", d.Actions)
		}
	})
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"r.hcl": fixed("reject", "v1")})
	p, err := New(Config{Rules: []RulesConfig{{Name: "r", Path: "r.hcl"}}}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("broken file keeps the old set", func(t *testing.T) {
		writeFiles(t, dir, map[string]string{"r.hcl": "rule \"v2\" {\n stage = \"mail\"\n when = envelope.form == \"\"\n action = \"reject\"\n}\n"})
		err := p.Reload()
		if err == nil || !strings.Contains(err.Error(), "envelope.form") {
			t.Fatalf("Reload err = %v, want diagnostics naming envelope.form", err)
		}
		if d := evaluate(t, p, mailInput("", "a@example.com")); d.Rule != "v1" {
			t.Errorf("after a failed reload the rule is %q, want v1", d.Rule)
		}
	})
	t.Run("good file swaps in", func(t *testing.T) {
		writeFiles(t, dir, map[string]string{"r.hcl": fixed("defer", "v3")})
		if err := p.Reload(); err != nil {
			t.Fatal(err)
		}
		if d := evaluate(t, p, mailInput("", "a@example.com")); d.Rule != "v3" || d.Outcome != Defer {
			t.Errorf("after reload %+v, want defer v3", d)
		}
	})
}

func TestReload_ConcurrentEvaluate(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"r.hcl":      fixed("reject", "v0"),
		"pol/p.rego": "package mailgate\n\ndeny contains {\"id\": \"rego-v0\", \"msg\": \"x\"} if input.envelope.from == \"never\"\n",
	})
	p, err := New(Config{
		Rego:  []RegoConfig{{Name: "org", Path: "pol"}},
		Rules: []RulesConfig{{Name: "r", Path: "r.hcl"}},
	}, dir, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				d, err := p.Evaluate(context.Background(), mailInput("", "a@example.com"))
				if err != nil {
					errs <- err
					return
				}
				// Every decision comes from one consistent set: a reject
				// from some version of the rules file.
				if d.Outcome != Reject || !strings.HasPrefix(d.Rule, "v") {
					errs <- errors.New("inconsistent decision " + d.Rule)
					return
				}
			}
		}()
	}
	for i := 1; i <= 20; i++ {
		src := fixed("reject", "v"+string(rune('0'+i%10)))
		if i%5 == 0 {
			src = "rule {" // broken: must not disturb evaluations
		}
		writeFiles(t, dir, map[string]string{"r.hcl": src})
		err := p.Reload()
		if (i%5 == 0) != (err != nil) {
			t.Errorf("reload %d: err = %v", i, err)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWatch_ReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"r.hcl": fixed("reject", "old")})
	p, err := New(Config{Rules: []RulesConfig{{Name: "r", Path: "r.hcl"}}}, dir,
		WithLogger(quietLogger()), WithWatchInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Watch(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// A different size guarantees a different fingerprint even on file
	// systems with coarse modification times.
	writeFiles(t, dir, map[string]string{"r.hcl": fixed("reject", "brand-new")})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if d := evaluate(t, p, mailInput("", "a@example.com")); d.Rule == "brand-new" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not reload the changed file")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDecisionLog(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "decisions.jsonl")
	writeFiles(t, dir, map[string]string{"r.hcl": fixed("reject", "r1"), "d.hcl": fixed("defer", "d1")})
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p, err := New(Config{
		Rules:       []RulesConfig{{Name: "dry", Path: "d.hcl", Mode: ModeDryRun}, {Name: "r", Path: "r.hcl"}},
		DecisionLog: "decisions.jsonl",
	}, dir, WithLogger(quietLogger()), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	in := mailInput("user@example.com", "user@example.com")
	in.Session.ID = "sess-42"
	evaluate(t, p, in)
	evaluate(t, p, in)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 {
		t.Fatalf("%d records, want one per decision (2)", len(lines))
	}
	rec := lines[0]
	for k, want := range map[string]any{
		"time": "2026-01-02T03:04:05Z", "session": "sess-42", "stage": "mail", "engine": "rules:r",
		"rule": "r1", "outcome": "reject", "dry_run": false,
	} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v", k, rec[k], want)
		}
	}
	engines, _ := rec["engines"].([]any)
	if len(engines) != 2 || engines[0].(map[string]any)["outcome"] != "defer" || engines[0].(map[string]any)["mode"] != "dry-run" {
		t.Errorf("engines %v: want the dry-run engine's would-be defer recorded", engines)
	}
	t.Run("auth carries no secret", func(t *testing.T) {
		auth, _ := rec["input"].(map[string]any)["auth"].(map[string]any)
		var keys []string
		for k := range auth {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if !reflect.DeepEqual(keys, []string{"mechanism", "user"}) {
			t.Errorf("logged auth keys %v, want exactly [mechanism user]", keys)
		}
		// By construction: the Auth type has no field that could hold a
		// password or an AUTH payload.
		var fields []string
		at := reflect.TypeFor[Auth]()
		for i := range at.NumField() {
			fields = append(fields, at.Field(i).Name)
		}
		if !reflect.DeepEqual(fields, []string{"User", "Mechanism"}) {
			t.Errorf("Auth fields %v: adding a field needs a review that it is never secret", fields)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"duplicate names", Config{Rules: []RulesConfig{{Name: "a", Path: "x"}, {Name: "a", Path: "y"}}}, "duplicate engine name"},
		{"bad mode", Config{Rules: []RulesConfig{{Name: "a", Path: "x", Mode: "audit"}}}, "mode"},
		{"missing path", Config{Rego: []RegoConfig{{Name: "a"}}}, "path is required"},
		{"bad name", Config{Rego: []RegoConfig{{Name: "a b", Path: "x"}}}, "invalid name"},
		{"bad watch interval", Config{WatchInterval: "soon"}, "watch_interval"},
		{"missing rules file", Config{Rules: []RulesConfig{{Name: "a", Path: "nope.hcl"}}}, "nope.hcl"},
		{"unwritable decision log", Config{DecisionLog: "no/such/dir/log.jsonl"}, "decision log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, t.TempDir(), WithLogger(quietLogger()))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEvaluate_DoesNotModifyInput(t *testing.T) {
	p := chainPolicy(t, []eng{{name: "a", src: fixed("warn", "w")}})
	in := dataInput("a@example.com", "a@Example.COM", nil, nil)
	in.Rcpt = &Rcpt{Address: "b@Example.NET"}
	in.Version = 0
	before := fmt.Sprintf("%#v %#v %#v", in, *in.Rcpt, *in.Message)
	evaluate(t, p, in)
	if after := fmt.Sprintf("%#v %#v %#v", in, *in.Rcpt, *in.Message); after != before {
		t.Errorf("Evaluate modified its input:\n%s\n%s", before, after)
	}
}
