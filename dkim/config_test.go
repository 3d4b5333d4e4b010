package dkim

import (
	"errors"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	str := func(s string) *string { return &s }
	good := KeyConfig{Domain: "example.com", Selector: "mg2026r", File: "/k.pem"}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" = valid
	}{
		{"zero config", Config{}, ""},
		{"full", Config{Keys: []KeyConfig{good, {Domain: "example.com", Selector: "mg2026e", File: "/e.pem", Subdomains: true}},
			Expiration: str("72h"), Unsigned: str("reject"), Headers: []string{"From", "Subject"}, Oversign: []string{"from"}}, ""},
		{"dotted selector", Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "2026.mg", File: "/k"}}}, ""},
		{"IDN domain", Config{Keys: []KeyConfig{{Domain: "bücher.example", Selector: "s", File: "/k"}}}, ""},
		{"expiration 0", Config{Expiration: str("0")}, ""},
		{"empty domain", Config{Keys: []KeyConfig{{Selector: "s", File: "/k"}}}, "domain"},
		{"bad domain", Config{Keys: []KeyConfig{{Domain: "exa mple.com", Selector: "s", File: "/k"}}}, "domain"},
		{"bad selector", Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s/1", File: "/k"}}}, "selector"},
		{"empty selector", Config{Keys: []KeyConfig{{Domain: "example.com", File: "/k"}}}, "selector"},
		{"no file", Config{Keys: []KeyConfig{{Domain: "example.com", Selector: "s"}}}, "file"},
		{"duplicate key", Config{Keys: []KeyConfig{good, {Domain: "Example.COM", Selector: "MG2026R", File: "/x"}}}, "duplicate"},
		{"bad expiration", Config{Expiration: str("5 days")}, "expiration"},
		{"negative expiration", Config{Expiration: str("-1h")}, "expiration"},
		{"tiny expiration", Config{Expiration: str("1ms")}, "expiration"},
		{"bad unsigned", Config{Unsigned: str("sign")}, "unsigned"},
		{"headers without From", Config{Headers: []string{"Subject"}}, "From"},
		{"headers with Bcc", Config{Headers: []string{"From", "bcc"}}, `"bcc" must never be signed`},
		{"headers with Received", Config{Headers: []string{"From", "Received"}}, "Received"},
		{"headers with Return-Path", Config{Headers: []string{"From", "Return-Path"}}, "Return-Path"},
		{"header name with colon", Config{Headers: []string{"From", "X:Y"}}, "invalid"},
		{"duplicate header", Config{Headers: []string{"From", "from"}}, "twice"},
		{"oversign not signed", Config{Oversign: []string{"X-Mailer"}}, "not a signed header"},
		{"oversign outside override", Config{Headers: []string{"From"}, Oversign: []string{"Subject"}}, "not a signed header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrConfig mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestHeadersOverride(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{edKey("example.com", "s")}, Headers: []string{"From", "Subject", "X-Custom"}, Oversign: []string{"From", "X-Custom"}}
	s := newTestSigner(t, cfg)
	msg := "From: a@example.com\r\nSubject: s\r\nX-Custom: 1\r\nTo: b@example.net\r\n\r\nbody\r\n"
	signed, sigs := sign(t, s, "", msg)
	if got := tags(t, sigs[0])["h"]; got != "From:From:Subject:X-Custom:X-Custom" {
		t.Fatalf("h=%s", got)
	}
	if v := verifyGo(t, signed, recordsFor(t, cfg))[0]; v.Err != nil {
		t.Fatal(v.Err)
	}
}

func TestOversignNothing(t *testing.T) {
	cfg := Config{Keys: []KeyConfig{edKey("example.com", "s")}, Oversign: []string{}}
	s := newTestSigner(t, cfg)
	signed, sigs := sign(t, s, "", readMessage(t, "basic.eml"))
	if got := tags(t, sigs[0])["h"]; got != "From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:Content-Transfer-Encoding" {
		t.Fatalf("h=%s", got)
	}
	if v := verifyGo(t, signed, recordsFor(t, cfg))[0]; v.Err != nil {
		t.Fatal(v.Err)
	}
}

// TestDefaultHeadersIsACopy: a caller that modifies the list it got
// changes neither the next caller's list nor what a Signer signs.
func TestDefaultHeadersIsACopy(t *testing.T) {
	h := DefaultHeaders()
	if len(h) == 0 || h[0] != "From" {
		t.Fatalf("DefaultHeaders() = %q, want From first", h)
	}
	h[0] = "X-Changed"
	if got := DefaultHeaders(); got[0] != "From" {
		t.Errorf("after modifying a returned list, DefaultHeaders()[0] = %q", got[0])
	}
	if got := (&Config{}).signedHeaders(); got[0] != "From" {
		t.Errorf("after modifying a returned list, a Signer signs %q first", got[0])
	}
}
