package upstream

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/mailgate/mailgate/proxy/tlspolicy"
)

func TestConfigDecodeHCL(t *testing.T) {
	var file struct {
		Upstreams []Config `hcl:"upstream,block"`
	}
	hf, diags := hclparse.NewParser().ParseHCLFile(filepath.Join("testdata", "upstreams.hcl"))
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	if diags := gohcl.DecodeBody(hf.Body, nil, &file); diags.HasErrors() {
		t.Fatalf("decode: %v", diags)
	}
	if len(file.Upstreams) != 2 {
		t.Fatalf("got %d upstreams", len(file.Upstreams))
	}
	p := file.Upstreams[0].WithDefaults()
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if p.Name != "primary" || p.Address != "mail.internal:587" || p.TLS != TLSStartTLS ||
		p.Username != "relay@example.com" || *p.PoolSize != 8 || p.ConnectTimeout != "15s" ||
		p.ServerName != "mail.internal" {
		t.Errorf("primary = %+v", p)
	}
	b := file.Upstreams[1].WithDefaults()
	if err := b.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if *b.PoolSize != 0 {
		t.Errorf("explicit pool_size = 0 must disable pooling, got %d", *b.PoolSize)
	}
	if b.MaxMessagesPerConnection != DefaultMaxMessagesPerConnection || b.CommandTimeout != "5m0s" ||
		b.MaxConnections != DefaultMaxConnections {
		t.Errorf("backup defaults = %+v", b)
	}
	s, _ := b.parse()
	want := settings{connectTimeout: 30 * time.Second, commandTimeout: 5 * time.Minute,
		dataTimeout: 10 * time.Minute, idleTimeout: 60 * time.Second, tls: tlspolicy.Default()}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("default settings = %+v, want %+v", s, want)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Name: "primary", Address: "mail.internal:587"}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"defaults_valid", func(*Config) {}, ""},
		{"bad_name", func(c *Config) { c.Name = "a b" }, "name"},
		{"missing_port", func(c *Config) { c.Address = "mail.internal" }, "host:port"},
		{"bad_tls", func(c *Config) { c.TLS = "ssl" }, "tls"},
		{"username_without_password", func(c *Config) { c.Username = "u" }, "together"},
		{"plaintext_auth_refused", func(c *Config) { c.TLS, c.Username, c.Password = TLSNone, "u", "p" }, "in clear"},
		{"plaintext_auth_loopback_ok", func(c *Config) {
			c.Address, c.TLS, c.Username, c.Password = "127.0.0.1:25", TLSNone, "u", "p"
		}, ""},
		{"negative_pool", func(c *Config) { n := -1; c.PoolSize = &n }, "pool_size"},
		{"negative_max_messages", func(c *Config) { c.MaxMessagesPerConnection = -1 }, "max_messages"},
		{"negative_max_connections", func(c *Config) { c.MaxConnections = -1 }, "max_connections"},
		{"bad_duration", func(c *Config) { c.CommandTimeout = "soon" }, "command_timeout"},
		{"zero_duration", func(c *Config) { c.DataTimeout = "0s" }, "data_timeout"},
		{"missing_ca_file", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, "ca_file"},
		{"tls_min_version_1.3", func(c *Config) { c.TLSMinVersion = "1.3" }, ""},
		{"tls_min_version_1.1_refused", func(c *Config) { c.TLSMinVersion = "1.1" }, "tls_min_version"},
		{"tls_cipher_suites_cbc_allowed", func(c *Config) {
			c.TLSCipherSuites = []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}
		}, ""},
		{"tls_cipher_suites_unknown", func(c *Config) { c.TLSCipherSuites = []string{"ECDHE-RSA-AES128-GCM-SHA256"} }, "tls_cipher_suites: unknown cipher suite"},
		{"tls_cipher_suites_insecure", func(c *Config) { c.TLSCipherSuites = []string{"TLS_RSA_WITH_RC4_128_SHA"} }, "insecure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mutate(&c)
			err := c.WithDefaults().Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want error containing %q", err, tc.want)
			case tc.want != "" && !errors.Is(err, ErrConfig):
				t.Fatalf("Validate = %v, want ErrConfig", err)
			}
		})
	}
}

func TestNewRouterConfigErrors(t *testing.T) {
	c := Config{Name: "a", Address: "127.0.0.1:25"}
	for _, tc := range []struct {
		name string
		cfgs []Config
	}{
		{"none", nil},
		{"duplicate_name", []Config{c, c}},
		{"invalid", []Config{{Name: "a"}}},
		{"ca_file_not_pem", []Config{{Name: "a", Address: "127.0.0.1:25", CAFile: "testdata/upstreams.hcl"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewRouter(tc.cfgs); !errors.Is(err, ErrConfig) {
				t.Fatalf("NewRouter = %v, want ErrConfig", err)
			}
		})
	}
	r, err := NewRouter([]Config{c, {Name: "b", Address: "127.0.0.1:26"}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Upstreams(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("Upstreams = %v", got)
	}
}
