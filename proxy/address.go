package proxy

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/proxy/replies"
)

// mailbox is an envelope address as checked by policy. String returns the
// exact form sent upstream, so that what the upstream sees is what policy
// saw (no re-interpretation of quotes, routes or percent hacks downstream).
type mailbox struct {
	Local  string // unquoted local part
	Domain string // as given; address literals keep their brackets
}

// String re-serializes the mailbox per RFC 5321 §4.1.2: the local part as
// a dot-string when it is one, else as a quoted-string.
func (m mailbox) String() string {
	if m.Local == "" && m.Domain == "" {
		return ""
	}
	return quoteLocal(m.Local) + "@" + m.Domain
}

// parseMailbox checks an address go-smtp has already parsed (source
// routes removed, quotes undone). The null reverse-path "" is allowed only
// when nullOK. utf8OK is true when the client said SMTPUTF8.
func parseMailbox(addr string, nullOK, utf8OK bool) (mailbox, *smtp.SMTPError) {
	if addr == "" {
		if nullOK {
			return mailbox{}, nil
		}
		return mailbox{}, replies.BadAddressEmpty
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return mailbox{}, replies.BadAddressForm
	}
	local, domain := addr[:at], addr[at+1:]
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		if c < 0x20 || c == 0x7f {
			// 0x01 is how clientConn marks a source route "<@a:b@c>".
			return mailbox{}, replies.BadAddressRoute
		}
		if c >= 0x80 && !utf8OK {
			return mailbox{}, replies.NonASCIIAddress
		}
	}
	if !utf8.ValidString(addr) {
		return mailbox{}, replies.BadAddressUTF8
	}
	if len(local) > 64 || len(domain) > 255 {
		return mailbox{}, replies.BadAddressLength
	}
	// Percent hacks and bang paths ask a relay to route on the local part;
	// a submission proxy never should (RFC 5321 §3.6, Postfix
	// allow_percent_hack / swap_bangpath).
	if strings.ContainsAny(local, "%!@") || strings.ContainsAny(domain, "%!@") {
		return mailbox{}, replies.BadAddressRouting
	}
	if !validDomain(domain) {
		return mailbox{}, replies.BadAddressDomain
	}
	return mailbox{Local: local, Domain: domain}, nil
}

func validDomain(d string) bool {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return false
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(lit, "IPv6:"); ok {
			a, err := netip.ParseAddr(v6)
			return err == nil && a.Is6()
		}
		a, err := netip.ParseAddr(lit)
		return err == nil && a.Is4()
	}
	if strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if r < 0x80 && !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// quoteLocal returns local as a dot-string if it is one, else quoted.
func quoteLocal(local string) string {
	if isDotString(local) {
		return local
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	return b.String()
}

func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", rune(c)) {
			return false
		}
	}
	return true
}
