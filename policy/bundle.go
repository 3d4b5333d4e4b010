package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/download"
	"github.com/open-policy-agent/opa/v1/keys"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// ErrNotReady marks an evaluation by a bundle engine that has no policy yet:
// no bundle was activated since start and none was cached on disk. It is an
// engine error, so with on_error = "defer" (the default) the stage is
// deferred with 451 4.3.0.
var ErrNotReady = errors.New("policy: no bundle activated yet")

// BundleConfig is the bundle block of a rego engine: the modules and data
// come from an OPA bundle (a .tar.gz as "opa build" or "mailgate policy
// bundle" makes it) served over HTTP(S), fetched with OPA's downloader.
//
//	bundle {
//	  url       = "https://policy.example.com/bundles/mail.tar.gz"
//	  polling   = "60s"           # how often to ask for a new revision
//	  cache_dir = "bundle-cache"  # last good bundle, for a start without the server
//	  ca_file   = ""              # PEM CA for the server; default: system roots
//	  verification {
//	    public_key_file = "/etc/mailgate/bundle-signing.pub"
//	    algorithm       = "RS256"
//	  }
//	}
type BundleConfig struct {
	// URL of the bundle, http or https. Requests carry If-None-Match with
	// the ETag of the bundle in force; a 304 changes nothing.
	URL string `hcl:"url"`
	// Polling is the interval between two requests, as a Go duration, at
	// least 1s (OPA's downloader counts in whole seconds). Default 60s.
	Polling string `hcl:"polling,optional"`
	// CacheDir receives the last activated bundle as NAME.tar.gz, read at
	// start when the server cannot be reached. Relative paths resolve
	// against the base directory. Default "bundle-cache".
	CacheDir string `hcl:"cache_dir,optional"`
	// CAFile is a PEM file of CA certificates trusted for an https URL,
	// instead of the system roots.
	CAFile string `hcl:"ca_file,optional"`
	// Verification, when present, requires every bundle to be signed with
	// the private key matching its public key. Without it, unsigned
	// bundles load and signed ones are refused (OPA's downloader: a bundle
	// with .signatures.json needs a key).
	Verification *BundleVerification `hcl:"verification,block"`
}

// BundleVerification configures the signature check of bundles.
type BundleVerification struct {
	// PublicKeyFile is the PEM public key (or, for HS*, the shared secret).
	PublicKeyFile string `hcl:"public_key_file"`
	// Algorithm is the JWS algorithm of the signatures: RS256 (default),
	// RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, HS256,
	// HS384, HS512.
	Algorithm string `hcl:"algorithm,optional"`
	// Scope, when set, must equal the scope claim of the signature.
	Scope string `hcl:"scope,optional"`
}

// DefaultBundlePolling is the polling interval of a bundle without one.
const DefaultBundlePolling = 60 * time.Second

// DefaultBundleCacheDir is the cache directory of a bundle without one,
// relative to the base directory.
const DefaultBundleCacheDir = "bundle-cache"

// verificationKeyID names the one configured key in OPA's key map. The
// verification config names it too, so the kid a signer put in the token is
// not consulted: one key, the configured one, verifies every bundle.
const verificationKeyID = "mailgate"

// bundleSpec is a validated BundleConfig.
type bundleSpec struct {
	base, path string // rest client URL and downloader path
	url        string
	polling    time.Duration
	cacheFile  string
	caFile     string
	bvc        *bundle.VerificationConfig // nil: no verification
}

