package proxy

import "testing"

func TestMailboxReserialization(t *testing.T) {
	cases := []struct {
		in, want string
		code     int
	}{
		{"alice@example.com", "alice@example.com", 0},
		{"john doe@example.com", `"john doe"@example.com`, 0},
		{`a"b@example.com`, `"a\"b"@example.com`, 0},
		{".lead@example.com", `".lead"@example.com`, 0},
		{"user@[192.0.2.1]", "user@[192.0.2.1]", 0},
		{"user@[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]", 0},
		{"user@[999.1.1.1]", "", 553},
		{"a%b@example.com", "", 553},
		{"host!user@example.com", "", 553},
		{"\x01relay:user@example.com", "", 553},
		{"us\ter@example.com", "", 553},
		{"user@-bad.example", "", 553},
		{"user@", "", 553},
		{"@example.com", "", 553},
		{"jörg@example.com", "", 553}, // needs SMTPUTF8
	}
	for _, tc := range cases {
		mb, err := parseMailbox(tc.in, false, false)
		if tc.code != 0 {
			if err == nil || err.Code != tc.code {
				t.Errorf("%q: got %v, want %d", tc.in, err, tc.code)
			}
			continue
		}
		if err != nil || mb.String() != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, mb.String(), err, tc.want)
		}
	}
	if mb, err := parseMailbox("jörg@bücher.example", false, true); err != nil || mb.String() != "jörg@bücher.example" {
		t.Errorf("SMTPUTF8 address: %q %v", mb.String(), err)
	}
	if mb, err := parseMailbox("", true, false); err != nil || mb.String() != "" {
		t.Errorf("null sender: %q %v", mb.String(), err)
	}
}
