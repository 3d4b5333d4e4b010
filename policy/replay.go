package policy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"
)

// Replay limits: they bound the memory a replay needs whatever the size of
// the log.
const (
	// replayMaxLine is the longest record replay reads; a longer line is
	// skipped and counted as unparsable.
	replayMaxLine = 16 << 20
	// replayMaxGroups bounds the distinct changes reported; further
	// changes are counted in ReplayReport.OtherChanges.
	replayMaxGroups = 1000
	// replayMaxSenders bounds the distinct senders counted per change.
	replayMaxSenders = 10000
	// replayExamples is how many examples each change keeps.
	replayExamples = 3
	// replayProgressEvery is how many records pass between Progress calls.
	replayProgressEvery = 1000
)

// NewForReplay compiles the policy block cfg as a replay candidate: no
// decision log, no shadow, no quota store (the logged quota states are fed
// as they were), and I/O built-ins off whatever allow_io says, so a replay
// is deterministic. A module that uses an I/O built-in fails to compile.
func NewForReplay(cfg Config, baseDir string, opts ...Option) (*Policy, error) {
	cfg.DecisionLog = ""
	cfg.Shadow = nil
	cfg.Rego = append([]RegoConfig(nil), cfg.Rego...)
	for i := range cfg.Rego {
		cfg.Rego[i].AllowIO = false
	}
	p, err := New(cfg, baseDir, opts...)
	if err != nil {
		return nil, fmt.Errorf("replay (I/O built-ins are off during replay): %w", err)
	}
	return p, nil
}

// ReplayOptions select what Replayer replays.
type ReplayOptions struct {
	// Since and Until bound the records' times (zero: unbounded); Since is
	// inclusive, Until exclusive.
	Since, Until time.Time
	// Limit stops after this many replayed decisions (0: no limit).
	Limit int
	// Progress, when set, is called every few thousand records with the
	// counts so far (for a progress line, or a test watching memory).
	Progress func(ReplayReport)
}

// ReplayReport is what a replay found.
type ReplayReport struct {
	Files      int   `json:"files"`
	Lines      int64 `json:"lines"`
	BytesRead  int64 `json:"bytes_read"`    // compressed bytes, as on disk
	Replayed   int64 `json:"replayed"`      // decisions re-evaluated
	Changed    int64 `json:"changed"`       // of which decided differently
	Unparsable int64 `json:"unparsable"`    // lines that are not a decision record (bad JSON, truncated, too long)
	NewerVer   int64 `json:"newer_version"` // records (or inputs) of a version this mailgate does not know, skipped
	// OutOfRange counts records outside -since/-until.
	OutOfRange int64 `json:"out_of_range"`
	// TruncatedFiles counts compressed files that ended early (what was
	// read before is replayed).
	TruncatedFiles int `json:"truncated_files"`
	// HeadersOmitted counts replayed data-stage records logged with
	// log_headers = false: rules reading header values saw empty values.
	HeadersOmitted int64 `json:"headers_omitted"`
	// QuotaUnavailable counts records deferred because the quota store
	// failed: nothing to replay.
	QuotaUnavailable int64 `json:"quota_unavailable"`
	// CandidateErrors counts decisions where the candidate failed (its
	// fail-closed defer is compared like any decision).
	CandidateErrors int64             `json:"candidate_errors"`
	Unchanged       map[Stage]int64   `json:"unchanged"`
	Changes         []*ReplayChange   `json:"changes"`
	OtherChanges    int64             `json:"other_changes,omitempty"` // beyond the reported groups
	First, Last     time.Time         `json:"-"`
	Range           map[string]string `json:"range,omitempty"` // first and last replayed record time
}

// ReplayChange is one kind of change: the same logged decision became the
// same new decision.
type ReplayChange struct {
	From      string `json:"from"` // "accept", "reject", "dry-run reject", ...
	To        string `json:"to"`
	Engine    string `json:"engine,omitempty"` // of the new decision
	Rule      string `json:"rule,omitempty"`
	WasEngine string `json:"was_engine,omitempty"` // of the logged decision
	WasRule   string `json:"was_rule,omitempty"`
	Decisions int64  `json:"decisions"`
	// Senders counts distinct envelope senders, up to replayMaxSenders
	// (SendersCapped then says there were more).
	Senders       int             `json:"senders"`
	SendersCapped bool            `json:"senders_capped,omitempty"`
	Stages        map[Stage]int64 `json:"stages"`
	Examples      []ReplayExample `json:"examples"`

	senders map[string]struct{}
}

