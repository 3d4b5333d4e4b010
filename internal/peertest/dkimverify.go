package peertest

import (
	"encoding/json"
	"strings"
	"testing"
)

// dkimVerifyScript verifies every DKIM-Signature of the message on stdin
// with dkimpy, resolving TXT records only from the JSON map in argv[1].
// Exit 0: at least one signature and all pass; 1: one fails; 2: none.
const dkimVerifyScript = `
import io, json, logging, sys
import dkim
from dkim.util import parse_tag_value

records = json.loads(sys.argv[1])

def dnsfunc(name, timeout=5):
    key = name.decode("ascii", "replace").rstrip(".").lower()
    value = records.get(key)
    print("dns %s -> %s" % (key, "found" if value is not None else "NXDOMAIN"))
    return None if value is None else value.encode()

msg = sys.stdin.buffer.read()
headers, _ = dkim.rfc822_parse(msg)
sigs = [v for (k, v) in headers if k.lower() == b"dkim-signature"]
if not sigs:
    print("no DKIM-Signature header")
    sys.exit(2)
failed = 0
for i, value in enumerate(sigs):
    try:
        tags = parse_tag_value(value)
        who = "d=%s s=%s a=%s" % (tags.get(b"d", b"?").decode(), tags.get(b"s", b"?").decode(), tags.get(b"a", b"?").decode())
    except Exception as e:
        who = "unparsable (%s)" % e
    buf = io.StringIO()
    log = logging.getLogger("dkim%d" % i)
    log.addHandler(logging.StreamHandler(buf))
    log.setLevel(logging.DEBUG)
    try:
        ok = dkim.DKIM(msg, logger=log).verify(idx=i, dnsfunc=dnsfunc)
    except Exception as e:
        ok = False
        buf.write("exception: %r\n" % e)
    print("signature %d %s: %s" % (i, who, "pass" if ok else "FAIL"))
    if not ok:
        failed += 1
        for line in buf.getvalue().splitlines():
            print("  " + line)
sys.exit(1 if failed else 0)
`

// DKIMVerify verifies every DKIM-Signature in msg with dkimpy (the Debian
// python3-dkim verifier, an implementation independent of ours), one
// signature at a time by index. DNS is never queried: txt maps record names
// ("sel._domainkey.example.com", case-insensitive, trailing dot optional) to
// TXT values ("v=DKIM1; k=rsa; p=..."); a name not in txt does not exist.
// ok is true only when msg has at least one signature and all of them
// verify. output has one line per signature ("signature 0 d=... s=... a=...:
// pass") and dkimpy's reason for each failure.
func DKIMVerify(t testing.TB, msg []byte, txt map[string]string) (ok bool, output string) {
	t.Helper()
	Require(t, "python3-dkim")
	norm := make(map[string]string, len(txt))
	for name, value := range txt {
		norm[strings.ToLower(strings.TrimSuffix(name, "."))] = value
	}
	records, err := json.Marshal(norm)
	if err != nil {
		t.Fatalf("peertest: DKIMVerify: %v", err)
	}
	out, code := run(t, DefaultTimeout, msg, nil, pythonPath, "-c", dkimVerifyScript, string(records))
	switch code {
	case 0:
		return true, out
	case 1, 2:
		return false, out
	default:
		t.Errorf("peertest: DKIMVerify: python exit %d:\n%s", code, out)
		return false, out
	}
}