func (c *BundleConfig) spec(id, baseDir string) (*bundleSpec, error) {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("policy: %s: bundle url %q: want an http or https URL", id, c.URL)
	}
	s := &bundleSpec{url: c.URL, polling: DefaultBundlePolling, caFile: resolve(baseDir, c.CAFile)}
	s.base = u.Scheme + "://" + u.Host
	s.path = u.EscapedPath()
	if u.RawQuery != "" {
		s.path += "?" + u.RawQuery
	}
	if c.Polling != "" {
		d, err := time.ParseDuration(c.Polling)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("policy: %s: bundle polling %q: want a duration of at least 1s", id, c.Polling)
		}
		s.polling = d
	}
	dir := c.CacheDir
	if dir == "" {
		dir = DefaultBundleCacheDir
	}
	s.cacheFile = filepath.Join(resolve(baseDir, dir), id[len("rego:"):]+".tar.gz")
	if v := c.Verification; v != nil {
		alg := v.Algorithm
		if alg == "" {
			alg = "RS256"
		}
		if !keys.IsSupportedAlgorithm(alg) {
			return nil, fmt.Errorf("policy: %s: bundle verification algorithm %q is not supported", id, alg)
		}
		key, err := os.ReadFile(resolve(baseDir, v.PublicKeyFile))
		if err != nil {
			return nil, fmt.Errorf("policy: %s: bundle verification key: %w", id, err)
		}
		kc := &keys.Config{Key: string(key), Algorithm: alg, Scope: v.Scope}
		s.bvc = bundle.NewVerificationConfig(map[string]*keys.Config{verificationKeyID: kc}, verificationKeyID, v.Scope, nil)
	}
	return s, nil
}

// bundleVersion is one activated bundle: immutable.
type bundleVersion struct {
	eng      *regoEngine
	revision string
}

// bundleEngine is a rego engine whose policy comes from a bundle server. It
// outlives the compiled sets: Reload keeps it (and forces a poll), so its
// downloader state (ETag) and the version in force survive a SIGHUP.
//
// Activation is atomic: a new bundle is compiled off to the side into a new
// prepared query, then swapped in; an evaluation loads the version once, so
// one stage is decided by one whole bundle.
type bundleEngine struct {
	spec engineSpec
	log  *slog.Logger
	dl   *download.Downloader
	cur  atomic.Pointer[bundleVersion]

	polls  chan chan error // Reload asks the poll loop for a poll
	cancel context.CancelFunc
	done   chan struct{}
	closed sync.Once

	// OPA's Downloader.Trigger returns when its context is cancelled but
	// leaves the download running in a goroutine of its own, which may
	// still call update: update holds mu and does nothing once closing
	// is set, so nothing is activated or written to the cache after close.
	mu      sync.Mutex
	closing bool
}

var _ engine = (*bundleEngine)(nil)

// newBundleEngine builds the downloader and starts from the cached bundle
// when there is a good one. It does not poll: start does.
func newBundleEngine(s engineSpec, log *slog.Logger) (*bundleEngine, error) {
	bs := s.bundle
	restCfg := map[string]any{"name": s.id(), "url": bs.base}
	if bs.caFile != "" {
		restCfg["tls"] = map[string]any{"ca_cert": bs.caFile}
	}
	raw, err := json.Marshal(restCfg)
	if err != nil {
		return nil, err
	}
	lg := log.With(slog.String("engine", s.id()), slog.String("url", bs.url))
	client, err := rest.New(raw, nil, rest.Logger(opaLogger{log: lg}))
	if err != nil {
		return nil, fmt.Errorf("policy: %s: bundle: %w", s.id(), err)
	}
	// Manual trigger: the poll loop below is the only caller of Trigger, so
	// a SIGHUP poll and a periodic one never run at the same time (the
	// downloader's state is not safe for that).
	trigger := plugins.TriggerManual
	secs := int64(math.Ceil(bs.polling.Seconds()))
	dcfg := download.Config{Trigger: &trigger, Polling: download.PollingConfig{MinDelaySeconds: &secs, MaxDelaySeconds: &secs}}
	if err := dcfg.ValidateAndInjectDefaults(); err != nil {
		return nil, fmt.Errorf("policy: %s: bundle: %w", s.id(), err)
	}
	e := &bundleEngine{spec: s, log: lg, polls: make(chan chan error), done: make(chan struct{})}
	e.dl = download.New(dcfg, client, bs.path).
		WithBundleVerificationConfig(bs.bvc).
		WithBundlePersistence(true). // keep the raw bytes for the cache
		WithBundleName(s.name).
		WithBundleParserOpts(ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true}).
		WithCallback(e.update)
	if etag := e.loadCache(); etag != "" {
		// The first poll then gets 304 when the server still has it.
		e.dl.SetCache(etag)
	}
	return e, nil
}

