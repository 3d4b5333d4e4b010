package main

import (
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/mailgate/mailgate/dkim"
	"github.com/mailgate/mailgate/policy"
	"github.com/mailgate/mailgate/proxy"
	"github.com/mailgate/mailgate/proxy/auth"
)

// demoPolicy is the embedded demo policy: the sender, in the envelope and
// in From:, must be the login. demo/policy_test.rego holds its tests.
//
//go:embed demo/policy.rego
var demoPolicy []byte

// The demo's DKIM selectors: one RSA-2048 key (what every receiver
// verifies) and one Ed25519 key (RFC 8463), both made at start.
const (
	demoSelectorRSA     = "demo-rsa"
	demoSelectorEd25519 = "demo-ed25519"
)

// demo is the embedded default's generated state: a self-signed
// certificate, one user with a random password, DKIM keys for the user's
// domain and the demo policy. Keys and policy live in a private temporary
// directory (0700, files 0600) that is removed when mailgate stops.
type demo struct {
	user, password string
	domain         string
	certs          *proxy.CertStore
	dir            string
	dkim           dkim.Config
	policy         policy.Config
	records        []dkim.Record
	outbox         string
	quotas         []string // "per-login: messages 100/1h", set by wire

	mu  sync.Mutex
	out io.Writer // where saved paths are printed; set by serve
}

func newDemo(cfg *config, b *demoBlock) (_ *demo, err error) {
	cert, err := proxy.SelfSigned(cfg.file.Hostname)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	user := b.User
	if user == "" {
		user = "demo@example.com"
	}
	at := strings.LastIndexByte(user, '@')
	if at < 1 || at == len(user)-1 {
		return nil, fmt.Errorf("demo: user %q is not an address", user)
	}
	var pw [12]byte
	if _, err := rand.Read(pw[:]); err != nil {
		return nil, err
	}
	d := &demo{
		user:     user,
		password: base64.RawURLEncoding.EncodeToString(pw[:]),
		domain:   strings.ToLower(user[at+1:]),
		certs:    proxy.NewStaticCertStore(cert),
		out:      io.Discard,
	}
	if d.dir, err = os.MkdirTemp("", "mailgate-demo-"); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	for _, k := range []struct{ sel, alg string }{
		{demoSelectorRSA, dkim.AlgorithmRSA},
		{demoSelectorEd25519, dkim.AlgorithmEd25519},
	} {
		key, err := dkim.GenerateKey(k.alg, 2048)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		file := filepath.Join(d.dir, k.sel+".pem")
		if err := dkim.WriteKeyFile(file, key); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		rec, err := dkim.NewRecord(d.domain, k.sel, key.Public())
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		d.records = append(d.records, rec)
		d.dkim.Keys = append(d.dkim.Keys, dkim.KeyConfig{Domain: d.domain, Selector: k.sel, File: file})
	}
	if err := os.WriteFile(d.policyFile(), demoPolicy, 0o600); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	d.policy = policy.Config{Rego: []policy.RegoConfig{{Name: "demo", Path: d.policyFile()}}}
	return d, nil
}

func (d *demo) policyFile() string { return filepath.Join(d.dir, "policy.rego") }

func (d *demo) close() { os.RemoveAll(d.dir) }

// authenticator writes the demo user's hash to a private users file and
// loads it like any other.
func (d *demo) authenticator(logger *slog.Logger) (*auth.Authenticator, error) {
	hash, err := auth.Hash(d.password)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(d.dir, "users")
	if err := os.WriteFile(path, []byte(d.user+":"+hash+"\n"), 0o600); err != nil {
		return nil, err
	}
	return auth.New(auth.Config{UsersFile: path}, auth.WithLogger(logger))
}

// setOutput says where saved messages are announced.
func (d *demo) setOutput(w io.Writer) {
	d.mu.Lock()
	d.out = w
	d.mu.Unlock()
}

// saved announces a message the outbox wrote.
func (d *demo) saved(path string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "delivered: %s\n", path)
}

// announce prints what the demo offers and two commands to paste: one
// delivered (relay, policy, signing), one refused by the policy. The demo
// test runs exactly these commands.
func (d *demo) announce(w io.Writer, addrs map[string]string) {
	names := make([]string, 0, len(addrs))
	for n := range addrs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, `
mailgate demo
  user:     %s
  password: %s
  policy:   %s
            (Rego: MAIL FROM and every From: address must be the login)
  DKIM:     every accepted message is signed for %s with an RSA-2048 and an
            Ed25519 key made at start; the DNS TXT records to publish them:
`, d.user, d.password, d.policyFile(), d.domain)
	for _, r := range d.records {
		fmt.Fprintf(&b, "  %s\n", r.ZoneLine())
	}
	for i, q := range d.quotas {
		label := "  quota:    "
		if i > 0 {
			label = "            "
		}
		fmt.Fprintf(&b, "%s%s\n", label, q)
	}
	fmt.Fprintf(&b, `  outbox:   accepted messages are written to the Maildir %s
            instead of being relayed; each file is printed as "delivered: PATH"
`, d.outbox)
	for _, n := range names {
		a := addrs[n]
		fmt.Fprintf(&b, `
Listening on %[1]s (listener %[2]q, STARTTLS with a self-signed certificate).

1. Delivered: relayed into the outbox, with two DKIM-Signature header fields:

  printf 'From: %[3]s\r\nTo: you@example.net\r\nSubject: hello from mailgate\r\n\r\nIt works.\r\n' |
    curl -sS --url smtp://%[1]s --ssl-reqd --insecure --user '%[3]s:%[4]s' \
      --mail-from %[3]s --mail-rcpt you@example.net --upload-file -

2. Refused: a forged From: header; the policy answers 550 5.7.1 and nothing is written:

  swaks --server %[1]s --tls --auth PLAIN --auth-user %[3]s --auth-password '%[4]s' \
    --from %[3]s --to you@example.net --header 'From: ceo@example.org'

`, a, n, d.user, d.password)
	}
	io.WriteString(w, b.String())
}
