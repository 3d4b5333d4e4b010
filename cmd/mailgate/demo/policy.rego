# The demo policy (embedded in the mailgate binary; `go run ./cmd/mailgate`
# writes it next to the demo's keys and prints where). Two rules that every
# submission server should have: you send as the address you logged in
# with, in the envelope (MAIL FROM, stage mail) and in the From: header
# that the recipient sees and that DMARC aligns with (stage data).
package mailgate

# Envelope sender alignment: MAIL FROM must be the login.
deny contains {
	"id": "sender-is-login",
	"msg": sprintf("you logged in as %s: MAIL FROM must be that address", [input.auth.user]),
} if {
	input.stage == "mail"
	input.auth != null
	lower(input.envelope.from) != lower(input.auth.user)
}

# From: header alignment: every From: address must be the login. (A
# message without From: is refused by mailgate itself: it cannot be
# signed for any domain.)
deny contains {
	"id": "from-is-login",
	"msg": sprintf("From: %s is not %s, the address you logged in with", [addr, input.auth.user]),
} if {
	input.stage == "data"
	input.auth != null
	some addr in input.message.from_addresses
	lower(addr) != lower(input.auth.user)
}
