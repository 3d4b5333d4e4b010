package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/redis/go-redis/v9"
	"github.com/zclconf/go-cty/cty"

	"github.com/mailgate/mailgate/policy/quota"
)

// compileQuotaSrc compiles the quota blocks of src; diags are returned as
// text (with snippets) for error tests.
func compileQuotaSrc(t *testing.T, src string) (*Quotas, string) {
	t.Helper()
	p := hclparse.NewParser()
	f, diags := p.ParseHCL([]byte(src), "mailgate.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	var cfg struct {
		Quotas []QuotaConfig `hcl:"quota,block"`
	}
	if diags := gohcl.DecodeBody(f.Body, nil, &cfg); diags.HasErrors() {
		return nil, (&DiagnosticsError{Diagnostics: diags, Files: p.Files()}).Error()
	}
	qs, diags := CompileQuotas(cfg.Quotas)
	if diags.HasErrors() {
		return nil, (&DiagnosticsError{Diagnostics: diags, Files: p.Files()}).Error()
	}
	return qs, ""
}

func mustQuotas(t *testing.T, src string) *Quotas {
	t.Helper()
	qs, diag := compileQuotaSrc(t, src)
	if qs == nil {
		t.Fatalf("CompileQuotas:\n%s", diag)
	}
	return qs
}

// clock is a settable fake clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// quotaPolicy builds a Policy with quotas src on a fresh memory store.
func quotaPolicy(t *testing.T, src string, cfg Config, files map[string]string, c *clock) *Policy {
	t.Helper()
	return newPolicy(t, cfg, files, WithQuotas(mustQuotas(t, src), quota.NewMemory()), WithClock(c.now))
}

// send runs mail, one rcpt stage per recipient and, when every stage
// accepted, commits (commit) or releases the reservations. It returns the
// first refusal (nil when all accepted).
func send(t *testing.T, p *Policy, user string, rcpts []string, commit bool) *Decision {
	t.Helper()
	ctx := context.Background()
	d := evaluate(t, p, mailInput(user, user))
	if d.Outcome != Accept {
		return &d
	}
	res := d.Reservation
	var accepted []string
	for _, r := range rcpts {
		in := rcptInput(user, user, r, 0)
		in.Envelope.Recipients = accepted
		rd := evaluate(t, p, in)
		if rd.Outcome != Accept {
			_ = res.Release(ctx)
			return &rd
		}
		res = res.Join(rd.Reservation)
		accepted = append(accepted, r)
	}
	var err error
	if commit {
		err = res.Commit(ctx)
	} else {
		err = res.Release(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	return nil
}

func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in     string
		limit  int64
		period time.Duration
		err    string
	}{
		{"200/1h", 200, time.Hour, ""},
		{"1000/24h", 1000, 24 * time.Hour, ""},
		{"100/m", 100, time.Minute, ""},
		{" 5 / 30d ", 5, 30 * 24 * time.Hour, ""},
		{"7/2w", 7, 14 * 24 * time.Hour, ""},
		{"10/90s", 10, 90 * time.Second, ""},
		{"0/1h", 0, 0, "positive"},
		{"-1/1h", 0, 0, "COUNT/DURATION"},
		{"200", 0, 0, "COUNT/DURATION"},
		{"200/1y", 0, 0, "unit"},
		{"200/0h", 0, 0, "positive"},
		{"200/1h30m", 0, 0, "COUNT/DURATION"},
		{"1/99999w", 0, 0, "ten years"},
	} {
		w, err := ParseWindow(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseWindow(%q) = %v, %v; want error with %q", tc.in, w, err, tc.err)
			}
			continue
		}
		if err != nil || w.Limit != tc.limit || w.Period != tc.period {
			t.Errorf("ParseWindow(%q) = %+v, %v; want %d/%v", tc.in, w, err, tc.limit, tc.period)
		}
	}
	if got := FormatWindow(quota.Window{Limit: 5, Period: 30 * 24 * time.Hour}); got != "5/30d" {
		t.Errorf("FormatWindow = %q", got)
	}
}

