package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/mailgate/mailgate/policy"
)

const bundleUsage = `usage: mailgate policy bundle -dir DIR -out FILE [-revision R] [-signing-key KEY [-algorithm ALG] [-key-id ID]]
  Build an OPA bundle (.tar.gz) from the policies in DIR (.rego except
  *_test.rego, data.json, data.yaml), for a rego engine's bundle block.
  With -signing-key (a PEM private key; for HS* the shared secret) the
  bundle is signed (.signatures.json, as "opa sign" writes it).
  Algorithms: RS256 (default), RS384, RS512, PS256, PS384, PS512, ES256,
  ES384, ES512, HS256, HS384, HS512.
`

// policyBundle runs "mailgate policy bundle". The output file is written
// next to FILE and renamed, so a bundle server serving FILE never serves a
// half-written bundle.
func policyBundle(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailgate policy bundle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, bundleUsage) }
	var o policy.BuildOptions
	fs.StringVar(&o.Dir, "dir", "", "policy directory (required)")
	out := fs.String("out", "", "bundle file to write (required)")
	fs.StringVar(&o.Revision, "revision", "", "bundle revision (manifest), logged with every decision")
	fs.StringVar(&o.SigningKeyFile, "signing-key", "", "PEM private key file to sign the bundle with")
	fs.StringVar(&o.Algorithm, "algorithm", "RS256", "signing algorithm")
	fs.StringVar(&o.KeyID, "key-id", "mailgate", "key id (kid) written in the signature")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.Dir == "" || *out == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".bundle-*")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer os.Remove(tmp.Name())
	if err := policy.BuildBundle(ctx, o, tmp); err != nil {
		tmp.Close()
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := tmp.Close(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	signed := "unsigned"
	if o.SigningKeyFile != "" {
		signed = "signed " + o.Algorithm
	}
	fmt.Fprintf(stdout, "wrote %s (%s, revision %q)\n", *out, signed, o.Revision)
	return 0
}

// probeBundles polls every bundle server now and says which revision each
// bundle engine runs; false when one has no policy (see policy.Ready).
func probeBundles(p *policy.Policy, out io.Writer) bool {
	pollErr := p.Reload()
	revs := p.Revisions()
	ids := make([]string, 0, len(revs))
	for id := range revs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if revs[id] == "" {
			fmt.Fprintf(out, "policy %s: NOT ready: no bundle yet\n", id)
		} else {
			fmt.Fprintf(out, "policy %s: bundle revision %q\n", id, revs[id])
		}
	}
	if pollErr != nil {
		fmt.Fprintf(out, "policy bundle poll: %v\n", pollErr)
	}
	return p.Ready() == nil && pollErr == nil
}
