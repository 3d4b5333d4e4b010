package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailgate/mailgate/policy/quota"
)

// Policy is the compiled chain of engines of a Config. It implements
// Evaluator and is safe for concurrent use; Reload swaps the compiled set
// atomically, so an evaluation in flight finishes on the set it started
// with.
type Policy struct {
	cfg      Config
	baseDir  string
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	set      atomic.Pointer[compiledSet]
	reloadMu sync.Mutex // serializes Reload
	dlog     *decisionLog
	// logHeaders is false when decision log records leave header values
	// out (log_headers = false).
	logHeaders bool
	shadow     *shadow // nil without a shadow block
	metrics    *policyMetrics

	quotas atomic.Pointer[Quotas]
	store  quota.Store // nil: no quotas
	trips  tripLog

	// bundles are the engines fed by a bundle server, by name. Made once
	// in New and kept by Reload, which forces them to poll.
	bundles map[string]*bundleEngine
}

var _ Evaluator = (*Policy)(nil)

// compiledSet is one immutable generation of compiled engines.
type compiledSet struct {
	engines     []compiledEngine
	fingerprint string // of the policy files, for Watch
}

type compiledEngine struct {
	spec engineSpec
	eng  engine
	// id is spec.id(), built once: results and warnings name their engine
	// on every evaluation.
	id string
}

func newCompiledEngine(s engineSpec, e engine) compiledEngine {
	return compiledEngine{spec: s, eng: e, id: s.id()}
}

// Option configures a Policy.
type Option func(*Policy)

// WithLogger sets the logger (default: slog.Default() at construction).
func WithLogger(l *slog.Logger) Option {
	return func(p *Policy) {
		if l != nil {
			p.log = l
		}
	}
}

// WithWatchInterval overrides the polling interval of Watch.
func WithWatchInterval(d time.Duration) Option {
	return func(p *Policy) {
		if d > 0 {
			p.interval = d
		}
	}
}

// WithClock sets the clock used for decision log timestamps (tests).
func WithClock(now func() time.Time) Option {
	return func(p *Policy) { p.now = now }
}

// WithQuotas makes the policy check qs at stages mail and rcpt, counting
// in store (quota.NewMemory or quota.NewRedis). SetQuotas replaces qs.
func WithQuotas(qs *Quotas, store quota.Store) Option {
	return func(p *Policy) {
		p.store = store
		if qs != nil {
			p.quotas.Store(qs)
		}
	}
}

// SetQuotas replaces the quota definitions (SIGHUP): counters are kept,
// keyed by quota name and key, so a changed limit applies to the usage
// already counted. A Policy made without WithQuotas ignores it.
func (p *Policy) SetQuotas(qs *Quotas) {
	if p.store == nil {
		return
	}
	p.quotas.Store(qs)
	p.log.Info("quotas reloaded", slog.Int("quotas", len(qs.Names())))
}

// New validates cfg, compiles every engine (Rego queries are prepared
// here, once) and opens the decision log. Relative paths in cfg resolve
// against baseDir, normally the directory of the configuration file.
// Errors name the file and line (HCL rules errors are *DiagnosticsError,
// with source snippets). A Config without engines accepts everything.
func New(cfg Config, baseDir string, opts ...Option) (*Policy, error) {
	p := &Policy{cfg: cfg, baseDir: baseDir, log: slog.Default(), now: time.Now,
		logHeaders: cfg.LogHeaders == nil || *cfg.LogHeaders, metrics: newPolicyMetrics()}
	var err error
	if p.interval, err = cfg.watchInterval(); err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(p)
	}
	specs, err := cfg.specs(baseDir)
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		if s.bundle == nil {
			continue
		}
		if p.bundles == nil {
			p.bundles = map[string]*bundleEngine{}
		}
		if p.bundles[s.name], err = newBundleEngine(s, p.log); err != nil {
			return nil, err
		}
	}
	set, err := p.compile(context.Background())
	if err != nil {
		return nil, err
	}
	p.set.Store(set)
	if cfg.Shadow != nil {
		if p.shadow, err = newShadow(*cfg.Shadow, cfg.WatchInterval, baseDir, p.log, p.metrics); err != nil {
			return nil, err
		}
	}
	if cfg.DecisionLog != "" {
		onErr := func(err error) { p.log.Error("policy decision log write failed", slog.Any("error", err)) }
		if p.dlog, err = openDecisionLog(resolve(baseDir, cfg.DecisionLog), onErr); err != nil {
			p.closeShadow()
			return nil, err
		}
	}
	for _, e := range p.bundles {
		e.start()
	}
	return p, nil
}