func TestCompileQuotas_Errors(t *testing.T) {
	for name, tc := range map[string]struct{ src, want string }{
		"misspelt_attribute": {`quota "q" {
  key      = envelope.form
  messages = ["1/1h"]
}`, "Unsupported attribute"},
		"auth_without_guard": {`quota "q" {
  key      = auth.user
  messages = ["1/1h"]
}`, "guard with auth != null"},
		"key_not_string": {`quota "q" {
  key      = envelope.recipients
  messages = ["1/1h"]
}`, "must produce string"},
		"when_not_bool": {`quota "q" {
  key      = envelope.from
  when     = "yes"
  messages = ["1/1h"]
}`, "must produce bool"},
		"messages_per_recipient": {`quota "q" {
  key      = rcpt.domain
  messages = ["1/1h"]
}`, "count recipients"},
		"message_in_key": {`quota "q" {
  key        = message.headers["subject"][0]
  recipients = ["1/1h"]
}`, "cannot refer to message"},
		"no_windows": {`quota "q" {
  key = envelope.from
}`, "at least one of messages"},
		"bad_window": {`quota "q" {
  key      = envelope.from
  messages = ["lots/1h"]
}`, "COUNT/DURATION"},
		"bad_action": {`quota "q" {
  key      = envelope.from
  messages = ["1/1h"]
  action   = "drop"
}`, "must be \"defer\", \"reject\" or \"warn\""},
		"bad_on_error": {`quota "q" {
  key      = envelope.from
  messages = ["1/1h"]
  on_error = "ignore"
}`, "on_error"},
		"remember_alone": {`quota "q" {
  key      = envelope.from
  messages = ["1/1h"]
  remember = "30d"
}`, "remember applies to new_recipients"},
		"duplicate": {`quota "q" {
  key      = envelope.from
  messages = ["1/1h"]
}
quota "q" {
  key      = envelope.from
  messages = ["2/1h"]
}`, "Duplicate quota"},
	} {
		t.Run(name, func(t *testing.T) {
			qs, diag := compileQuotaSrc(t, tc.src)
			if qs != nil || !strings.Contains(diag, tc.want) {
				t.Fatalf("want a diagnostic with %q, got:\n%s", tc.want, diag)
			}
			if !strings.Contains(diag, "on mailgate.hcl line ") {
				t.Errorf("diagnostic without a source position:\n%s", diag)
			}
		})
	}
}

const perLogin = `
quota "per-login" {
  key      = auth.user
  when     = auth != null
  messages = ["3/1h", "5/24h"]
}`

func TestQuota_MessagesPerLogin(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, perLogin, Config{}, nil, c)
	for i := range 3 {
		if r := send(t, p, "alice@example.com", []string{"x@example.net"}, true); r != nil {
			t.Fatalf("message %d refused: %+v", i+1, r)
		}
	}
	r := send(t, p, "alice@example.com", []string{"x@example.net"}, true)
	if r == nil {
		t.Fatal("4th message in an hour accepted; want a 451 4.7.1 quota refusal")
	}
	if r.Outcome != Defer || r.Code != 451 || r.EnhancedCode != "4.7.1" || r.Engine != QuotaEngine || r.Rule != "per-login" {
		t.Fatalf("refusal = %+v", r)
	}
	if !strings.HasPrefix(r.Message, "quota per-login exceeded (3/1h), retry in ") {
		t.Fatalf("message = %q", r.Message)
	}
	// Another login and an unauthenticated session are not affected.
	if r := send(t, p, "bob@example.com", nil, true); r != nil {
		t.Fatalf("bob refused: %+v", r)
	}
	if d := evaluate(t, p, mailInput("", "anon@example.com")); d.Outcome != Accept || d.Reservation != nil {
		t.Fatalf("unauthenticated: %+v (when = auth != null)", d)
	}
	// The hour passes (plus the one-bucket error bound): room again, until
	// the 24h window (5) is full.
	c.add(time.Hour + time.Minute + time.Second)
	for i := range 2 {
		if r := send(t, p, "alice@example.com", nil, true); r != nil {
			t.Fatalf("next hour, message %d refused: %+v", i+1, r)
		}
	}
	r = send(t, p, "alice@example.com", nil, true)
	if r == nil || !strings.HasPrefix(r.Message, "quota per-login exceeded (5/24h), retry in ") {
		t.Fatalf("6th message in a day: %+v", r)
	}
}

