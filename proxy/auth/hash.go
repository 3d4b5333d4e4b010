package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Sentinel errors for hashes, matched with errors.Is.
var (
	// ErrUnsupportedScheme: the hash is plaintext, a weak scheme ({MD5},
	// $1$, …) or one mailgate does not know. Such entries are refused when
	// the users file loads, never at login time.
	ErrUnsupportedScheme = errors.New("auth: unsupported password scheme")
	// ErrMalformedHash: a supported scheme whose parameters do not parse or
	// are out of the accepted range.
	ErrMalformedHash = errors.New("auth: malformed password hash")
	// ErrEmptyPassword: Hash refuses to hash an empty password.
	ErrEmptyPassword = errors.New("auth: empty password")
	// ErrPasswordTooLong: Hash refuses passwords over MaxPasswordLen bytes.
	ErrPasswordTooLong = errors.New("auth: password too long")
)

// MaxPasswordLen bounds every password mailgate hashes or verifies, in bytes.
// Longer input is refused before any hashing work is done.
const MaxPasswordLen = 1024

// bcryptMaxPassword is where bcrypt silently truncates its input. A password
// longer than this never matches a bcrypt entry: otherwise anyone who knows
// the first 72 bytes of a long password knows the password.
const bcryptMaxPassword = 72

// Parameters of the argon2id hashes Hash writes. These are OWASP's first
// recommended configuration (Password Storage Cheat Sheet: m=19 MiB, t=2,
// p=1), chosen over RFC 9106's 64 MiB profile because every AUTH attempt in
// flight holds m of memory: at 19 MiB a burst of 100 concurrent attempts
// costs ~2 GiB, not ~6.4 GiB, and one verification stays well under the
// ~50 ms budget on a 2-core machine (see BenchmarkHash). p=1 keeps one AUTH
// on one core so concurrent logins do not fight each other. bcrypt cost 12
// was the alternative; it takes ~250 ms per attempt and truncates at 72 bytes.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// Limits on argon2id parameters read from a users file: an entry asking for
// more would let one AUTH attempt exhaust the machine.
const (
	argonMaxMemory  = 1 << 20 // KiB = 1 GiB
	argonMaxTime    = 64
	argonMinSaltLen = 8
	argonMinKeyLen  = 16
	argonMaxKeyLen  = 128
)

// hashError is a parse failure of one hash: a sentinel and a detail that
// never contains the hash text.
type hashError struct {
	kind   error
	detail string
}

func hashErr(kind error, format string, args ...any) *hashError {
	return &hashError{kind: kind, detail: fmt.Sprintf(format, args...)}
}

func (e *hashError) Error() string { return e.kind.Error() + ": " + e.detail }
func (e *hashError) Unwrap() error { return e.kind }

// verifier checks a password against one stored hash.
type verifier interface {
	// verify reports whether password matches. It does the full hashing
	// work; comparisons of derived bytes are constant time.
	verify(password []byte) bool
	// params names the scheme and cost, e.g. "argon2id m=19456 t=2 p=1";
	// entries with equal params take the same time to verify.
	params() string
	// dummy returns a verifier with the same scheme and cost for a random
	// password nobody knows, used for unknown users.
	dummy() (verifier, error)
}

// Dovecot-style scheme prefixes that mailgate accepts, mapped to the hash
// format that must follow them.
const (
	schemeBcrypt      = "{BLF-CRYPT}"
	schemeArgon2id    = "{ARGON2ID}"
	schemeSHA512Crypt = "{SHA512-CRYPT}"
)

