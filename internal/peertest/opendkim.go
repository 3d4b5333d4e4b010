package peertest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// openDKIMResultRe reads OpenDKIM's Authentication-Results value (printed
// at -vv in test mode): "dkim=pass (…) header.d=example.com header.s=sel …".
var openDKIMResultRe = regexp.MustCompile(`dkim=(\w+)[^;']*?header\.s=([^ ;']+)`)

// OpenDKIMVerify verifies every DKIM-Signature in msg with OpenDKIM
// (opendkim(8) in test mode, -t, with the keys of txt as TestPublicKeys:
// no DNS), a verifier independent of dkimpy and of ours. txt maps record
// names ("sel._domainkey.example.com") to TXT values. results maps each
// signature's selector to OpenDKIM's verdict ("pass", "fail", "neutral",
// "permerror"…); ok is true when there is at least one result and every
// result is "pass". output is OpenDKIM's log.
func OpenDKIMVerify(t testing.TB, msg []byte, txt map[string]string) (ok bool, results map[string]string, output string) {
	t.Helper()
	Require(t, "opendkim")
	// Not t.TempDir: a subtest's name may hold '#', which starts a comment
	// in opendkim.conf and would cut the TestPublicKeys path short.
	dir, err := os.MkdirTemp("", "peertest-opendkim-")
	if err != nil {
		t.Fatalf("peertest: OpenDKIMVerify: %v", err)
	}
	defer os.RemoveAll(dir)
	names := make([]string, 0, len(txt))
	for name := range txt {
		names = append(names, name)
	}
	sort.Strings(names)
	var keys strings.Builder
	for _, name := range names {
		fmt.Fprintf(&keys, "%s %s\n", strings.ToLower(strings.TrimSuffix(name, ".")), txt[name])
	}
	keyFile := filepath.Join(dir, "keys")
	conf := filepath.Join(dir, "opendkim.conf")
	msgFile := filepath.Join(dir, "msg.eml")
	for path, data := range map[string]string{
		keyFile: keys.String(),
		conf:    "Mode v\nSyslog no\nTestPublicKeys " + keyFile + "\n",
		msgFile: string(msg),
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatalf("peertest: OpenDKIMVerify: %v", err)
		}
	}
	p, _ := probe("opendkim")
	out, code := run(t, DefaultTimeout, nil, nil, p, "-vv", "-x", conf, "-t", msgFile)
	if code != 0 {
		t.Errorf("peertest: OpenDKIMVerify: opendkim exit %d:\n%s", code, out)
		return false, nil, out
	}
	results = map[string]string{}
	for _, m := range openDKIMResultRe.FindAllStringSubmatch(out, -1) {
		results[m[2]] = m[1]
	}
	ok = len(results) > 0
	for _, r := range results {
		if r != "pass" {
			ok = false
		}
	}
	return ok, results, out
}
