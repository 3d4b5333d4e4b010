package dkim

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

func rsaKey(domain, selector string) KeyConfig {
	return KeyConfig{Domain: domain, Selector: selector, File: keyPath("rsa2048.pkcs8.pem")}
}

func edKey(domain, selector string) KeyConfig {
	return KeyConfig{Domain: domain, Selector: selector, File: keyPath("ed25519.pem")}
}

// TestSignGolden signs the messages under testdata/messages with the keys
// under testdata/keys and compares the DKIM-Signature fields with
// testdata/golden/*.sig. t=, x= and b= are masked there: t= comes from the
// wall clock, and b= covers t=. Every
// signature is also verified, and x= - t= checked.
func TestSignGolden(t *testing.T) {
	rfcKey := KeyConfig{Domain: "football.example.com", Selector: "brisbane", File: keyPath("rfc8463-ed25519.pem")}
	tests := []struct {
		name, msg string
		keys      []KeyConfig
	}{
		{"basic-rsa", "basic.eml", []KeyConfig{rsaKey("example.com", "mg2026r")}},
		{"basic-ed25519", "basic.eml", []KeyConfig{edKey("example.com", "mg2026e")}},
		{"basic-dual", "basic.eml", []KeyConfig{rsaKey("example.com", "mg2026r"), edKey("example.com", "mg2026e")}},
		{"rfc8463", "rfc8463.eml", []KeyConfig{rfcKey}},
		{"empty-body", "empty-body.eml", []KeyConfig{rsaKey("example.com", "s")}},
		{"no-separator", "no-separator.eml", []KeyConfig{rsaKey("example.com", "s")}},
		{"hygiene", "hygiene.eml", []KeyConfig{edKey("example.com", "s")}},
		{"utf8", "utf8.eml", []KeyConfig{edKey("example.com", "s")}},
		{"folded", "folded.eml", []KeyConfig{rsaKey("example.com", "s"), edKey("example.com", "e")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Keys: tc.keys}
			s := newTestSigner(t, cfg)
			msg := readMessage(t, tc.msg)
			signed, sigs := sign(t, s, "", msg)
			if len(sigs) != len(tc.keys) {
				t.Fatalf("got %d signatures, want %d", len(sigs), len(tc.keys))
			}
			var got strings.Builder
			for i, sig := range sigs {
				if !strings.HasPrefix(sig, "DKIM-Signature: ") || !strings.HasSuffix(sig, "\r\n") {
					t.Errorf("signature %d is not a complete field: %q", i, sig)
				}
				for _, line := range strings.Split(strings.TrimSuffix(sig, "\r\n"), "\r\n") {
					if len(line) > 998 {
						t.Errorf("line longer than 998 octets (RFC 5322 section 2.1.1)")
					}
				}
				m := tags(t, sig)
				if d := unixTag(t, m, "x").Sub(unixTag(t, m, "t")); d > DefaultExpiration || d < DefaultExpiration-5*time.Second {
					t.Errorf("x= - t= = %v, want %v", d, DefaultExpiration)
				}
				got.WriteString(mask(sig))
			}
			for i, v := range verifyGo(t, signed, recordsFor(t, cfg)) {
				if v.Err != nil {
					t.Errorf("signature %d does not verify: %v", i, v.Err)
				}
			}
			golden := filepath.Join("testdata", "golden", tc.name+".sig")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got.String() != string(want) {
				t.Errorf("signature differs from %s:\ngot:\n%s\nwant:\n%s", golden, got.String(), want)
			}
		})
	}
}

// TestRFC8463Example verifies the signed example of RFC 8463 appendix A.3
// with the key record of appendix A.2, then signs the same message with the
// same key through Signer and verifies that too.
func TestRFC8463Example(t *testing.T) {
	records := map[string]string{
		"brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
	}
	const rfcSig = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n" +
		" d=football.example.com; i=@football.example.com;\r\n" +
		" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n" +
		" subject : date : message-id : from : subject : date;\r\n" +
		" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n" +
		" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n" +
		" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
	msg := readMessage(t, "rfc8463.eml")

	t.Run("appendix A.3 verifies", func(t *testing.T) {
		vs := verifyGo(t, rfcSig+msg, records)
		if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "football.example.com" {
			t.Fatalf("verification: %+v", vs[0])
		}
	})
	t.Run("tampered body fails", func(t *testing.T) {
		vs := verifyGo(t, rfcSig+strings.Replace(msg, "hungry", "thirsty", 1), records)
		if vs[0].Err == nil {
			t.Fatal("tampered message verified")
		}
	})
	t.Run("our signature with the RFC key verifies", func(t *testing.T) {
		s := newTestSigner(t, Config{Keys: []KeyConfig{{Domain: "football.example.com", Selector: "brisbane", File: keyPath("rfc8463-ed25519.pem")}}})
		signed, sigs := sign(t, s, "", msg)
		if got := tags(t, sigs[0])["bh"]; got != "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=" {
			t.Errorf("bh=%s, want the RFC's", got)
		}
		if got := tags(t, sigs[0])["a"]; got != "ed25519-sha256" {
			t.Errorf("a=%s", got)
		}
		if vs := verifyGo(t, signed, records); vs[0].Err != nil {
			t.Fatal(vs[0].Err)
		}
	})
}