// ReplayExample is one changed decision.
type ReplayExample struct {
	Time    time.Time `json:"time"`
	Session string    `json:"session"`
	Stage   Stage     `json:"stage"`
	From    string    `json:"from"`
	Rcpt    string    `json:"rcpt,omitempty"`
}

// Label is the change in one line: "accept → reject (rego:org/external-recipient)".
func (c *ReplayChange) Label() string {
	rule := func(e, r string) string {
		if r == "" {
			return e
		}
		return e + "/" + r
	}
	var why string
	switch {
	case c.Engine != "" && c.WasEngine != "" && (c.Engine != c.WasEngine || c.Rule != c.WasRule):
		why = rule(c.Engine, c.Rule) + ", was " + rule(c.WasEngine, c.WasRule)
	case c.Engine != "":
		why = rule(c.Engine, c.Rule)
	case c.WasEngine != "":
		why = "was " + rule(c.WasEngine, c.WasRule)
	}
	s := c.From + " → " + c.To
	if why != "" {
		s += " (" + why + ")"
	}
	return s
}

// replayRecord is what replay reads of a decision log line. Unknown fields
// are ignored: a newer mailgate's additions do not stop an older replay.
type replayRecord struct {
	Version        int       `json:"version"`
	Time           time.Time `json:"time"`
	Session        string    `json:"session"`
	Engine         string    `json:"engine"`
	Rule           string    `json:"rule"`
	Outcome        Outcome   `json:"outcome"`
	Code           int       `json:"code"`
	EnhancedCode   string    `json:"enhanced_code"`
	DryRun         bool      `json:"dry_run"`
	HeadersOmitted bool      `json:"headers_omitted"`
	Input          *Input    `json:"input"`
}

// Replayer re-evaluates logged decisions with a candidate Policy (made by
// NewForReplay) and groups what changed. Feed it the logs in order, then
// read Report. Memory is bounded by the limits above, not by the logs.
type Replayer struct {
	p      *Policy
	opts   ReplayOptions
	rep    ReplayReport
	groups map[string]*ReplayChange
	done   bool // Limit reached
}

// NewReplayer returns a Replayer evaluating with p.
func NewReplayer(p *Policy, opts ReplayOptions) *Replayer {
	return &Replayer{p: p, opts: opts, groups: map[string]*ReplayChange{},
		rep: ReplayReport{Unchanged: map[Stage]int64{StageMail: 0, StageRcpt: 0, StageData: 0}}}
}

// countingReader counts the bytes read from a file, for progress.
type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	*c.n += int64(n)
	return n, err
}

// Feed replays one log, compressed with gzip or not (detected by its
// first bytes, so a rotated "decisions.jsonl.1.gz" and a gzip file without
// the extension both work). Lines that are not decision records are
// counted, never fatal; a compressed file that ends early counts as
// truncated. Feed returns an error only when r cannot be read at all or
// ctx ends.
func (r *Replayer) Feed(ctx context.Context, f io.Reader) error {
	if r.done {
		return nil
	}
	r.rep.Files++
	br := bufio.NewReaderSize(countingReader{f, &r.rep.BytesRead}, 1<<20)
	var src io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer zr.Close()
		src = zr
	}
	lr := bufio.NewReaderSize(src, 256<<10)
	var buf []byte
	for !r.done {
		if err := ctx.Err(); err != nil {
			return err
		}
		line, tooLong, err := readLine(lr, buf[:0])
		buf = line[:0]
		if len(bytes.TrimSpace(line)) > 0 {
			r.rep.Lines++
			if tooLong {
				r.rep.Unparsable++
			} else {
				r.replayLine(ctx, line)
			}
			if r.opts.Progress != nil && r.rep.Lines%replayProgressEvery == 0 {
				r.opts.Progress(r.rep)
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader):
			r.rep.TruncatedFiles++
			return nil
		default:
			return fmt.Errorf("replay: %w", err)
		}
	}
	return nil
}

// readLine appends the next line of br (without its newline) to buf, up to
// replayMaxLine bytes; tooLong says the rest was discarded.
func readLine(br *bufio.Reader, buf []byte) (line []byte, tooLong bool, err error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) <= replayMaxLine {
			buf = append(buf, frag...)
		} else {
			tooLong = true
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(buf, []byte("\n")), tooLong, err
	}
}

