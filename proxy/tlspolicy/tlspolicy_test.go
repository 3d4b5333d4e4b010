package tlspolicy

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

// TestDefaultIsAEADOnly: no CBC suite (LUCKY13) and no RSA key exchange
// in the default, which is TLS 1.2+.
func TestDefaultIsAEADOnly(t *testing.T) {
	p := Default()
	if p.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", p.MinVersion)
	}
	for _, id := range p.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20_POLY1305")) {
			t.Errorf("default suite %s is not ECDHE with an AEAD cipher", name)
		}
	}
	if len(p.CipherSuites) != 6 {
		t.Errorf("%d default suites, want the 6 ECDHE AES-GCM/ChaCha20 suites", len(p.CipherSuites))
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		min     string
		suites  []string
		wantErr string // "" = valid
		wantMin uint16
		want    []uint16 // nil: the default
	}{
		{"defaults", "", nil, "", tls.VersionTLS12, nil},
		{"tls13", "1.3", nil, "", tls.VersionTLS13, nil},
		{"tls13_prefixed", "TLS1.3", nil, "", tls.VersionTLS13, nil},
		{"tls11_refused", "1.1", nil, "RFC 8996", 0, nil},
		{"garbage_version", "2", nil, `want "1.2" or "1.3"`, 0, nil},
		{"cbc_on_request", "", []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}, "", tls.VersionTLS12,
			[]uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}},
		{"openssl_name_refused", "", []string{"ECDHE-RSA-AES128-GCM-SHA256"}, "unknown cipher suite", 0, nil},
		{"insecure_refused", "", []string{"TLS_RSA_WITH_AES_128_GCM_SHA256"}, "insecure", 0, nil},
		{"tls13_suite_refused", "", []string{"TLS_AES_128_GCM_SHA256"}, "TLS 1.3 suite", 0, nil},
		{"suites_with_tls13_refused", "1.3", []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}, "no effect", 0, nil},
		{"empty_list_refused", "", []string{}, "empty", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("min_version", tc.min, "cipher_suites", tc.suites)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = DefaultCipherSuites
			}
			if p.MinVersion != tc.wantMin || !slices.Equal(p.CipherSuites, want) {
				t.Fatalf("Parse = %+v, want min %x suites %v", p, tc.wantMin, want)
			}
		})
	}
}
