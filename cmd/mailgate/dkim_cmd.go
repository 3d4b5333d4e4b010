package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mailgate/mailgate/dkim"
)

// Exit codes of the dkim subcommands.
const (
	dkimExitOK      = 0 // done; for check: every key published and matching
	dkimExitProblem = 1 // something failed or check found a problem
	dkimExitUsage   = 2 // bad command line
)

const dkimUsage = `usage: mailgate dkim <command> [flags]

commands:
  keygen  -domain D -selector S [-algorithm rsa|ed25519] [-bits 2048] -out FILE
          write a new private key (PKCS#8 PEM, mode 0600, never overwrites)
          and print the DNS TXT record to publish
  record  -key FILE [-domain D -selector S]
          print the DNS TXT record for an existing key
  check   -config FILE [-timeout 30s]
          compare every configured key with the record published in DNS
          (exit 1 if any is missing, different or unreadable)

Run "mailgate dkim <command> -h" for the flags of a command.
`

// dkimMain runs "mailgate dkim ..."; args are the arguments after "dkim".
// loadDKIMConfig loads the dkim block of a mailgate config file (the
// lead's config loader). It returns the process exit code: 0 ok, 1 a
// problem found, 2 usage.
func dkimMain(args []string, stdout, stderr io.Writer, loadDKIMConfig func(path string) (dkim.Config, error)) int {
	return runDKIM(args, stdout, stderr, loadDKIMConfig, net.DefaultResolver)
}

// runDKIM is dkimMain with the resolver check uses (tests pass a map).
func runDKIM(args []string, stdout, stderr io.Writer, loadDKIMConfig func(path string) (dkim.Config, error), resolver dkim.Resolver) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dkimUsage)
		return dkimExitUsage
	}
	switch args[0] {
	case "keygen":
		return dkimKeygen(args[1:], stdout, stderr)
	case "record":
		return dkimRecord(args[1:], stdout, stderr)
	case "check":
		return dkimCheck(args[1:], stdout, stderr, loadDKIMConfig, resolver)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, dkimUsage)
		return dkimExitOK
	}
	fmt.Fprintf(stderr, "mailgate dkim: unknown command %q\n\n%s", args[0], dkimUsage)
	return dkimExitUsage
}

// dkimFlagSet returns a FlagSet that reports to stderr with a usage line.
func dkimFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mailgate dkim "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mailgate dkim %s %s\n\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// dkimParseFlags parses args; done is true when the caller must return code.
func dkimParseFlags(fs *flag.FlagSet, args []string) (code int, done bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return dkimExitOK, true
	case err != nil:
		return dkimExitUsage, true // the flag package printed the error and usage
	case fs.NArg() > 0:
		fmt.Fprintf(fs.Output(), "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		fs.Usage()
		return dkimExitUsage, true
	}
	return 0, false
}

func dkimUsageError(fs *flag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(fs.Output(), format+"\n", a...)
	fs.Usage()
	return dkimExitUsage
}

func dkimKeygen(args []string, stdout, stderr io.Writer) int {
	fs := dkimFlagSet("keygen", "-domain D -selector S [-algorithm rsa|ed25519] [-bits 2048] -out FILE", stderr)
	domain := fs.String("domain", "", "signing domain (d=), required")
	selector := fs.String("selector", "", "selector (s=), required")
	algorithm := fs.String("algorithm", dkim.AlgorithmRSA, "key algorithm: rsa or ed25519")
	bits := fs.Int("bits", 2048, "RSA modulus size in bits (at least 1024; ignored for ed25519)")
	out := fs.String("out", "", "private key file to create, required; never overwritten")
	if code, done := dkimParseFlags(fs, args); done {
		return code
	}
	switch {
	case *domain == "" || *selector == "" || *out == "":
		return dkimUsageError(fs, "-domain, -selector and -out are required")
	case *algorithm != dkim.AlgorithmRSA && *algorithm != dkim.AlgorithmEd25519:
		return dkimUsageError(fs, "-algorithm must be rsa or ed25519, not %q", *algorithm)
	case *algorithm == dkim.AlgorithmRSA && *bits < dkim.MinRSABits:
		return dkimUsageError(fs, "-bits must be at least %d", dkim.MinRSABits)
	}
	key, err := dkim.GenerateKey(*algorithm, *bits)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return dkimExitProblem
	}
	// Check the record can be built before writing anything.
	rec, err := dkim.NewRecord(*domain, *selector, key.Public())
	if err != nil {
		return dkimUsageError(fs, "%v", err)
	}
	if err := dkim.WriteKeyFile(*out, key); err != nil {
		fmt.Fprintln(stderr, err)
		return dkimExitProblem
	}
	fmt.Fprintf(stdout, "; private key (%s) written to %s\n", dkimDescribeKey(key.Public()), *out)
	dkimPrintRecord(stdout, rec)
	return dkimExitOK
}