func (r *Replayer) replayLine(ctx context.Context, line []byte) {
	var rec replayRecord
	if err := json.Unmarshal(line, &rec); err != nil || rec.Input == nil || !validOutcome(rec.Outcome) {
		r.rep.Unparsable++
		return
	}
	if rec.Version > DecisionLogVersion || rec.Input.Version > InputVersion {
		r.rep.NewerVer++
		return
	}
	switch rec.Input.Stage {
	case StageMail, StageRcpt, StageData:
	default:
		r.rep.Unparsable++
		return
	}
	if (!r.opts.Since.IsZero() && rec.Time.Before(r.opts.Since)) || (!r.opts.Until.IsZero() && !rec.Time.Before(r.opts.Until)) {
		r.rep.OutOfRange++
		return
	}
	if rec.Engine == QuotaEngine && rec.Input.Stage != StageData && quotaRefusalFromStates(rec.Input.Quota) == nil {
		// The quota store failed (or a key did not evaluate): the logged
		// defer says nothing a candidate policy could change.
		r.rep.QuotaUnavailable++
		return
	}
	r.replay(ctx, &rec)
	if r.opts.Limit > 0 && r.rep.Replayed >= int64(r.opts.Limit) {
		r.done = true
	}
}

func validOutcome(o Outcome) bool { return o == Accept || o == Reject || o == Defer }

// replay re-evaluates one record at its logged time and records the result.
func (r *Replayer) replay(ctx context.Context, rec *replayRecord) {
	in := *rec.Input
	if in.Stage == StageRcpt && in.Rcpt == nil {
		in.Rcpt = &Rcpt{}
	}
	if !rec.Time.IsZero() {
		ctx = withEvalTime(ctx, rec.Time)
	}
	got, _, err := evaluateWithQuotaStates(ctx, r.p, in, false)
	r.rep.Replayed++
	if r.rep.First.IsZero() || rec.Time.Before(r.rep.First) {
		r.rep.First = rec.Time
	}
	if rec.Time.After(r.rep.Last) {
		r.rep.Last = rec.Time
	}
	if err != nil {
		r.rep.CandidateErrors++
	}
	if rec.HeadersOmitted && in.Stage == StageData {
		r.rep.HeadersOmitted++
	}
	was := Decision{Outcome: rec.Outcome, DryRun: rec.DryRun, Code: rec.Code, EnhancedCode: rec.EnhancedCode,
		Engine: rec.Engine, Rule: rec.Rule}
	if sameDecision(&was, &got) {
		r.rep.Unchanged[in.Stage]++
		return
	}
	r.rep.Changed++
	from, to := outcomeLabel(&was), outcomeLabel(&got)
	if from == to && was.Engine == got.Engine && was.Rule == got.Rule {
		from += fmt.Sprintf(" %d %s", was.Code, was.EnhancedCode)
		to += fmt.Sprintf(" %d %s", got.Code, got.EnhancedCode)
	}
	key := from + "\x00" + to + "\x00" + got.Engine + "\x00" + got.Rule + "\x00" + was.Engine + "\x00" + was.Rule
	g := r.groups[key]
	if g == nil {
		if len(r.groups) >= replayMaxGroups {
			r.rep.OtherChanges++
			return
		}
		g = &ReplayChange{From: from, To: to, Engine: got.Engine, Rule: got.Rule, WasEngine: was.Engine, WasRule: was.Rule,
			Stages: map[Stage]int64{}, senders: map[string]struct{}{}}
		r.groups[key] = g
	}
	g.Decisions++
	g.Stages[in.Stage]++
	if _, seen := g.senders[in.Envelope.From]; !seen {
		if len(g.senders) < replayMaxSenders {
			g.senders[in.Envelope.From] = struct{}{}
		} else {
			g.SendersCapped = true
		}
	}
	if len(g.Examples) < replayExamples {
		ex := ReplayExample{Time: rec.Time, Session: rec.Session, Stage: in.Stage, From: in.Envelope.From}
		if in.Rcpt != nil {
			ex.Rcpt = in.Rcpt.Address
		}
		g.Examples = append(g.Examples, ex)
	}
}

func outcomeLabel(d *Decision) string {
	if d.DryRun {
		return "dry-run " + string(d.Outcome)
	}
	return string(d.Outcome)
}

// Report returns what the replay found so far, changes most frequent
// first.
func (r *Replayer) Report() ReplayReport {
	rep := r.rep
	rep.Changes = make([]*ReplayChange, 0, len(r.groups))
	for _, g := range r.groups {
		g.Senders = len(g.senders)
		rep.Changes = append(rep.Changes, g)
	}
	sort.Slice(rep.Changes, func(i, j int) bool {
		a, b := rep.Changes[i], rep.Changes[j]
		if a.Decisions != b.Decisions {
			return a.Decisions > b.Decisions
		}
		return a.Label() < b.Label()
	})
	if !rep.First.IsZero() {
		rep.Range = map[string]string{"first": rep.First.Format(time.RFC3339), "last": rep.Last.Format(time.RFC3339)}
	}
	return rep
}