func TestQuota_ReleaseAndPending(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, perLogin, Config{}, nil, c)
	ctx := context.Background()
	// Released transactions (RSET, upstream refusal) cost nothing.
	for range 10 {
		if r := send(t, p, "alice@example.com", nil, false); r != nil {
			t.Fatalf("refused after releases: %+v", r)
		}
	}
	// Reservations not yet ended count: three transactions in flight fill
	// the 3/1h window, a fourth concurrent one is refused.
	var held []*Reservation
	for range 3 {
		d := evaluate(t, p, mailInput("alice@example.com", "alice@example.com"))
		if d.Outcome != Accept || d.Reservation == nil {
			t.Fatalf("in-flight transaction refused: %+v", d)
		}
		held = append(held, d.Reservation)
	}
	d := evaluate(t, p, mailInput("alice@example.com", "alice@example.com"))
	if d.Outcome != Defer {
		t.Fatalf("4th concurrent transaction: %+v", d)
	}
	if st := d.Quota["per-login"]; !st.Exceeded || st.Messages[0].Used != 3 || st.Messages[0].Remaining != 0 {
		t.Fatalf("quota state = %+v", st)
	}
	// One in-flight transaction fails: its unit comes back.
	if err := held[0].Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := held[0].Release(ctx); err != nil { // ending twice is harmless
		t.Fatal(err)
	}
	d = evaluate(t, p, mailInput("alice@example.com", "alice@example.com"))
	if d.Outcome != Accept {
		t.Fatalf("after a release: %+v", d)
	}
	_ = d.Reservation.Release(ctx)
	// A reservation nobody ends (a crashed instance) expires.
	c.add(reservationTTL + time.Second)
	if d := evaluate(t, p, mailInput("alice@example.com", "alice@example.com")); d.Outcome != Accept {
		t.Fatalf("after the reservations expired: %+v", d)
	}
}

func TestQuota_EngineRefusalReleases(t *testing.T) {
	c := newClock()
	rules := `rule "no-spammer" {
  stage  = "mail"
  when   = envelope.from == "spam@example.com"
  action = "reject"
}`
	p := quotaPolicy(t, perLogin, Config{Rules: []RulesConfig{{Name: "local", Path: "rules.hcl"}}},
		map[string]string{"rules.hcl": rules}, c)
	for range 5 {
		in := mailInput("alice@example.com", "spam@example.com")
		d := evaluate(t, p, in)
		if d.Outcome != Reject || d.Reservation != nil {
			t.Fatalf("spam: %+v", d)
		}
	}
	// Rejected transactions released their units.
	for i := range 3 {
		if r := send(t, p, "alice@example.com", nil, true); r != nil {
			t.Fatalf("message %d refused after rejected ones: %+v", i+1, r)
		}
	}
	// A quota defer does not hide an engine reject (first reject wins).
	d := evaluate(t, p, mailInput("alice@example.com", "spam@example.com"))
	if d.Outcome != Reject || d.Engine != "rules:local" {
		t.Fatalf("over quota and rejected by a rule: %+v", d)
	}
}