// TestEmptyBodyHash checks the well-known body hashes of an empty body
// (RFC 6376 section 3.4.3 and 3.4.4: simple hashes one CRLF, relaxed
// hashes nothing).
func TestEmptyBodyHash(t *testing.T) {
	tests := []struct {
		canon canonicalization
		msg   string
		want  string
	}{
		{canonSimple, "empty-body.eml", "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="},
		{canonRelaxed, "empty-body.eml", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
		{canonSimple, "no-separator.eml", "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="},
		{canonRelaxed, "no-separator.eml", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
	}
	for _, tc := range tests {
		t.Run(tc.canon.String()+"/"+tc.msg, func(t *testing.T) {
			cfg := Config{Keys: []KeyConfig{edKey("example.com", "s")}}
			s := newTestSigner(t, cfg)
			s.bodyCanon = tc.canon
			msg := readMessage(t, tc.msg)
			signed, sigs := sign(t, s, "", msg)
			m := tags(t, sigs[0])
			if m["bh"] != tc.want {
				t.Errorf("bh=%s, want %s", m["bh"], tc.want)
			}
			if m["c"] != "relaxed/"+tc.canon.String() {
				t.Errorf("c=%s", m["c"])
			}
			if vs := verifyGo(t, signed, recordsFor(t, cfg)); vs[0].Err != nil {
				t.Fatal(vs[0].Err)
			}
		})
	}
}

// TestDefaults pins the choices made around go-msgauth's own defaults
// (simple/simple, every header signed).
func TestDefaults(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{rsaKey("example.com", "s")}})
	_, sigs := sign(t, s, "", readMessage(t, "folded.eml"))
	m := tags(t, sigs[0])
	checks := map[string]string{"v": "1", "a": "rsa-sha256", "c": "relaxed/relaxed", "d": "example.com", "s": "s"}
	for k, want := range checks {
		if m[k] != want {
			t.Errorf("%s=%q, want %q", k, m[k], want)
		}
	}
	for _, absent := range []string{"l", "i", "z"} {
		if _, ok := m[absent]; ok {
			t.Errorf("%s= present", absent)
		}
	}
	if _, ok := m["t"]; !ok {
		t.Error("t= missing")
	}
	if strings.Contains(strings.ToLower(m["h"]), "x-unsigned") {
		t.Errorf("h=%s signs a header outside the list", m["h"])
	}
}

func TestOversigning(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{edKey("example.com", "s")}}
	records := recordsFor(t, cfg)
	msg := readMessage(t, "basic.eml")

	t.Run("h= lists each header once more than present", func(t *testing.T) {
		s := newTestSigner(t, cfg)
		_, sigs := sign(t, s, "", msg)
		h := strings.Split(strings.ToLower(tags(t, sigs[0])["h"]), ":")
		count := map[string]int{}
		for _, k := range h {
			count[k]++
		}
		want := map[string]int{"from": 2, "to": 2, "subject": 2, "date": 2, "message-id": 2, "cc": 1, "reply-to": 1, "list-unsubscribe-post": 1}
		for k, n := range want {
			if count[k] != n {
				t.Errorf("%s listed %d times in h=, want %d (h=%s)", k, count[k], n, strings.Join(h, ":"))
			}
		}
	})

	added := []struct{ name, field string }{
		{"second Subject on top", "Subject: you won a prize\r\n"},
		{"second From on top", "From: ceo@example.com\r\n"},
		{"Reply-To added", "Reply-To: phish@example.net\r\n"},
		{"Cc added", "Cc: someone@example.net\r\n"},
	}
	for _, a := range added {
		t.Run("header added after signing fails: "+a.name, func(t *testing.T) {
			s := newTestSigner(t, cfg)
			_, sigs := sign(t, s, "", msg)
			if vs := verifyGo(t, sigs[0]+msg, records); vs[0].Err != nil {
				t.Fatalf("untouched message does not verify: %v", vs[0].Err)
			}
			if vs := verifyGo(t, sigs[0]+a.field+msg, records); vs[0].Err == nil {
				t.Fatal("message with an added header still verifies")
			}
			// Appended at the bottom of the header too.
			i := strings.Index(msg, "\r\n\r\n") + 2
			if vs := verifyGo(t, sigs[0]+msg[:i]+a.field+msg[i:], records); vs[0].Err == nil {
				t.Fatal("message with a header appended at the bottom still verifies")
			}
		})
	}

	t.Run("without oversigning an added Subject on top goes unnoticed", func(t *testing.T) {
		// Why oversigning is the default: go-msgauth (like every
		// verifier, RFC 6376 section 5.4.2) picks fields bottom-up.
		c := cfg
		c.Oversign = []string{"From"}
		s := newTestSigner(t, c)
		_, sigs := sign(t, s, "", msg)
		if vs := verifyGo(t, sigs[0]+"Subject: you won a prize\r\n"+msg, records); vs[0].Err != nil {
			t.Fatalf("expected the weakness to show, got %v", vs[0].Err)
		}
		if strings.Contains(strings.ToLower(tags(t, sigs[0])["h"]), "reply-to") {
			t.Error("absent, not oversigned header listed in h=")
		}
	})
}

