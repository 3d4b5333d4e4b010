package upstream

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/emersion/go-smtp"
)

// TestUpstreamTLSPolicy: an upstream that offers only CBC suites in TLS 1.2
// (LUCKY13-prone) is not negotiated with by default: the relay fails
// closed (451 4.4.1) rather than send mail over it. An operator who must
// talk to it names the suite in tls_cipher_suites; tls_min_version = "1.3"
// refuses a TLS 1.2 upstream.
func TestUpstreamTLSPolicy(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{TLSStartTLS, TLSImplicit} {
		t.Run(mode, func(t *testing.T) {
			srvTLS, caFile := selfSigned(t)
			srvTLS.MaxVersion = tls.VersionTLS12
			srvTLS.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
			f := startFake(t, fakeOpts{tls: srvTLS, implicit: mode == TLSImplicit})
			c := cfgFor("primary", f.addr)
			c.TLS, c.CAFile = mode, caFile

			t.Run("cbc_only_upstream_refused", func(t *testing.T) {
				r := newTestRouter(t, []Config{c}, f)
				tx, err := r.Begin(ctx, "", "a@example.com", nil)
				if err == nil {
					tx.Abort()
				}
				wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
				if n := len(f.transactions()); n != 0 {
					t.Fatalf("%d transactions over a CBC-only upstream", n)
				}
			})
			t.Run("tls_cipher_suites_allows_it", func(t *testing.T) {
				c := c
				c.TLSCipherSuites = []string{"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"}
				r := newTestRouter(t, []Config{c}, f)
				relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
			})
			t.Run("tls_min_version_1.3_refuses_tls12", func(t *testing.T) {
				c := c
				c.TLSMinVersion = "1.3"
				r := newTestRouter(t, []Config{c}, f)
				tx, err := r.Begin(ctx, "", "a@example.com", nil)
				if err == nil {
					tx.Abort()
				}
				wantReply(t, err, 451, smtp.EnhancedCode{4, 4, 1})
			})
		})
	}
	t.Run("aead_upstream_negotiated", func(t *testing.T) {
		srvTLS, caFile := selfSigned(t)
		srvTLS.MaxVersion = tls.VersionTLS12
		f := startFake(t, fakeOpts{tls: srvTLS})
		c := cfgFor("primary", f.addr)
		c.TLS, c.CAFile = TLSStartTLS, caFile
		r := newTestRouter(t, []Config{c}, f)
		relay(t, r, "a@example.com", []string{"b@example.net"}, msg(100))
		res := r.Probe(ctx)
		if len(res) != 1 || !res[0].OK {
			t.Fatalf("Probe = %+v", res)
		}
	})
}