// bundlePollTimeout bounds one download, so a server that stops answering
// mid-body cannot hold the poll loop (and a SIGHUP waiting for it).
const bundlePollTimeout = 60 * time.Second

// trigger runs one download, bounded by bundlePollTimeout.
func (e *bundleEngine) trigger(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, bundlePollTimeout)
	defer cancel()
	return e.dl.Trigger(ctx)
}

// start runs the poll loop: a poll at once, then one every polling interval
// and one per Reload, until close.
func (e *bundleEngine) start() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() {
		defer close(e.done)
		t := time.NewTicker(e.spec.bundle.polling)
		defer t.Stop()
		_ = e.trigger(ctx) // failures are logged by update
		for {
			var reply chan error
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case reply = <-e.polls:
			}
			err := e.trigger(ctx)
			if reply != nil {
				reply <- err
			}
		}
	}()
}

// poll asks the loop for a poll now and waits for its outcome.
func (e *bundleEngine) poll() error {
	reply := make(chan error, 1)
	select {
	case e.polls <- reply:
	case <-e.done:
		return fmt.Errorf("policy: %s: bundle: closed", e.spec.id())
	}
	select {
	case err := <-reply:
		if err != nil {
			return fmt.Errorf("policy: %s: bundle: %w", e.spec.id(), err)
		}
		return nil
	case <-e.done:
		return fmt.Errorf("policy: %s: bundle: closed", e.spec.id())
	}
}

func (e *bundleEngine) close() {
	e.closed.Do(func() {
		if e.cancel != nil {
			e.cancel()
			<-e.done
		}
		e.mu.Lock()
		e.closing = true
		e.mu.Unlock()
	})
}

var errBundleClosed = errors.New("policy: bundle engine closed")

// update is the downloader's callback, run by a download the poll loop triggered
// (possibly still running after the loop gave up on it: see mu).
func (e *bundleEngine) update(ctx context.Context, u download.Update) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return errBundleClosed
	}
	if u.Error != nil {
		e.log.LogAttrs(ctx, slog.LevelError, "policy bundle not activated; keeping the running policy",
			slog.String("revision", e.revision()), slog.Any("error", u.Error))
		return nil // the downloader returns u.Error itself
	}
	if u.Bundle == nil {
		return nil // 304 Not Modified
	}
	if ctx.Err() != nil {
		return ctx.Err() // closing
	}
	v, err := e.prepare(ctx, u.Bundle)
	if err != nil {
		e.log.LogAttrs(ctx, slog.LevelError, "policy bundle does not compile; keeping the running policy",
			slog.String("revision", e.revision()), slog.String("etag", u.ETag), slog.Any("error", err))
		return err
	}
	prev := e.revision()
	e.cur.Store(v)
	e.log.LogAttrs(ctx, slog.LevelInfo, "policy bundle activated",
		slog.String("revision", v.revision), slog.String("previous", prev), slog.String("etag", u.ETag))
	if u.Raw != nil {
		if err := e.writeCache(u.Raw, u.ETag); err != nil {
			e.log.LogAttrs(ctx, slog.LevelWarn, "policy bundle cache not written", slog.Any("error", err))
		}
	}
	return nil
}

// prepare compiles a bundle's modules and data into a new version.
func (e *bundleEngine) prepare(ctx context.Context, b *bundle.Bundle) (*bundleVersion, error) {
	mods := make(map[string]*ast.Module, len(b.Modules))
	for _, m := range b.Modules {
		mods[m.Path] = m.Parsed
	}
	data := b.Data
	if data == nil {
		data = map[string]any{}
	}
	store := inmem.NewFromObjectWithOpts(data, inmem.OptReturnASTValuesOnRead(true))
	eng, err := prepareRego(ctx, e.spec, mods, store)
	if err != nil {
		return nil, err
	}
	return &bundleVersion{eng: eng, revision: b.Manifest.Revision}, nil
}

