package proxy_test

import (
	"crypto"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/redis/go-redis/v9"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/internal/peertest"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/policy/quota"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/upstream"
)

// discardUpstream is an in-process go-smtp upstream that reads and drops
// every message: the cheapest possible peer, so the benchmark measures
// mailgate's path.
func discardUpstream(b *testing.B) string {
	b.Helper()
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return discardSession{}, nil }))
	srv.Domain = "sink.test"
	srv.ErrorLog = nopLogger{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type discardSession struct{}

func (discardSession) Mail(string, *smtp.MailOptions) error { return nil }
func (discardSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (discardSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}
func (discardSession) Reset()        {}
func (discardSession) Logout() error { return nil }

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// benchServer starts mailgate with one trusted plaintext listener in
// front of a discarding upstream.
func benchServer(b *testing.B, deps func(*proxy.Deps)) string {
	b.Helper()
	up := discardUpstream(b)
	logger := slog.New(slog.DiscardHandler)
	router, err := upstream.NewRouter([]upstream.Config{{Name: "up", Address: up, TLS: "none"}},
		upstream.WithLogger(logger), upstream.WithHostname("mailgate.test"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { router.Close() })
	none, none2 := "none", "none"
	cfg := proxy.Config{
		Hostname: "mailgate.test",
		Listeners: []proxy.ListenerConfig{{Name: "relay", Address: "127.0.0.1:0", TLS: &none, Auth: &none2,
			TrustedNetworks: []string{"127.0.0.0/8"}}},
	}
	d := proxy.Deps{Logger: logger, Relay: proxy.UpstreamRelay(router)}
	if deps != nil {
		deps(&d)
	}
	srv := serveProxy(b, cfg, d)
	return srv.Addrs()["relay"]
}

// benchMessage is a 4 KB message like the load benchmark's.
func benchMessage() []byte {
	var sb strings.Builder
	sb.WriteString("From: app@example.com\r\nTo: bob@example.net\r\nSubject: benchmark\r\n" +
		"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\r\n")
	line := strings.Repeat("abcdefghij", 7) + "\r\n"
	for sb.Len() < 4096 {
		sb.WriteString(line)
	}
	return []byte(sb.String())
}

func relayLoop(b *testing.B, addr string) {
	b.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("bench.test"); err != nil {
		b.Fatal(err)
	}
	msg := benchMessage()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.SendMail("app@example.com", []string{"bob@example.net"}, strings.NewReader(string(msg))); err != nil {
			b.Fatal(err)
		}
	}
}

func benchSigner(b *testing.B, alg string) *dkim.Signer {
	b.Helper()
	dir := b.TempDir()
	key, err := dkim.GenerateKey(alg, 2048)
	if err != nil {
		b.Fatal(err)
	}
	_ = crypto.Signer(key)
	path := filepath.Join(dir, "k.pem")
	if err := dkim.WriteKeyFile(path, key); err != nil {
		b.Fatal(err)
	}
	s, err := dkim.New(dkim.Config{Keys: []dkim.KeyConfig{{Domain: "example.com", Selector: "s", File: path}}})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchPolicy(b *testing.B) *policy.Policy {
	b.Helper()
	dir, err := filepath.Abs("../examples/policies")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		b.Fatal(err)
	}
	p, err := policy.New(policy.Config{
		Rego:  []policy.RegoConfig{{Name: "org", Path: dir}},
		Rules: []policy.RulesConfig{{Name: "local", Path: filepath.Join(dir, "rules.hcl")}},
	}, dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkRelay is the per-message hot path in process: client →
// mailgate → upstream over loopback, one message per iteration on a
// reused client connection and a pooled upstream connection.
func BenchmarkRelay(b *testing.B) {
	b.Run("plain", func(b *testing.B) {
		relayLoop(b, benchServer(b, nil))
	})
	b.Run("dkim-rsa2048", func(b *testing.B) {
		s := benchSigner(b, dkim.AlgorithmRSA)
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Signer = s }))
	})
	b.Run("dkim-ed25519", func(b *testing.B) {
		s := benchSigner(b, dkim.AlgorithmEd25519)
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Signer = s }))
	})
	b.Run("dkim-rsa2048+policy", func(b *testing.B) {
		s := benchSigner(b, dkim.AlgorithmRSA)
		p := benchPolicy(b)
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Signer = s; d.Policy = p }))
	})
	b.Run("policy", func(b *testing.B) {
		p := benchPolicy(b)
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Policy = p }))
	})
	// Three quotas (per sender, per client address, per destination) that
	// never fill: the cost of checking, reserving and committing.
	b.Run("quota-memory", func(b *testing.B) {
		p := benchQuotaPolicy(b, quota.NewMemory())
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Policy = p }))
	})
	b.Run("quota-redis", func(b *testing.B) {
		rs := peertest.StartRedis(b)
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
		b.Cleanup(func() { rdb.Close() })
		p := benchQuotaPolicy(b, quota.NewRedis(rdb, "bench:"))
		relayLoop(b, benchServer(b, func(d *proxy.Deps) { d.Policy = p }))
	})
}

// benchQuotas are three quotas a deployment would have, with limits the
// benchmark never reaches.
const benchQuotas = `
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
}
`

func benchQuotaPolicy(b *testing.B, store quota.Store) *policy.Policy {
	b.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(benchQuotas), "bench.hcl")
	var cfg struct {
		Quotas []policy.QuotaConfig `hcl:"quota,block"`
	}
	if !diags.HasErrors() {
		diags = gohcl.DecodeBody(f.Body, nil, &cfg)
	}
	if diags.HasErrors() {
		b.Fatal(diags)
	}
	qs, diags := policy.CompileQuotas(cfg.Quotas)
	if diags.HasErrors() {
		b.Fatal(diags)
	}
	p, err := policy.New(policy.Config{}, b.TempDir(), policy.WithQuotas(qs, store),
		policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	return p
}
