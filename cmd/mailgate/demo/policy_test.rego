package mailgate_test

import data.mailgate

login := {"user": "demo@example.com", "mechanism": "PLAIN"}

test_own_address_accepted if {
	count(mailgate.deny) == 0 with input as {"stage": "mail", "auth": login, "envelope": {"from": "Demo@Example.com"}}
}

test_other_envelope_sender_denied if {
	some d in mailgate.deny with input as {"stage": "mail", "auth": login, "envelope": {"from": "ceo@example.com"}}
	d.id == "sender-is-login"
}

test_from_header_aligned_accepted if {
	count(mailgate.deny) == 0 with input as {"stage": "data", "auth": login, "message": {"from_addresses": ["demo@example.com"]}}
}

test_forged_from_header_denied if {
	some d in mailgate.deny with input as {"stage": "data", "auth": login, "message": {"from_addresses": ["ceo@example.org"]}}
	d.id == "from-is-login"
}

test_one_of_two_from_addresses_forged_denied if {
	some d in mailgate.deny with input as {"stage": "data", "auth": login, "message": {"from_addresses": ["demo@example.com", "ceo@example.org"]}}
	d.id == "from-is-login"
}
