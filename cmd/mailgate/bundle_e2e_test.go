package main

// The bundle loop end to end: "mailgate policy bundle" signs a policy
// directory into a file a real HTTP server serves; a running mailgate
// polls it, and swaks sees each published policy take effect.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// serveBundleDir serves the files of dir over HTTP with a content ETag and
// 304 on If-None-Match, as a bundle server (or nginx with etag on) does.
func serveBundleDir(t *testing.T, dir string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := os.ReadFile(filepath.Join(dir, filepath.Base(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		sum := sha256.Sum256(body)
		etag := `"` + hex.EncodeToString(sum[:8]) + `"`
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// writeBundlePolicy writes a policy refusing recipients in domain.
func writeBundlePolicy(t *testing.T, dir, domain string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "mailgate.rego"), `package mailgate

deny contains {"id": "blocked-domain", "msg": sprintf("%s is blocked by policy %s", [input.rcpt.domain, data.version])} if {
	input.stage == "rcpt"
	input.rcpt.domain == data.blocked
}
`)
	writeFile(t, filepath.Join(dir, "data.json"), fmt.Sprintf(`{"blocked": %q, "version": "v-%s"}`, domain, domain))
}

func runBundleCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"policy", "bundle"}, args...), nil, &out, &errb)
	return code, out.String() + errb.String()
}

