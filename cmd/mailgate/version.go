package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/mailgate/mailgate/dkim"
)

// buildInfo is what `mailgate version` reports about the running binary.
type buildInfo struct {
	Version   string // module version, "(devel)" for a build from a checkout
	Commit    string // vcs.revision, "unknown" without VCS stamping
	Modified  bool   // vcs.modified: built from a tree with uncommitted changes
	GoVersion string
	// RSABackends are the DKIM RSA signing implementations built in
	// ("go", and "openssl" with -tags openssl), OpenSSL the libcrypto
	// linked at run time ("" without), RSADefault what rsa_backend =
	// "auto" uses.
	RSABackends []string
	OpenSSL     string
	RSADefault  string
}

// readBuildInfo reads the module and VCS stamps Go embeds in the binary
// (go build stamps them from the checkout; `go run` and tests do not).
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: "unknown", Commit: "unknown", GoVersion: runtime.Version(),
		RSABackends: dkim.RSABackends(), OpenSSL: dkim.OpenSSLVersion(), RSADefault: dkim.DefaultRSABackend()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if v := info.Main.Version; v != "" {
		bi.Version = v
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

func (bi buildInfo) write(w io.Writer) {
	commit := bi.Commit
	if bi.Modified {
		commit += " (modified)"
	}
	backends := strings.Join(bi.RSABackends, ", ")
	if bi.OpenSSL != "" {
		backends += " (" + bi.OpenSSL + ")"
	}
	fmt.Fprintf(w, "mailgate %s\ncommit: %s\ngo: %s\ndkim rsa backends: %s; auto uses: %s\n",
		bi.Version, commit, bi.GoVersion, backends, bi.RSADefault)
}

func versionMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: mailgate version")
		return 2
	}
	readBuildInfo().write(stdout)
	return 0
}
