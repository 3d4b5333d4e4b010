// Package peertest starts and controls real SMTP peers for mailgate's
// integration tests: Postfix's smtp-sink as a recording upstream, private
// Postfix instances as relays, and thin wrappers around swaks, curl, Python
// (smtplib) and dkimpy's verifier.
//
// It is imported only from _test.go files of other packages; nothing in the
// mailgate binary depends on it.
//
// Every helper calls [Require] for the tools it needs: when a tool is missing
// the test is skipped with a loud message naming the Debian package to install,
// except when the environment has CI=true, where a missing tool fails the test.
// Every process a helper starts listens on 127.0.0.1 on a free port, runs in
// its own process group and is stopped by PID in t.Cleanup; its output is
// logged when the test failed.
//
// Helpers that may skip or fail the test (Require, StartSink, StartPostfix,
// WaitCount, WaitQueueEmpty) must be called from the test's own goroutine,
// as with t.Skip and t.Fatal. The command wrappers (Swaks, Curl, PythonSMTP,
// DKIMVerify) only report through t.Errorf once their tool is known to be
// installed, so after a Require in the test goroutine they may run
// concurrently from other goroutines.
package peertest
