//go:build openssl && cgo

package dkim

// The OpenSSL RSA backend: the thinnest cgo binding to libcrypto (OpenSSL
// 3, Debian libssl-dev to build, libssl3 to run) that signs a SHA-256
// digest with PKCS#1 v1.5 padding (RFC 8017 section 8.2.1, what
// rsa-sha256 means in RFC 6376 section 3.3.1). One EVP_PKEY per key, made
// once at load; a fresh EVP_PKEY_CTX per signature (a context is not safe
// to share between threads, a key is); every call does its work, and
// reads the thread-local error queue, inside a single C call, because a
// goroutine may move to another thread between two cgo calls.

/*
#cgo LDFLAGS: -lcrypto
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

// Counters for the leak tests: every EVP object made and freed.
static long mg_pkeys_made, mg_pkeys_freed, mg_ctxs_made, mg_ctxs_freed;

// mg_heap is the C heap in use (glibc mallinfo2), for the leak tests;
// -1 with another C library (musl has no mallinfo2).
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
#include <malloc.h>
static long long mg_heap(void) { return (long long)mallinfo2().uordblks; }
#else
static long long mg_heap(void) { return -1; }
#endif

static void mg_count(long *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }

static void mg_counts(long out[4]) {
	out[0] = __atomic_load_n(&mg_pkeys_made, __ATOMIC_RELAXED);
	out[1] = __atomic_load_n(&mg_pkeys_freed, __ATOMIC_RELAXED);
	out[2] = __atomic_load_n(&mg_ctxs_made, __ATOMIC_RELAXED);
	out[3] = __atomic_load_n(&mg_ctxs_freed, __ATOMIC_RELAXED);
}

// mg_err writes the oldest queued OpenSSL error (or what, when the queue
// is empty) into buf and empties the queue.
static void mg_err(const char *what, char *buf, size_t n) {
	unsigned long e = ERR_get_error();
	if (e == 0) {
		strncpy(buf, what, n - 1);
		buf[n - 1] = 0;
	} else {
		ERR_error_string_n(e, buf, n);
	}
	ERR_clear_error();
}

// mg_load parses a DER private key (PKCS#1 or PKCS#8). der is cleansed.
static EVP_PKEY *mg_load(unsigned char *der, long len, char *errbuf, size_t n) {
	ERR_clear_error();
	const unsigned char *p = der;
	EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, len);
	OPENSSL_cleanse(der, len);
	if (k == NULL) {
		mg_err("d2i_AutoPrivateKey failed", errbuf, n);
		return NULL;
	}
	if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
		EVP_PKEY_free(k);
		strncpy(errbuf, "not an RSA key", n - 1);
		errbuf[n - 1] = 0;
		return NULL;
	}
	mg_count(&mg_pkeys_made);
	return k;
}

static void mg_free(EVP_PKEY *k) {
	EVP_PKEY_free(k);
	mg_count(&mg_pkeys_freed);
}

static int mg_size(EVP_PKEY *k) { return EVP_PKEY_get_size(k); }

// mg_sign signs the SHA-256 digest dgst with PKCS#1 v1.5 padding into sig
// (*siglen bytes of room; the length written on return). 1 on success;
// else 0 and errbuf holds the error.
static int mg_sign(EVP_PKEY *k, const unsigned char *dgst, size_t dlen,
		unsigned char *sig, size_t *siglen, char *errbuf, size_t n) {
	ERR_clear_error();
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
	if (ctx == NULL) {
		mg_err("EVP_PKEY_CTX_new failed", errbuf, n);
		return 0;
	}
	mg_count(&mg_ctxs_made);
	const char *what = "EVP_PKEY_sign_init failed";
	int ok = EVP_PKEY_sign_init(ctx) > 0;
	if (ok) {
		what = "EVP_PKEY_CTX_set_rsa_padding failed";
		ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0;
	}
	if (ok) {
		what = "EVP_PKEY_CTX_set_signature_md failed";
		ok = EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) > 0;
	}
	if (ok) {
		what = "EVP_PKEY_sign failed";
		ok = EVP_PKEY_sign(ctx, sig, siglen, dgst, dlen) > 0;
	}
	if (!ok) {
		mg_err(what, errbuf, n);
	}
	EVP_PKEY_CTX_free(ctx);
	mg_count(&mg_ctxs_freed);
	return ok;
}
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

const opensslBuilt = true

// errBufLen is the room for one ERR_error_string_n message (OpenSSL
// documents 256 as enough).
const errBufLen = 256

func opensslVersion() string {
	return C.GoString(C.OpenSSL_version(C.OPENSSL_VERSION))
}

// errOpenSSLClosed is returned by Sign after Close: a bug in whoever
// keeps a closed key (the keyring reference counts prevent it).
var errOpenSSLClosed = errors.New("dkim: openssl key used after Close")

// pkey owns one EVP_PKEY. It is separate from opensslKey so that the
// cleanup attached to opensslKey can reach it without keeping the key
// reachable.
type pkey struct {
	p    unsafe.Pointer // *C.EVP_PKEY; atomic, nil once freed
	once sync.Once
}

func (h *pkey) load() *C.EVP_PKEY { return (*C.EVP_PKEY)(atomic.LoadPointer(&h.p)) }

func (h *pkey) free() {
	h.once.Do(func() {
		if p := atomic.SwapPointer(&h.p, nil); p != nil {
			C.mg_free((*C.EVP_PKEY)(p))
		}
	})
}

// opensslKey is an RSA private key held by libcrypto. It implements
// crypto.Signer for PKCS#1 v1.5 over SHA-256 only: DKIM's rsa-sha256.
type opensslKey struct {
	h       *pkey
	pub     *rsa.PublicKey
	size    int // modulus bytes: the signature length
	cleanup runtime.Cleanup
}

// newOpenSSLKey loads k into an EVP_PKEY (from its PKCS#1 DER) and checks
// one signature against crypto/rsa's verifier before it is used, so a key
// libcrypto read differently fails at load, not on a message.
func newOpenSSLKey(k *rsa.PrivateKey) (crypto.Signer, error) {
	return newOpenSSLKeyDER(x509.MarshalPKCS1PrivateKey(k), &k.PublicKey)
}

// newOpenSSLKeyDER loads der (PKCS#1 or PKCS#8), which is cleared, and
// self-tests it against pub.
func newOpenSSLKeyDER(der []byte, pub *rsa.PublicKey) (*opensslKey, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w %q: load key: empty DER", ErrRSABackend, RSABackendOpenSSL)
	}
	cder := C.CBytes(der)
	clear(der)
	var errbuf [errBufLen]C.char
	p := C.mg_load((*C.uchar)(cder), C.long(len(der)), &errbuf[0], errBufLen)
	C.free(cder) // cleansed by mg_load
	if p == nil {
		return nil, fmt.Errorf("%w %q: load key: %s", ErrRSABackend, RSABackendOpenSSL, C.GoString(&errbuf[0]))
	}
	h := &pkey{}
	atomic.StorePointer(&h.p, unsafe.Pointer(p))
	ok := &opensslKey{h: h, pub: pub, size: int(C.mg_size(p))}
	// The safety net: a key nobody closed is freed once unreachable.
	ok.cleanup = runtime.AddCleanup(ok, (*pkey).free, h)

	digest := sha256.Sum256([]byte("mailgate openssl self-test"))
	sig, err := ok.Sign(nil, digest[:], crypto.SHA256)
	if err == nil {
		err = rsa.VerifyPKCS1v15(ok.pub, crypto.SHA256, digest[:], sig)
	}
	if err != nil {
		ok.Close()
		return nil, fmt.Errorf("%w %q: self-test signature: %v", ErrRSABackend, RSABackendOpenSSL, err)
	}
	return ok, nil
}

// Public returns the *rsa.PublicKey.
func (k *opensslKey) Public() crypto.PublicKey { return k.pub }

// Sign signs a SHA-256 digest with PKCS#1 v1.5 padding; rand is unused
// (the signature is deterministic, and libcrypto blinds with its own
// generator). Any other hash or PSS is refused.
func (k *opensslKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, pss := opts.(*rsa.PSSOptions); pss || opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("%w %q: only PKCS#1 v1.5 with SHA-256", ErrRSABackend, RSABackendOpenSSL)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("%w %q: digest is %d bytes, want %d", ErrRSABackend, RSABackendOpenSSL, len(digest), sha256.Size)
	}
	p := k.h.load()
	if p == nil {
		return nil, errOpenSSLClosed
	}
	sig := make([]byte, k.size)
	siglen := C.size_t(len(sig))
	var errbuf [errBufLen]C.char
	// Go memory passed to C for the call only (cgo pointer rules): digest
	// and sig hold no Go pointers.
	if C.mg_sign(p, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &siglen, &errbuf[0], errBufLen) != 1 {
		return nil, fmt.Errorf("%w %q: %s", ErrRSABackend, RSABackendOpenSSL, C.GoString(&errbuf[0]))
	}
	runtime.KeepAlive(k) // the cleanup must not free p during the call
	return sig[:siglen], nil
}

// Close frees the EVP_PKEY. The caller guarantees no Sign is running or
// will start (the keyring's reference count does); Close is idempotent.
func (k *opensslKey) Close() {
	k.cleanup.Stop()
	k.h.free()
}

// opensslCounts reports the EVP_PKEYs and EVP_PKEY_CTXs made and freed so
// far, for the leak tests.
func opensslCounts() (pkeysMade, pkeysFreed, ctxsMade, ctxsFreed int64) {
	var c [4]C.long
	C.mg_counts(&c[0])
	return int64(c[0]), int64(c[1]), int64(c[2]), int64(c[3])
}

// cHeapInUse is the C heap in use in bytes (glibc's mallinfo2 uordblks),
// for the leak tests: libcrypto allocates with malloc. -1 when the C
// library cannot tell.
func cHeapInUse() int64 { return int64(C.mg_heap()) }
