package policy

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParseInput: ParseInput never panics, and what it accepts converts to
// both engine representations, with Normalize idempotent.
func FuzzParseInput(f *testing.F) {
	f.Add([]byte(`{"stage":"mail","envelope":{"from":"a@Example.com"}}`))
	f.Add([]byte(`{"stage":"rcpt","rcpt":{"address":"x@y"},"auth":{"user":"u","mechanism":"PLAIN"}}`))
	f.Add([]byte(`{"stage":"data","message":{"headers":{"from":["a"]},"from_addresses":["a@b"]}}`))
	f.Add([]byte(`{"stage":"data","message":null,"session":{"tls":{"version":"TLS1.3"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := ParseInput(data)
		if err != nil {
			return
		}
		if again := in.Normalize(); !reflect.DeepEqual(again, in) {
			t.Fatalf("Normalize not idempotent:\n%+v\n%+v", in, again)
		}
		_ = astValue(&in)
		for name := range schemaTypes {
			v := ctyVar(&in, name)
			if !v.Type().Equals(schemaTypes[name]) {
				t.Fatalf("%s: type %s, want %s", name, v.Type().FriendlyName(), schemaTypes[name].FriendlyName())
			}
		}
	})
}

// FuzzSanitizeMessage: a reply text is one non-empty line of printable
// ASCII no longer than maxMessageLen, whatever a policy returns.
func FuzzSanitizeMessage(f *testing.F) {
	f.Add("you may only send as a@example.com")
	f.Add("bad\r\n250 OK\r\n")
	f.Add("\x00\x7f\u00e9\u2028")
	f.Add(strings.Repeat("x", 1000))
	f.Fuzz(func(t *testing.T, s string) {
		out := sanitizeMessage(s, "fallback")
		if out == "" || len(out) > maxMessageLen {
			t.Fatalf("length %d", len(out))
		}
		for i := 0; i < len(out); i++ {
			if out[i] < 0x20 || out[i] > 0x7e {
				t.Fatalf("byte %#x in %q", out[i], out)
			}
		}
	})
}