// Ready returns nil when every engine has a policy to decide with, and an
// error wrapping ErrNotReady naming a bundle engine that has none yet (no
// bundle downloaded since start and none cached). Until then that engine
// fails closed like any engine error: 451 4.3.0 with on_error = "defer".
func (p *Policy) Ready() error {
	var errs []error
	for _, ce := range p.set.Load().engines {
		if b, ok := ce.eng.(*bundleEngine); ok {
			errs = append(errs, b.ready())
		}
	}
	return errors.Join(errs...)
}

// Revisions returns the bundle revision in force per bundle engine id
// ("rego:org"); "" for an engine without a bundle yet. Nil without bundle
// engines.
func (p *Policy) Revisions() map[string]string {
	if len(p.bundles) == 0 {
		return nil
	}
	m := make(map[string]string, len(p.bundles))
	for _, b := range p.bundles {
		m[b.spec.id()] = b.revision()
	}
	return m
}

// compile builds a new generation from the configuration.
func (p *Policy) compile(ctx context.Context) (*compiledSet, error) {
	specs, err := p.cfg.specs(p.baseDir)
	if err != nil {
		return nil, err
	}
	set := &compiledSet{fingerprint: fingerprint(specs)}
	for _, s := range specs {
		var e engine
		switch {
		case s.bundle != nil:
			e = p.bundles[s.name]
		case s.kind == "rego":
			e, err = newRegoEngine(ctx, s)
		case s.kind == "rules":
			e, err = newRulesEngine(s)
		}
		if err != nil {
			return nil, err
		}
		set.engines = append(set.engines, newCompiledEngine(s, e))
	}
	return set, nil
}

// Close stops the bundle downloads, and closes the decision log after
// writing every record queued so far.
func (p *Policy) Close() error {
	for _, b := range p.bundles {
		b.close()
	}
	p.closeShadow()
	if p.dlog == nil {
		return nil
	}
	return p.dlog.close()
}

func (p *Policy) closeShadow() {
	if p.shadow != nil {
		_ = p.shadow.p.Close()
	}
}

// ReopenDecisionLog closes the decision log file and opens its path again,
// after every record queued so far is written to the old file: the SIGHUP
// step of a logrotate rotation (rename, then signal). Without a decision
// log it does nothing.
func (p *Policy) ReopenDecisionLog() error {
	if p.dlog == nil {
		return nil
	}
	return p.dlog.reopen()
}