func TestQuota_RejectAction(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "hard" {
  key      = envelope.from
  messages = ["1/1h"]
  action   = "reject"
}`, Config{}, nil, c)
	if r := send(t, p, "", nil, true); r != nil {
		t.Fatalf("first: %+v", r)
	}
	d := evaluate(t, p, mailInput("", ""))
	// The null sender has an empty key: the quota does not apply.
	if d.Outcome != Accept {
		t.Fatalf("null sender: %+v", d)
	}
	d = evaluate(t, p, mailInput("", "app@example.com"))
	if d.Outcome != Accept {
		t.Fatalf("first for app: %+v", d)
	}
	_ = d.Reservation.Commit(context.Background())
	d = evaluate(t, p, mailInput("", "app@example.com"))
	if d.Outcome != Reject || d.Code != 550 || d.EnhancedCode != "5.7.1" || d.Message != "quota hard exceeded (1/1h)" {
		t.Fatalf("second for app: %+v", d)
	}
}

func TestQuota_InputForEngines(t *testing.T) {
	c := newClock()
	// Tiered decisions on the quota levels, in HCL and in Rego.
	rules := `rule "near-limit" {
  stage   = "mail"
  when    = try(quota["per-login"].messages[0].remaining, 99) < 2
  action  = "warn"
  message = "near the hourly limit"
}`
	rego := `package mailgate
import rego.v1
warn contains "rego sees quota" if input.quota["per-login"].messages[0].used == 2
`
	p := quotaPolicy(t, perLogin, Config{
		Rules: []RulesConfig{{Name: "local", Path: "rules.hcl"}},
		Rego:  []RegoConfig{{Name: "org", Path: "p.rego"}},
	}, map[string]string{"rules.hcl": rules, "p.rego": rego}, c)
	warned := func(d Decision, rule string) bool {
		for _, w := range d.Warnings {
			if w.Rule == rule || w.Message == rule {
				return true
			}
		}
		return false
	}
	d := evaluate(t, p, mailInput("alice@example.com", "alice@example.com"))
	st := d.Quota["per-login"]
	if st.Key != "alice@example.com" || st.Action != "defer" || len(st.Messages) != 2 ||
		st.Messages[0] != (QuotaWindow{Window: "3/1h", Limit: 3, Used: 1, Remaining: 2}) ||
		st.Messages[1] != (QuotaWindow{Window: "5/24h", Limit: 5, Used: 1, Remaining: 4}) {
		t.Fatalf("quota state = %+v", st)
	}
	if warned(d, "near-limit") || warned(d, "rego sees quota") {
		t.Fatalf("warned too early: %+v", d.Warnings)
	}
	_ = d.Reservation.Commit(context.Background())
	d = evaluate(t, p, mailInput("alice@example.com", "alice@example.com"))
	if !warned(d, "near-limit") || !warned(d, "rego sees quota") {
		t.Fatalf("no warnings at 2 of 3: %+v", d.Warnings)
	}
	// The data stage sees what the proxy hands it, and checks nothing.
	in := dataInput("alice@example.com", "alice@example.com", []string{"alice@example.com"}, nil)
	in.Quota = d.Quota
	dd := evaluate(t, p, in)
	if dd.Reservation != nil || dd.Quota["per-login"].Messages[0].Used != 2 {
		t.Fatalf("data stage: %+v", dd)
	}
}

func TestQuota_PerDestinationRecipients(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "per-destination" {
  key        = rcpt.domain
  recipients = ["2/1m"]
}`, Config{}, nil, c)
	if r := send(t, p, "", []string{"a@slow.example", "b@slow.example"}, true); r != nil {
		t.Fatalf("two recipients: %+v", r)
	}
	// Only the full destination is refused; other recipients continue.
	in := rcptInput("", "app@example.com", "c@slow.example", 0)
	d := evaluate(t, p, in)
	if d.Outcome != Defer || !strings.HasPrefix(d.Message, "quota per-destination exceeded (recipients 2/1m), retry in ") {
		t.Fatalf("third recipient at slow.example: %+v", d)
	}
	if d := evaluate(t, p, rcptInput("", "app@example.com", "c@fast.example", 0)); d.Outcome != Accept {
		t.Fatalf("other destination: %+v", d)
	}
	// The mail stage checks nothing for a per-recipient quota.
	if d := evaluate(t, p, mailInput("", "app@example.com")); d.Reservation != nil || len(d.Quota) != 0 {
		t.Fatalf("mail stage: %+v", d)
	}
}

