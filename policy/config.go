package policy

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Mode says whether an engine's verdicts are enforced.
type Mode string

// The modes. The empty string means ModeEnforce.
const (
	// ModeEnforce applies the engine's rejects and defers.
	ModeEnforce Mode = "enforce"
	// ModeDryRun evaluates and logs what would have happened, enforcing
	// nothing: its rejects and defers become warnings.
	ModeDryRun Mode = "dry-run"
)

// OnError says what an engine failure (compile-time success, evaluation
// error at run time) turns into.
type OnError string

// The error policies. The empty string means OnErrorDefer.
const (
	// OnErrorDefer fails closed: the stage is deferred with 451 4.3.0 and
	// Evaluate returns an error wrapping ErrEngine.
	OnErrorDefer OnError = "defer"
	// OnErrorAccept logs the failure and continues with the next engine as
	// if this one had accepted.
	OnErrorAccept OnError = "accept"
)

// Config is the policy block of the main configuration file, decoded by the
// caller with gohcl:
//
//	policy {
//	  rego  { name = "org"   path = "policies/"          mode = "enforce" on_error = "defer" package = "mailgate" allow_io = false }
//	  rules { name = "local" path = "policies/rules.hcl" mode = "dry-run" on_error = "defer" }
//	  decision_log = "/var/log/mailgate/decisions.jsonl"
//	  log_headers  = true
//	  shadow {
//	    rego  { name = "org" path = "candidate/" }
//	  }
//	}
//
// Engines run in configuration order. gohcl decodes each block type into
// its own slice; the blocks' DeclRange (filled by gohcl) restores their
// interleaving in the file. A Config built in Go (zero DeclRange) runs its
// rego blocks first, then its rules blocks.
type Config struct {
	Rego  []RegoConfig  `hcl:"rego,block"`
	Rules []RulesConfig `hcl:"rules,block"`
	// DecisionLog is an optional JSON-lines file receiving one record per
	// decision. Relative paths resolve against the base directory.
	DecisionLog string `hcl:"decision_log,optional"`
	// LogHeaders says whether decision log records of stage data carry
	// the header values of the message. Default true; false keeps header
	// names and counts but blanks every value (privacy), and marks the
	// record "headers_omitted".
	LogHeaders *bool `hcl:"log_headers,optional"`
	// Shadow is an optional candidate chain evaluated beside this one on
	// the same input and never enforced; see ShadowConfig.
	Shadow *ShadowConfig `hcl:"shadow,block"`
	// WatchInterval is how often Watch polls policy files for changes, as a
	// Go duration ("5s"). Default 5s.
	WatchInterval string `hcl:"watch_interval,optional"`
}

// RegoConfig configures one Rego engine.
type RegoConfig struct {
	// Name identifies the engine in decisions and logs ("rego:NAME").
	Name string `hcl:"name"`
	// Path is a directory of .rego modules and data.json / data.yaml
	// files, or a single .rego file. Files ending in _test.rego are
	// ignored at run time (they are run by the policy test tool).
	// Exactly one of Path and Bundle is set.
	Path string `hcl:"path,optional"`
	// Bundle fetches the modules and data from an OPA bundle server
	// instead of Path.
	Bundle *BundleConfig `hcl:"bundle,block"`
	// Mode is "enforce" (default) or "dry-run".
	Mode Mode `hcl:"mode,optional"`
	// OnError is "defer" (default, fail closed) or "accept".
	OnError OnError `hcl:"on_error,optional"`
	// Package is the Rego package holding deny, defer, warn and actions.
	// Default "mailgate".
	Package string `hcl:"package,optional"`
	// AllowIO enables I/O built-ins (http.send, net.lookup_ip_addr,
	// opa.runtime). Default false: a module using them fails to load.
	AllowIO bool `hcl:"allow_io,optional"`
	// DeclRange is where the block starts in the configuration file.
	DeclRange hcl.Range `hcl:",def_range"`
}

// RulesConfig configures one HCL rules engine.
type RulesConfig struct {
	// Name identifies the engine in decisions and logs ("rules:NAME").
	Name string `hcl:"name"`
	// Path is one rules file or a directory whose *.hcl files (except
	// *.test.hcl) are read in lexical order.
	Path string `hcl:"path"`
	// Mode is "enforce" (default) or "dry-run".
	Mode Mode `hcl:"mode,optional"`
	// OnError is "defer" (default, fail closed) or "accept".
	OnError OnError `hcl:"on_error,optional"`
	// DeclRange is where the block starts in the configuration file.
	DeclRange hcl.Range `hcl:",def_range"`
}

