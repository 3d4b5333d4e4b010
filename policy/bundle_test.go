package policy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// bundlePolicy is a policy whose deny message names its version, so a
// decision shows which bundle made it.
func bundlePolicy(version string) map[string]string {
	return map[string]string{
		"mailgate.rego": "package mailgate\n" +
			"deny contains {\"id\": \"blocked\", \"msg\": sprintf(\"blocked by %s\", [data.version])} if input.envelope.from == \"blocked@example.com\"\n",
		"data.json":          `{"version": "` + version + `"}`,
		"mailgate_test.rego": "package mailgate_test\ntest_never_bundled if false\n",
	}
}

// buildBundle builds a bundle of files (signed when key is set).
func buildBundle(t *testing.T, files map[string]string, revision, key string) []byte {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	var b bytes.Buffer
	if err := BuildBundle(context.Background(), BuildOptions{Dir: dir, Revision: revision, SigningKeyFile: key}, &b); err != nil {
		t.Fatalf("BuildBundle: %v", err)
	}
	return b.Bytes()
}

// tamper changes one byte of file name inside a bundle, keeping its
// signature.
func tamper(t *testing.T, b []byte, name string) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "/") == name {
			i := bytes.Index(body, []byte("blocked@"))
			if i < 0 {
				t.Fatalf("%s has no blocked@", name)
			}
			body[i] = 'B' // the rule now blocks Blocked@, so nobody
			found = true
		}
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("no %s in bundle", name)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// bundleServer is a real HTTP server serving one bundle with a strong ETag
// (its SHA-256), answering If-None-Match with 304 as a bundle server does.
type bundleServer struct {
	*httptest.Server
	mu          sync.Mutex
	body        []byte
	gets, short int // requests, 304 replies
}

func newBundleServer(t *testing.T) *bundleServer {
	t.Helper()
	s := &bundleServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		body := s.body
		s.gets++
		s.mu.Unlock()
		if r.URL.Path != "/bundles/mail.tar.gz" || body == nil {
			http.NotFound(w, r)
			return
		}
		sum := sha256.Sum256(body)
		etag := `"` + hex.EncodeToString(sum[:8]) + `"`
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			s.mu.Lock()
			s.short++
			s.mu.Unlock()
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/gzip")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *bundleServer) publish(b []byte) {
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

func (s *bundleServer) notModified() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.short
}

func (s *bundleServer) url() string { return s.URL + "/bundles/mail.tar.gz" }

// bundleFixture is a signing key pair and a cache directory.
type bundleFixture struct {
	dir, priv, pub, cache string
}

func newBundleFixture(t *testing.T) bundleFixture {
	t.Helper()
	dir := t.TempDir()
	priv, pub := peertest.RSAKeyPair(t, dir, "signer")
	return bundleFixture{dir: dir, priv: priv, pub: pub, cache: filepath.Join(dir, "cache")}
}

func (f bundleFixture) config(url string, verify bool) Config {
	bc := &BundleConfig{URL: url, Polling: "1h", CacheDir: f.cache}
	if verify {
		bc.Verification = &BundleVerification{PublicKeyFile: f.pub}
	}
	return Config{Rego: []RegoConfig{{Name: "org", Bundle: bc}}}
}

