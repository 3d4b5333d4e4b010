package main

// The corpus: unusual but legal messages (testdata/corpus/*.eml, stored
// with LF line ends and sent with CRLF) and the shapes mailgate refuses.
// Every accepted message goes the real path — Python's smtplib → mailgate
// (DKIM RSA-2048 + Ed25519) → a private Postfix → smtp-sink — and what
// arrives must verify with dkimpy and with OpenDKIM.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/internal/peertest"
)

// corpusScript sends every message of the JSON manifest in argv[1] on its
// own connection to argv[2]:argv[3] and prints one JSON line per message
// with the final reply code (-1: the connection broke without a reply).
const corpusScript = `
import json, smtplib, sys
man = json.load(open(sys.argv[1]))
for m in man:
    data = open(m["path"], "rb").read()
    code, text = -1, ""
    s = None
    try:
        s = smtplib.SMTP(sys.argv[2], int(sys.argv[3]), timeout=30)
        s.ehlo("corpus.test")
        refused = s.sendmail(m["from"], m["rcpts"], data, mail_options=m["options"])
        code, text = (250, "ok") if not refused else (-2, repr(refused))
    except smtplib.SMTPResponseException as e:
        code, text = e.smtp_code, e.smtp_error.decode("utf-8", "replace")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = -3, repr(e.recipients)
    except Exception as e:
        code, text = -1, repr(e)
    try:
        s.quit()
    except Exception:
        pass
    print(json.dumps({"name": m["name"], "code": code, "text": text}))
`

type corpusItem struct {
	Name    string   `json:"name"`
	Path    string   `json:"path"`
	From    string   `json:"from"`
	Rcpts   []string `json:"rcpts"`
	Options []string `json:"options"`
	want    int
	data    []byte // as sent (CRLF)
}

