package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
)

// TestExamplesLoad loads every configuration under examples/ (and the
// embedded default) so none of them can rot.
func TestExamplesLoad(t *testing.T) {
	t.Setenv("MAILGATE_UPSTREAM_USER", "relay-user")
	t.Setenv("MAILGATE_UPSTREAM_PASS", "relay-pass")
	t.Setenv("MAILGATE_REDIS_PASS", "redis-pass")
	files, err := filepath.Glob("../../examples/*.hcl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var diag bytes.Buffer
			if _, err := loadConfigFile(f, &diag); err != nil {
				t.Fatalf("%v\n%s", err, diag.String())
			}
		})
	}
	t.Run("embedded default", func(t *testing.T) {
		var diag bytes.Buffer
		if _, err := loadConfig("default.hcl", defaultConfig, &diag); err != nil {
			t.Fatalf("%v\n%s", err, diag.String())
		}
	})
}

// TestExampleConfigWires builds every collaborator of examples/mailgate.hcl
// with real files (certificate, users, DKIM keys, the example policies),
// which is what `mailgate check` does, and probes the upstreams (absent
// here, so check must say so and fail).
func TestExampleConfigWires(t *testing.T) {
	t.Setenv("MAILGATE_UPSTREAM_USER", "relay-user")
	t.Setenv("MAILGATE_UPSTREAM_PASS", "relay-pass")
	t.Setenv("MAILGATE_REDIS_PASS", "redis-pass")
	dir := t.TempDir()
	src, err := os.ReadFile("../../examples/mailgate.hcl")
	if err != nil {
		t.Fatal(err)
	}
	// Upstreams that refuse at once: nothing listens on port 1 of loopback.
	cfgText := strings.ReplaceAll(string(src), "mail.internal.example.com:587", "127.0.0.1:1")
	cfgText = strings.ReplaceAll(cfgText, "mail2.internal.example.com:25", "127.0.0.1:1")
	cfgText = strings.ReplaceAll(cfgText, `username = env("MAILGATE_UPSTREAM_USER")`, "")
	cfgText = strings.ReplaceAll(cfgText, `password = env("MAILGATE_UPSTREAM_PASS")`, "")
	writeFile(t, filepath.Join(dir, "mailgate.hcl"), cfgText)
	writeTestFiles(t, dir)

	var out, errOut bytes.Buffer
	code := checkMain([]string{"-config", filepath.Join(dir, "mailgate.hcl"), "-timeout", "5s"}, &out, &errOut)
	if code != 1 {
		t.Fatalf("check exit %d, want 1 (upstreams down)\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"configuration OK", `upstream "primary"`, "NOT reachable"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckReportsConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bad.hcl"), `hostname = "x"
listener "relay" {
  address = "127.0.0.1:2525"
  tls     = "none"
  auth    = "none"
}
outbox { maildir = "out" }
limits { max_mesage_size = 10 }
`)
	var out, errOut bytes.Buffer
	code := checkMain([]string{"-config", filepath.Join(dir, "bad.hcl")}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	// The typo is reported with a snippet of the file.
	if !strings.Contains(errOut.String(), "max_mesage_size") || !strings.Contains(errOut.String(), "bad.hcl line 8") {
		t.Errorf("diagnostic lacks the attribute or position:\n%s", errOut.String())
	}

	writeFile(t, filepath.Join(dir, "open.hcl"), `hostname = "x"
listener "relay" {
  address = "0.0.0.0:25"
  tls     = "none"
  auth    = "none"
}
outbox { maildir = "out" }
`)
	out.Reset()
	errOut.Reset()
	if code := checkMain([]string{"-config", filepath.Join(dir, "open.hcl")}, &out, &errOut); code != 1 {
		t.Fatalf("open relay config accepted")
	}
	if !strings.Contains(errOut.String(), "trusted_networks") {
		t.Errorf("open relay error does not say why:\n%s", errOut.String())
	}
}

// TestCheckReportsQuotaErrors: `mailgate check` type-checks quota
// expressions and windows, with a snippet of the file.
func TestCheckReportsQuotaErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "quota.hcl"), `hostname = "x"
listener "relay" {
  address          = "127.0.0.1:2525"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
outbox { maildir = "out" }
quota "per-login" {
  key      = auth.user
  messages = ["200/1h", "lots/1d"]
}
`)
	var out, errOut bytes.Buffer
	if code := checkMain([]string{"-config", filepath.Join(dir, "quota.hcl")}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out.String())
	}
	for _, want := range []string{"quota.hcl line 10", "with auth != null", `window "lots/1d"`} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("diagnostics lack %q:\n%s", want, errOut.String())
		}
	}
}

