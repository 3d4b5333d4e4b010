package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/zclconf/go-cty/cty"
)

// Normalize returns a copy of in as engines see it: Version set when zero,
// nil lists and maps made empty (so policies never meet null where the
// contract promises a list), FromDomain and Rcpt.Domain derived from the
// addresses when empty, and domains lower-cased. It never changes an
// address.
func (in Input) Normalize() Input {
	if in.Version == 0 {
		in.Version = InputVersion
	}
	if in.Envelope.Recipients == nil {
		in.Envelope.Recipients = []string{}
	}
	if in.Envelope.FromDomain == "" {
		in.Envelope.FromDomain = domainOf(in.Envelope.From)
	} else {
		in.Envelope.FromDomain = strings.ToLower(in.Envelope.FromDomain)
	}
	if in.Rcpt != nil {
		r := *in.Rcpt
		if r.Domain == "" {
			r.Domain = domainOf(r.Address)
		} else {
			r.Domain = strings.ToLower(r.Domain)
		}
		in.Rcpt = &r
	}
	if in.Quota == nil {
		in.Quota = map[string]QuotaState{}
	}
	if in.Message != nil {
		m := *in.Message
		if m.Headers == nil {
			m.Headers = map[string][]string{}
		}
		if m.FromAddresses == nil {
			m.FromAddresses = []string{}
		}
		in.Message = &m
	}
	return in
}

// domainOf returns the lower-cased domain part of an address, or "" when it
// has none (the null sender "<>" included).
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[i+1:], ">"))
}

// ParseInput decodes a possibly partial Input document from JSON, as used by
// the eval tool and by test fixtures. Missing fields take test defaults
// (session id "test", listener "submission", client 192.0.2.1) and the
// result is normalized. Unknown fields are an error, so a typo in a fixture
// cannot silently test nothing.
func ParseInput(data []byte) (Input, error) {
	in := Input{
		Version: InputVersion,
		Session: Session{ID: "test", Listener: "submission", ClientIP: "192.0.2.1", HELO: "client.example"},
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return Input{}, fmt.Errorf("policy: input: %w", err)
	}
	switch in.Stage {
	case StageMail, StageRcpt, StageData:
	default:
		return Input{}, fmt.Errorf("policy: input: stage %q: want mail, rcpt or data", in.Stage)
	}
	if in.Stage == StageRcpt && in.Rcpt == nil {
		return Input{}, fmt.Errorf("policy: input: stage rcpt needs rcpt")
	}
	if in.Stage == StageData && in.Message == nil {
		in.Message = &Message{}
	}
	return in.Normalize(), nil
}

// ---- Rego: the input as an ast.Value, built directly (no JSON round trip).

func strTerm(s string) *ast.Term {
	if s == "" {
		return ast.InternedEmptyString
	}
	return ast.StringTerm(s)
}

func strArray(ss []string) *ast.Term {
	if len(ss) == 0 {
		return ast.InternedEmptyArray
	}
	ts := make([]*ast.Term, len(ss))
	for i, s := range ss {
		ts[i] = strTerm(s)
	}
	return ast.ArrayTerm(ts...)
}

// keyTerms are the object keys of the input document, built once: terms
// are immutable during evaluation, so every input shares them.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{"version", "stage", "session", "auth", "envelope", "rcpt", "message",
		"id", "listener", "client_ip", "helo", "tls", "cipher", "user", "mechanism", "from", "from_domain",
		"recipients", "size", "smtputf8", "address", "domain", "headers", "from_addresses",
		"quota", "key", "action", "exceeded", "messages", "new_recipients", "window", "limit", "used",
		"remaining", "retry_after"} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

func item(k string, v *ast.Term) [2]*ast.Term {
	kt := keyTerms[k]
	if kt == nil {
		kt = ast.StringTerm(k)
	}
	return ast.Item(kt, v)
}