func TestQuota_RecipientsPerLogin(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "per-login" {
  key        = auth.user
  when       = auth != null
  messages   = ["100/1h"]
  recipients = ["3/1h"]
}`, Config{}, nil, c)
	r := send(t, p, "alice@example.com", []string{"a@x.example", "b@x.example", "c@x.example", "d@x.example"}, true)
	if r == nil || r.Rule != "per-login" || !strings.Contains(r.Message, "(recipients 3/1h)") {
		t.Fatalf("4th recipient: %+v", r)
	}
	// send released everything: the three recipients are free again.
	if r := send(t, p, "alice@example.com", []string{"a@x.example", "b@x.example", "c@x.example"}, true); r != nil {
		t.Fatalf("after release: %+v", r)
	}
	if r := send(t, p, "alice@example.com", []string{"e@x.example"}, true); r == nil {
		t.Fatal("recipient quota not counted after commit")
	}
}

func TestQuota_NewRecipients(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "first-time-recipients" {
  key            = auth.user
  when           = auth != null
  new_recipients = ["2/24h"]
  remember       = "30d"
}`, Config{}, nil, c)
	if r := send(t, p, "alice@example.com", []string{"one@x.example", "two@x.example"}, true); r != nil {
		t.Fatalf("two new recipients: %+v", r)
	}
	// Known recipients cost nothing, however often (case-insensitively).
	for range 5 {
		if r := send(t, p, "alice@example.com", []string{"ONE@x.example", "two@x.example"}, true); r != nil {
			t.Fatalf("known recipients: %+v", r)
		}
	}
	r := send(t, p, "alice@example.com", []string{"three@x.example"}, true)
	if r == nil || !strings.Contains(r.Message, "(new recipients 2/24h)") {
		t.Fatalf("third new recipient: %+v", r)
	}
	// Another login has its own memory.
	if r := send(t, p, "bob@example.com", []string{"three@x.example"}, true); r != nil {
		t.Fatalf("bob: %+v", r)
	}
	// After a day the window has room; the known ones stay known.
	c.add(25 * time.Hour)
	if r := send(t, p, "alice@example.com", []string{"three@x.example", "one@x.example"}, true); r != nil {
		t.Fatalf("next day: %+v", r)
	}
}

