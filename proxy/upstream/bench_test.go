package upstream

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"
)

// BenchmarkRelay measures one Begin/Rcpt/Data of a 4 KB message through a
// pooled connection to the in-process upstream (both ends in this process,
// loopback TCP).
func BenchmarkRelay(b *testing.B) {
	f := startFake(b, fakeOpts{discard: true})
	r, err := NewRouter([]Config{cfgFor("primary", f.addr)},
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))), WithHostname("mailgate.test"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { checkLeaks(b, r, f) })
	body := msg(4096)
	ctx := context.Background()
	rd := bytes.NewReader(body)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tx, err := r.Begin(ctx, "", "a@example.com", nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := tx.Rcpt(ctx, "b@example.net", nil); err != nil {
			b.Fatal(err)
		}
		rd.Reset(body)
		if _, err := tx.Data(ctx, rd); err != nil {
			b.Fatal(err)
		}
	}
}