// astValue builds the Rego input of a normalized Input. It matches the JSON
// form of Input: rcpt and message are absent outside their stages, auth and
// session.tls are null when unset.
func astValue(in *Input) ast.Value {
	tls := ast.InternedNullTerm
	if in.Session.TLS != nil {
		tls = ast.ObjectTerm(item("version", strTerm(in.Session.TLS.Version)), item("cipher", strTerm(in.Session.TLS.Cipher)))
	}
	auth := ast.InternedNullTerm
	if in.Auth != nil {
		auth = ast.ObjectTerm(item("user", strTerm(in.Auth.User)), item("mechanism", strTerm(in.Auth.Mechanism)))
	}
	items := [][2]*ast.Term{
		item("version", ast.InternedTerm(in.Version)),
		item("stage", ast.InternedTerm(string(in.Stage))),
		item("session", ast.ObjectTerm(
			item("id", strTerm(in.Session.ID)),
			item("listener", strTerm(in.Session.Listener)),
			item("client_ip", strTerm(in.Session.ClientIP)),
			item("helo", strTerm(in.Session.HELO)),
			item("tls", tls),
		)),
		item("auth", auth),
		item("envelope", ast.ObjectTerm(
			item("from", strTerm(in.Envelope.From)),
			item("from_domain", strTerm(in.Envelope.FromDomain)),
			item("recipients", strArray(in.Envelope.Recipients)),
			item("size", ast.InternedTerm(int(in.Envelope.Size))),
			item("smtputf8", ast.InternedTerm(in.Envelope.SMTPUTF8)),
		)),
	}
	if in.Rcpt != nil {
		items = append(items, item("rcpt", ast.ObjectTerm(item("address", strTerm(in.Rcpt.Address)), item("domain", strTerm(in.Rcpt.Domain)))))
	}
	if in.Message != nil {
		hs := make([][2]*ast.Term, 0, len(in.Message.Headers))
		for k, v := range in.Message.Headers {
			hs = append(hs, item(k, strArray(v)))
		}
		items = append(items, item("message", ast.ObjectTerm(
			item("headers", ast.ObjectTerm(hs...)),
			item("from_addresses", strArray(in.Message.FromAddresses)),
			item("size", ast.InternedTerm(int(in.Message.Size))),
		)))
	}
	items = append(items, item("quota", quotaTerm(in.Quota)))
	return ast.NewObject(items...)
}

func quotaTerm(qs map[string]QuotaState) *ast.Term {
	if len(qs) == 0 {
		return ast.ObjectTerm()
	}
	windows := func(ws []QuotaWindow) *ast.Term {
		if len(ws) == 0 {
			return ast.InternedEmptyArray
		}
		ts := make([]*ast.Term, len(ws))
		for i, w := range ws {
			ts[i] = ast.ObjectTerm(item("window", strTerm(w.Window)), item("limit", ast.IntNumberTerm(int(w.Limit))),
				item("used", ast.IntNumberTerm(int(w.Used))), item("remaining", ast.IntNumberTerm(int(w.Remaining))),
				item("retry_after", ast.IntNumberTerm(int(w.RetryAfter))))
		}
		return ast.ArrayTerm(ts...)
	}
	items := make([][2]*ast.Term, 0, len(qs))
	for name, q := range qs {
		items = append(items, item(name, ast.ObjectTerm(
			item("key", strTerm(q.Key)), item("action", strTerm(q.Action)),
			item("exceeded", ast.InternedTerm(q.Exceeded)),
			item("messages", windows(q.Messages)), item("recipients", windows(q.Recipients)),
			item("new_recipients", windows(q.NewRecipients)),
		)))
	}
	return ast.ObjectTerm(items...)
}

// ---- HCL: the input as a cty value of the schema type.

var (
	tlsType     = cty.Object(map[string]cty.Type{"version": cty.String, "cipher": cty.String})
	sessionType = cty.Object(map[string]cty.Type{"id": cty.String, "listener": cty.String, "client_ip": cty.String, "helo": cty.String, "tls": tlsType})
	authType    = cty.Object(map[string]cty.Type{"user": cty.String, "mechanism": cty.String})
	envType     = cty.Object(map[string]cty.Type{"from": cty.String, "from_domain": cty.String, "recipients": cty.List(cty.String), "size": cty.Number, "smtputf8": cty.Bool})
	rcptType    = cty.Object(map[string]cty.Type{"address": cty.String, "domain": cty.String})
	messageType = cty.Object(map[string]cty.Type{"headers": cty.Map(cty.List(cty.String)), "from_addresses": cty.List(cty.String), "size": cty.Number})
	windowType  = cty.Object(map[string]cty.Type{"window": cty.String, "limit": cty.Number, "used": cty.Number, "remaining": cty.Number, "retry_after": cty.Number})
	quotaType   = cty.Object(map[string]cty.Type{"key": cty.String, "action": cty.String, "exceeded": cty.Bool,
		"messages": cty.List(windowType), "recipients": cty.List(windowType), "new_recipients": cty.List(windowType)})

	// schemaTypes are the types of the variables HCL expressions see.
	schemaTypes = map[string]cty.Type{
		"version": cty.Number, "stage": cty.String, "session": sessionType, "auth": authType,
		"envelope": envType, "rcpt": rcptType, "message": messageType, "quota": cty.Map(quotaType),
	}
)

