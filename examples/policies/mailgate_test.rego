package mailgate_test

import data.mailgate

base := {
	"version": 1,
	"session": {"id": "t", "listener": "submission", "client_ip": "192.0.2.1", "helo": "h", "tls": null},
	"auth": {"user": "alice@example.com", "mechanism": "PLAIN"},
	"envelope": {"from": "alice@example.com", "from_domain": "example.com", "recipients": [], "size": 0, "smtputf8": false},
}

mail(auth, from) := object.union(base, {
	"stage": "mail",
	"auth": auth,
	"envelope": object.union(base.envelope, {"from": from, "from_domain": mailgate.domain_of(from)}),
})

rcpt(user, to, n) := object.union(base, {
	"stage": "rcpt",
	"auth": {"user": user, "mechanism": "PLAIN"},
	"envelope": object.union(base.envelope, {"from": user, "recipients": [sprintf("r%d@example.com", [i]) | some i in numbers.range(1, n)]}),
	"rcpt": {"address": to, "domain": mailgate.domain_of(to)},
})

data_stage(user, from_addrs, headers) := object.union(base, {
	"stage": "data",
	"auth": {"user": user, "mechanism": "PLAIN"},
	"envelope": object.union(base.envelope, {"from": user, "from_domain": mailgate.domain_of(user)}),
	"message": {"headers": headers, "from_addresses": from_addrs, "size": 100},
})

ids(set) := {x.id | some x in set}

alice := {"user": "alice@example.com", "mechanism": "PLAIN"}

carol := {"user": "carol@example.com", "mechanism": "PLAIN"}

test_own_address_allowed if {
	count(mailgate.deny) == 0 with input as mail(alice, "alice@example.com")
}

test_own_domain_allowed if {
	count(mailgate.deny) == 0 with input as mail(carol, "noreply@example.com")
}

test_spoofed_sender_denied if {
	"envelope-sender-alignment" in ids(mailgate.deny) with input as mail(carol, "ceo@example.net")
}

test_sender_case_insensitive if {
	count(mailgate.deny) == 0 with input as mail({"user": "Alice@Example.com", "mechanism": "PLAIN"}, "ALICE@example.COM")
}

test_delegated_address_allowed if {
	count(mailgate.deny) == 0 with input as mail(alice, "sales@example.com")
}

test_delegated_domain_allowed if {
	count(mailgate.deny) == 0 with input as mail(alice, "anyone@example.net")
}

test_delegation_is_per_user if {
	"envelope-sender-alignment" in ids(mailgate.deny) with input as mail({"user": "bob@example.com", "mechanism": "PLAIN"}, "anyone@example.net")
}

test_unauthenticated_submission_denied if {
	"auth-required" in ids(mailgate.deny) with input as mail(null, "alice@example.com")
}

test_auth_required_reply_code if {
	some d in mailgate.deny with input as mail(null, "alice@example.com")
	d.code == 530
	d.enhanced_code == "5.7.0"
}

test_from_header_aligned if {
	count(mailgate.deny) == 0 with input as data_stage("alice@example.com", ["alice@example.com"], {"from": ["Alice <alice@example.com>"]})
}

test_from_header_spoofed_denied if {
	"from-header-alignment" in ids(mailgate.deny) with input as data_stage("carol@example.com", ["ceo@example.net"], {"from": ["ceo@example.net"]})
}

test_from_header_one_of_several_spoofed_denied if {
	"from-header-alignment" in ids(mailgate.deny) with input as data_stage("carol@example.com", ["carol@example.com", "ceo@example.net"], {})
}

test_from_header_missing_denied if {
	"from-header-missing" in ids(mailgate.deny) with input as data_stage("alice@example.com", [], {})
}

test_internal_recipient_allowed if {
	count(mailgate.deny) == 0 with input as rcpt("carol@example.com", "dave@example.org", 0)
}

test_external_recipient_denied_for_ordinary_user if {
	"external-recipient" in ids(mailgate.deny) with input as rcpt("carol@example.com", "x@gmail.example", 0)
}

test_external_recipient_allowed_for_listed_user if {
	count(mailgate.deny) == 0 with input as rcpt("alice@example.com", "x@gmail.example", 0)
}

test_recipient_cap_default if {
	count(mailgate.defer) == 0 with input as rcpt("carol@example.com", "d@example.com", 19)
	"too-many-recipients" in ids(mailgate.defer) with input as rcpt("carol@example.com", "d@example.com", 20)
}

test_recipient_cap_per_sender if {
	count(mailgate.defer) == 0 with input as rcpt("alice@example.com", "d@example.com", 99)
	"too-many-recipients" in ids(mailgate.defer) with input as rcpt("alice@example.com", "d@example.com", 100)
	count(mailgate.defer) == 0 with input as rcpt("news@example.com", "d@example.com", 999)
	"too-many-recipients" in ids(mailgate.defer) with input as rcpt("news@example.com", "d@example.com", 1000)
}

# A client that did not authenticate (a relay listener) has the default cap.
test_recipient_cap_unauthenticated if {
	count(mailgate.defer) == 0 with input as object.union(rcpt("x@example.com", "d@example.com", 19), {"auth": null})
	"too-many-recipients" in ids(mailgate.defer) with input as object.union(rcpt("x@example.com", "d@example.com", 20), {"auth": null})
}

test_recipient_cap_reply_is_452 if {
	some d in mailgate.defer with input as rcpt("carol@example.com", "d@example.com", 20)
	d.code == 452
	d.enhanced_code == "4.5.3"
}

test_incident_domain_deferred if {
	"incident-deferred-domain" in ids(mailgate.defer) with input as rcpt("alice@example.com", "x@Broken.Example", 0)
}

test_bulk_without_unsubscribe_warns if {
	"bulk-list-unsubscribe" in ids(mailgate.warn) with input as data_stage("news@example.com", ["news@example.com"], {})
}

test_bulk_with_unsubscribe_quiet if {
	count(mailgate.warn) == 0 with input as data_stage("news@example.com", ["news@example.com"], {"list-unsubscribe": ["<https://example.com/u>"]})
}

test_dkim_domain_action if {
	mailgate.actions.dkim_domain == "example.com" with input as data_stage("alice@example.com", ["alice@example.com"], {})
}

quota_at(used) := object.union(mail(alice, "alice@example.com"), {"quota": {"per-login": {
	"key": "alice@example.com", "action": "defer", "exceeded": false,
	"messages": [{"window": "200/1h", "limit": 200, "used": used, "remaining": 200 - used, "retry_after": 0}],
	"recipients": [], "new_recipients": [],
}}})

test_quota_near_limit_warns if {
	"quota-near-limit" in ids(mailgate.warn) with input as quota_at(170)
	count(mailgate.deny) == 0 with input as quota_at(170)
}

test_quota_below_80_percent_quiet if {
	not "quota-near-limit" in ids(mailgate.warn) with input as quota_at(150)
}
