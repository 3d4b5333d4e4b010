package auth

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors for the users file, matched with errors.Is. Each is
// wrapped with "file:line" context; the hash text is never included.
var (
	ErrDuplicateUser = errors.New("auth: duplicate user")
	ErrMalformedLine = errors.New("auth: malformed users file line")
	ErrNoUsers       = errors.New("auth: users file has no users")
)

// MaxUserLen bounds user names, in bytes (RFC 5321 §4.5.3.1.3 caps a path
// at 256 octets, which bounds any address used as a login name).
const MaxUserLen = 255

// Users is an immutable set of users and password hashes loaded from a
// users file. It is safe for concurrent use. To reload, call LoadUsers again
// and swap the pointer (Authenticator.Reload does exactly that with an
// atomic.Pointer): a failed reload leaves the old set in force.
type Users struct {
	entries map[string]verifier
	// unknown is verified against for names not in entries so that an
	// unknown user costs the same as a known one: it has the scheme and
	// cost shared by most entries.
	unknown verifier
	// dummyVerifies counts unknown-user verifications; tests read it to
	// assert that the dummy path runs.
	dummyVerifies atomic.Int64
}

// CanonicalUser is how user names are compared: the whole name is lower-cased
// (Unicode simple folding via strings.ToLower), both when the users file is
// loaded and when a client logs in. "Alice@Example.COM" and
// "alice@example.com" are one user. (Local parts are case-sensitive in
// principle, RFC 5321 §2.4, but no sane deployment has two users differing
// only by case, and folding avoids support tickets.)
func CanonicalUser(user string) string { return strings.ToLower(user) }

// LoadUsers reads a users file: one "user:hash" per line, blank lines and
// lines starting with '#' ignored, leading and trailing white space trimmed.
// Fields after a second ':' (Dovecot passwd-file's uid, gid, …) are ignored.
//
// Accepted hashes: bcrypt ($2y$, $2b$, $2a$), argon2id in PHC format
// ($argon2id$v=19$…), SHA-512 crypt ($6$), and the same behind Dovecot's
// {BLF-CRYPT}, {ARGON2ID} and {SHA512-CRYPT} prefixes. Plaintext, weak or
// unknown schemes, malformed lines and duplicate users (after lower-casing)
// are refused with an error naming path:line and never the hash itself.
func LoadUsers(path string) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: users file: %w", err)
	}
	defer f.Close()

	u := &Users{entries: make(map[string]verifier)}
	cost := make(map[string]int) // params → count, to pick the dummy
	byParams := make(map[string]verifier)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, rest, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("%w: %s:%d: want user:hash", ErrMalformedLine, path, line)
		}
		if err := ValidateUserName(name); err != nil {
			return nil, fmt.Errorf("%w: %s:%d: %w", ErrMalformedLine, path, line, err)
		}
		hash, _, _ := strings.Cut(rest, ":")
		v, err := parseHash(hash)
		if err != nil {
			var he *hashError
			if errors.As(err, &he) {
				return nil, fmt.Errorf("%w: %s:%d: user %q: %s", he.kind, path, line, name, he.detail)
			}
			return nil, fmt.Errorf("auth: %s:%d: user %q: %w", path, line, name, err)
		}
		key := CanonicalUser(name)
		if _, dup := u.entries[key]; dup {
			return nil, fmt.Errorf("%w: %s:%d: %q", ErrDuplicateUser, path, line, key)
		}
		u.entries[key] = v
		p := v.params()
		cost[p]++
		byParams[p] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth: users file %s: line %d: %w", path, line+1, err)
	}
	if len(u.entries) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoUsers, path)
	}
	// The most common scheme and cost; ties broken by name so the choice
	// does not depend on map order.
	best := ""
	for p, n := range cost {
		if best == "" || n > cost[best] || (n == cost[best] && p < best) {
			best = p
		}
	}
	if u.unknown, err = byParams[best].dummy(); err != nil {
		return nil, err
	}
	return u, nil
}

// ValidateUserName reports why name cannot be a user name in a users file,
// or nil: it must be non-empty UTF-8 of at most MaxUserLen bytes, without
// ':' , white space or control characters.
func ValidateUserName(name string) error {
	if name == "" {
		return errors.New("empty user name")
	}
	if len(name) > MaxUserLen {
		return fmt.Errorf("user name longer than %d bytes", MaxUserLen)
	}
	if !utf8.ValidString(name) {
		return errors.New("user name is not UTF-8")
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == ':' {
			return errors.New("user name contains ':', white space or a control character")
		}
	}
	return nil
}

// Len returns the number of users.
func (u *Users) Len() int { return len(u.entries) }

// Verify checks password for user and returns the canonical (lower-cased)
// user name and true on a match, or "" and false otherwise.
//
// An unknown user is verified against a dummy hash of the scheme and cost
// most entries use, so a miss takes about as long as a wrong password and
// response timing does not tell which users exist. A password longer than 72
// bytes never matches a bcrypt entry (bcrypt would ignore the excess), and no
// password longer than MaxPasswordLen bytes matches anything.
func (u *Users) Verify(user, password string) (string, bool) {
	// Too long for any entry: refuse before any work, whoever the user is,
	// so this early return says nothing about which users exist.
	if len(password) > MaxPasswordLen {
		return "", false
	}
	var v verifier
	key := ""
	if len(user) <= MaxUserLen {
		key = CanonicalUser(user)
		v = u.entries[key]
	}
	if v == nil {
		u.dummyVerifies.Add(1)
		u.unknown.verify([]byte(password))
		return "", false
	}
	if !v.verify([]byte(password)) {
		return "", false
	}
	return key, true
}