func dkimRecord(args []string, stdout, stderr io.Writer) int {
	fs := dkimFlagSet("record", "-key FILE [-domain D -selector S]", stderr)
	keyFile := fs.String("key", "", "private key file (PEM), required")
	domain := fs.String("domain", "", "signing domain (d=); with -selector, prints the record name")
	selector := fs.String("selector", "", "selector (s=); with -domain, prints the record name")
	if code, done := dkimParseFlags(fs, args); done {
		return code
	}
	if *keyFile == "" {
		return dkimUsageError(fs, "-key is required")
	}
	if (*domain == "") != (*selector == "") {
		return dkimUsageError(fs, "-domain and -selector go together")
	}
	key, err := dkim.LoadKeyFile(*keyFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return dkimExitProblem
	}
	d, s := *domain, *selector
	named := d != ""
	if !named {
		d, s = "example.invalid", "selector" // placeholder name, not printed
	}
	rec, err := dkim.NewRecord(d, s, key.Public())
	if err != nil {
		return dkimUsageError(fs, "%v", err)
	}
	if !named {
		fmt.Fprintf(stdout, "; %s; publish at <selector>._domainkey.<domain>.\n%s\n", dkimDescribeKey(key.Public()), rec.Value)
		return dkimExitOK
	}
	fmt.Fprintf(stdout, "; %s\n", dkimDescribeKey(key.Public()))
	dkimPrintRecord(stdout, rec)
	return dkimExitOK
}

// dkimPrintRecord prints a zone-file line and the unsplit value (for DNS
// provider web forms), the latter as a comment so the output stays a valid
// zone fragment.
func dkimPrintRecord(w io.Writer, rec dkim.Record) {
	fmt.Fprintf(w, "%s\n; unsplit value for %s:\n; %s\n", rec.ZoneLine(), rec.Name, rec.Value)
}

func dkimDescribeKey(pub any) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa %d bits", k.N.BitLen())
	case ed25519.PublicKey:
		return "ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

func dkimCheck(args []string, stdout, stderr io.Writer, load func(string) (dkim.Config, error), resolver dkim.Resolver) int {
	fs := dkimFlagSet("check", "-config FILE [-timeout 30s]", stderr)
	configFile := fs.String("config", "", "mailgate config file, required")
	timeout := fs.Duration("timeout", 30*time.Second, "overall DNS timeout")
	if code, done := dkimParseFlags(fs, args); done {
		return code
	}
	if *configFile == "" {
		return dkimUsageError(fs, "-config is required")
	}
	cfg, err := load(*configFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return dkimExitProblem
	}
	if len(cfg.Keys) == 0 {
		fmt.Fprintln(stdout, "no DKIM keys configured")
		return dkimExitOK
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	return dkimPrintCheck(stdout, dkim.Check(ctx, cfg, resolver))
}

// dkimPrintCheck prints one line per result (and the record to publish when it
// is not published as expected) and returns the exit code.
func dkimPrintCheck(w io.Writer, results []dkim.CheckResult) int {
	code := dkimExitOK
	for _, r := range results {
		mark := "OK  "
		if !r.OK() {
			mark, code = "FAIL", dkimExitProblem
		}
		fmt.Fprintf(w, "%s %s %s: %s", mark, r.Domain, r.Selector, r.Status)
		if r.Detail != "" {
			fmt.Fprintf(w, " (%s)", r.Detail)
		}
		fmt.Fprintln(w)
		if !r.OK() && r.Expected.Name != "" {
			fmt.Fprintf(w, "     publish: %s\n", r.Expected.ZoneLine())
		}
	}
	return code
}
