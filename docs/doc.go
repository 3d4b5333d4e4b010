// Package docs holds mailgate's documentation (the *.md files here) and the
// tests that keep it from rotting: every relative link in the repository's
// Markdown (README.md, docs/, examples/, .ci/README.md) must point at a file
// that exists and, with an #anchor, at a heading in it; every function
// docs/internals.md names must exist in the Go source, mailgate's or the
// go-smtp version go.mod requires. It has no code of its own: the checks are
// tests, run by `go test ./docs`.
package docs