// refusedShapes are the messages mailgate refuses, with the reply code;
// docs/security.md ("Unusual messages: relayed, or refused and why")
// explains each.
var refusedShapes = []struct {
	name string
	data string
	code int
}{
	{"no_from", "To: bob@example.net\r\nSubject: no from\r\n\r\nbody\r\n", 550},
	{"two_from_addresses", "From: alice@example.com, mallory@example.com\r\nSubject: two\r\n\r\nbody\r\n", 550},
	{"two_from_fields", "From: alice@example.com\r\nFrom: mallory@example.com\r\nSubject: two\r\n\r\nbody\r\n", 550},
	{"bare_lf_in_body", "From: alice@example.com\r\nSubject: lf\r\n\r\none\ntwo\r\n", 550},
	{"bare_cr_in_body", "From: alice@example.com\r\nSubject: cr\r\n\r\none\rtwo\r\n", 550},
	{"bare_lf_in_header", "From: alice@example.com\nSubject: lf\r\n\r\nbody\r\n", 550},
	{"nul_in_body", "From: alice@example.com\r\nSubject: nul\r\n\r\none\x00two\r\n", 550},
	{"line_over_998", "From: alice@example.com\r\nSubject: long\r\n\r\n" + strings.Repeat("x", 999) + "\r\n", 500},
	{"header_over_100KiB", "From: alice@example.com\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("z", 90)+"\r\n", 1100) + "\r\nbody\r\n", 552},
	{"whitespace_before_colon", "From: alice@example.com\r\nSubject : obsolete syntax\r\n\r\nbody\r\n", 550},
	{"continuation_before_first_field", " folded\r\nFrom: alice@example.com\r\n\r\nbody\r\n", 550},
	{"header_line_without_colon", "From: alice@example.com\r\nthis is not a header field\r\n\r\nbody\r\n", 550},
}

func crlf(b []byte) []byte {
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// TestCorpusRelayedSignedAndVerified relays every corpus message through
// mailgate and a private Postfix into smtp-sink, then verifies each
// arrival with dkimpy and OpenDKIM and checks its body arrived unchanged;
// the refused shapes get their code and never arrive.
func TestCorpusRelayedSignedAndVerified(t *testing.T) {
	peertest.Require(t, "smtp-sink", "postfix", "python3-dkim", "opendkim")
	files, err := filepath.Glob("testdata/corpus/*.eml")
	if err != nil || len(files) < 10 {
		t.Fatalf("corpus: %v %v", files, err)
	}
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Relay: sink.Addr()})
	m := startMailgate(t, upstreamBlock(pf.Addr())+`
dkim {
  key "example.com" "rsa1" { file = "rsa1.pem" }
  key "example.com" "ed1"  { file = "ed1.pem" }
}
`)
	dir := t.TempDir()
	var items []*corpusItem
	byID := map[string]*corpusItem{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		it := &corpusItem{Name: strings.TrimSuffix(filepath.Base(f), ".eml"), From: e2eUser,
			Rcpts: []string{"bob@example.net"}, Options: []string{}, want: 250, data: crlf(raw)}
		msg, err := mail.ReadMessage(bytes.NewReader(it.data))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		id := msg.Header.Get("Message-ID")
		if id == "" || byID[id] != nil {
			t.Fatalf("%s: every corpus message needs its own Message-ID (got %q)", f, id)
		}
		byID[id] = it
		if to, err := msg.Header.AddressList("To"); err == nil && len(to) > 1 {
			it.Rcpts = it.Rcpts[:0]
			for _, a := range to {
				it.Rcpts = append(it.Rcpts, a.Address)
			}
		}
		if has8bit(it.data) {
			it.Options = append(it.Options, "BODY=8BITMIME")
		}
		items = append(items, it)
	}
	accepted := len(items)
	for _, r := range refusedShapes {
		items = append(items, &corpusItem{Name: "refused/" + r.name, From: e2eUser,
			Rcpts: []string{"bob@example.net"}, Options: []string{}, want: r.code, data: []byte(r.data)})
	}
	for i, it := range items {
		it.Path = filepath.Join(dir, fmt.Sprintf("%02d.eml", i))
		if err := os.WriteFile(it.Path, it.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	man, _ := json.Marshal(items)
	manifest := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(manifest, man, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(m.relay)
	out, code := peertest.PythonSMTP(t, corpusScript, manifest, host, port)
	if code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	got := map[string]struct {
		Code int
		Text string
	}{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r struct {
			Name string
			Code int
			Text string
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("python output %q: %v\n%s", l, err, out)
		}
		got[r.Name] = struct {
			Code int
			Text string
		}{r.Code, r.Text}
	}
	for _, it := range items {
		if r := got[it.Name]; r.Code != it.want {
			t.Errorf("%s: reply %d %s, want %d", it.Name, r.Code, r.Text, it.want)
		}
	}

	if n := sink.WaitCount(t, accepted, 60*time.Second); n < accepted {
		t.Fatalf("sink has %d messages, want %d", n, accepted)
	}
	pf.WaitQueueEmpty(t, 30*time.Second)
	// Postfix delivers at most 50 recipients per copy
	// (default_destination_recipient_limit): group the copies by Message-ID.
	arrivals := map[*corpusItem][]peertest.Message{}
	for _, sm := range sink.Messages() {
		arrived, err := mail.ReadMessage(bytes.NewReader(sm.Data))
		if err != nil {
			t.Errorf("unparsable arrival: %v\n%s", err, sm.Data)
			continue
		}
		it := byID[arrived.Header.Get("Message-ID")]
		if it == nil {
			t.Errorf("unexpected arrival (a refused shape relayed?):\n%s", sm.Data)
			continue
		}
		arrivals[it] = append(arrivals[it], sm)
	}
	for _, it := range items[:accepted] {
		t.Run(it.Name, func(t *testing.T) {
			t.Parallel() // two verifier processes per copy: use both cores
			copies := arrivals[it]
			if len(copies) == 0 {
				t.Fatal("never arrived")
			}
			rcpts := 0
			for _, c := range copies {
				rcpts += len(c.Recipients)
			}
			if rcpts != len(it.Rcpts) {
				t.Errorf("%d recipients arrived, want %d", rcpts, len(it.Rcpts))
			}
			for _, c := range copies {
				if n := bytes.Count(c.Data, []byte("DKIM-Signature:")); n != 2 {
					t.Fatalf("want 2 DKIM-Signature fields, got %d:\n%s", n, c.Data)
				}
				if ok, report := peertest.DKIMVerify(t, c.Data, m.dkim); !ok {
					t.Errorf("dkimpy:\n%s", report)
				}
				if ok, res, report := peertest.OpenDKIMVerify(t, c.Data, m.dkim); !ok || len(res) != 2 {
					t.Errorf("OpenDKIM: %v\n%s", res, report)
				}
				if want, got := bodyOf(it.data), bodyOf(c.Data); !bytes.Equal(want, got) {
					t.Errorf("body changed on the way:\nsent    %q\narrived %q", want, got)
				}
			}
		})
	}
}

// bodyOf returns the body after the first empty line, with trailing line
// ends dropped (a client ends the last line before the final dot).
func bodyOf(msg []byte) []byte {
	_, body, ok := bytes.Cut(msg, []byte("\r\n\r\n"))
	if !ok {
		return nil
	}
	return bytes.TrimRight(body, "\r\n")
}
