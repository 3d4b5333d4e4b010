package proxy

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy/replies"
)

// catalogue is every reply mailgate originates, by the name docs/replies.md
// gives it: the values of proxy/replies (TestCatalogueMatchesDocs checks
// with go/ast that none is missing here) and the policy's defaults as the
// proxy sends them.
func catalogue() map[string]catalogueEntry {
	fixed := func(r *smtp.SMTPError) catalogueEntry { return catalogueEntry{r.Code, r.EnhancedCode, r.Message} }
	tmpl := func(t replies.Template) catalogueEntry { return catalogueEntry{t.Code, t.EnhancedCode, t.Format} }
	return map[string]catalogueEntry{
		"AccessDenied":           fixed(replies.AccessDenied),
		"TooManyConnections":     fixed(replies.TooManyConnections),
		"TooManyFromAddress":     fixed(replies.TooManyFromAddress),
		"RefusedShuttingDown":    fixed(replies.RefusedShuttingDown),
		"ShuttingDown":           fixed(replies.ShuttingDown),
		"LoginTimeout":           fixed(replies.LoginTimeout),
		"LineTimeout":            fixed(replies.LineTimeout),
		"IdleTimeout":            fixed(replies.IdleTimeout),
		"ConnectionError":        fixed(replies.ConnectionError),
		"TooManyErrors":          fixed(replies.TooManyErrors),
		"DataTimeout":            fixed(replies.DataTimeout),
		"BareLineEnding":         fixed(replies.BareLineEnding),
		"LineTooLong":            fixed(replies.LineTooLong),
		"Greeting":               tmpl(replies.Greeting),
		"EHLOBeforeTLS":          tmpl(replies.EHLOBeforeTLS),
		"HELOBeforeTLS":          tmpl(replies.HELOBeforeTLS),
		"EHLONeedsDomain":        fixed(replies.EHLONeedsDomain),
		"HELONeedsDomain":        fixed(replies.HELONeedsDomain),
		"BadLineBeforeTLS":       fixed(replies.BadLineBeforeTLS),
		"SendEHLOFirst":          fixed(replies.SendEHLOFirst),
		"STARTTLSNoArgument":     fixed(replies.STARTTLSNoArgument),
		"ReadyToStartTLS":        fixed(replies.ReadyToStartTLS),
		"OK":                     fixed(replies.OK),
		"Bye":                    fixed(replies.Bye),
		"MustStartTLS":           fixed(replies.MustStartTLS),
		"NotRecognized":          fixed(replies.NotRecognized),
		"TooManyErrorsBeforeTLS": fixed(replies.TooManyErrorsBeforeTLS),
		"SenderOK":               tmpl(replies.SenderOK),
		"RecipientOK":            tmpl(replies.RecipientOK),
		"StartData":              fixed(replies.StartData),
		"AuthRequired":           fixed(replies.AuthRequired),
		"EncryptionRequired":     fixed(replies.EncryptionRequired),
		"AuthInTransaction":      fixed(replies.AuthInTransaction),
		"NestedMail":             fixed(replies.NestedMail),
		"NeedMail":               fixed(replies.NeedMail),
		"BadAddressEmpty":        fixed(replies.BadAddressEmpty),
		"BadAddressForm":         fixed(replies.BadAddressForm),
		"BadAddressRoute":        fixed(replies.BadAddressRoute),
		"BadAddressUTF8":         fixed(replies.BadAddressUTF8),
		"BadAddressLength":       fixed(replies.BadAddressLength),
		"BadAddressRouting":      fixed(replies.BadAddressRouting),
		"BadAddressDomain":       fixed(replies.BadAddressDomain),
		"NonASCIIAddress":        fixed(replies.NonASCIIAddress),
		"SenderNeedsSMTPUTF8":    tmpl(replies.SenderNeedsSMTPUTF8),
		"RecipientNeedsSMTPUTF8": tmpl(replies.RecipientNeedsSMTPUTF8),
		"HeaderNeedsSMTPUTF8":    tmpl(replies.HeaderNeedsSMTPUTF8),
		"HeaderTooBig":           fixed(replies.HeaderTooBig),
		"BadHeader":              fixed(replies.BadHeader),
		"NoFrom":                 fixed(replies.NoFrom),
		"SignFrom":               fixed(replies.SignFrom),
		"SignNoKey":              fixed(replies.SignNoKey),
		"Queued":                 tmpl(replies.Queued),
		"Aborted":                fixed(replies.Aborted),
		"InternalError":          tmpl(replies.InternalError),
		"AuthFailed":             fixed(replies.AuthFailed),
		"MalformedAuth":          fixed(replies.MalformedAuth),
		"TooManyAuthFailures":    fixed(replies.TooManyAuthFailures),
		"AuthUnavailable":        fixed(replies.AuthUnavailable),
		"UpstreamTimeout":        fixed(replies.UpstreamTimeout),
		"UpstreamUnavailable":    fixed(replies.UpstreamUnavailable),
		"BadSenderSyntax":        fixed(replies.BadSenderSyntax),
		"BadRecipientSyntax":     fixed(replies.BadRecipientSyntax),
		"InvalidParameter":       fixed(replies.InvalidParameter),
		"UpstreamNoSMTPUTF8":     fixed(replies.UpstreamNoSMTPUTF8),
		"UpstreamNoRequireTLS":   fixed(replies.UpstreamNoRequireTLS),
		"UpstreamInternal":       fixed(replies.UpstreamInternal),
		// The policy's defaults, as decisionReply and decide send them.
		"policy.Reject": fixed(decisionReply(policy.Decision{Outcome: policy.Reject})),
		"policy.Defer":  fixed(decisionReply(policy.Decision{Outcome: policy.Defer})),
		"policy.Error":  fixed(policyUnavailable("%s")),
	}
}

