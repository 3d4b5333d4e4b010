package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// decodeAuthBlock decodes src, a file holding one `auth` block, the way
// the config loader does.
func decodeAuthBlock(t *testing.T, src string) (Config, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "mailgate.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parse: %s", diags)
	}
	var root struct {
		Auth Config `hcl:"auth,block"`
	}
	diags = gohcl.DecodeBody(f.Body, nil, &root)
	return root.Auth, diags
}

func TestConfigDecode(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want Config
	}{
		{"defaults", `auth { users_file = "/etc/mailgate/users" }`, Config{
			UsersFile: "/etc/mailgate/users", MaxFailures: 3, IPFailures: 20, UserFailures: 10, FailureWindow: "15m0s",
		}},
		{"all_set", `auth {
			users_file     = "/u"
			max_failures   = 5
			ip_failures    = 50
			user_failures  = 7
			failure_window = "1h"
		}`, Config{UsersFile: "/u", MaxFailures: 5, IPFailures: 50, UserFailures: 7, FailureWindow: "1h"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, diags := decodeAuthBlock(t, c.src)
			if diags.HasErrors() {
				t.Fatalf("decode: %s", diags)
			}
			got = got.WithDefaults()
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
	t.Run("users_file_required_by_schema", func(t *testing.T) {
		if _, diags := decodeAuthBlock(t, `auth { max_failures = 1 }`); !diags.HasErrors() {
			t.Error("missing users_file decoded without error")
		}
	})
	t.Run("unknown_attribute_refused", func(t *testing.T) {
		if _, diags := decodeAuthBlock(t, `auth {
			users_file = "/u"
			max_failure = 1
		}`); !diags.HasErrors() {
			t.Error("misspelt attribute decoded without error")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	base := Config{UsersFile: "/u"}.WithDefaults()
	cases := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"no_users_file", func(c *Config) { c.UsersFile = "" }, "users_file"},
		{"negative_max_failures", func(c *Config) { c.MaxFailures = -1 }, "max_failures"},
		{"negative_ip_failures", func(c *Config) { c.IPFailures = -1 }, "ip_failures"},
		{"negative_user_failures", func(c *Config) { c.UserFailures = -3 }, "user_failures"},
		{"bad_window", func(c *Config) { c.FailureWindow = "15 minutes" }, "failure_window"},
		{"negative_window", func(c *Config) { c.FailureWindow = "-1m" }, "failure_window"},
		{"huge_window", func(c *Config) { c.FailureWindow = "720h" }, "failure_window"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.mutate(&cfg)
			err := cfg.Validate()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Validate = %v, want ErrInvalidConfig mentioning %q", err, c.wantErr)
			}
		})
	}
	t.Run("window", func(t *testing.T) {
		if got := (Config{FailureWindow: "90s"}).Window(); got != 90*time.Second {
			t.Errorf("Window = %v", got)
		}
	})
}