// loadCache activates the cached bundle, verified again as if downloaded:
// a cache file someone changed is refused like a tampered download. It
// returns the bundle's ETag when it was activated and the ETag is known.
func (e *bundleEngine) loadCache() string {
	f, err := os.Open(e.spec.bundle.cacheFile)
	if errors.Is(err, os.ErrNotExist) {
		e.log.Info("no cached policy bundle; not ready until the first download", slog.String("cache", e.spec.bundle.cacheFile))
		return ""
	}
	if err != nil {
		e.log.Error("policy bundle cache unreadable", slog.Any("error", err))
		return ""
	}
	defer f.Close()
	b, err := bundle.NewReader(f).
		WithBundleVerificationConfig(e.spec.bundle.bvc).
		WithRegoVersion(ast.RegoV1).
		WithProcessAnnotations(true).
		WithBundleName(e.spec.name).
		Read()
	if err != nil {
		e.log.Error("cached policy bundle refused", slog.String("cache", e.spec.bundle.cacheFile), slog.Any("error", err))
		return ""
	}
	v, err := e.prepare(context.Background(), &b)
	if err != nil {
		e.log.Error("cached policy bundle does not compile", slog.String("cache", e.spec.bundle.cacheFile), slog.Any("error", err))
		return ""
	}
	e.cur.Store(v)
	e.log.Info("policy bundle activated from cache", slog.String("revision", v.revision), slog.String("cache", e.spec.bundle.cacheFile))
	etag, _ := os.ReadFile(e.etagFile())
	return string(etag)
}

// etagFile holds the ETag of the cached bundle. It is removed before the
// bundle is replaced and written after, so a crash in between leaves no
// ETag (a full download at start), never the ETag of another bundle.
func (e *bundleEngine) etagFile() string {
	return strings.TrimSuffix(e.spec.bundle.cacheFile, ".tar.gz") + ".etag"
}

// writeCache replaces the cache file atomically (temporary file, rename),
// then records its ETag.
func (e *bundleEngine) writeCache(raw io.Reader, etag string) error {
	dst := e.spec.bundle.cacheFile
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	if err := os.Remove(e.etagFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(raw); err != nil {
		return err
	}
	if buf.Len() == 0 {
		return errors.New("empty bundle")
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".bundle-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	if etag == "" {
		return nil
	}
	return os.WriteFile(e.etagFile(), []byte(etag), 0o640)
}

func (e *bundleEngine) revision() string {
	if v := e.cur.Load(); v != nil {
		return v.revision
	}
	return ""
}

// ready is nil once a bundle is in force.
func (e *bundleEngine) ready() error {
	if e.cur.Load() == nil {
		return fmt.Errorf("policy: %s: %w (%s)", e.spec.id(), ErrNotReady, e.spec.bundle.url)
	}
	return nil
}

func (e *bundleEngine) eval(ctx context.Context, doc *document) (engineResult, error) {
	v := e.cur.Load()
	if v == nil {
		return engineResult{}, ErrNotReady
	}
	res, err := v.eng.eval(ctx, doc)
	res.revision = v.revision
	return res, err
}

// opaLogger hands OPA's log lines (downloader, REST client) to slog. OPA's
// informational chatter goes to debug; its errors are repeated by update
// with context, so they are logged at debug too.
type opaLogger struct {
	log    *slog.Logger
	fields map[string]any
}

func (l opaLogger) logf(format string, a []any) {
	if !l.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	attrs := make([]slog.Attr, 0, len(l.fields))
	for k, v := range l.fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	l.log.LogAttrs(context.Background(), slog.LevelDebug, "opa: "+fmt.Sprintf(format, a...), attrs...)
}

func (l opaLogger) Debug(f string, a ...any) { l.logf(f, a) }
func (l opaLogger) Info(f string, a ...any)  { l.logf(f, a) }
func (l opaLogger) Warn(f string, a ...any)  { l.logf(f, a) }
func (l opaLogger) Error(f string, a ...any) { l.logf(f, a) }

func (l opaLogger) WithFields(f map[string]any) logging.Logger {
	m := make(map[string]any, len(l.fields)+len(f))
	for k, v := range l.fields {
		m[k] = v
	}
	for k, v := range f {
		m[k] = v
	}
	return opaLogger{log: l.log, fields: m}
}

func (l opaLogger) GetLevel() logging.Level {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return logging.Debug
	}
	return logging.Error
}
func (l opaLogger) SetLevel(logging.Level) {}
