package dkim

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestResolveRSABackend(t *testing.T) {
	for _, tc := range []struct {
		setting, want string
		err           string // substring of the error, "" for none
	}{
		{"", DefaultRSABackend(), ""},
		{"auto", DefaultRSABackend(), ""},
		{"go", "go", ""},
		{"openssl", map[bool]string{true: "openssl"}[opensslBuilt], map[bool]string{false: "-tags openssl"}[opensslBuilt]},
		{"OpenSSL", "", "want"},
		{"boringssl", "", "want"},
	} {
		t.Run(tc.setting, func(t *testing.T) {
			got, err := ResolveRSABackend(tc.setting)
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrRSABackend) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrRSABackend containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRSABackendsBuiltIn(t *testing.T) {
	got := RSABackends()
	if !slices.Contains(got, RSABackendGo) || slices.Contains(got, RSABackendOpenSSL) != opensslBuilt {
		t.Fatalf("RSABackends() = %v (openssl built in: %v)", got, opensslBuilt)
	}
	if !slices.Contains(got, DefaultRSABackend()) {
		t.Fatalf("default %q not among %v", DefaultRSABackend(), got)
	}
	if (OpenSSLVersion() != "") != opensslBuilt {
		t.Fatalf("OpenSSLVersion() = %q (openssl built in: %v)", OpenSSLVersion(), opensslBuilt)
	}
}

func TestConfigRSABackend(t *testing.T) {
	str := func(s string) *string { return &s }
	keys := []KeyConfig{rsaKey("example.com", "r"), edKey("example.com", "e")}

	if err := (&Config{RSABackend: str("fast")}).Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "rsa_backend") {
		t.Fatalf("Validate(rsa_backend = fast) = %v", err)
	}
	_, err := New(Config{Keys: keys, RSABackend: str("openssl")}, WithLogger(quietLogger()))
	if opensslBuilt != (err == nil) {
		t.Fatalf("New(rsa_backend = openssl) = %v (openssl built in: %v)", err, opensslBuilt)
	}
	if err != nil && !strings.Contains(err.Error(), "go build -tags openssl") {
		t.Fatalf("the error does not say how to build it: %v", err)
	}

	// Every backend built in signs, and the fields verify.
	for _, b := range append(RSABackends(), "", RSABackendAuto) {
		t.Run("backend "+b, func(t *testing.T) {
			cfg := Config{Keys: keys}
			if b != "" {
				cfg.RSABackend = str(b)
			}
			s := newTestSigner(t, cfg)
			defer s.Close()
			want, _ := ResolveRSABackend(b)
			if s.RSABackend() != want {
				t.Fatalf("RSABackend() = %q, want %q", s.RSABackend(), want)
			}
			signed, _ := sign(t, s, "", readMessage(t, "basic.eml"))
			for _, v := range verifyGo(t, signed, recordsFor(t, cfg)) {
				if v.Err != nil {
					t.Fatal(v.Err)
				}
			}
		})
	}
}

func TestSignerClose(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{rsaKey("example.com", "r")}})
	s.Close()
	s.Close() // idempotent
	if _, err := s.Sign(context.Background(), "", strings.NewReader(readMessage(t, "basic.eml"))); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: err = %v, want ErrClosed", err)
	}
	if err := s.Reload(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reload after Close: err = %v, want ErrClosed", err)
	}
}
