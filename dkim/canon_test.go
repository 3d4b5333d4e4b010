package dkim

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// The reference for the signing core is go-msgauth v0.7.0, which signed
// before it: for the same key, h= list, canonicalization, t= and x=, both
// produce the same DKIM-Signature field byte for byte (RSA PKCS#1 v1.5 and
// Ed25519 are deterministic, so b= is compared too).

func msgauthCanon(c canonicalization) msgauth.Canonicalization {
	if c == canonRelaxed {
		return msgauth.CanonicalizationRelaxed
	}
	return msgauth.CanonicalizationSimple
}

// goKeys caches goKey's keys by file.
var goKeys sync.Map // file → crypto.Signer

// goKey returns the key in file as crypto/rsa or crypto/ed25519 parsed
// it: the reference, whatever backend the Signer under test uses.
func goKey(t testing.TB, file string) crypto.Signer {
	t.Helper()
	if k, ok := goKeys.Load(file); ok {
		return k.(crypto.Signer)
	}
	k, err := LoadKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	goKeys.Store(file, k)
	return k
}

// refSign signs msg with one go-msgauth signer per key, fed in one pass as
// the pre-canon.go Signer did. A message without the empty line after the
// header gets one (go-msgauth needs it; the body is empty either way).
func refSign(t testing.TB, keys []*key, headerKeys []string, hc, bc canonicalization, exp time.Time, msg string) []string {
	t.Helper()
	if !strings.Contains(msg, "\r\n\r\n") && !strings.HasPrefix(msg, "\r\n") {
		msg += "\r\n"
	}
	signers := make([]*msgauth.Signer, len(keys))
	ws := make([]io.Writer, len(keys))
	for i, k := range keys {
		sg, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain:                 k.domain,
			Selector:               k.selector,
			Signer:                 goKey(t, k.file),
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: msgauthCanon(hc),
			BodyCanonicalization:   msgauthCanon(bc),
			HeaderKeys:             headerKeys,
			Expiration:             exp,
		})
		if err != nil {
			t.Fatalf("go-msgauth NewSigner: %v", err)
		}
		signers[i], ws[i] = sg, sg
	}
	if _, err := io.WriteString(io.MultiWriter(ws...), msg); err != nil {
		t.Fatalf("go-msgauth Write: %v", err)
	}
	sigs := make([]string, len(keys))
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			t.Fatalf("go-msgauth Close: %v", err)
		}
		sigs[i] = sg.Signature()
	}
	return sigs
}

