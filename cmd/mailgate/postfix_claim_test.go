package main

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// TestPostfixUpstreamDoesNotStopBareLFSmuggling backs docs/security.md's "Debian's
// Postfix 3.7 … so mailgate does not rely on the upstream": Debian 12's
// Postfix has smtpd_forbid_bare_newline off by default, and even switched
// on it exempts $mynetworks — where a proxy like mailgate connects from. A
// forged "\n.\n" end of data with a second transaction behind it, sent
// straight to such a Postfix from 127.0.0.1, yields two messages.
// (TestE2EClients/bare_lf_smuggling_refused: through mailgate, none.)
func TestPostfixUpstreamDoesNotStopBareLFSmuggling(t *testing.T) {
	peertest.Require(t, "postfix", "smtp-sink")
	out, err := exec.Command(peertest.Path(t, "postconf"), "-d", "smtpd_forbid_bare_newline", "smtpd_forbid_bare_newline_exclusions").CombinedOutput()
	if err != nil {
		t.Fatalf("postconf -d: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "smtpd_forbid_bare_newline = no") ||
		!strings.Contains(string(out), "smtpd_forbid_bare_newline_exclusions = $mynetworks") {
		t.Logf("this Postfix's defaults differ from Debian 12's; docs/security.md may need updating:\n%s", out)
	}
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Relay: sink.Addr(),
		MainCF: []string{"smtpd_forbid_bare_newline = yes"}})
	host, port, _ := net.SplitHostPort(pf.Addr())
	script := fmt.Sprintf(`
import socket, sys
s = socket.create_connection((%q, %s), timeout=20)
f = s.makefile("rb")
def reply():
    while True:
        l = f.readline()
        if not l or l[3:4] != b"-":
            return l
reply()
for c in [b"EHLO py.test", b"MAIL FROM:<app@example.com>", b"RCPT TO:<bob@example.net>", b"DATA"]:
    s.sendall(c + b"\r\n"); reply()
s.sendall(b"From: app@example.com\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n")
while True:
    l = reply()
    if not l:
        break
    sys.stdout.write(l.decode())
`, host, port)
	if out, code := peertest.PythonSMTP(t, script); code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	if n := sink.WaitCount(t, 2, 30*time.Second); n != 2 {
		t.Fatalf("Postfix relayed %d messages; docs/security.md says it lets the smuggled second one through", n)
	}
}
