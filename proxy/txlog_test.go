package proxy_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// txLines returns the transaction log lines whose outcome is outcome,
// waiting up to 5 s for at least one.
func txLines(t *testing.T, e *env, outcome string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []map[string]any
		for _, l := range strings.Split(e.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != "transaction" || m["outcome"] != outcome {
				continue
			}
			out = append(out, m)
		}
		if len(out) > 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTransactionLogRelayed (issue 10): the relayed line carries the
// client's reply and the upstream's, each once, not "250 250 2.0.0 …".
func TestTransactionLogRelayed(t *testing.T) {
	e := newEnv(t)
	c := dialRaw(t, e.addr["relay"])
	c.expect("EHLO client.test", 250)
	c.expect("MAIL FROM:<app@example.com>", 250)
	c.expect("RCPT TO:<bob@example.net>", 250)
	c.expect("DATA", 354)
	_, final := c.cmd(simpleMessage + ".")
	lines := txLines(t, e, "relayed")
	if len(lines) != 1 {
		t.Fatalf("%d relayed lines:\n%s", len(lines), e.logs.String())
	}
	l := lines[0]
	if l["reply"] != final {
		t.Errorf("reply=%q, want what the client got: %q", l["reply"], final)
	}
	if up, _ := l["upstream_reply"].(string); up != "250 2.0.0 OK: queued" {
		t.Errorf("upstream_reply=%q, want the upstream's 250 once", up)
	}
	if strings.Contains(e.logs.String(), "250 250") {
		t.Errorf("a reply code is doubled in the log:\n%s", e.logs.String())
	}
}

// TestTransactionLogClientHangsUp (issue 10): a client that hangs up in
// the middle of a message is an aborted transaction at info level with the
// bytes received, not an internal error.
func TestTransactionLogClientHangsUp(t *testing.T) {
	const part = "From: app@example.com\r\nSubject: cut\r\n\r\nhalf a mess"
	for _, mode := range []string{"DATA", "BDAT"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			c := dialRaw(t, e.addr["relay"])
			c.expect("EHLO client.test", 250)
			c.expect("MAIL FROM:<app@example.com>", 250)
			c.expect("RCPT TO:<bob@example.net>", 250)
			if mode == "DATA" {
				c.expect("DATA", 354)
				c.send(part)
			} else {
				c.send(bdat(part, ""))
				if code, text := c.reply(); code != 250 {
					t.Fatalf("BDAT: %d %s", code, text)
				}
			}
			time.Sleep(50 * time.Millisecond) // let the proxy read what was sent
			c.c.Close()
			lines := txLines(t, e, "aborted")
			if len(lines) != 1 {
				t.Fatalf("%d aborted lines:\n%s", len(lines), e.logs.String())
			}
			l := lines[0]
			if l["level"] != "INFO" || l["stage"] != "data" {
				t.Errorf("level=%v stage=%v, want INFO data", l["level"], l["stage"])
			}
			if got, _ := l["received"].(float64); int(got) != len(part) {
				t.Errorf("received=%v, want %d", l["received"], len(part))
			}
			logs := e.logs.String()
			if strings.Contains(logs, "internal error") || strings.Contains(logs, `"level":"ERROR"`) ||
				strings.Contains(logs, `"outcome":"failed"`) {
				t.Errorf("a client hanging up is logged as a failure:\n%s", logs)
			}
			if _, msgs, _ := e.up.snapshot(); len(msgs) != 0 {
				t.Errorf("upstream got %v", msgs)
			}
		})
	}
}