// EngineResult is what one engine concluded, for explain output and the
// decision log.
type EngineResult struct {
	Engine       string    `json:"engine"` // "rego:org"
	Mode         Mode      `json:"mode"`
	Outcome      Outcome   `json:"outcome"` // what it would decide alone
	Rule         string    `json:"rule,omitempty"`
	Code         int       `json:"code,omitempty"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Message      string    `json:"message,omitempty"`
	Warnings     []Warning `json:"warnings,omitempty"`
	Actions      Actions   `json:"actions,omitzero"`
	Error        string    `json:"error,omitempty"`
	// Revision is the bundle revision the engine decided with (bundle
	// engines only).
	Revision string `json:"revision,omitempty"`
	// Skipped is set for engines not evaluated because an earlier enforcing
	// engine rejected.
	Skipped bool `json:"skipped,omitempty"`
}

// Evaluate runs the engines in configuration order and combines them: the
// first enforced reject wins (later engines are not evaluated), then the
// first enforced defer, else accept. Warnings of all evaluated engines are
// collected; actions of enforcing engines are merged (headers concatenated,
// dkim_domain and upstream from the first engine that sets them) and
// returned with accept.
//
// Dry-run engines enforce nothing: what they would have done becomes a
// warning, and when every enforcing engine accepts, the decision carries the
// dry-run engine's outcome with DryRun set — the caller must then act as
// for accept (see Decision.Enforced).
//
// An engine error with on_error = "defer" returns a 451 4.3.0 defer and an
// error wrapping ErrEngine; with on_error = "accept" (or in dry-run) it is
// logged and the engine counts as accepting.
func (p *Policy) Evaluate(ctx context.Context, in Input) (Decision, error) {
	d, _, err := p.evaluate(ctx, in, false)
	return d, err
}

// Explain is Evaluate that also returns each engine's own conclusion.
func (p *Policy) Explain(ctx context.Context, in Input) (Decision, []EngineResult, error) {
	return p.evaluate(ctx, in, true)
}

func (p *Policy) evaluate(ctx context.Context, in Input, explain bool) (Decision, []EngineResult, error) {
	set := p.set.Load()
	qs := p.quotas.Load()
	checkQuotas := qs != nil && p.store != nil && in.Stage != StageData
	// When the quotas are checked they set the input's quota states.
	doc := getDocument(in.normalize(!checkQuotas))
	defer putDocument(doc)
	var qc quotaCheck
	if checkQuotas {
		qc = p.checkQuotas(ctx, qs, doc)
		doc.in.Quota = qc.states
		if doc.in.Quota == nil {
			doc.in.Quota = map[string]QuotaState{}
		}
	}
	// A chain of up to four engines runs in an array on this stack.
	var (
		buf  [4]engineRun
		runs []engineRun
	)
	if r := qc.refusal; r == nil || r.Outcome != Reject {
		runs = p.runEngines(ctx, set.engines, doc, buf[:0])
	}
	final, results, finalErr := combine(qc.refusal, qc.warnings, set.engines, runs, explain || p.dlog != nil)
	if qc.res != nil {
		if final.Enforced() == Accept {
			final.Reservation = qc.res
		} else if err := qc.res.Release(context.WithoutCancel(ctx)); err != nil {
			p.log.LogAttrs(ctx, slog.LevelWarn, "quota release failed", slog.Any("error", err))
		}
	}
	final.Quota = doc.in.Quota
	p.logDecision(ctx, &doc.in, &final, results, finalErr)
	if !explain {
		results = nil
	}
	return final, results, finalErr
}

// engineRun is what running one engine of the chain produced.
type engineRun struct {
	ce  *compiledEngine // into the chain's engines: a run does not copy the spec
	res engineResult
	err error
}

// stops says whether run ends the chain: an enforcing engine that rejected,
// or that failed with on_error = "defer" (fail closed).
func (run *engineRun) stops() bool {
	if run.ce.spec.mode == ModeDryRun {
		return false
	}
	if run.err != nil {
		return run.ce.spec.onError != OnErrorAccept
	}
	return run.res.reject != nil
}

// runEngines evaluates engines in order on doc until one stops the chain,
// and names each warning with its engine; it appends the runs to runs. A
// failure that does not stop the chain (dry-run, on_error = "accept") is
// logged here.
func (p *Policy) runEngines(ctx context.Context, engines []compiledEngine, doc *document, runs []engineRun) []engineRun {
	for i := range engines {
		ce := &engines[i]
		res, err := ce.eng.eval(ctx, doc)
		run := engineRun{ce: ce, res: res, err: err}
		name := ce.id
		for i := range run.res.warnings {
			run.res.warnings[i].Engine = name
		}
		runs = append(runs, run)
		if run.stops() {
			break
		}
		if err != nil {
			p.log.LogAttrs(ctx, slog.LevelError, "policy engine failed; continuing",
				slog.String("engine", name), slog.String("session", doc.in.Session.ID),
				slog.String("stage", string(doc.in.Stage)), slog.Bool("dry_run", ce.spec.mode == ModeDryRun), slog.Any("error", err))
		}
	}
	return runs
}

// combine is the decision of a chain, given the quotas' refusal (nil: the
// quotas had room) and warnings and what the engines produced, in chain
// order; engines that have no run are reported skipped. The first reject
// wins (a quota's first of all), then the first enforced defer, then a
// dry-run reject, then a dry-run defer (DryRun set), else accept. Actions
// of enforcing engines are merged and kept with accept and dry-run
// outcomes. results are built only when want is set. It does no I/O.
func combine(quota *Decision, quotaWarnings []Warning, engines []compiledEngine, runs []engineRun, want bool) (Decision, []EngineResult, error) {
	var (
		results       []EngineResult
		final         *Decision
		finalErr      error
		enforcedDefer *Decision
		dryReject     *Decision
		dryDefer      *Decision
		actions       Actions
		revisions     []string
		ran           int
	)
	warnings := append([]Warning(nil), quotaWarnings...)
	if quota != nil {
		// The quotas come first in the chain: a quota reject wins at once,
		// a quota defer is the first defer (an engine's reject still wins).
		results = appendResult(results, EngineResult{Engine: QuotaEngine, Mode: ModeEnforce, Outcome: quota.Outcome,
			Rule: quota.Rule, Code: quota.Code, EnhancedCode: quota.EnhancedCode, Message: quota.Message}, want)
		q := *quota
		if q.Outcome == Reject {
			final = &q
		} else {
			enforcedDefer = &q
		}
	}
	for i := range runs {
		if final != nil {
			break
		}
		run := &runs[i]
		ran++
		name := run.ce.id
		dry := run.ce.spec.mode == ModeDryRun
		er := EngineResult{Engine: name, Mode: run.ce.spec.mode, Outcome: Accept, Revision: run.res.revision}
		if run.ce.spec.bundle != nil {
			revisions = append(revisions, name+"="+run.res.revision)
		}
		if run.err != nil {
			er.Error = run.err.Error()
			if run.stops() {
				er.Outcome, er.Code, er.EnhancedCode, er.Message = Defer, errorDeferCode, errorDeferEnh, errorDeferMsg
				final = &Decision{Outcome: Defer, Code: errorDeferCode, EnhancedCode: errorDeferEnh, Message: errorDeferMsg, Engine: name}
				finalErr = fmt.Errorf("policy: %s: %w: %w", name, ErrEngine, run.err)
			}
			results = appendResult(results, er, want)
			continue
		}
		warnings = append(warnings, run.res.warnings...)
		er.Warnings, er.Actions, er.Rule = run.res.warnings, run.res.actions, run.res.acceptRule
		dec := runDecision(name, &run.res)
		if dec != nil {
			er.Outcome, er.Rule, er.Code, er.EnhancedCode, er.Message = dec.Outcome, dec.Rule, dec.Code, dec.EnhancedCode, dec.Message
		}
		results = appendResult(results, er, want)
		switch {
		case dry && dec != nil:
			warnings = append(warnings, Warning{Engine: name, Rule: dec.Rule,
				Message: fmt.Sprintf("dry-run: would %s (%d %s %s)", dec.Outcome, dec.Code, dec.EnhancedCode, dec.Message)})
			if dec.Outcome == Reject && dryReject == nil {
				dryReject = dec
			} else if dec.Outcome == Defer && dryDefer == nil {
				dryDefer = dec
			}
		case dry:
		case dec != nil && dec.Outcome == Reject:
			actions.Merge(run.res.actions)
			final = dec
		default:
			actions.Merge(run.res.actions)
			if dec != nil && enforcedDefer == nil {
				enforcedDefer = dec
			}
		}
	}
	// runs are a prefix of engines: those after the ones that ran did not.
	results = skipRest(results, engines[min(ran, len(engines)):], want)
	switch {
	case final != nil:
	case enforcedDefer != nil:
		final = enforcedDefer
	case dryReject != nil:
		final = dryReject
		final.DryRun = true
	case dryDefer != nil:
		final = dryDefer
		final.DryRun = true
	default:
		final = &Decision{Outcome: Accept}
	}
	if final.Outcome == Accept || final.DryRun {
		final.Actions = actions
	}
	final.Warnings = warnings
	final.Revision = strings.Join(revisions, " ")
	return *final, results, finalErr
}

// runDecision is the reject or defer an engine's result makes, nil when it
// accepts.
func runDecision(engine string, res *engineResult) *Decision {
	v, outcome, fallback := res.reject, Reject, RejectMessage
	if v == nil {
		v, outcome, fallback = res.deferral, Defer, DeferMessage
	}
	if v == nil {
		return nil
	}
	return &Decision{Outcome: outcome, Code: v.code, EnhancedCode: v.enh,
		Message: sanitizeMessage(v.message, fallback), Engine: engine, Rule: v.rule}
}

func appendResult(rs []EngineResult, r EngineResult, want bool) []EngineResult {
	if !want {
		return rs
	}
	return append(rs, r)
}

func skipRest(rs []EngineResult, rest []compiledEngine, want bool) []EngineResult {
	if !want {
		return rs
	}
	for _, ce := range rest {
		rs = append(rs, EngineResult{Engine: ce.id, Mode: ce.spec.mode, Skipped: true})
	}
	return rs
}

// logDecision writes the slog line and the decision log record.
func (p *Policy) logDecision(ctx context.Context, in *Input, d *Decision, results []EngineResult, err error) {
	if d.Outcome != Accept || len(d.Warnings) > 0 {
		lvl := slog.LevelInfo
		if d.DryRun || d.Outcome == Accept {
			lvl = slog.LevelWarn
		}
		if p.log.Enabled(ctx, lvl) {
			p.log.LogAttrs(ctx, lvl, "policy decision",
				slog.String("session", in.Session.ID), slog.String("stage", string(in.Stage)),
				slog.String("outcome", string(d.Outcome)), slog.Bool("dry_run", d.DryRun),
				slog.String("engine", d.Engine), slog.String("rule", d.Rule), slog.Int("warnings", len(d.Warnings)))
		}
	}
	var sh *ShadowResult
	if p.shadow != nil {
		sh = p.shadow.compare(ctx, in, d)
	}
	if p.dlog == nil {
		return
	}
	rec := decisionRecord{
		Version: DecisionLogVersion, Time: p.now().UTC(), Session: in.Session.ID, Stage: in.Stage, Engine: d.Engine, Rule: d.Rule,
		Outcome: d.Outcome, Code: d.Code, EnhancedCode: d.EnhancedCode, DryRun: d.DryRun, Revision: d.Revision,
		Warnings: d.Warnings, Engines: results, Shadow: sh, Input: in,
	}
	if !p.logHeaders && in.Message != nil {
		rec.Input, rec.HeadersOmitted = withoutHeaderValues(in), true
	}
	if err != nil {
		rec.Error = err.Error()
	}
	if werr := p.dlog.write(&rec); werr != nil {
		p.log.LogAttrs(ctx, slog.LevelError, "policy decision log write failed", slog.Any("error", werr))
	}
}

// Reload recompiles the configuration's policies off to the side and swaps
// them in atomically. On failure the running set stays in place and the
// error carries the diagnostics.
//
// Bundle engines are kept as they are and polled at once: Reload returns
// after that poll, with its error (server unreachable, bundle refused); a
// new bundle it brought is in force when Reload returns.
func (p *Policy) Reload() error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	set, err := p.compile(context.Background())
	if err != nil {
		return err
	}
	p.set.Store(set)
	p.log.Info("policy reloaded", slog.Int("engines", len(set.engines)))
	var errs []error
	if p.shadow != nil {
		errs = append(errs, p.shadow.p.Reload())
	}
	for _, b := range p.bundles {
		errs = append(errs, b.poll())
	}
	return errors.Join(errs...)
}

// Watch polls the policy files every watch interval (file list, sizes and
// modification times) and reloads when they change, until ctx is done (the
// shadow chain's files too, by a Watch of its own). A
// failed reload is logged and the old set keeps running; it is retried
// only after the files change again.
func (p *Policy) Watch(ctx context.Context) {
	if p.shadow != nil {
		go p.shadow.p.Watch(ctx)
	}
	t := time.NewTicker(p.interval)
	defer t.Stop()
	last := p.set.Load().fingerprint
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		specs, err := p.cfg.specs(p.baseDir)
		if err != nil {
			continue
		}
		fp := fingerprint(specs)
		if fp == last {
			continue
		}
		last = fp
		if err := p.Reload(); err != nil {
			p.log.Error("policy reload failed; keeping the running policy", slog.Any("error", err))
		}
	}
}

// fingerprint summarizes the files of every engine.
func fingerprint(specs []engineSpec) string {
	var b []byte
	for _, s := range specs {
		if s.bundle != nil {
			continue // the downloader watches the server
		}
		var files []string
		if s.kind == "rego" {
			files = regoFiles(s.path)
		} else {
			files, _ = rulesFiles(s.path)
		}
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				b = fmt.Appendf(b, "%s:missing;", f)
				continue
			}
			b = fmt.Appendf(b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return string(b)
}

// Quotas returns the quota definitions in force (nil without quotas).
func (p *Policy) Quotas() *Quotas { return p.quotas.Load() }

// withoutHeaderValues returns a copy of in whose message headers keep
// their names and number of fields, every value blanked (log_headers =
// false).
func withoutHeaderValues(in *Input) *Input {
	cp, m := *in, *in.Message
	m.Headers = make(map[string][]string, len(in.Message.Headers))
	for k, vs := range in.Message.Headers {
		m.Headers[k] = make([]string, len(vs))
	}
	cp.Message = &m
	return &cp
}
