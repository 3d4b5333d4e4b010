# Example organization policy for mailgate (Rego v1).
#
# Input: the mailgate input document (see docs/policy.md, "The input document").
# Data:  data.org, from data.json in this directory.
#
# deny    -> 5xx (default 550 5.7.1), defer -> 4xx (default 451 4.7.1),
# warn    -> logged only, actions -> headers, DKIM domain, upstream.
package mailgate

cfg := data.org

user := lower(input.auth.user)

user_domain := domain_of(user)

# domain_of returns the lower-cased domain part of an address.
domain_of(addr) := lower(substring(addr, indexof(addr, "@") + 1, -1)) if contains(addr, "@")

delegations := object.get(cfg.send_as, user, [])

# may_send_as holds when the authenticated user may use addr as a sender:
# their own address, any address of their own domain, or a delegation
# (a full address, or a whole domain) from data.org.send_as.
may_send_as(addr) if lower(addr) == user

may_send_as(addr) if domain_of(addr) == user_domain

may_send_as(addr) if {
	some d in delegations
	contains(d, "@")
	lower(d) == lower(addr)
}

may_send_as(addr) if {
	some d in delegations
	not contains(d, "@")
	lower(d) == domain_of(addr)
}

# Submission requires authentication (RFC 6409 §4.3, 530 5.7.0).
deny contains {
	"id": "auth-required",
	"msg": "authentication required",
	"code": 530,
	"enhanced_code": "5.7.0",
} if {
	input.stage == "mail"
	input.auth == null
	input.session.listener == "submission"
}

# Envelope sender alignment (stage mail). The null sender <> (bounces) is
# left to the upstream.
deny contains {
	"id": "envelope-sender-alignment",
	"msg": sprintf("you may not send as %s", [input.envelope.from]),
} if {
	input.stage == "mail"
	input.auth != null
	input.envelope.from != ""
	not may_send_as(input.envelope.from)
}

# From header alignment (stage data): every From: address must be one the
# user may send as; a message without From: is refused (RFC 5322 §3.6).
deny contains {
	"id": "from-header-alignment",
	"msg": sprintf("From: %s is not an address you may send as", [addr]),
} if {
	input.stage == "data"
	input.auth != null
	some addr in input.message.from_addresses
	not may_send_as(addr)
}

deny contains {
	"id": "from-header-missing",
	"msg": "message has no From: header",
	"code": 550,
	"enhanced_code": "5.6.0",
} if {
	input.stage == "data"
	count(input.message.from_addresses) == 0
}

# External recipients only for the users listed in external_senders.
# mailgate lower-cases input.rcpt.domain and input.envelope.from_domain
# (docs/policy.md), so they are compared as they are: no lower(), and no
# helper function, which costs a call per evaluation.
deny contains {
	"id": "external-recipient",
	"msg": "you may not send to recipients outside the organization",
} if {
	input.stage == "rcpt"
	not input.rcpt.domain in cfg.internal_domains
	not user in cfg.external_senders
}

# Recipients per message, capped per sender; default_max_recipients for
# senders not listed and for unauthenticated clients (452 4.5.3: the
# client sends the rest in another transaction, RFC 5321 §4.5.3.1.10).
# One lookup in a map keyed by sender: a comprehension over groups of
# members would be evaluated on every recipient of every message.
max_recipients := n if {
	n := cfg.max_recipients[user]
} else := cfg.default_max_recipients

defer contains {
	"id": "too-many-recipients",
	"msg": sprintf("at most %d recipients per message", [max_recipients]),
	"code": 452,
	"enhanced_code": "4.5.3",
} if {
	input.stage == "rcpt"
	count(input.envelope.recipients) >= max_recipients
}

# Incident switch: mail to some domains is deferred, not refused.
defer contains {
	"id": "incident-deferred-domain",
	"msg": sprintf("mail to %s is paused: %s", [input.rcpt.domain, cfg.incident.reason]),
} if {
	input.stage == "rcpt"
	input.rcpt.domain in cfg.incident.deferred_domains
}

# Bulk senders should offer one-click unsubscribe (RFC 8058).
warn contains {
	"id": "bulk-list-unsubscribe",
	"msg": "bulk mail without List-Unsubscribe",
} if {
	input.stage == "data"
	user in cfg.bulk_senders
	not input.message.headers["list-unsubscribe"]
}

# Quotas (mailgate.hcl quota blocks, docs/quotas.md): warn when a key has
# used 80 % of a message window, so someone looks before the quota refuses.
# (input.quota rather than object.get(input, …): a policy that passes the
# whole input to a function makes mailgate build all of it at every stage.)
warn contains {
	"id": "quota-near-limit",
	"msg": sprintf("quota %s at %d%% of %s", [name, pct, w.window]),
} if {
	input.stage == "mail"
	some name, q in input.quota
	some w in q.messages
	pct := round((w.used * 100) / w.limit)
	pct >= 80
}

# Sign with the envelope domain when it is ours.
actions := {"dkim_domain": input.envelope.from_domain} if {
	input.stage == "data"
	input.envelope.from_domain in cfg.internal_domains
}
