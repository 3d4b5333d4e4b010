package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/compile"
	"github.com/open-policy-agent/opa/v1/keys"
)

// BuildOptions says what BuildBundle puts in a bundle.
type BuildOptions struct {
	// Dir is the policy directory: its .rego modules (except *_test.rego)
	// and data.json / data.yaml files, hidden directories skipped — the
	// same files a rego engine with path = Dir loads.
	Dir string
	// Revision is the manifest revision, logged with every decision.
	Revision string
	// SigningKeyFile, when set, signs the bundle: a PEM private key (RSA
	// for RS*/PS*, EC for ES*) or, for HS*, the shared secret.
	SigningKeyFile string
	// Algorithm is the JWS algorithm, default RS256 (see BundleVerification).
	Algorithm string
	// KeyID is the kid of the signature, default "mailgate". mailgate's
	// verification ignores it (one configured key); OPA uses it.
	KeyID string
}

// BuildBundle compiles the modules of o.Dir with OPA's compile package and
// writes a bundle (.tar.gz, signed when o.SigningKeyFile is set) to w. The
// modules must compile: a bundle that cannot be activated is never written.
func BuildBundle(ctx context.Context, o BuildOptions, w io.Writer) error {
	fi, err := os.Stat(o.Dir)
	if err != nil {
		return fmt.Errorf("policy: bundle: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("policy: bundle: %s is not a directory", o.Dir)
	}
	if len(regoFiles(o.Dir)) == 0 {
		return fmt.Errorf("policy: bundle: no .rego modules under %s", o.Dir)
	}
	c := compile.New().
		WithFS(os.DirFS(o.Dir)).
		WithPaths(".").
		WithFilter(regoFilter(false)).
		WithRegoVersion(ast.RegoV1).
		WithCapabilities(capabilities(true)).
		WithRevision(o.Revision).
		WithOutput(w)
	if o.SigningKeyFile != "" {
		alg := o.Algorithm
		if alg == "" {
			alg = "RS256"
		}
		if !keys.IsSupportedAlgorithm(alg) {
			return fmt.Errorf("policy: bundle: signing algorithm %q is not supported", alg)
		}
		key, err := os.ReadFile(o.SigningKeyFile)
		if err != nil {
			return fmt.Errorf("policy: bundle: signing key: %w", err)
		}
		if len(key) == 0 {
			return errors.New("policy: bundle: signing key file is empty")
		}
		kid := o.KeyID
		if kid == "" {
			kid = verificationKeyID
		}
		c = c.WithBundleSigningConfig(bundle.NewSigningConfig(string(key), alg, "")).
			WithBundleVerificationKeyID(kid)
	}
	if err := c.Build(ctx); err != nil {
		return fmt.Errorf("policy: bundle: %w", err)
	}
	return nil
}
