package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// checkMain validates a whole configuration (policies compiled, keys
// parsed, users loaded) and says which upstreams answer. Exit status 0 when
// everything is fine, 1 otherwise, 2 on usage errors.
func checkMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file to check (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for each upstream")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "mailgate check: -config is required")
		return 2
	}
	cfg, err := loadConfigFile(*path, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "mailgate check:", err)
		return 1
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := wire(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "mailgate check:", err)
		return 1
	}
	defer w.close()
	fmt.Fprintf(stdout, "%s: configuration OK\n", *path)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if !w.probe(ctx, stdout) {
		return 1
	}
	return 0
}
