package peertest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPostfixRelaysToSink(t *testing.T) {
	t.Parallel()
	sink := StartSink(t, SinkOptions{})
	pf := StartPostfix(t, PostfixOptions{Relay: sink.Addr()})
	out, code := Swaks(t, "--server", pf.Addr(), "--from", "s@example.com",
		"--to", "r@example.net", "--header", "Subject: via postfix")
	if code != 0 || !strings.Contains(out, "<-  250 2.0.0 Ok: queued as") {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	pf.WaitQueueEmpty(t, 30*time.Second)
	sink.WaitCount(t, 1, 10*time.Second)
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages for one 250, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != "s@example.com" || len(m.Recipients) != 1 || m.Recipients[0] != "r@example.net" {
		t.Errorf("envelope = %q %q", m.From, m.Recipients)
	}
	if !bytes.Contains(m.Data, []byte("Subject: via postfix\r\n")) || !bytes.Contains(m.Data, []byte("by postfix.peertest.invalid (Postfix)")) {
		t.Errorf("message did not pass through Postfix:\n%s", m.Data)
	}
	// postlogd writes the maillog asynchronously: the sink can hold the
	// message before the "status=sent" line is in the file.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(pf.Maillog(), "status=sent") {
		if time.Now().After(deadline) {
			t.Fatalf("maillog lacks status=sent:\n%s", pf.Maillog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPostfixRefusesNonLoopbackRelay(t *testing.T) {
	for _, relay := range []string{"192.0.2.1:25", "example.com:25", "127.0.0.1", "127.0.0.1:99999", ""} {
		if _, err := loopbackRelay(relay); err == nil {
			t.Errorf("loopbackRelay(%q) = nil error", relay)
		}
	}
	if got, err := loopbackRelay("127.0.0.1:2525"); err != nil || got != "[127.0.0.1]:2525" {
		t.Errorf("loopbackRelay = %q, %v", got, err)
	}
}

func TestTwoPostfixInstancesAtOnce(t *testing.T) {
	t.Parallel()
	type pair struct {
		sink *Sink
		pf   *Postfix
	}
	var pairs [2]pair
	for i := range pairs {
		s := StartSink(t, SinkOptions{})
		pairs[i] = pair{s, StartPostfix(t, PostfixOptions{Relay: s.Addr()})}
	}
	if pairs[0].pf.Addr() == pairs[1].pf.Addr() || pairs[0].pf.Dir() == pairs[1].pf.Dir() {
		t.Fatal("instances share an address or directory")
	}
	const perInstance = 3
	var wg sync.WaitGroup
	for i, p := range pairs {
		for j := range perInstance {
			wg.Go(func() {
				out, code := Swaks(t, "--server", p.pf.Addr(), "--from", "s@example.com",
					"--to", fmt.Sprintf("r%d-%d@example.net", i, j))
				if code != 0 {
					t.Errorf("swaks to instance %d exit %d:\n%s", i, code, out)
				}
			})
		}
	}
	wg.Wait()
	for i, p := range pairs {
		p.pf.WaitQueueEmpty(t, 30*time.Second)
		p.sink.WaitCount(t, perInstance, 10*time.Second)
		msgs := p.sink.Messages()
		if len(msgs) != perInstance {
			t.Errorf("sink %d: %d messages, want %d", i, len(msgs), perInstance)
		}
		// Each instance relays to its own sink only.
		for _, m := range msgs {
			if want := fmt.Sprintf("r%d-", i); !strings.HasPrefix(m.Recipients[0], want) {
				t.Errorf("sink %d got %q, relayed by the wrong instance", i, m.Recipients)
			}
		}
	}
}