func TestNeverSigned(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{rsaKey("example.com", "s")}}
	s := newTestSigner(t, cfg)
	signed, sigs := sign(t, s, "", readMessage(t, "hygiene.eml"))
	h := strings.ToLower(tags(t, sigs[0])["h"])
	for _, f := range []string{"bcc", "received", "return-path"} {
		t.Run(f+" not in h=", func(t *testing.T) {
			for _, k := range strings.Split(h, ":") {
				if k == f {
					t.Fatalf("h=%s", h)
				}
			}
		})
	}
	t.Run("trace fields may change in transit", func(t *testing.T) {
		moved := strings.Replace(signed, "Return-Path: <bounce@example.com>\r\n", "Received: from relay.example.net by mx.example.org; Thu, 26 Nov 2026 10:00:01 +0000\r\n", 1)
		if vs := verifyGo(t, moved, recordsFor(t, cfg)); vs[0].Err != nil {
			t.Fatal(vs[0].Err)
		}
	})
}

// TestLineEndings: the proxy hands CRLF only; Sign refuses bare LF and
// bare CR anywhere (ErrLineEnding) rather than sign bytes a later hop will
// rewrite.
func TestLineEndings(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{rsaKey("example.com", "s")}}
	s := newTestSigner(t, cfg)
	crlf := readMessage(t, "basic.eml")
	tests := []struct {
		name string
		msg  string
		ok   bool
	}{
		{"CRLF", crlf, true},
		{"LF only", strings.ReplaceAll(crlf, "\r\n", "\n"), false},
		{"bare LF in header", strings.Replace(crlf, "Subject: Quarterly report\r\n", "Subject: Quarterly report\n", 1), false},
		{"bare CR in header", strings.Replace(crlf, "Subject: Quarterly", "Subject: \rQuarterly", 1), false},
		{"bare LF in body", strings.Replace(crlf, "Hello Bob,\r\n", "Hello Bob,\n", 1), false},
		{"bare CR in body", strings.Replace(crlf, "Hello Bob,\r\n", "Hello Bob,\r", 1), false},
		{"bare CR at end", crlf + "\r", false},
		{"LF right after the header", strings.Replace(crlf, "\r\n\r\n", "\r\n\r\n\n", 1), false},
		{"header without final CRLF", "From: a@example.com\r\nSubject: x", false},
		{"body without final CRLF", crlf + "no newline", true},
	}
	for _, tc := range tests {
		for _, reader := range []struct {
			name string
			wrap func(string) *strings.Reader
		}{{"whole", strings.NewReader}} {
			t.Run(tc.name+"/"+reader.name, func(t *testing.T) {
				_, err := s.Sign(context.Background(), "", reader.wrap(tc.msg))
				check(t, tc.ok, err, ErrLineEnding)
			})
		}
		t.Run(tc.name+"/one byte at a time", func(t *testing.T) {
			_, err := s.Sign(context.Background(), "", iotest.OneByteReader(strings.NewReader(tc.msg)))
			check(t, tc.ok, err, ErrLineEnding)
		})
	}
}

func check(t *testing.T, ok bool, err, sentinel error) {
	t.Helper()
	if ok && err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if !ok && !errors.Is(err, sentinel) {
		t.Fatalf("err = %v, want %v", err, sentinel)
	}
}

