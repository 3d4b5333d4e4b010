package dkim

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// The test environment of package dkim: committed keys and messages under
// testdata, a Signer built from a Config, the TXT records for its keys,
// verification with go-msgauth and DKIM-Signature tag helpers. The
// independent verifiers (dkimpy, OpenDKIM) come from internal/peertest.

// keyPath returns the path of a committed test key.
func keyPath(name string) string {
	return filepath.Join("testdata", "keys", name)
}

// readMessage loads testdata/messages/name. The files are stored with LF
// line endings (editors and git keep them intact); the proxy hands Sign
// CRLF, so they are converted here.
func readMessage(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "messages", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\n", "\r\n")
}

// quietLogger discards everything below Error.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func newTestSigner(t testing.TB, cfg Config, opts ...Option) *Signer {
	t.Helper()
	s, err := New(cfg, append([]Option{WithLogger(quietLogger())}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// recordsFor returns the DNS TXT records (name without trailing dot →
// value) publishing every key of cfg.
func recordsFor(t testing.TB, cfg Config) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, k := range cfg.Keys {
		signer, err := LoadKeyFile(k.File)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := NewRecord(k.Domain, k.Selector, signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		m[strings.TrimSuffix(rec.Name, ".")] = rec.Value
	}
	return m
}

// verifyGo verifies every signature of signed with go-msgauth, DNS served
// from records. It returns the verifications.
func verifyGo(t testing.TB, signed string, records map[string]string) []*msgauth.Verification {
	t.Helper()
	if !strings.Contains(signed, "\r\n\r\n") {
		// go-msgauth's verifier needs the empty line even when there is
		// no body; the signature is the same either way.
		signed += "\r\n"
	}
	vs, err := msgauth.VerifyWithOptions(strings.NewReader(signed), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if v, ok := records[strings.TrimSuffix(name, ".")]; ok {
				return []string{v}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		},
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return vs
}

// sign signs msg and returns the signed message (signatures prepended).
func sign(t testing.TB, s *Signer, domain, msg string) (string, []string) {
	t.Helper()
	sigs, err := s.Sign(context.Background(), domain, strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return strings.Join(sigs, "") + msg, sigs
}

var tagRe = regexp.MustCompile(`(?:^|;)\s*([a-z]+)=([^;]*)`)

// tags parses a DKIM-Signature field into its tags, whitespace removed.
func tags(t testing.TB, sig string) map[string]string {
	t.Helper()
	_, v, ok := strings.Cut(sig, ":")
	if !ok {
		t.Fatalf("not a header field: %q", sig)
	}
	m := map[string]string{}
	for _, mm := range tagRe.FindAllStringSubmatch(v, -1) {
		m[mm[1]] = strings.Join(strings.Fields(mm[2]), "")
	}
	return m
}

func unixTag(t testing.TB, m map[string]string, tag string) time.Time {
	t.Helper()
	n, err := strconv.ParseInt(m[tag], 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", tag, m[tag], err)
	}
	return time.Unix(n, 0)
}

// mask replaces the values that depend on the wall clock (t=, x=) and the
// signature (b=, which covers t=) so a golden file can hold the rest.
func mask(sig string) string {
	sig = regexp.MustCompile(`\bt=\d+;`).ReplaceAllString(sig, "t=<T>;")
	sig = regexp.MustCompile(`\bx=\d+;`).ReplaceAllString(sig, "x=<X>;")
	if i := strings.Index(sig, " b="); i >= 0 {
		sig = sig[:i] + " b=<B>\r\n"
	}
	return sig
}