func TestEnvFunctionUnsetIsAnError(t *testing.T) {
	src := `hostname = "x"
listener "relay" {
  address = "127.0.0.1:2525"
  tls = "none"
  auth = "none"
  trusted_networks = ["127.0.0.1"]
}
upstream "u" {
  address  = "127.0.0.1:25"
  tls      = "none"
  username = "u"
  password = env("MAILGATE_TEST_SURELY_UNSET")
}
`
	var diag bytes.Buffer
	if _, err := loadConfig("t.hcl", []byte(src), &diag); err == nil {
		t.Fatal("unset env() accepted")
	}
	if !strings.Contains(diag.String(), "MAILGATE_TEST_SURELY_UNSET") {
		t.Errorf("diagnostic does not name the variable:\n%s", diag.String())
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeTestFiles creates the files examples/mailgate.hcl refers to.
func writeTestFiles(t *testing.T, dir string) {
	t.Helper()
	cert, err := proxy.SelfSigned("mailgate.example.com")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tls/fullchain.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})))
	writeFile(t, filepath.Join(dir, "tls/privkey.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	hash, err := auth.Hash("a long test password")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "users"), "alice@example.com:"+hash+"\n")
	for sel, alg := range map[string]string{"mg2026r": dkim.AlgorithmRSA, "mg2026e": dkim.AlgorithmEd25519} {
		k, err := dkim.GenerateKey(alg, 2048)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "dkim"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := dkim.WriteKeyFile(filepath.Join(dir, "dkim", "example.com."+sel+".pem"), k); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := filepath.Glob("../../examples/policies/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pol {
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "policies", filepath.Base(p)), string(b))
	}
}

// TestTLSPolicyConfigErrors: a wrong TLS policy in the tls block or an
// upstream block is refused at load, naming the option and saying why.
func TestTLSPolicyConfigErrors(t *testing.T) {
	base := `hostname = "x"
listener "sub" { address = "127.0.0.1:587" }
auth { users_file = "users" }
%s
upstream "up" {
  address = "127.0.0.1:25"
  %s
}
`
	for _, tc := range []struct {
		name, tls, upstream, want string
	}{
		{"ok", `tls {
  cert_file = "c.pem"
  key_file = "k.pem"
  min_version = "1.3"
}`, `tls_min_version = "1.3"`, ""},
		{"listener_tls11", `tls {
  cert_file = "c.pem"
  key_file = "k.pem"
  min_version = "1.1"
}`, "", "tls: min_version"},
		{"listener_openssl_name", `tls {
  cert_file = "c.pem"
  key_file = "k.pem"
  cipher_suites = ["ECDHE-RSA-AES128-GCM-SHA256"]
}`, "", `unknown cipher suite "ECDHE-RSA-AES128-GCM-SHA256"`},
		{"listener_insecure", `tls {
  cert_file = "c.pem"
  key_file = "k.pem"
  cipher_suites = ["TLS_RSA_WITH_AES_128_CBC_SHA"]
}`, "", "insecure"},
		{"upstream_bad_suite", `tls {
  cert_file = "c.pem"
  key_file = "k.pem"
}`, `tls_cipher_suites = ["TLS_AES_128_GCM_SHA256"]`, "tls_cipher_suites"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "users"), "")
			path := filepath.Join(dir, "m.hcl")
			var diag bytes.Buffer
			_, err := loadConfig(path, []byte(fmt.Sprintf(base, tc.tls, tc.upstream)), &diag)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("%v\n%s", err, diag.String())
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one containing %q\n%s", err, tc.want, diag.String())
			}
		})
	}
}

// TestMetricsBlockDefaults: the example states the defaults, and bad
// durations are refused.
func TestMetricsBlockDefaults(t *testing.T) {
	t.Setenv("MAILGATE_UPSTREAM_USER", "relay-user")
	t.Setenv("MAILGATE_UPSTREAM_PASS", "relay-pass")
	t.Setenv("MAILGATE_REDIS_PASS", "redis-pass")
	var diag bytes.Buffer
	c, err := loadConfigFile("../../examples/mailgate.hcl", &diag)
	if err != nil {
		t.Fatalf("%v\n%s", err, diag.String())
	}
	mb := c.file.Metrics
	if mb.probeInterval() != defaultProbeInterval || mb.shutdownDelay() != defaultShutdownDelay {
		t.Errorf("example: probe_interval %s, shutdown_delay %s; defaults %s, %s",
			mb.probeInterval(), mb.shutdownDelay(), defaultProbeInterval, defaultShutdownDelay)
	}
	if d := (&metricsBlock{}); d.probeInterval() != defaultProbeInterval || d.shutdownDelay() != defaultShutdownDelay {
		t.Errorf("unset: %s, %s", d.probeInterval(), d.shutdownDelay())
	}
	for _, bad := range []string{`probe_interval = "0s"`, `probe_interval = "soon"`, `shutdown_delay = "-1s"`, `shutdown_delay = "1h"`} {
		src := "hostname = \"x\"\noutbox { maildir = \"out\" }\nlistener \"relay\" {\n  address = \"127.0.0.1:0\"\n  tls = \"none\"\n  auth = \"none\"\n  trusted_networks = [\"127.0.0.0/8\"]\n}\nmetrics {\n  address = \"127.0.0.1:0\"\n  " + bad + "\n}\n"
		if _, err := loadConfig("bad.hcl", []byte(src), &diag); err == nil || !strings.Contains(err.Error(), "metrics: ") {
			t.Errorf("%s: %v, want a metrics error", bad, err)
		}
	}
}