func TestSigningDomainRules(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{
		rsaKey("example.com", "plain"),
		edKey("example.org", "wild"),
		rsaKey("example.org", "notwild"),
		rsaKey("sub.example.org", "own"),
		edKey("xn--bcher-kva.example", "idn"),
		{Domain: "example.com", Selector: "plain-ed", File: keyPath("ed25519.pem")},
	}}
	cfg.Keys[1].Subdomains = true
	reject := UnsignedReject
	rejectCfg := cfg
	rejectCfg.Unsigned = &reject

	msg := func(from string) string {
		return "From: " + from + "\r\nTo: x@example.net\r\nSubject: s\r\n\r\nbody\r\n"
	}
	tests := []struct {
		name     string
		cfg      Config
		domain   string // policy choice
		msg      string
		wantD    string   // "" = unsigned
		wantSels []string // selectors in order
		wantErr  error
	}{
		{"exact domain, every selector", cfg, "", msg("a@example.com"), "example.com", []string{"plain", "plain-ed"}, nil},
		{"upper-case domain", cfg, "", msg("A@EXAMPLE.COM"), "example.com", []string{"plain", "plain-ed"}, nil},
		{"subdomain of a key without subdomains: unsigned", cfg, "", msg("a@sub.example.com"), "", nil, nil},
		{"subdomain signed by subdomains key only", cfg, "", msg("a@deep.x.example.org"), "example.org", []string{"wild"}, nil},
		{"exact match preferred over parent", cfg, "", msg("a@sub.example.org"), "sub.example.org", []string{"own"}, nil},
		{"closest parent with a subdomains key", cfg, "", msg("a@x.sub.example.org"), "example.org", []string{"wild"}, nil},
		{"IDN From domain in U-labels", cfg, "", msg("a@Bücher.example"), "xn--bcher-kva.example", []string{"idn"}, nil},
		{"display name in unknown charset", cfg, "", msg("=?x-unknown?q?J=F6rg?= <a@example.com>"), "example.com", []string{"plain", "plain-ed"}, nil},
		{"unknown domain relayed unsigned", cfg, "", msg("a@other.test"), "", nil, nil},
		{"unknown domain rejected", rejectCfg, "", msg("a@other.test"), "", nil, ErrNoKey},
		{"suffix is not a parent", cfg, "", msg("a@notexample.org"), "", nil, nil},
		{"policy domain signs other From", cfg, "example.com", msg("a@other.test"), "example.com", []string{"plain", "plain-ed"}, nil},
		{"policy domain without key", cfg, "other.test", msg("a@example.com"), "", nil, ErrNoKey},
		{"policy domain must be a key domain, not a subdomain", cfg, "x.example.org", msg("a@x.example.org"), "", nil, ErrNoKey},
		{"policy domain is not subject to unsigned=relay", cfg, "nope.test", msg("a@nope.test"), "", nil, ErrNoKey},
		{"no From", cfg, "", "To: x@example.net\r\nSubject: s\r\n\r\nbody\r\n", "", nil, ErrFromHeader},
		{"policy domain but no From", cfg, "example.com", "To: x@example.net\r\nSubject: s\r\n\r\nbody\r\n", "", nil, ErrFromHeader},
		{"two From fields", cfg, "", "From: a@example.com\r\n" + msg("b@example.com"), "", nil, ErrFromHeader},
		{"two From addresses", cfg, "", msg("a@example.com, b@example.com"), "", nil, ErrFromHeader},
		{"From group without address", cfg, "", msg("undisclosed-senders:;"), "", nil, ErrFromHeader},
		{"From without domain", cfg, "", msg("alice"), "", nil, ErrFromHeader},
		{"From with a domain literal", cfg, "", msg("a@[192.0.2.1]"), "", nil, ErrFromHeader},
		{"empty message", cfg, "", "", "", nil, ErrFromHeader},
		{"From case-insensitive name counted", cfg, "", "FROM: a@example.com\r\n" + msg("a@example.com"), "", nil, ErrFromHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSigner(t, tc.cfg)
			sigs, err := s.Sign(context.Background(), tc.domain, strings.NewReader(tc.msg))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if sigs != nil {
					t.Fatal("signatures returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantD == "" {
				if sigs != nil {
					t.Fatalf("signed: %q", sigs)
				}
				return
			}
			var sels []string
			for _, sig := range sigs {
				m := tags(t, sig)
				if m["d"] != tc.wantD {
					t.Errorf("d=%s, want %s", m["d"], tc.wantD)
				}
				sels = append(sels, m["s"])
			}
			if strings.Join(sels, ",") != strings.Join(tc.wantSels, ",") {
				t.Errorf("selectors %v, want %v", sels, tc.wantSels)
			}
			if vs := verifyGo(t, strings.Join(sigs, "")+tc.msg, recordsFor(t, tc.cfg)); len(vs) != len(sigs) {
				t.Fatalf("%d verifications", len(vs))
			} else {
				for _, v := range vs {
					if v.Err != nil {
						t.Error(v.Err)
					}
				}
			}
		})
	}
}