// chunkReader returns at most n bytes per Read (n <= 0: all at once).
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) {
	if c.n > 0 && len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// diffCase is one differential comparison.
type diffCase struct {
	hc, bc   canonicalization
	withExp  bool
	chunk    int      // Read size for Sign, 0 = whole
	override []string // h= list instead of the Signer's (nil: s.headerKeys)
}

// signDifferential signs msg with go-msgauth and with s (for domain's
// keys) and fails unless the fields are identical. It reports false
// (nothing compared) when Sign rightly refuses the message: a malformed
// header or no From field.
func signDifferential(t testing.TB, s *Signer, domain string, dc diffCase, msg string) bool {
	t.Helper()
	raw, sep, err := readHeader(bufio.NewReader(strings.NewReader(msg)), MaxHeaderBytes)
	var fields []field
	if err == nil {
		fields, err = parseHeader(raw)
	}
	if err == nil && !hasField(fields, "From") {
		err = ErrFromHeader
	}
	if err != nil {
		_, serr := s.Sign(context.Background(), domain, strings.NewReader(msg))
		if !errors.Is(serr, ErrHeader) && !errors.Is(serr, ErrLineEnding) && !errors.Is(serr, ErrFromHeader) {
			t.Fatalf("Sign of a message the parser refuses (%v): err = %v", err, serr)
		}
		return false
	}
	headerKeys := s.headerKeys(fields)
	if dc.override != nil {
		headerKeys = dc.override
	}
	keys := s.keys.Load().kr[domain]
	if len(keys) == 0 {
		t.Fatalf("no key for %s", domain)
	}

	var exp time.Time
	if dc.withExp {
		exp = time.Now().Add(time.Hour).Truncate(time.Second)
	}
	var ref []string
	var ts time.Time
	for try := 0; ; try++ {
		ref = refSign(t, keys, headerKeys, dc.hc, dc.bc, exp, msg)
		ts = unixTag(t, tags(t, ref[0]), "t")
		same := true
		for _, r := range ref[1:] {
			same = same && unixTag(t, tags(t, r), "t").Equal(ts)
		}
		if same {
			break
		}
		if try == 3 {
			t.Fatal("go-msgauth signers disagree on t=")
		}
	}

	s.now = func() time.Time { return ts }
	s.expiration = 0
	if dc.withExp {
		s.expiration = exp.Sub(ts)
	}
	s.headerCanon, s.bodyCanon = dc.hc, dc.bc
	var got []string
	if dc.override != nil {
		got, err = s.sign(keys, headerKeys, raw, sep, bufio.NewReader(chunkReader{strings.NewReader(msg[len(raw):]), dc.chunk}))
	} else {
		got, err = s.Sign(context.Background(), domain, chunkReader{strings.NewReader(msg), dc.chunk})
	}
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(got) != len(ref) {
		t.Fatalf("%d signatures, go-msgauth %d", len(got), len(ref))
	}
	for i := range ref {
		if got[i] != ref[i] {
			t.Fatalf("signature %d differs from go-msgauth's\nmessage: %q\nours:      %q\ngo-msgauth: %q", i, msg, got[i], ref[i])
		}
	}
	return true
}

// diffMessages are the messages compared with go-msgauth, beyond
// testdata/messages.
var diffMessages = map[string]string{
	"long folded headers": "From: Alice\r\n  <alice@example.com>\r\nTo: bob@example.net,\r\n\tcarol@example.net,\r\n  dave@example.net\r\n" +
		"Subject: " + strings.Repeat("very long subject ", 12) + "\r\n \r\n\tend\r\n\r\nbody\r\n",
	"8-bit and UTF-8": "From: J\xc3\xb6rg <j@example.com>\r\nSubject: Gr\xc3\xbc\xc3\x9fe \xe2\x80\x94 \xff\xfe\r\nTo: b\xc3\xbccher@example.net\r\n\r\n" +
		"\xc3\xa4\xc3\xb6\xc3\xbc \xe2\x80\x8b\xc2\xa0nbsp\r\n\x80\x81\t\xff \r\n",
	"empty body":            "From: a@example.com\r\nSubject: empty\r\n\r\n",
	"no body separator":     "From: a@example.com\r\nSubject: no body\r\n",
	"only empty lines":      "From: a@example.com\r\n\r\n\r\n\r\n\r\n",
	"only WSP lines":        "From: a@example.com\r\n\r\n  \r\n\t\r\n \t \r\n",
	"trailing empty lines":  "From: a@example.com\r\n\r\nline\r\n\r\n\r\n\r\n",
	"trailing WSP lines":    "From: a@example.com\r\n\r\nline\r\n \r\n\t\r\n",
	"WSP at line ends":      "From: a@example.com\r\n\r\nline one   \r\nline two\t\r\n\r\nline four \t \r\n",
	"tabs and runs":         "From: a@example.com\r\n\r\n\tindented\r\na\t\tb  c \t d\r\n   leading\r\n",
	"no final CRLF":         "From: a@example.com\r\n\r\nlast line without CRLF",
	"no final CRLF, WSP":    "From: a@example.com\r\n\r\nline\r\n  ",
	"empty lines inside":    "From: a@example.com\r\n\r\n\r\n\r\na\r\n\r\n\r\nb\r\n",
	"body is one space":     "From: a@example.com\r\n\r\n ",
	"body is one CRLF":      "From: a@example.com\r\n\r\n\r\n",
	"NUL and controls":      "From: a@example.com\r\nSubject: \x00\x01\x0b\x0c\r\n\r\n\x00 \x0b\x0c \x7f\r\n",
	"WSP around the colon":  "From : a@example.com\r\nSubject\t:\t  hello   world  \r\nTO:b@example.net\r\n\r\nx\r\n",
	"empty values":          "From: a@example.com\r\nSubject:\r\nTo:   \r\nCc:\r\n \r\n\r\nx\r\n",
	"repeated fields":       "From: a@example.com\r\nSubject: one\r\nTo: x@example.net\r\nSUBJECT: two\r\nsubject: three\r\nTo: y@example.net\r\nReceived: by x\r\nReceived: by y\r\n\r\nx\r\n",
	"mixed case names":      "fRoM: a@example.com\r\nsUbJeCt: mixed\r\nmessage-id: <x@y>\r\nMIME-VERSION: 1.0\r\n\r\nx\r\n",
	"all default headers":   allDefaultHeaders(),
	"long body lines":       "From: a@example.com\r\n\r\n" + strings.Repeat("x", 5000) + "  \r\n" + strings.Repeat(" y", 3000) + "\r\n",
	"many empty lines then": "From: a@example.com\r\n\r\n" + strings.Repeat("\r\n", 3000) + "text\r\n" + strings.Repeat("\r\n", 3000),
}

func allDefaultHeaders() string {
	var b strings.Builder
	for _, h := range DefaultHeaders() {
		if h == "From" {
			b.WriteString("From: a@example.com\r\n")
			continue
		}
		b.WriteString(h + ": value of " + h + "\r\n")
	}
	b.WriteString("\r\nbody\r\n")
	return b.String()
}

func TestSignDifferential(t *testing.T) {
	msgs := map[string]string{}
	for _, name := range []string{"basic.eml", "empty-body.eml", "folded.eml", "hygiene.eml", "no-separator.eml", "rfc8463.eml", "utf8.eml"} {
		msgs[name] = readMessage(t, name)
	}
	for k, v := range diffMessages {
		msgs[k] = v
	}
	longDomain := "a-rather-long-subdomain-label-for-folding.another-long-label.example.com"
	keySets := []struct {
		name, domain string
		keys         []KeyConfig
	}{
		{"RSA2048", "example.com", []KeyConfig{rsaKey("example.com", "r")}},
		{"Ed25519", "example.com", []KeyConfig{edKey("example.com", "e")}},
		{"both in one pass", "example.com", []KeyConfig{rsaKey("example.com", "r"), edKey("example.com", "e")}},
		{"long d= and s=", longDomain, []KeyConfig{edKey(longDomain, "a-long-selector-name-2026-11.region-eu")}},
	}
	headerSets := []struct {
		name             string
		headers, oversig []string
	}{
		{"default headers", nil, nil},
		{"no oversigning", nil, []string{"From"}},
		{"custom list", []string{"from", "SUBJECT", "To", "X-Custom"}, nil},
	}
	canons := []struct{ hc, bc canonicalization }{{canonRelaxed, canonRelaxed}, {canonSimple, canonSimple}, {canonRelaxed, canonSimple}, {canonSimple, canonRelaxed}}
	for _, ks := range keySets {
		for _, hs := range headerSets {
			for _, c := range canons {
				for _, withExp := range []bool{true, false} {
					name := ks.name + "/" + hs.name + "/" + cTag(c.hc, c.bc)
					if !withExp {
						name += "/no x="
					}
					t.Run(name, func(t *testing.T) {
						cfg := Config{Keys: ks.keys, Headers: hs.headers, Oversign: hs.oversig}
						s := newTestSigner(t, cfg)
						for mname, msg := range msgs {
							if !signDifferential(t, s, ks.domain, diffCase{hc: c.hc, bc: c.bc, withExp: withExp}, msg) {
								t.Errorf("%s: not compared (refused)", mname)
							}
						}
					})
				}
			}
		}
	}

	// h= lists the Signer never builds: the core must still pick fields
	// as RFC 6376 section 5.4.2 says, like go-msgauth.
	t.Run("arbitrary h= lists", func(t *testing.T) {
		s := newTestSigner(t, Config{Keys: []KeyConfig{edKey("example.com", "e")}})
		lists := [][]string{
			{"From"},
			{"From", "From", "From", "From"},
			{"Subject", "From", "subject", "SUBJECT", "To", "subject"},
			{"To", "Received", "To", "Received", "Received", "From"},
			{"from", "x-absent", "x-absent", "date"},
		}
		for _, l := range lists {
			for _, mname := range []string{"repeated fields", "WSP around the colon", "mixed case names"} {
				for _, c := range canons {
					if !signDifferential(t, s, "example.com", diffCase{hc: c.hc, bc: c.bc, withExp: true, override: l}, diffMessages[mname]) {
						t.Errorf("%s: not compared", mname)
					}
				}
			}
		}
	})
}

// TestSignChunking: the signature does not depend on how the message
// arrives (state kept across Writes: pending line ends, pending WSP, a CR
// at the end of a chunk).
func TestSignChunking(t *testing.T) {
	s := newTestSigner(t, Config{Keys: []KeyConfig{rsaKey("example.com", "r"), edKey("example.com", "e")}})
	s.now = func() time.Time { return time.Unix(1800000000, 0) }
	for _, canon := range []canonicalization{canonRelaxed, canonSimple} {
		for name, msg := range diffMessages {
			t.Run(canon.String()+"/"+name, func(t *testing.T) {
				s.headerCanon, s.bodyCanon = canon, canon
				want, err := s.Sign(context.Background(), "example.com", strings.NewReader(msg))
				if err != nil {
					t.Fatal(err)
				}
				for _, n := range []int{1, 2, 3, 7, 64, 4095} {
					got, err := s.Sign(context.Background(), "example.com", chunkReader{strings.NewReader(msg), n})
					if err != nil {
						t.Fatal(err)
					}
					if strings.Join(got, "") != strings.Join(want, "") {
						t.Fatalf("%d-byte reads: %q, whole: %q", n, got, want)
					}
				}
			})
		}
	}
}

// TestBodyCanon checks the body canonicalizer against RFC 6376 section
// 3.4.3 and 3.4.4 directly, fed 1, 2, 7 bytes at a time and whole.
func TestBodyCanon(t *testing.T) {
	tests := []struct {
		name, in         string
		simple, relaxed  string
		errLineEndingFor bool
	}{
		{"empty", "", "\r\n", "", false},
		{"one CRLF", "\r\n", "\r\n", "", false},
		{"empty lines only", "\r\n\r\n\r\n", "\r\n", "", false},
		{"WSP line only", " \t \r\n", " \t \r\n", "", false},
		{"no final CRLF", "abc", "abc\r\n", "abc\r\n", false},
		{"trailing empty lines", "a\r\n\r\n\r\n", "a\r\n", "a\r\n", false},
		{"trailing WSP lines", "a\r\n \r\n\t\r\n", "a\r\n \r\n\t\r\n", "a\r\n", false},
		{"WSP runs", "a \t b\t\tc  \r\n", "a \t b\t\tc  \r\n", "a b c\r\n", false},
		{"leading WSP kept as one SP", "  a\r\n\t\tb\r\n", "  a\r\n\t\tb\r\n", " a\r\n b\r\n", false},
		{"empty lines inside kept", "a\r\n\r\n \r\nb\r\n", "a\r\n\r\n \r\nb\r\n", "a\r\n\r\n\r\nb\r\n", false},
		{"RFC 6376 3.4.5 example body", " C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n", " C\r\nD E\r\n", false},
		{"8-bit untouched", "\xc3\xa4\xa0\xff \r\n", "\xc3\xa4\xa0\xff \r\n", "\xc3\xa4\xa0\xff\r\n", false},
		{"bare LF", "a\nb\r\n", "", "", true},
		{"bare CR", "a\rb\r\n", "", "", true},
		{"CR at the end", "a\r\n\r", "", "", true},
		{"LF first", "\na", "", "", true},
	}
	for _, tc := range tests {
		for _, canon := range []canonicalization{canonSimple, canonRelaxed} {
			want := tc.simple
			if canon == canonRelaxed {
				want = tc.relaxed
			}
			for _, n := range []int{1, 2, 7, 0} {
				t.Run(tc.name+"/"+canon.String(), func(t *testing.T) {
					var got recordHash
					var c bodyCanon
					c.reset(&got, canon)
					_, err := io.Copy(&c, chunkReader{iotest.HalfReader(strings.NewReader(tc.in)), n})
					if err == nil {
						_, err = c.sum(nil)
					}
					if tc.errLineEndingFor {
						if !errors.Is(err, ErrLineEnding) {
							t.Fatalf("err = %v, want ErrLineEnding", err)
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					if got.String() != want {
						t.Fatalf("%d-byte writes: canonical body %q, want %q", n, got.String(), want)
					}
				})
			}
		}
	}
}

// recordHash is a hash.Hash that keeps what it is fed.
type recordHash struct{ bytes.Buffer }

func (r *recordHash) Sum(b []byte) []byte { return append(b, r.Bytes()...) }
func (r *recordHash) Size() int           { return 0 }
func (r *recordHash) BlockSize() int      { return 1 }

// TestRelaxedHeader checks header canonicalization (RFC 6376 section
// 3.4.2) and selection (section 5.4.2) directly.
func TestRelaxedHeader(t *testing.T) {
	raw := []byte("Subject : \t A  \r\n\tB \r\nFrom: a@example.com\r\nsubject:C\r\nTo:\r\n\r\n")
	spans := splitFields(nil, raw)
	if len(spans) != 4 {
		t.Fatalf("%d fields, want 4", len(spans))
	}
	tests := []struct {
		name string
		keys []string
		want string
	}{
		{"bottom-up instances", []string{"subject", "Subject"}, "subject:C\r\nsubject:A B\r\n"},
		{"oversigned name adds nothing", []string{"Subject", "Subject", "Subject", "X-Absent"}, "subject:C\r\nsubject:A B\r\n"},
		{"empty value", []string{"to"}, "to:\r\n"},
		{"h= order", []string{"From", "SUBJECT"}, "from:a@example.com\r\nsubject:C\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := append([]fieldSpan(nil), spans...)
			got := appendSelectedHeader(nil, raw, sp, tc.keys, canonRelaxed)
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("simple keeps the bytes", func(t *testing.T) {
		sp := append([]fieldSpan(nil), spans...)
		got := appendSelectedHeader(nil, raw, sp, []string{"subject", "subject"}, canonSimple)
		if want := "subject:C\r\nSubject : \t A  \r\n\tB \r\n"; string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

// FuzzSignDifferential signs fuzzed messages (line ends made CRLF) with
// go-msgauth and with the Signer and requires identical fields. The seed
// corpus is under testdata/fuzz/FuzzSignDifferential; run with
// go test -run XXX -fuzz FuzzSignDifferential ./dkim.
func FuzzSignDifferential(f *testing.F) {
	for _, m := range diffMessages {
		f.Add([]byte(m), false, uint8(0))
	}
	f.Add([]byte("From: a@example.com\r\n\r\n a \t\r\n\r\n"), true, uint8(1))
	s := newTestSigner(f, Config{Keys: []KeyConfig{edKey("example.com", "e")}})
	f.Fuzz(func(t *testing.T, msg []byte, simple bool, chunk uint8) {
		// Every line end CRLF: bare CR and LF are refused before any
		// canonicalization (TestLineEndings).
		msg = bytes.ReplaceAll(msg, []byte("\r"), nil)
		msg = bytes.ReplaceAll(msg, []byte("\n"), []byte("\r\n"))
		dc := diffCase{hc: canonRelaxed, bc: canonRelaxed, withExp: chunk%2 == 0, chunk: int(chunk)}
		if simple {
			dc.hc, dc.bc = canonSimple, canonSimple
		}
		signDifferential(t, s, "example.com", dc, string(msg))
	})
}

// BenchmarkBodyCanon is the body canonicalization and hash of the body of
// benchMessage(4 KB), the part of BenchmarkSign that grows with the size.
func BenchmarkBodyCanon(b *testing.B) {
	msg := benchMessage(4 << 10)
	body := []byte(msg[strings.Index(msg, "\r\n\r\n")+4:])
	for _, canon := range []canonicalization{canonRelaxed, canonSimple} {
		b.Run(canon.String(), func(b *testing.B) {
			h := sha256.New()
			var c bodyCanon
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				c.reset(h, canon)
				if _, err := c.Write(body); err != nil {
					b.Fatal(err)
				}
				if _, err := c.sum(nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