func TestQuota_WarnAction(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "watch" {
  key      = envelope.from
  messages = ["1/1h"]
  action   = "warn"
}`, Config{}, nil, c)
	for i := range 3 {
		d := evaluate(t, p, mailInput("", "app@example.com"))
		if d.Outcome != Accept || d.Reservation == nil {
			t.Fatalf("message %d: %+v", i+1, d)
		}
		_ = d.Reservation.Commit(context.Background())
		warned := len(d.Warnings) == 1 && d.Warnings[0].Engine == QuotaEngine && d.Warnings[0].Message == "quota watch exceeded (1/1h)"
		if warned != (i > 0) {
			t.Fatalf("message %d warnings = %+v", i+1, d.Warnings)
		}
		// Warn quotas keep counting past the limit, so levels stay true.
		if used := d.Quota["watch"].Messages[0].Used; used != int64(i+1) {
			t.Fatalf("message %d used = %d", i+1, used)
		}
	}
}

func TestQuota_StoreUnavailable(t *testing.T) {
	// A Redis nobody listens on: every call fails with ErrUnavailable.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	for _, onError := range []string{"defer", "accept"} {
		t.Run(onError, func(t *testing.T) {
			qs := mustQuotas(t, fmt.Sprintf(`quota "q" {
  key      = envelope.from
  messages = ["10/1h"]
  on_error = %q
}`, onError))
			p := newPolicy(t, Config{}, nil, WithQuotas(qs, quota.NewRedis(rdb, "t:")))
			d := evaluate(t, p, mailInput("", "app@example.com"))
			if onError == "accept" {
				if d.Outcome != Accept || d.Reservation != nil {
					t.Fatalf("on_error accept: %+v", d)
				}
				return
			}
			if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.7.1" ||
				d.Message != "quota q temporarily unavailable, try again later" {
				t.Fatalf("on_error defer: %+v", d)
			}
		})
	}
}

func TestQuota_SetQuotasKeepsCounters(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, perLogin, Config{}, nil, c)
	for range 3 {
		if r := send(t, p, "alice@example.com", nil, true); r != nil {
			t.Fatal(r)
		}
	}
	p.SetQuotas(mustQuotas(t, strings.ReplaceAll(perLogin, `"3/1h"`, `"4/1h"`)))
	if r := send(t, p, "alice@example.com", nil, true); r != nil {
		t.Fatalf("raised limit: %+v", r)
	}
	if r := send(t, p, "alice@example.com", nil, true); r == nil {
		t.Fatal("5th message accepted under a 4/1h limit: counters were lost on reload")
	}
}

// TestQuota_ConcurrentKeys: stages evaluated at once, each sender from
// its own address, see their own keys and counts (the evaluation context
// of the key expressions is shared between stages through a pool; the
// per-ip key is a call so that the mail stage uses that context too, an
// input attribute alone being read without it).
func TestQuota_ConcurrentKeys(t *testing.T) {
	const senders, messages = 8, 50
	p := quotaPolicy(t, `quota "per-sender" {
  key      = envelope.from
  messages = ["1000/1h"]
}
quota "per-ip" {
  key      = lower(session.client_ip)
  messages = ["1000/1h"]
}
quota "per-destination" {
  key        = "${envelope.from}>${rcpt.domain}"
  recipients = ["1000/1h"]
}`, Config{}, nil, newClock())
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Go(func() {
			from := fmt.Sprintf("app%d@example.com", i)
			ip := fmt.Sprintf("192.0.2.%d", 10+i)
			dom := fmt.Sprintf("dest%d.example", i)
			for n := 1; n <= messages; n++ {
				mail := mailInput("", from)
				mail.Session.ClientIP = ip
				d, err := p.Evaluate(ctx, mail)
				if err != nil {
					errs <- err
					return
				}
				rcpt := rcptInput("", from, "bob@"+dom, 0)
				rcpt.Session.ClientIP = ip
				rd, err := p.Evaluate(ctx, rcpt)
				if err != nil {
					errs <- err
					return
				}
				s, a, r := d.Quota["per-sender"], d.Quota["per-ip"], rd.Quota["per-destination"]
				if s.Key != from || a.Key != ip || r.Key != from+">"+dom ||
					s.Messages[0].Used != int64(n) || a.Messages[0].Used != int64(n) || r.Recipients[0].Used != int64(n) {
					errs <- fmt.Errorf("%s message %d: per-sender %+v, per-ip %+v, per-destination %+v", from, n, s, a, r)
					return
				}
				if err := d.Reservation.Join(rd.Reservation).Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkQuotaMessage is what three quotas (per sender, per client
// address, per destination) cost a one-recipient message on the memory
// store: stage mail and stage rcpt checked and reserved, then committed,
// with no engine (the quotas alone).
func BenchmarkQuotaMessage(b *testing.B) {
	p, err := New(Config{}, b.TempDir(), WithLogger(quietLogger()), WithQuotas(benchQuotas(b), quota.NewMemory()))
	if err != nil {
		b.Fatal(err)
	}
	benchQuotaMessage(b, p)
}

func benchQuotas(b *testing.B) *Quotas {
	b.Helper()
	qs, diag := compileQuotaSrc(&testing.T{}, `
quota "per-sender" {
  key        = envelope.from
  messages   = ["100000000/1h", "1000000000/24h"]
}
quota "per-ip" {
  key        = session.client_ip
  messages   = ["100000000/1h"]
}
quota "per-destination" {
  key        = rcpt.domain
  recipients = ["100000000/1m"]
}`)
	if qs == nil {
		b.Fatal(diag)
	}
	return qs
}

func benchQuotaMessage(b *testing.B, p *Policy) {
	ctx := context.Background()
	mail := mailInput("", "app@example.com")
	rcpt := rcptInput("", "app@example.com", "bob@example.net", 0)
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		d, err := p.Evaluate(ctx, mail)
		if err != nil || d.Reservation == nil {
			b.Fatalf("mail: %+v %v", d, err)
		}
		rd, err := p.Evaluate(ctx, rcpt)
		if err != nil || rd.Reservation == nil {
			b.Fatalf("rcpt: %+v %v", rd, err)
		}
		if err := d.Reservation.Join(rd.Reservation).Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// TestQuota_DecisionLog: the decision log names the quota that refused and
// carries the input's quota levels (what policy replay will read).
func TestQuota_DecisionLog(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	p, err := New(Config{DecisionLog: "decisions.jsonl"}, dir, WithLogger(quietLogger()), WithClock(c.now),
		WithQuotas(mustQuotas(t, `quota "hourly" {
  key      = envelope.from
  messages = ["1/1h"]
}`), quota.NewMemory()))
	if err != nil {
		t.Fatal(err)
	}
	d := evaluate(t, p, mailInput("", "app@example.com"))
	_ = d.Reservation.Commit(context.Background())
	evaluate(t, p, mailInput("", "app@example.com"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "decisions.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d records, want 2", len(lines))
	}
	var rec struct {
		Engine, Rule, Outcome string
		Code                  int
		Input                 Input
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatal(err)
	}
	st := rec.Input.Quota["hourly"]
	if rec.Engine != QuotaEngine || rec.Rule != "hourly" || rec.Outcome != "defer" || rec.Code != 451 ||
		!st.Exceeded || st.Key != "app@example.com" || len(st.Messages) != 1 || st.Messages[0].Used != 1 || st.Messages[0].RetryAfter < 3600 {
		t.Fatalf("record = %s", lines[1])
	}
}

// TestQuota_RejectBeatsDefer: two full quotas, a defer listed first and a
// reject second: the reject answers, as between engines.
func TestQuota_RejectBeatsDefer(t *testing.T) {
	c := newClock()
	p := quotaPolicy(t, `quota "soft" {
  key      = envelope.from
  messages = ["1/1h"]
}
quota "hard" {
  key      = envelope.from
  messages = ["1/1h"]
  action   = "reject"
}`, Config{}, nil, c)
	if r := send(t, p, "app@example.com", nil, true); r != nil {
		t.Fatalf("first: %+v", r)
	}
	d := evaluate(t, p, mailInput("", "app@example.com"))
	if d.Outcome != Reject || d.Rule != "hard" || d.Code != 550 {
		t.Fatalf("second: %+v", d)
	}
}

// TestQuotaKeyAttr: a key that is one input attribute is read from the
// input as HCL evaluates it on the whole variable: the same key (cty's
// Unicode normalization included), the same "does not apply" for an empty
// one, and HCL's own error when the variable is null (auth.user without
// AUTH). A key of another form is left to HCL.
func TestQuotaKeyAttr(t *testing.T) {
	keys := []string{"session.id", "session.listener", "session.client_ip", "session.helo", "auth.user",
		"auth.mechanism", "envelope.from", "envelope.from_domain", "rcpt.address", "rcpt.domain"}
	var ins []Input
	for _, user := range []string{"", "Cafe\u0301@Example.com", "a@example.com"} {
		for _, from := range []string{"", "cafe\u0301@example.com", "b@Example.COM"} {
			in := rcptInput(user, from, "x@e\u0301.example", 1)
			in.Session.HELO = "he\u0301lo"
			if user == "" {
				in.Session.ClientIP = ""
			}
			ins = append(ins, in.Normalize())
		}
	}
	for _, k := range keys {
		kind := "messages"
		if strings.HasPrefix(k, "rcpt.") {
			kind = "recipients"
		}
		when := ""
		switch {
		case strings.HasPrefix(k, "auth."):
			when = "when = auth != null"
		case k == "session.client_ip":
			when = "when = auth == null" // unauthenticated clients, by address
		}
		qs := mustQuotas(t, fmt.Sprintf("quota \"q\" {\n  key = %s\n  %s\n  %s = [\"10/1h\"]\n}\n", k, when, kind))
		d := qs.defs[0]
		if d.attr.root == "" {
			t.Fatalf("%s: not read as an input attribute", k)
		}
		for _, in := range ins {
			got, gotOK, gotErr := d.evalKey(nil, &in)
			vars := map[string]cty.Value{}
			for name := range schemaTypes {
				vars[name] = ctyVar(&in, name)
			}
			// The reference: the same key through HCL, every variable whole.
			hd := *d
			hd.attr = inputAttr{}
			want, wantOK, wantErr := hd.evalKey(&hcl.EvalContext{Variables: vars, Functions: ruleFunctions}, &in)
			if got != want || gotOK != wantOK || (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
				t.Errorf("%s, auth %+v: %q %v %v; HCL %q %v %v", k, in.Auth, got, gotOK, gotErr, want, wantOK, wantErr)
			}
		}
	}
	for _, k := range []string{`"${envelope.from}"`, `lower(envelope.from)`, `session.tls.version`, `envelope.size`,
		"envelope.from\n  when = envelope.from != \"\""} {
		qs, diag := compileQuotaSrc(t, fmt.Sprintf("quota \"q\" {\n  key = %s\n  messages = [\"10/1h\"]\n}\n", k))
		if qs == nil {
			continue // refused at load (not a string)
		}
		if qs.defs[0].attr.root != "" {
			t.Errorf("%s read as an input attribute (%s)", k, diag)
		}
	}
}
