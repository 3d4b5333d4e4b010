package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/mailgate/mailgate/proxy/auth"
)

// passwdMain implements `mailgate passwd [-user NAME]`: it reads a password
// and prints its hash for the users file (argon2id, see auth.Hash), or the
// whole "name:hash" line with -user. On a terminal it prompts twice without
// echo; otherwise it reads the first line of stdin, trailing CR/LF
// stripped. An empty password is refused. It returns the exit status: 0 on
// success, 1 on error, 2 on a usage error.
func passwdMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "print `NAME`:hash, a complete users file line (NAME is lower-cased)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mailgate passwd [-user NAME] < password\n\n"+
			"Reads a password (first line of stdin, or a no-echo prompt on a terminal)\n"+
			"and prints an argon2id hash for the users file.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	if *user != "" {
		if err := auth.ValidateUserName(*user); err != nil {
			fmt.Fprintf(stderr, "mailgate passwd: -user: %v\n", err)
			return 2
		}
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate passwd: %v\n", err)
		return 1
	}
	hash, err := auth.Hash(pw)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate passwd: %v\n", err)
		return 1
	}
	if *user != "" {
		fmt.Fprintf(stdout, "%s:%s\n", auth.CanonicalUser(*user), hash)
	} else {
		fmt.Fprintln(stdout, hash)
	}
	return 0
}

// readPassword prompts on a terminal (no echo, asked twice) or reads the
// first line of a pipe or file.
func readPassword(stdin io.Reader, prompt io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(prompt, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		fmt.Fprint(prompt, "Retype password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if string(a) != string(b) {
			return "", errors.New("passwords do not match")
		}
		if len(a) == 0 {
			return "", errors.New("empty password refused")
		}
		return string(a), nil
	}
	// Read at most the longest password Hash accepts plus CR LF and one
	// byte, so a huge stdin is not slurped.
	r := bufio.NewReaderSize(io.LimitReader(stdin, auth.MaxPasswordLen+3), auth.MaxPasswordLen+3)
	line, err := r.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	if len(line) > auth.MaxPasswordLen {
		return "", fmt.Errorf("password longer than %d bytes", auth.MaxPasswordLen)
	}
	if line == "" {
		return "", errors.New("empty password refused (give it on the first line of stdin)")
	}
	return line, nil
}
