package policy

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
)

// ErrEngine marks a policy engine failure at evaluation time. Evaluate
// returns an error wrapping it only when the failing engine fails closed
// (on_error = "defer"); the accompanying Decision is then a 451 4.3.0 defer.
var ErrEngine = errors.New("policy: engine failed")

// ErrInvalidResult marks a policy result that breaks the contract (a deny
// with a 4xx code, a header name with a colon, …). It is an engine error.
var ErrInvalidResult = errors.New("policy: invalid policy result")

// The engines' names for the default replies (decision.go).
const (
	defaultRejectCode = RejectCode
	defaultRejectEnh  = RejectEnhancedCode
	defaultDeferCode  = DeferCode
	defaultDeferEnh   = DeferEnhancedCode
	errorDeferCode    = ErrorCode
	errorDeferEnh     = ErrorEnhancedCode
	errorDeferMsg     = ErrorMessage
	maxMessageLen     = 200
)

// verdict is one matched reject or defer.
type verdict struct {
	rule    string
	code    int
	enh     string
	message string
}

// engineResult is what one engine concluded for one stage.
type engineResult struct {
	reject   *verdict // first reject
	deferral *verdict // first defer
	warnings []Warning
	actions  Actions
	// rule names the accept rule that ended evaluation (rules engine).
	acceptRule string
	// revision is the bundle revision that decided (bundle engines).
	revision string
}

// engine is one compiled policy. Implementations are immutable after
// construction and safe for concurrent use.
type engine interface {
	eval(ctx context.Context, doc *document) (engineResult, error)
}

// document is one Input in the representations engines need, each built
// lazily at most once per Evaluate and shared by the engines. Engines run
// one after the other, so it needs no locking; it never outlives Evaluate.
type document struct {
	in Input // normalized

	astVals []shapedValue // Rego inputs built so far
}

// shapedValue is the Rego input of one shape.
type shapedValue struct {
	shape *inputShape
	val   ast.Value
}

func newDocument(in Input) *document { return &document{in: in.Normalize()} }

// documents are reused from one Evaluate to the next, with their astVals'
// capacity: a document never outlives its Evaluate.
var documents = sync.Pool{New: func() any { return new(document) }}

// getDocument returns a document of in, which the caller has normalized.
func getDocument(in Input) *document {
	d := documents.Get().(*document)
	d.in = in
	return d
}

// putDocument returns d to the pool, holding nothing of its evaluation.
func putDocument(d *document) {
	clear(d.astVals)
	d.astVals = d.astVals[:0]
	d.in = Input{}
	documents.Put(d)
}

// ast returns the Rego input of shape s, building it once.
func (d *document) ast(s *inputShape) ast.Value {
	for _, v := range d.astVals {
		if v.shape == s {
			return v.val
		}
	}
	v := astInput(&d.in, s)
	d.astVals = append(d.astVals, shapedValue{s, v})
	return v
}

// sanitizeMessage makes s safe to show an SMTP client: one line of
// printable ASCII (other runes become '?', controls a space), at most
// maxMessageLen bytes, never empty.
func sanitizeMessage(s, fallback string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n' || r == '\t' || r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		case r > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
		if b.Len() >= maxMessageLen {
			break
		}
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	if out == "" {
		return fallback
	}
	return out
}

var enhRe = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// checkReply validates a reply code and enhanced code for a verdict class
// ('5' for reject, '4' for defer), RFC 5321 §4.2 and RFC 3463 §2.
func checkReply(class byte, code int, enh string) error {
	if code/100 != int(class-'0') || code < 400 || code > 599 {
		return fmt.Errorf("%w: code %d is not %cxx", ErrInvalidResult, code, class)
	}
	if !enhRe.MatchString(enh) || enh[0] != class {
		return fmt.Errorf("%w: enhanced code %q is not %c.x.y", ErrInvalidResult, enh, class)
	}
	return nil
}

// headerNameRe is RFC 5322 §2.2 ftext.
var headerNameRe = regexp.MustCompile(`^[!-9;-~]+$`)

func checkHeader(h Header) error {
	if !headerNameRe.MatchString(h.Name) {
		return fmt.Errorf("%w: header name %q", ErrInvalidResult, h.Name)
	}
	if strings.ContainsAny(h.Value, "\r\n\x00") {
		return fmt.Errorf("%w: header %s: value contains CR, LF or NUL", ErrInvalidResult, h.Name)
	}
	return nil
}

func checkActions(a Actions) error {
	for _, h := range a.AddHeaders {
		if err := checkHeader(h); err != nil {
			return err
		}
	}
	for _, n := range a.RemoveHeaders {
		if !headerNameRe.MatchString(n) {
			return fmt.Errorf("%w: remove_headers: name %q", ErrInvalidResult, n)
		}
	}
	if strings.ContainsAny(a.DKIMDomain, " \r\n\x00@") || strings.ContainsAny(a.Upstream, "\r\n\x00") {
		return fmt.Errorf("%w: dkim_domain or upstream has forbidden characters", ErrInvalidResult)
	}
	return nil
}