// parseHash turns a users-file hash field into a verifier. Errors wrap
// ErrUnsupportedScheme or ErrMalformedHash and never contain the hash text.
func parseHash(h string) (verifier, error) {
	if strings.HasPrefix(h, "{") {
		end := strings.IndexByte(h, '}')
		if end < 0 {
			return nil, hashErr(ErrUnsupportedScheme, "unterminated {SCHEME} prefix")
		}
		scheme := strings.ToUpper(h[:end+1])
		rest := h[end+1:]
		switch scheme {
		case schemeBcrypt:
			if !isBcrypt(rest) {
				return nil, hashErr(ErrMalformedHash, "%s must be followed by a $2y$/$2b$/$2a$ hash", scheme)
			}
			return parseBcrypt(rest)
		case schemeArgon2id:
			if !strings.HasPrefix(rest, "$argon2id$") {
				return nil, hashErr(ErrMalformedHash, "%s must be followed by a $argon2id$ hash", scheme)
			}
			return parseArgon2id(rest)
		case schemeSHA512Crypt:
			if !strings.HasPrefix(rest, sha512CryptMagic) {
				return nil, hashErr(ErrMalformedHash, "%s must be followed by a $6$ hash", scheme)
			}
			return parseSHA512(rest)
		default:
			if !isPrintableScheme(scheme) {
				return nil, hashErr(ErrUnsupportedScheme, "unknown {SCHEME} prefix")
			}
			return nil, hashErr(ErrUnsupportedScheme, "%s (accepted: {BLF-CRYPT}, {ARGON2ID}, {SHA512-CRYPT}, or bare bcrypt, argon2id and $6$ hashes)", scheme)
		}
	}
	switch {
	case isBcrypt(h):
		return parseBcrypt(h)
	case strings.HasPrefix(h, "$argon2id$"):
		return parseArgon2id(h)
	case strings.HasPrefix(h, sha512CryptMagic):
		return parseSHA512(h)
	case strings.HasPrefix(h, "$"):
		// Name the crypt id ("$1$", "$5$", "$2x$", "$argon2i$"), which is
		// not secret, so the operator knows what to replace.
		id := h
		if i := strings.IndexByte(h[1:], '$'); i >= 0 && i < 16 {
			id = h[:i+2]
		} else {
			id = "$?"
		}
		if !isPrintableScheme(id) {
			id = "$?"
		}
		return nil, hashErr(ErrUnsupportedScheme, "crypt id %s", id)
	default:
		return nil, hashErr(ErrUnsupportedScheme, "no scheme prefix (plaintext passwords are refused)")
	}
}

func isPrintableScheme(s string) bool {
	if len(s) > 32 {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// isBcrypt accepts the bcrypt variants whose output is interchangeable for
// passwords of at most 72 bytes. $2x$ (crypt_blowfish's buggy-sign-extension
// marker) is deliberately not among them.
func isBcrypt(h string) bool {
	return strings.HasPrefix(h, "$2y$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2a$")
}

// bcryptHash verifies with golang.org/x/crypto/bcrypt.
type bcryptHash struct {
	hash []byte
	cost int
}

func parseBcrypt(h string) (verifier, error) {
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil || len(h) != 60 {
		return nil, hashErr(ErrMalformedHash, "bcrypt hash does not parse")
	}
	return &bcryptHash{hash: []byte(h), cost: cost}, nil
}

func (b *bcryptHash) verify(password []byte) bool {
	// Hash the first 72 bytes even when the password is longer, so the
	// refusal takes the same time as any other miss.
	tooLong := len(password) > bcryptMaxPassword
	ok := bcrypt.CompareHashAndPassword(b.hash, password[:min(len(password), bcryptMaxPassword)]) == nil
	return ok && !tooLong
}

func (b *bcryptHash) params() string { return "bcrypt cost=" + strconv.Itoa(b.cost) }

func (b *bcryptHash) dummy() (verifier, error) {
	h, err := bcrypt.GenerateFromPassword(randomPassword(), b.cost)
	if err != nil {
		return nil, fmt.Errorf("auth: dummy bcrypt hash: %w", err)
	}
	return &bcryptHash{hash: h, cost: b.cost}, nil
}

// argon2idHash is a PHC-format "$argon2id$v=19$m=M,t=T,p=P$salt$key".
type argon2idHash struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

func parseArgon2id(h string) (verifier, error) {
	bad := func(why string) (verifier, error) {
		return nil, hashErr(ErrMalformedHash, "argon2id: %s", why)
	}
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return bad("want $argon2id$v=19$m=M,t=T,p=P$salt$hash")
	}
	if parts[2] != "v=19" {
		return bad("only version 19 is supported")
	}
	a := &argon2idHash{}
	var seen [3]bool
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return bad("malformed parameters")
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return bad("malformed parameters")
		}
		switch {
		case k == "m" && !seen[0]:
			a.memory, seen[0] = uint32(n), true
		case k == "t" && !seen[1]:
			a.time, seen[1] = uint32(n), true
		case k == "p" && !seen[2]:
			if n > 255 {
				return bad("p out of range")
			}
			a.threads, seen[2] = uint8(n), true
		default:
			return bad("unknown or repeated parameter")
		}
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return bad("m, t and p are all required")
	}
	if a.threads < 1 || a.time < 1 || a.time > argonMaxTime ||
		a.memory < 8*uint32(a.threads) || a.memory > argonMaxMemory {
		return bad(fmt.Sprintf("parameters out of range (1<=t<=%d, 8*p<=m<=%d KiB)", argonMaxTime, argonMaxMemory))
	}
	var err error
	if a.salt, err = decodePHCBase64(parts[4]); err != nil || len(a.salt) < argonMinSaltLen {
		return bad("salt does not decode or is shorter than 8 bytes")
	}
	if a.key, err = decodePHCBase64(parts[5]); err != nil || len(a.key) < argonMinKeyLen || len(a.key) > argonMaxKeyLen {
		return bad("hash does not decode or has a bad length")
	}
	return a, nil
}