func TestE2EPolicyFromSignedBundle(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	keys, pol, pub := t.TempDir(), t.TempDir(), t.TempDir()
	priv, pubKey := peertest.RSAKeyPair(t, keys, "signing")
	publish := func(domain, rev string) {
		t.Helper()
		writeBundlePolicy(t, pol, domain)
		if code, out := runBundleCmd(t, "-dir", pol, "-revision", rev, "-signing-key", priv, "-out", filepath.Join(pub, "mail.tar.gz")); code != 0 {
			t.Fatalf("mailgate policy bundle: exit %d\n%s", code, out)
		}
	}
	publish("one.example", "r1")
	srv := serveBundleDir(t, pub)

	m := startMailgate(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
policy {
  rego {
    name = "org"
    bundle {
      url       = %q
      polling   = "1s"
      cache_dir = %q
      verification {
        public_key_file = %q
      }
    }
  }
}
`, srv.URL+"/mail.tar.gz", filepath.Join(keys, "cache"), pubKey))
	waitLog := func(parts ...string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			for _, line := range strings.Split(m.logs.String(), "\n") {
				all := true
				for _, p := range parts {
					all = all && strings.Contains(line, p)
				}
				if all {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no log line with %q", parts)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	send := func(to string) (string, int) {
		t.Helper()
		return peertest.Swaks(t, "--timeout", "20", "--server", m.relay, "--from", e2eUser, "--to", to,
			"--header", "From: "+e2eUser)
	}
	refused := func(to, want string) {
		t.Helper()
		out, code := send(to)
		if code == 0 || !strings.Contains(out, "550 5.7.1 "+want) {
			t.Fatalf("to %s: exit %d, want 550 %q\n%s", to, code, want, out)
		}
	}
	delivered := 0
	accepted := func(to string) {
		t.Helper()
		out, code := send(to)
		if code != 0 {
			t.Fatalf("to %s: exit %d\n%s", to, code, out)
		}
		delivered++
		if got := sink.WaitCount(t, delivered, 10*time.Second); got != delivered {
			t.Fatalf("sink has %d, want %d", got, delivered)
		}
	}

	waitLog(`"policy bundle activated"`, `"revision":"r1"`)
	refused("x@one.example", "one.example is blocked by policy v-one.example")
	accepted("x@two.example")
	waitLog(`"msg":"transaction"`, `"policy_revision":"rego:org=r1"`)

	// A new signed bundle: in force within the polling interval.
	publish("two.example", "r2")
	waitLog(`"policy bundle activated"`, `"revision":"r2"`)
	refused("x@two.example", "two.example is blocked by policy v-two.example")
	accepted("x@one.example")
	waitLog(`"msg":"transaction"`, `"policy_revision":"rego:org=r2"`)

	// A bundle signed with another key is refused; r2 keeps deciding.
	other := t.TempDir()
	otherPriv, _ := peertest.RSAKeyPair(t, other, "signing")
	writeBundlePolicy(t, pol, "three.example")
	if code, out := runBundleCmd(t, "-dir", pol, "-revision", "r3", "-signing-key", otherPriv, "-out", filepath.Join(pub, "mail.tar.gz")); code != 0 {
		t.Fatalf("mailgate policy bundle: exit %d\n%s", code, out)
	}
	waitLog(`"policy bundle not activated; keeping the running policy"`, `"revision":"r2"`)
	accepted("x@three.example")
	refused("x@two.example", "two.example is blocked by policy v-two.example")
}

func TestPolicyBundleCommand(t *testing.T) {
	dir := t.TempDir()
	writeBundlePolicy(t, dir, "one.example")
	out := filepath.Join(t.TempDir(), "b.tar.gz")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"usage without -out", []string{"-dir", dir}, 2, "usage: mailgate policy bundle"},
		{"missing dir", []string{"-dir", filepath.Join(dir, "nope"), "-out", out}, 1, "no such file"},
		{"missing key", []string{"-dir", dir, "-out", out, "-signing-key", filepath.Join(dir, "nope.pem")}, 1, "signing key"},
		{"bad algorithm", []string{"-dir", dir, "-out", out, "-signing-key", filepath.Join(dir, "data.json"), "-algorithm", "none"}, 1, "not supported"},
		{"unsigned", []string{"-dir", dir, "-out", out, "-revision", "r9"}, 0, `unsigned, revision "r9"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, got := runBundleCmd(t, tt.args...)
			if code != tt.code || !strings.Contains(got, tt.want) {
				t.Fatalf("exit %d, want %d; output:\n%s\nwant %q", code, tt.code, got, tt.want)
			}
		})
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatalf("no bundle written: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// TestE2EBundleNotReadyThenSIGHUP: with no bundle published and none
// cached, mailgate serves but defers every message (451 4.3.0); a SIGHUP
// after publishing polls at once (polling is an hour) and the policy is in
// force when the reload finishes.
func TestE2EBundleNotReadyThenSIGHUP(t *testing.T) {
	peertest.Require(t, "smtp-sink", "swaks")
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	keys, pol, pub := t.TempDir(), t.TempDir(), t.TempDir()
	priv, pubKey := peertest.RSAKeyPair(t, keys, "signing")
	srv := serveBundleDir(t, pub) // nothing published: 404
	m := startMailgate(t, upstreamBlock(sink.Addr())+fmt.Sprintf(`
metrics {
  address        = "127.0.0.1:0"
  probe_interval = "100ms"
  shutdown_delay = "0s"
}
policy {
  rego {
    name = "org"
    bundle {
      url       = %q
      polling   = "1h"
      cache_dir = %q
      verification {
        public_key_file = %q
      }
    }
  }
}
`, srv.URL+"/mail.tar.gz", filepath.Join(keys, "cache"), pubKey))
	out, code := peertest.Swaks(t, "--timeout", "20", "--server", m.relay, "--from", e2eUser, "--to", "x@one.example")
	if code == 0 || !strings.Contains(out, "451 4.3.0") {
		t.Fatalf("not ready: exit %d, want 451 4.3.0\n%s", code, out)
	}
	if sink.Count() != 0 {
		t.Fatal("a message went through without a policy")
	}
	// The load balancer is told too: /readyz names the policy.
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + m.extra["metrics"] + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "policy") {
		t.Fatalf("/readyz before the first bundle: %d %s", code, body)
	}

	writeBundlePolicy(t, pol, "one.example")
	if code, out := runBundleCmd(t, "-dir", pol, "-revision", "r1", "-signing-key", priv, "-out", filepath.Join(pub, "mail.tar.gz")); code != 0 {
		t.Fatalf("mailgate policy bundle: exit %d\n%s", code, out)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(m.logs.String(), "SIGHUP: reload finished") {
		if time.Now().After(deadline) {
			t.Fatal("no reload after SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, code = peertest.Swaks(t, "--timeout", "20", "--server", m.relay, "--from", e2eUser, "--to", "x@one.example")
	if code == 0 || !strings.Contains(out, "550 5.7.1 one.example is blocked by policy v-one.example") {
		t.Fatalf("after SIGHUP: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(keys, "cache", "org.tar.gz")); err != nil {
		t.Errorf("activated bundle not cached: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, body := readyz()
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after the bundle arrived: %d %s", code, body)
		}
	}
}

func TestPolicyCheckAndEvalWithBundle(t *testing.T) {
	keys, pol, pub := t.TempDir(), t.TempDir(), t.TempDir()
	priv, pubKey := peertest.RSAKeyPair(t, keys, "signing")
	writeBundlePolicy(t, pol, "one.example")
	if code, out := runBundleCmd(t, "-dir", pol, "-revision", "r7", "-signing-key", priv, "-out", filepath.Join(pub, "mail.tar.gz")); code != 0 {
		t.Fatalf("mailgate policy bundle: exit %d\n%s", code, out)
	}
	srv := serveBundleDir(t, pub)
	config := func(url string) string {
		dir := t.TempDir()
		path := filepath.Join(dir, "mailgate.hcl")
		writeFile(t, path, fmt.Sprintf(`policy {
  rego {
    name = "org"
    bundle {
      url = %q
      verification { public_key_file = %q }
    }
  }
}
`, url, pubKey))
		return path
	}
	good := config(srv.URL + "/mail.tar.gz")
	code, out, errOut := policyRun(t, "check", "-config", good)
	if code != 0 || !strings.Contains(out, `policy rego:org: bundle revision "r7"`) || !strings.Contains(out, "policy OK") {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	in := filepath.Join(t.TempDir(), "in.json")
	writeFile(t, in, `{"stage": "rcpt", "envelope": {"from": "a@example.com"}, "rcpt": {"address": "x@one.example"}}`)
	code, out, errOut = policyRun(t, "eval", "-config", good, "-input", in)
	if code != 0 || !strings.Contains(out, `"revision": "rego:org=r7"`) || !strings.Contains(out, "blocked-domain") {
		t.Fatalf("eval: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = policyRun(t, "check", "-config", config(srv.URL+"/missing.tar.gz"))
	if code != 1 || !strings.Contains(out, "policy rego:org: NOT ready") {
		t.Fatalf("check without a bundle: exit %d\n%s%s", code, out, errOut)
	}
}