// DefaultWatchInterval is the polling interval of Watch when the
// configuration does not set one.
const DefaultWatchInterval = 5 * time.Second

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	packageRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)
)

// engineSpec is the normalized, validated form of one rego or rules block.
type engineSpec struct {
	kind    string // "rego" or "rules"
	name    string
	path    string // absolute or baseDir-joined
	mode    Mode
	onError OnError
	pkg     string
	allowIO bool
	bundle  *bundleSpec // nil: path
	decl    hcl.Range
}

func (s engineSpec) id() string { return s.kind + ":" + s.name }

func resolve(baseDir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(baseDir, p)
}

func checkModes(id string, m Mode, e OnError) (Mode, OnError, error) {
	switch m {
	case "":
		m = ModeEnforce
	case ModeEnforce, ModeDryRun:
	default:
		return "", "", fmt.Errorf("policy: %s: mode %q: want %q or %q", id, m, ModeEnforce, ModeDryRun)
	}
	switch e {
	case "":
		e = OnErrorDefer
	case OnErrorDefer, OnErrorAccept:
	default:
		return "", "", fmt.Errorf("policy: %s: on_error %q: want %q or %q", id, e, OnErrorDefer, OnErrorAccept)
	}
	return m, e, nil
}

// specs validates cfg and returns the engines in evaluation order.
func (cfg Config) specs(baseDir string) ([]engineSpec, error) {
	var all []engineSpec
	seen := map[string]bool{}
	add := func(s engineSpec) error {
		if !nameRe.MatchString(s.name) {
			return fmt.Errorf("policy: %s block: invalid name %q", s.kind, s.name)
		}
		if seen[s.name] {
			return fmt.Errorf("policy: duplicate engine name %q", s.name)
		}
		seen[s.name] = true
		if s.path == "" && s.bundle == nil {
			return fmt.Errorf("policy: %s: path is required", s.id())
		}
		var err error
		if s.mode, s.onError, err = checkModes(s.id(), s.mode, s.onError); err != nil {
			return err
		}
		all = append(all, s)
		return nil
	}
	for _, r := range cfg.Rego {
		pkg := r.Package
		if pkg == "" {
			pkg = "mailgate"
		}
		if !packageRe.MatchString(pkg) {
			return nil, fmt.Errorf("policy: rego:%s: invalid package %q", r.Name, pkg)
		}
		s := engineSpec{kind: "rego", name: r.Name, path: resolve(baseDir, r.Path), mode: r.Mode, onError: r.OnError, pkg: pkg, allowIO: r.AllowIO, decl: r.DeclRange}
		if r.Bundle != nil {
			if r.Path != "" {
				return nil, fmt.Errorf("policy: rego:%s: set path or a bundle block, not both", r.Name)
			}
			bs, err := r.Bundle.spec("rego:"+r.Name, baseDir)
			if err != nil {
				return nil, err
			}
			s.bundle = bs
		}
		if err := add(s); err != nil {
			return nil, err
		}
	}
	for _, r := range cfg.Rules {
		if err := add(engineSpec{kind: "rules", name: r.Name, path: resolve(baseDir, r.Path), mode: r.Mode, onError: r.OnError, decl: r.DeclRange}); err != nil {
			return nil, err
		}
	}
	// Restore file order when every block came from the same file.
	sameFile := len(all) > 0
	for _, s := range all {
		if s.decl.Filename == "" || s.decl.Filename != all[0].decl.Filename {
			sameFile = false
		}
	}
	if sameFile {
		sort.SliceStable(all, func(i, j int) bool { return all[i].decl.Start.Byte < all[j].decl.Start.Byte })
	}
	return all, nil
}

func (cfg Config) watchInterval() (time.Duration, error) {
	if cfg.WatchInterval == "" {
		return DefaultWatchInterval, nil
	}
	d, err := time.ParseDuration(cfg.WatchInterval)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("policy: watch_interval %q: want a positive duration like \"5s\"", cfg.WatchInterval)
	}
	return d, nil
}
