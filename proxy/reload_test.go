package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy"
)

// TestPolicyReloadUnderLoad swaps the policy (good and broken versions)
// while sessions submit mail: no session is dropped, every message gets
// the decision of one whole policy set, and a broken file keeps the old set.
func TestPolicyReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.hcl")
	version := func(n int) string {
		return fmt.Sprintf(`rule "block-%d" {
  stage   = "rcpt"
  when    = rcpt.domain == "blocked.example"
  action  = "reject"
  message = "blocked by version %d"
}
`, n, n)
	}
	if err := os.WriteFile(rules, []byte(version(0)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := policy.New(policy.Config{Rules: []policy.RulesConfig{{Name: "local", Path: rules}}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.Policy = p })

	ctx, cancel := context.WithCancel(context.Background())
	var reloads, broken int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ctx.Err() == nil; i++ {
			text := version(i)
			if i%3 == 1 { // broken first: a fast run still exercises both
				text = "rule \"broken\" { stage = \"rcpt\"\n when = envelope.form == 1 }\n"
			}
			os.WriteFile(rules, []byte(text), 0o600)
			if err := p.Reload(); err != nil {
				broken++
			} else {
				reloads++
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	const sessions, perSession = 4, 15
	errs := make(chan error, sessions*perSession)
	var clients sync.WaitGroup
	for s := 0; s < sessions; s++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			c, err := smtp.Dial(e.addr["relay"])
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Hello("load.test"); err != nil {
				errs <- err
				return
			}
			for i := 0; i < perSession; i++ {
				if err := c.Mail("app@example.com", nil); err != nil {
					errs <- fmt.Errorf("MAIL: %w", err)
					return
				}
				err := c.Rcpt("x@blocked.example", nil)
				var se *smtp.SMTPError
				if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "blocked by version") {
					errs <- fmt.Errorf("blocked recipient: %v", err)
				}
				if err := c.Rcpt("bob@example.net", nil); err != nil {
					errs <- fmt.Errorf("RCPT: %w", err)
					return
				}
				w, err := c.Data()
				if err != nil {
					errs <- err
					return
				}
				w.Write([]byte("From: app@example.com\r\n\r\nx\r\n"))
				if err := w.Close(); err != nil {
					errs <- fmt.Errorf("DATA: %w", err)
					return
				}
			}
		}()
	}
	clients.Wait()
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if reloads == 0 || broken == 0 {
		t.Fatalf("reloads %d, broken reloads %d: the test did not exercise both", reloads, broken)
	}
	if _, msgs, _ := e.up.snapshot(); len(msgs) != sessions*perSession {
		t.Fatalf("upstream got %d messages, want %d", len(msgs), sessions*perSession)
	}
	t.Logf("%d reloads, %d broken reloads kept the previous set", reloads, broken)
}

// TestDryRunPolicyIsNotEnforced: a dry-run engine that would reject only
// warns; the message is relayed.
func TestDryRunPolicyIsNotEnforced(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.hcl")
	os.WriteFile(rules, []byte(`rule "reject-all" {
  stage  = "mail"
  when   = true
  action = "reject"
}
`), 0o600)
	p, err := policy.New(policy.Config{Rules: []policy.RulesConfig{{Name: "trial", Path: rules, Mode: policy.ModeDryRun}}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	e := newEnv(t, func(_ *proxy.Config, d *proxy.Deps) { d.Policy = p })
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	if code, text := send(t, c, "app@example.com", []string{"bob@example.net"}, "From: app@example.com\r\n\r\nx\r\n"); code != 250 {
		t.Fatalf("dry-run reject enforced: %d %s", code, text)
	}
	if !strings.Contains(e.logs.String(), "dry-run: would reject") {
		t.Error("the dry-run refusal was not logged")
	}
}
