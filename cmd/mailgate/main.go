// Command mailgate is a mail submission proxy: it authenticates clients,
// asks policy about every envelope, DKIM-signs what it accepts and relays
// it synchronously to an upstream mail server.
//
//	mailgate                        run the self-contained demo (embedded default)
//	mailgate serve -config FILE     run for real
//	mailgate check -config FILE     validate a configuration and probe upstreams
//	mailgate passwd [-user NAME]    hash a password read from stdin for the users file
//	mailgate dkim keygen|record|check …
//	mailgate policy test|eval|check|bundle|replay …
//	mailgate quota show|reset …
//	mailgate version                version, commit, Go version, DKIM RSA backend
//
// main only wires: the work is done in the proxy, policy and dkim packages.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return serveMain(nil, stdout, stderr)
	}
	switch args[0] {
	case "serve":
		return serveMain(args[1:], stdout, stderr)
	case "check":
		return checkMain(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	default:
		if f, ok := extraCommands[args[0]]; ok {
			return f(args[1:], stdin, stdout, stderr)
		}
		fmt.Fprintf(stderr, "mailgate: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
}

// extraCommands are the tool verbs beside serve and check, by name; each
// verb's code is in its own file (passwd_cmd.go, dkim_cmd.go,
// policy_cmd.go, quota_cmd.go, version.go). A new verb is one line here.
var extraCommands = map[string]func(args []string, stdin io.Reader, stdout, stderr io.Writer) int{
	"passwd": passwdMain,
	"dkim": func(args []string, _ io.Reader, stdout, stderr io.Writer) int {
		return dkimMain(args, stdout, stderr, loadDKIMConfig(stderr))
	},
	"policy": func(args []string, _ io.Reader, stdout, stderr io.Writer) int {
		return policyMain(args, stdout, stderr, loadPolicyConfig(stderr))
	},
	"quota": func(args []string, _ io.Reader, stdout, stderr io.Writer) int {
		return quotaMain(args, stdout, stderr)
	},
	"version": func(args []string, _ io.Reader, stdout, stderr io.Writer) int {
		return versionMain(args, stdout, stderr)
	},
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  mailgate                          run the self-contained demo (embedded default config)
  mailgate serve [-config FILE]     run the proxy (embedded default without -config)
  mailgate check -config FILE       validate a configuration and probe its upstreams
  mailgate passwd [-user NAME]      read a password on stdin, print a users-file hash
  mailgate dkim keygen|record|check DKIM key tools
  mailgate policy test|eval|bundle  run policy tests, explain a decision, build a bundle
  mailgate policy replay            replay a decision log with a candidate policy
  mailgate quota show|reset         show or reset quota counters
  mailgate version                  version, commit, Go version, DKIM RSA backend
`)
}