// decodePHCBase64 decodes the PHC string format's base64: standard alphabet
// without padding. Padded input (some tools write it) is accepted too.
func decodePHCBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

func (a *argon2idHash) verify(password []byte) bool {
	got := argon2.IDKey(password, a.salt, a.time, a.memory, a.threads, uint32(len(a.key)))
	return subtle.ConstantTimeCompare(got, a.key) == 1
}

func (a *argon2idHash) params() string {
	return fmt.Sprintf("argon2id m=%d t=%d p=%d len=%d", a.memory, a.time, a.threads, len(a.key))
}

func (a *argon2idHash) dummy() (verifier, error) {
	salt := randomBytes(len(a.salt))
	d := *a
	d.salt = salt
	d.key = argon2.IDKey(randomPassword(), salt, a.time, a.memory, a.threads, uint32(len(a.key)))
	return &d, nil
}

func (a *argon2idHash) String() string {
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", a.memory, a.time, a.threads,
		base64.RawStdEncoding.EncodeToString(a.salt), base64.RawStdEncoding.EncodeToString(a.key))
}

func parseSHA512(h string) (verifier, error) {
	s, err := parseSHA512Crypt(h)
	if err != nil {
		return nil, hashErr(ErrMalformedHash, "%v", err)
	}
	return s, nil
}

func (h *sha512CryptHash) params() string { return "sha512-crypt rounds=" + strconv.Itoa(h.rounds) }

func (h *sha512CryptHash) dummy() (verifier, error) {
	salt := make([]byte, sha512CryptMaxSalt)
	for i, b := range randomBytes(len(salt)) {
		salt[i] = cryptB64Alphabet[b&0x3f]
	}
	return &sha512CryptHash{rounds: h.rounds, salt: salt, sum: sha512Crypt(randomPassword(), salt, h.rounds)}, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never returns an error (crypto/rand, Go 1.24+)
	return b
}

// randomPassword is a password nobody can know, for dummy hashes.
func randomPassword() []byte {
	return []byte(base64.RawStdEncoding.EncodeToString(randomBytes(24)))
}

// Hash returns a new argon2id hash of password in PHC format, as written to
// a users file by `mailgate passwd`. It refuses an empty password and one
// longer than MaxPasswordLen bytes.
func Hash(password string) (string, error) {
	if password == "" {
		return "", ErrEmptyPassword
	}
	if len(password) > MaxPasswordLen {
		return "", fmt.Errorf("%w: over %d bytes", ErrPasswordTooLong, MaxPasswordLen)
	}
	salt := randomBytes(argonSaltLen)
	a := &argon2idHash{
		memory: argonMemory, time: argonTime, threads: argonThreads, salt: salt,
		key: argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen),
	}
	return a.String(), nil
}