type catalogueEntry struct {
	code int
	ec   smtp.EnhancedCode
	text string
}

func (e catalogueEntry) String() string {
	ec := "—"
	if e.ec != smtp.NoEnhancedCode {
		ec = fmt.Sprintf("%d.%d.%d", e.ec[0], e.ec[1], e.ec[2])
	}
	return fmt.Sprintf("%d %s %q", e.code, ec, e.text)
}

// catalogueVars returns the name of every package-level var of
// proxy/replies/replies.go.
func catalogueVars(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "replies/replies.go", nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, s := range g.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				names = append(names, n.Name)
			}
		}
	}
	return names
}

var docRow = regexp.MustCompile("^\\| `([A-Za-z0-9.]+)` \\| ([0-9]{3}) \\| (—|[245]\\.[0-9]{1,3}\\.[0-9]{1,3}) \\| `([^`]*)` \\|")

// docTable parses the reply tables of docs/replies.md: name → entry.
func docTable(t *testing.T) map[string]catalogueEntry {
	t.Helper()
	b, err := os.ReadFile("../docs/replies.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]catalogueEntry{}
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		m := docRow.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("docs/replies.md:%d: not a reply row: %s", i+1, line)
			continue
		}
		e := catalogueEntry{ec: smtp.NoEnhancedCode, text: strings.ReplaceAll(m[4], `\n`, "\n")}
		e.code, _ = strconv.Atoi(m[2])
		if m[3] != "—" {
			for j, p := range strings.Split(m[3], ".") {
				e.ec[j], _ = strconv.Atoi(p)
			}
		}
		if _, dup := rows[m[1]]; dup {
			t.Errorf("docs/replies.md:%d: %s listed twice", i+1, m[1])
		}
		rows[m[1]] = e
	}
	return rows
}

// TestCatalogueMatchesDocs: docs/replies.md lists exactly the replies of
// the catalogue, each with its code, enhanced code and text.
func TestCatalogueMatchesDocs(t *testing.T) {
	cat := catalogue()
	for _, name := range catalogueVars(t) {
		if _, ok := cat[name]; !ok {
			t.Errorf("proxy/replies.%s is missing from this test's catalogue()", name)
		}
	}
	doc := docTable(t)
	if len(doc) < len(cat)/2 {
		t.Fatalf("docs/replies.md: %d rows parsed, want %d", len(doc), len(cat))
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range cat {
			if !yield(n) {
				return
			}
		}
	}) {
		got, ok := doc[name]
		switch {
		case !ok:
			t.Errorf("%s (%v) has no row in docs/replies.md", name, cat[name])
		case got != cat[name]:
			t.Errorf("%s: docs/replies.md says %v, the code %v", name, got, cat[name])
		}
	}
	for name, e := range doc {
		if _, ok := cat[name]; !ok {
			t.Errorf("docs/replies.md lists %s (%v), which is not in the catalogue", name, e)
		}
	}
}

// TestReplyLine: replies go on the wire as RFC 5321 section 4.2 says,
// with the enhanced code when there is one and continuation lines for a
// multi-line text.
func TestReplyLine(t *testing.T) {
	for _, tc := range []struct {
		r    *smtp.SMTPError
		want string
	}{
		{replies.ShuttingDown, "421 4.3.2 Service shutting down, try again later"},
		{replies.StartData, "354 End data with <CR><LF>.<CR><LF>"},
		{replies.Greeting.With("mx.example"), "220 mx.example ESMTP mailgate"},
		{replies.EHLOBeforeTLS.With("mx.example", 1024),
			"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1024\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS"},
		{replies.Queued.With("abc"), "250 2.0.0 OK: queued as abc"},
		{&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCodeNotSet, Message: "up"}, "451 0.0.0 up"},
	} {
		if got := replies.Line(tc.r); got != tc.want {
			t.Errorf("Line(%v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}

// TestTemplateAppendLine: the allocation-free AppendLine writes what Line
// writes, single-line or not.
func TestTemplateAppendLine(t *testing.T) {
	for _, tc := range []struct {
		t    replies.Template
		args []any
	}{
		{replies.SenderOK, []any{[]byte("a@b.test")}},
		{replies.RecipientOK, []any{"jörg@b.test"}},
		{replies.Queued, []any{"abc"}},
		{replies.Greeting, []any{"mx.example"}},
		{replies.EHLOBeforeTLS, []any{"mx.example", int64(1 << 20)}},
	} {
		want := replies.Line(tc.t.With(tc.args...))
		if got := string(tc.t.AppendLine([]byte(nil), tc.args...)); got != want {
			t.Errorf("AppendLine = %q, Line = %q", got, want)
		}
	}
}