func TestExpiration(t *testing.T) {
	zero, hour := "0", "1h"
	later := time.Unix(1900000000, 0)
	msg := readMessage(t, "basic.eml")
	tests := []struct {
		name  string
		exp   *string
		clock func() time.Time
		want  time.Duration // 0 = no x=
	}{
		{"default 120h", nil, nil, 120 * time.Hour},
		{"1h", &hour, nil, time.Hour},
		{"0 disables x=", &zero, nil, 0},
		{"t= and x= follow the injected clock", &hour, func() time.Time { return later }, time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var opts []Option
			if tc.clock != nil {
				opts = append(opts, WithClock(tc.clock))
			}
			s := newTestSigner(t, Config{Keys: []KeyConfig{edKey("example.com", "s")}, Expiration: tc.exp}, opts...)
			_, sigs := sign(t, s, "", msg)
			m := tags(t, sigs[0])
			if tc.want == 0 {
				if x, ok := m["x"]; ok {
					t.Fatalf("x=%s present", x)
				}
				return
			}
			d := unixTag(t, m, "x").Sub(unixTag(t, m, "t"))
			if d > tc.want || d < tc.want-5*time.Second {
				t.Fatalf("x= - t= = %v, want %v", d, tc.want)
			}
			if tc.clock != nil && !unixTag(t, m, "t").Equal(later) {
				t.Fatalf("t=%s, want the injected clock's %d", m["t"], later.Unix())
			}
		})
	}
}

func TestContextCanceled(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{edKey("example.com", "s")}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Sign(ctx, "", strings.NewReader(readMessage(t, "basic.eml"))); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	t.Run("canceled while streaming the body", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		r := &cancelAfter{r: strings.NewReader(readMessage(t, "basic.eml") + strings.Repeat("x\r\n", 100000)), n: 4096, cancel: cancel}
		if _, err := s.Sign(ctx, "", r); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
}

type cancelAfter struct {
	r      *strings.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	n, err := c.r.Read(p[:min(len(p), 1024)])
	c.n -= n
	return n, err
}

func TestIOError(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{edKey("example.com", "s")}})
	boom := errors.New("disk on fire")
	r := iotest.ErrReader(boom)
	msg := strings.NewReader(readMessage(t, "basic.eml"))
	_, err := s.Sign(context.Background(), "", io.MultiReader(msg, r))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
}

func TestSignConcurrentWithReload(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{rsaKey("example.com", "r"), edKey("example.com", "e")}}
	s := newTestSigner(t, cfg)
	records := recordsFor(t, cfg)
	msg := readMessage(t, "basic.eml")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				sigs, err := s.Sign(context.Background(), "", strings.NewReader(msg))
				if err != nil {
					t.Error(err)
					return
				}
				for _, v := range verifyGo(t, strings.Join(sigs, "")+msg, records) {
					if v.Err != nil {
						t.Error(v.Err)
					}
				}
			}
		})
	}
	wg.Go(func() {
		for range 10 {
			if err := s.Reload(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
}

func TestHeaderLimit(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{edKey("example.com", "s")}})
	long := "From: a@example.com\r\nX-Filler: " + strings.Repeat("a", MaxHeaderBytes) + "\r\n\r\nbody\r\n"
	if _, err := s.Sign(context.Background(), "", strings.NewReader(long)); !errors.Is(err, ErrHeader) {
		t.Fatalf("err = %v, want ErrHeader", err)
	}
	many := "From: a@example.com\r\n" + strings.Repeat("X-Filler: abc\r\n", MaxHeaderBytes/15+1) + "\r\nbody\r\n"
	if _, err := s.Sign(context.Background(), "", strings.NewReader(many)); !errors.Is(err, ErrHeader) {
		t.Fatalf("err = %v, want ErrHeader", err)
	}
	// A large body is streamed, not limited.
	big := readMessage(t, "basic.eml") + strings.Repeat("0123456789abcdef\r\n", 2*MaxHeaderBytes/18)
	if _, err := s.Sign(context.Background(), "", strings.NewReader(big)); err != nil {
		t.Fatal(err)
	}
}
