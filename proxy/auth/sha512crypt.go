package auth

import (
	"crypto/sha512"
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"
)

// SHA-512 crypt ("$6$") as specified by Ulrich Drepper, "Unix crypt using
// SHA-256 and SHA-512" (https://www.akkadia.org/drepper/SHA-crypt.txt).
//
// Implemented here rather than imported: golang.org/x/crypto does not carry
// it, the only candidate module on the proxy is an unversioned one last
// touched in 2023, and the algorithm is fixed and small. Only verification
// (and dummy-hash generation for the unknown-user path) is needed: mailgate
// never writes new $6$ hashes. The spec's own test vectors and openssl's
// output pin the implementation in sha512crypt_test.go.

const (
	sha512CryptDefaultRounds = 5000
	sha512CryptMinRounds     = 1000
	sha512CryptMaxRounds     = 999999999
	sha512CryptMaxSalt       = 16
	sha512CryptHashLen       = 86 // 64 bytes in the crypt base64 alphabet
	sha512CryptMagic         = "$6$"
	sha512CryptRoundsPrefix  = "rounds="
	cryptB64Alphabet         = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// sha512CryptHash is a parsed "$6$[rounds=N$]salt$hash" string.
type sha512CryptHash struct {
	rounds int
	salt   []byte
	sum    []byte // the 86 encoded characters
}

// parseSHA512Crypt parses s, which must start with "$6$". Rounds outside the
// spec's range are clamped exactly as the spec does when it hashes, and a
// salt longer than 16 bytes is truncated, so that a hash written by any
// conforming implementation verifies here.
func parseSHA512Crypt(s string) (*sha512CryptHash, error) {
	rest, ok := strings.CutPrefix(s, sha512CryptMagic)
	if !ok {
		return nil, fmt.Errorf("not a $6$ hash")
	}
	h := &sha512CryptHash{rounds: sha512CryptDefaultRounds}
	if r, ok := strings.CutPrefix(rest, sha512CryptRoundsPrefix); ok {
		num, after, found := strings.Cut(r, "$")
		if !found {
			return nil, fmt.Errorf("$6$: malformed rounds")
		}
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("$6$: malformed rounds")
		}
		h.rounds = int(min(max(n, sha512CryptMinRounds), sha512CryptMaxRounds))
		rest = after
	}
	salt, sum, found := strings.Cut(rest, "$")
	if !found {
		return nil, fmt.Errorf("$6$: missing hash")
	}
	if len(salt) > sha512CryptMaxSalt {
		salt = salt[:sha512CryptMaxSalt]
	}
	if strings.ContainsAny(salt, "$:\n") {
		return nil, fmt.Errorf("$6$: malformed salt")
	}
	if len(sum) != sha512CryptHashLen {
		return nil, fmt.Errorf("$6$: hash has %d characters, want %d", len(sum), sha512CryptHashLen)
	}
	for i := range len(sum) {
		if strings.IndexByte(cryptB64Alphabet, sum[i]) < 0 {
			return nil, fmt.Errorf("$6$: hash has a character outside the crypt alphabet")
		}
	}
	h.salt = []byte(salt)
	h.sum = []byte(sum)
	return h, nil
}

// verify reports whether password hashes to h, comparing in constant time.
func (h *sha512CryptHash) verify(password []byte) bool {
	got := sha512Crypt(password, h.salt, h.rounds)
	return subtle.ConstantTimeCompare(got, h.sum) == 1
}

// sha512CryptPermutation is the byte order of the final encoding (spec step
// 22): each triple becomes four characters.
var sha512CryptPermutation = [21][3]int{
	{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4},
	{47, 5, 26}, {6, 27, 48}, {28, 49, 7}, {50, 8, 29}, {9, 30, 51},
	{31, 52, 10}, {53, 11, 32}, {12, 33, 54}, {34, 55, 13}, {56, 14, 35},
	{15, 36, 57}, {37, 58, 16}, {59, 17, 38}, {18, 39, 60}, {40, 61, 19},
	{62, 20, 41},
}

// sha512Crypt computes the 86-character encoded hash of key with salt (at
// most 16 bytes) and rounds (already clamped), following the numbered steps
// of the spec.
func sha512Crypt(key, salt []byte, rounds int) []byte {
	// Steps 4-8: digest B = SHA512(key || salt || key).
	b := sha512.New()
	b.Write(key)
	b.Write(salt)
	b.Write(key)
	sumB := b.Sum(nil)

	// Steps 1-3, 9-12: digest A.
	a := sha512.New()
	a.Write(key)
	a.Write(salt)
	n := len(key)
	for ; n > 64; n -= 64 {
		a.Write(sumB)
	}
	a.Write(sumB[:n])
	for n = len(key); n > 0; n >>= 1 {
		if n&1 != 0 {
			a.Write(sumB)
		} else {
			a.Write(key)
		}
	}
	sumA := a.Sum(nil)

	// Steps 13-16: byte sequence P, len(key) bytes of DP = SHA512(key^len(key)).
	dp := sha512.New()
	for range len(key) {
		dp.Write(key)
	}
	p := repeatTo(dp.Sum(nil), len(key))

	// Steps 17-20: byte sequence S, len(salt) bytes of
	// DS = SHA512(salt^(16+A[0])).
	ds := sha512.New()
	for range 16 + int(sumA[0]) {
		ds.Write(salt)
	}
	s := repeatTo(ds.Sum(nil), len(salt))

	// Step 21: the rounds.
	c := sha512.New()
	acc := sumA
	for i := range rounds {
		c.Reset()
		if i&1 != 0 {
			c.Write(p)
		} else {
			c.Write(acc)
		}
		if i%3 != 0 {
			c.Write(s)
		}
		if i%7 != 0 {
			c.Write(p)
		}
		if i&1 != 0 {
			c.Write(acc)
		} else {
			c.Write(p)
		}
		acc = c.Sum(acc[:0])
	}

	// Step 22: encode.
	out := make([]byte, 0, sha512CryptHashLen)
	for _, t := range sha512CryptPermutation {
		out = appendCryptB64(out, uint(acc[t[0]])<<16|uint(acc[t[1]])<<8|uint(acc[t[2]]), 4)
	}
	out = appendCryptB64(out, uint(acc[63]), 2)
	return out
}

func appendCryptB64(dst []byte, w uint, n int) []byte {
	for range n {
		dst = append(dst, cryptB64Alphabet[w&0x3f])
		w >>= 6
	}
	return dst
}

// repeatTo returns n bytes made of digest repeated (spec steps 16 and 20).
func repeatTo(digest []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, digest[:min(len(digest), n-len(out))]...)
	}
	return out
}