func openBundlePolicy(t *testing.T, cfg Config, logs io.Writer, opts ...Option) *Policy {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	p, err := New(cfg, t.TempDir(), append([]Option{WithLogger(slogTo(logs))}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// blockedBy evaluates the blocked sender and returns the deny message ("" for
// accept) and the revision.
func blockedBy(t *testing.T, p *Policy) (string, string) {
	t.Helper()
	d, err := p.Evaluate(context.Background(), mailInput("", "blocked@example.com"))
	if err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	return d.Message, d.Revision
}

func TestBundle_SignedLoadsAndDecides(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err != nil { // waits for a poll
		t.Fatalf("Reload: %v", err)
	}
	if err := p.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	msg, rev := blockedBy(t, p)
	if msg != "blocked by v1" || rev != "rego:org=r1" {
		t.Fatalf("got %q revision %q, want blocked by v1, rego:org=r1", msg, rev)
	}
	if d := evaluate(t, p, mailInput("", "ok@example.com")); d.Outcome != Accept || d.Revision != "rego:org=r1" {
		t.Fatalf("ok sender: %+v", d)
	}
	// The second poll sent the ETag and got 304: nothing recompiled.
	if srv.notModified() == 0 {
		t.Error("the server never answered 304: the downloader did not send If-None-Match")
	}
	if got := p.Revisions()["rego:org"]; got != "r1" {
		t.Errorf("Revisions: %q", got)
	}
}

func TestBundle_RefusedBundlesKeepThePreviousPolicy(t *testing.T) {
	f := newBundleFixture(t)
	otherPriv, _ := peertest.RSAKeyPair(t, f.dir, "other")
	good := buildBundle(t, bundlePolicy("v1"), "r1", f.priv)
	tests := []struct {
		name   string
		bundle []byte
		want   string // in the Reload error
	}{
		{"module changed after signing", tamper(t, buildBundle(t, bundlePolicy("v2"), "r2", f.priv), "mailgate.rego"), "digest mismatch"},
		{"signed with another key", buildBundle(t, bundlePolicy("v2"), "r2", otherPriv), "verif"},
		{"unsigned", buildBundle(t, bundlePolicy("v2"), "r2", ""), "signature"},
		{"not a bundle", []byte("<html>maintenance</html>"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newBundleServer(t)
			srv.publish(good)
			var logs peertest.Buffer
			p := openBundlePolicy(t, f.config(srv.url(), true), &logs)
			if err := p.Reload(); err != nil {
				t.Fatalf("Reload: %v", err)
			}
			srv.publish(tt.bundle)
			err := p.Reload()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Reload = %v, want an error with %q", err, tt.want)
			}
			if msg, rev := blockedBy(t, p); msg != "blocked by v1" || rev != "rego:org=r1" {
				t.Fatalf("after a refused bundle: %q %q, want the r1 policy", msg, rev)
			}
			if !strings.Contains(logs.String(), "policy bundle not activated; keeping the running policy") {
				t.Errorf("refusal not logged:\n%s", logs.String())
			}
		})
	}
}

func TestBundle_UnsignedWithoutVerification(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", ""))
	p := openBundlePolicy(t, f.config(srv.url(), false), nil)
	if err := p.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if msg, _ := blockedBy(t, p); msg != "blocked by v1" {
		t.Fatalf("got %q", msg)
	}
}

// TestBundle_SignedWithoutVerificationRefused pins OPA's behaviour that
// docs/policy.md ("Policies from a bundle server") documents: without a verification block an unsigned bundle loads,
// but a signed one is refused ("verification key not provided"), so
// signing cannot be turned on before the instances have the key.
func TestBundle_SignedWithoutVerificationRefused(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	p := openBundlePolicy(t, f.config(srv.url(), false), nil)
	if err := p.Reload(); err == nil || !strings.Contains(err.Error(), "verification key not provided") {
		t.Fatalf("Reload = %v, want verification key not provided", err)
	}
	if err := p.Ready(); err == nil {
		t.Fatal("ready with a refused signed bundle")
	}
}

func TestBundle_BadModuleKeepsThePreviousPolicy(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	// Signed and valid Rego, but an I/O built-in the engine does not allow.
	files := bundlePolicy("v2")
	files["io.rego"] = "package mailgate\nwarn contains x if { x := http.send({\"method\": \"GET\", \"url\": \"http://x\"}) }\n"
	srv.publish(buildBundle(t, files, "r2", f.priv))
	if err := p.Reload(); err == nil || !strings.Contains(err.Error(), "http.send") {
		t.Fatalf("Reload = %v, want a compile error naming http.send", err)
	}
	if msg, rev := blockedBy(t, p); msg != "blocked by v1" || rev != "rego:org=r1" {
		t.Fatalf("got %q %q", msg, rev)
	}
}

func TestBundle_NewRevisionPickedUpByPolling(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	cfg := f.config(srv.url(), true)
	cfg.Rego[0].Bundle.Polling = "1s" // the smallest interval
	p := openBundlePolicy(t, cfg, nil)
	waitRevision(t, p, "r1")
	srv.publish(buildBundle(t, bundlePolicy("v2"), "r2", f.priv))
	waitRevision(t, p, "r2")
	if msg, _ := blockedBy(t, p); msg != "blocked by v2" {
		t.Fatalf("got %q", msg)
	}
}

// waitRevision waits for the poll loop (no Reload) to activate rev.
func waitRevision(t *testing.T, p *Policy, rev string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for p.Revisions()["rego:org"] != rev {
		if time.Now().After(deadline) {
			t.Fatalf("revision %q not activated by polling (have %q)", rev, p.Revisions()["rego:org"])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBundle_StartFromCacheWhenServerIsDown(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	_ = p.Close()
	srv.Close()

	var logs peertest.Buffer
	p2 := openBundlePolicy(t, f.config(srv.url(), true), &logs)
	if err := p2.Ready(); err != nil {
		t.Fatalf("Ready after a restart with a cache: %v", err)
	}
	if msg, rev := blockedBy(t, p2); msg != "blocked by v1" || rev != "rego:org=r1" {
		t.Fatalf("from cache: %q %q", msg, rev)
	}
	if err := p2.Reload(); err == nil {
		t.Error("Reload with the server down: no error")
	}
	if err := p2.Ready(); err != nil {
		t.Errorf("a failed poll made the cached policy not ready: %v", err)
	}
	if !strings.Contains(logs.String(), "policy bundle activated from cache") {
		t.Errorf("no cache activation in the log:\n%s", logs.String())
	}
}

func TestBundle_TamperedCacheRefused(t *testing.T) {
	f := newBundleFixture(t)
	cacheFile := filepath.Join(f.cache, "org.tar.gz")
	writeFiles(t, f.cache, map[string]string{"org.tar.gz": string(tamper(t, buildBundle(t, bundlePolicy("v1"), "r1", f.priv), "mailgate.rego"))})
	if _, err := os.Stat(cacheFile); err != nil {
		t.Fatal(err)
	}
	p := openBundlePolicy(t, f.config("http://127.0.0.1:1/none.tar.gz", true), nil)
	if err := p.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Ready = %v, want ErrNotReady", err)
	}
}

func TestBundle_NotReadyFailsClosed(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t) // serves 404: nothing published
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err == nil {
		t.Fatal("Reload without a bundle: no error")
	}
	err := p.Ready()
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "rego:org") {
		t.Fatalf("Ready = %v, want ErrNotReady naming rego:org", err)
	}
	d, err := p.Evaluate(context.Background(), mailInput("", "ok@example.com"))
	if !errors.Is(err, ErrEngine) || !errors.Is(err, ErrNotReady) {
		t.Fatalf("Evaluate error = %v, want ErrEngine and ErrNotReady", err)
	}
	if d.Outcome != Defer || d.Code != 451 || d.EnhancedCode != "4.3.0" {
		t.Fatalf("decision %+v, want 451 4.3.0 defer", d)
	}
	// Publishing makes it ready on the next poll.
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := p.Ready(); err != nil {
		t.Fatalf("Ready after publish: %v", err)
	}
}

func TestBundle_RevisionInDecisionLog(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	cfg := f.config(srv.url(), true)
	cfg.DecisionLog = filepath.Join(f.dir, "decisions.jsonl")
	p := openBundlePolicy(t, cfg, nil)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	blockedBy(t, p)
	evaluate(t, p, mailInput("", "ok@example.com"))
	srv.publish(buildBundle(t, bundlePolicy("v2"), "r2", f.priv))
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	blockedBy(t, p)
	_ = p.Close() // the decision log is written by a goroutine: Close flushes it
	fh, err := os.Open(cfg.DecisionLog)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var got []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var rec struct {
			Revision string `json:"revision"`
			Outcome  string `json:"outcome"`
			Engines  []struct {
				Revision string `json:"revision"`
			} `json:"engines"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.Engines) != 1 || "rego:org="+rec.Engines[0].Revision != rec.Revision {
			t.Errorf("engine revision does not match the record's: %s", sc.Bytes())
		}
		got = append(got, rec.Outcome+" "+rec.Revision)
	}
	want := []string{"reject rego:org=r1", "accept rego:org=r1", "reject rego:org=r2"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("decision log %q, want %q", got, want)
	}
}

func TestBundle_ConfigValidation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		rc   RegoConfig
		want string
	}{
		{"path and bundle", RegoConfig{Name: "org", Path: "p", Bundle: &BundleConfig{URL: "http://x/b.tar.gz"}}, "not both"},
		{"neither", RegoConfig{Name: "org"}, "path is required"},
		{"bad url", RegoConfig{Name: "org", Bundle: &BundleConfig{URL: "ftp://x/b"}}, "http or https"},
		{"polling under a second", RegoConfig{Name: "org", Bundle: &BundleConfig{URL: "http://x/b", Polling: "500ms"}}, "at least 1s"},
		{"missing key", RegoConfig{Name: "org", Bundle: &BundleConfig{URL: "http://x/b", Verification: &BundleVerification{PublicKeyFile: "nope.pub"}}}, "verification key"},
		{"bad algorithm", RegoConfig{Name: "org", Bundle: &BundleConfig{URL: "http://x/b", Verification: &BundleVerification{PublicKeyFile: "k", Algorithm: "none"}}}, "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Rego: []RegoConfig{tt.rc}}, dir, WithLogger(quietLogger()))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestBuildBundle_SkipsTestsAndRefusesBrokenPolicies(t *testing.T) {
	b := buildBundle(t, bundlePolicy("v1"), "r1", "")
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, strings.TrimPrefix(h.Name, "/"))
	}
	if got := strings.Join(names, ","); strings.Contains(got, "_test.rego") || !strings.Contains(got, "mailgate.rego") || !strings.Contains(got, "data.json") {
		t.Errorf("bundle files %s", got)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": "package mailgate\ndeny contains x if {"})
	if err := BuildBundle(context.Background(), BuildOptions{Dir: dir}, io.Discard); err == nil {
		t.Error("a module with a syntax error was bundled")
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func TestBundle_RestartSendsTheCachedETag(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, bundlePolicy("v1"), "r1", f.priv))
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	_ = p.Close()
	before := srv.notModified()

	var logs peertest.Buffer
	p2 := openBundlePolicy(t, f.config(srv.url(), true), &logs)
	if err := p2.Reload(); err != nil { // after the start poll
		t.Fatal(err)
	}
	// Both the start poll and the Reload poll got 304: the cached bundle's
	// ETag was sent, nothing was downloaded again.
	if got := srv.notModified() - before; got != 2 {
		t.Errorf("%d polls answered 304, want 2", got)
	}
	if strings.Contains(logs.String(), `msg="policy bundle activated"`) {
		t.Errorf("the cached bundle was downloaded and activated again:\n%s", logs.String())
	}
	if msg, rev := blockedBy(t, p2); msg != "blocked by v1" || rev != "rego:org=r1" {
		t.Fatalf("got %q %q", msg, rev)
	}
}

func TestBundle_HTTPSWithCAFile(t *testing.T) {
	f := newBundleFixture(t)
	body := buildBundle(t, bundlePolicy("v1"), "r1", f.priv)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	t.Cleanup(srv.Close)
	ca := filepath.Join(f.dir, "ca.pem")
	writeFiles(t, f.dir, map[string]string{"ca.pem": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))})

	cfg := f.config(srv.URL+"/mail.tar.gz", true)
	p := openBundlePolicy(t, cfg, nil)
	if err := p.Reload(); err == nil {
		t.Fatal("an https server with an unknown CA was trusted")
	}
	_ = p.Close()
	cfg.Rego[0].Bundle.CAFile = ca
	p = openBundlePolicy(t, cfg, nil)
	if err := p.Reload(); err != nil {
		t.Fatalf("Reload with ca_file: %v", err)
	}
	if msg, _ := blockedBy(t, p); msg != "blocked by v1" {
		t.Fatalf("got %q", msg)
	}
}

// TestBundle_ActivationIsAtomic evaluates while bundles are swapped: every
// decision's deny message (from the bundle's data) matches the revision it
// reports (from the bundle's manifest), so no stage sees half of two.
func TestBundle_ActivationIsAtomic(t *testing.T) {
	f := newBundleFixture(t)
	srv := newBundleServer(t)
	bundles := [][]byte{
		buildBundle(t, bundlePolicy("r1"), "r1", f.priv),
		buildBundle(t, bundlePolicy("r2"), "r2", f.priv),
	}
	srv.publish(bundles[0])
	p := openBundlePolicy(t, f.config(srv.url(), true), nil)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan string, 1)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := p.Evaluate(context.Background(), mailInput("", "blocked@example.com"))
				if err != nil || "rego:org="+strings.TrimPrefix(d.Message, "blocked by ") != d.Revision {
					select {
					case errs <- d.Message + " / " + d.Revision:
					default:
					}
					return
				}
			}
		}()
	}
	for i := range 10 {
		srv.publish(bundles[(i+1)%2])
		if err := p.Reload(); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatalf("a decision mixed two bundles: %s", e)
	default:
	}
	if got := p.Revisions()["rego:org"]; got != "r1" {
		t.Errorf("after 10 swaps: %q, want r1", got)
	}
}
