// Package peertest is mailgate's one test harness (in the spirit of
// chasquid's internal/testlib): it starts and controls real peers for the
// tests of every package, and holds the small helpers those tests share.
//
//   - Peers: Postfix's smtp-sink as a recording upstream ([StartSink]),
//     private Postfix instances as relays ([StartPostfix]), a private
//     redis-server ([StartRedis]).
//   - Tool wrappers: swaks, smtp-source, curl, Python (smtplib), dkimpy's
//     and OpenDKIM's verifiers, and [RunTool] for any other known tool.
//   - Plumbing: [Require] and [Path] for the tools a test needs, [Start]
//     for any other child process, [FreePort], [WaitListening] for a server
//     to accept connections, [Buffer] for log output written by several
//     goroutines, [LogWriter] for a logger that writes into the test's log.
//
// It imports nothing of mailgate, so any package's tests may use it, and it
// is imported only from _test.go files; nothing in the mailgate binary
// depends on it. Being internal, it is no API for other modules.
//
// Every helper calls [Require] for the tools it needs: when a tool is missing
// the test is skipped with a loud message naming the Debian package to install,
// except when the environment has CI=true (as .ci/run sets it), where a
// missing tool fails the test. Every process a helper starts listens on
// 127.0.0.1 on a free port, runs in its own process group and is stopped by
// PID in t.Cleanup; its output is logged when the test failed.
//
// Helpers that may skip or fail the test (Require, Path, Start, WaitListening, StartSink,
// StartPostfix, StartRedis, WaitCount, WaitQueueEmpty) must be called from
// the test's own goroutine, as with t.Skip and t.Fatal. The command wrappers
// (Swaks, Curl, PythonSMTP, DKIMVerify) only report through t.Errorf once
// their tool is known to be installed, so after a Require in the test
// goroutine they may run concurrently from other goroutines.
package peertest