func strList(ss []string) cty.Value {
	if len(ss) == 0 {
		return cty.ListValEmpty(cty.String)
	}
	vs := make([]cty.Value, len(ss))
	for i, s := range ss {
		vs[i] = cty.StringVal(s)
	}
	return cty.ListVal(vs)
}

// ctyVar builds one HCL variable of a normalized Input. rcpt and message
// are typed nulls outside their stages, auth and session.tls typed nulls
// when unset.
func ctyVar(in *Input, name string) cty.Value {
	switch name {
	case "version":
		return cty.NumberIntVal(int64(in.Version))
	case "stage":
		return cty.StringVal(string(in.Stage))
	case "session":
		tls := cty.NullVal(tlsType)
		if in.Session.TLS != nil {
			tls = cty.ObjectVal(map[string]cty.Value{"version": cty.StringVal(in.Session.TLS.Version), "cipher": cty.StringVal(in.Session.TLS.Cipher)})
		}
		return cty.ObjectVal(map[string]cty.Value{
			"id": cty.StringVal(in.Session.ID), "listener": cty.StringVal(in.Session.Listener),
			"client_ip": cty.StringVal(in.Session.ClientIP), "helo": cty.StringVal(in.Session.HELO), "tls": tls,
		})
	case "auth":
		if in.Auth == nil {
			return cty.NullVal(authType)
		}
		return cty.ObjectVal(map[string]cty.Value{"user": cty.StringVal(in.Auth.User), "mechanism": cty.StringVal(in.Auth.Mechanism)})
	case "envelope":
		return cty.ObjectVal(map[string]cty.Value{
			"from": cty.StringVal(in.Envelope.From), "from_domain": cty.StringVal(in.Envelope.FromDomain),
			"recipients": strList(in.Envelope.Recipients), "size": cty.NumberIntVal(in.Envelope.Size),
			"smtputf8": cty.BoolVal(in.Envelope.SMTPUTF8),
		})
	case "rcpt":
		if in.Rcpt == nil {
			return cty.NullVal(rcptType)
		}
		return cty.ObjectVal(map[string]cty.Value{"address": cty.StringVal(in.Rcpt.Address), "domain": cty.StringVal(in.Rcpt.Domain)})
	case "message":
		if in.Message == nil {
			return cty.NullVal(messageType)
		}
		hs := cty.MapValEmpty(cty.List(cty.String))
		if len(in.Message.Headers) > 0 {
			m := make(map[string]cty.Value, len(in.Message.Headers))
			for k, v := range in.Message.Headers {
				m[k] = strList(v)
			}
			hs = cty.MapVal(m)
		}
		return cty.ObjectVal(map[string]cty.Value{
			"headers": hs, "from_addresses": strList(in.Message.FromAddresses), "size": cty.NumberIntVal(in.Message.Size),
		})
	case "quota":
		return quotaCty(in.Quota)
	}
	return cty.NilVal
}

func quotaCty(qs map[string]QuotaState) cty.Value {
	if len(qs) == 0 {
		return cty.MapValEmpty(quotaType)
	}
	windows := func(ws []QuotaWindow) cty.Value {
		if len(ws) == 0 {
			return cty.ListValEmpty(windowType)
		}
		vs := make([]cty.Value, len(ws))
		for i, w := range ws {
			vs[i] = cty.ObjectVal(map[string]cty.Value{
				"window": cty.StringVal(w.Window), "limit": cty.NumberIntVal(w.Limit), "used": cty.NumberIntVal(w.Used),
				"remaining": cty.NumberIntVal(w.Remaining), "retry_after": cty.NumberIntVal(w.RetryAfter),
			})
		}
		return cty.ListVal(vs)
	}
	m := make(map[string]cty.Value, len(qs))
	for name, q := range qs {
		m[name] = cty.ObjectVal(map[string]cty.Value{
			"key": cty.StringVal(q.Key), "action": cty.StringVal(q.Action), "exceeded": cty.BoolVal(q.Exceeded),
			"messages": windows(q.Messages), "recipients": windows(q.Recipients), "new_recipients": windows(q.NewRecipients),
		})
	}
	return cty.MapVal(m)
}
