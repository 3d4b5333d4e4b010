package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/policy/quota"
)

// TestWireClosesQuotaStore: the Redis quota store batches commits, and
// closing the wiring (at exit) applies the ones still queued before the
// Redis client goes.
func TestWireClosesQuotaStore(t *testing.T) {
	srv := peertest.StartRedis(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mailgate.hcl")
	var diag bytes.Buffer
	cfg, err := loadConfig(path, fmt.Appendf(nil, `
hostname = "mailgate.test"
listener "relay" {
  address          = "127.0.0.1:0"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
outbox { maildir = "out" }
redis {
  address    = %q
  key_prefix = "wire:"
}
quota "per-sender" {
  key      = envelope.from
  messages = ["10/1h"]
}
`, srv.Addr()), &diag)
	if err != nil {
		t.Fatalf("%v\n%s", err, diag.String())
	}
	cfg.quotaBatch = time.Hour // only Close applies the queue
	w, err := wire(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	req := quota.Request{Counter: quota.Counter{Quota: "per-sender", Key: "app@example.com", Kind: quota.Messages},
		Windows: []quota.Window{{Limit: 10, Period: time.Hour}}, Amount: 1, Enforce: true}
	part := quota.Part{Counter: req.Counter, Windows: req.Windows, Amount: 1}
	for i := range 3 {
		id := fmt.Sprint("m", i)
		if _, ok, err := w.quotas.Reserve(ctx, id, now, 10*time.Second, []quota.Request{req}); err != nil || !ok {
			t.Fatalf("Reserve: %v %v", ok, err)
		}
		if err := w.quotas.Commit(ctx, id, now, []quota.Part{part}); err != nil {
			t.Fatal(err)
		}
	}
	w.close()

	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	// After the reservations' ttl only committed units count.
	lv, err := quota.NewRedis(rdb, "wire:").Levels(ctx, now.Add(11*time.Second), req.Counter, req.Windows)
	if err != nil {
		t.Fatal(err)
	}
	if lv[0].Used != 3 {
		t.Errorf("used %d after close, want the 3 queued commits", lv[0].Used)
	}
}
