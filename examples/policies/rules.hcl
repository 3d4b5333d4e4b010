# Example HCL rules for mailgate. Rules run in file order for their stage;
# the first matching reject ends evaluation, an accept ends it too
# (allow-list), defer and warn rules let evaluation continue.

# The monitoring probe on localhost may submit without authentication.
rule "local-monitoring" {
  stage  = "mail"
  when   = auth == null && cidr_contains("127.0.0.0/8", session.client_ip) && envelope.from == "monitor@example.com"
  action = "accept"
}

rule "sender-matches-login" {
  stage         = "mail"
  when          = auth != null && lower(envelope.from) != lower(auth.user) && domain(envelope.from) != domain(auth.user)
  action        = "reject"
  code          = 550
  enhanced_code = "5.7.1"
  message       = "you may only send as ${auth.user}"
}

# contains(…, false): some From: address is outside the login's domain. (A
# list of comparisons; filtering the addresses and counting them costs more.)
rule "from-header-matches-login" {
  stage   = "data"
  when    = auth != null && contains([for a in message.from_addresses : domain(a) == domain(auth.user)], false)
  action  = "reject"
  message = "From: must be in ${domain(auth.user)}"
}

rule "incident-paused-domain" {
  stage         = "rcpt"
  when          = contains(["broken.example"], rcpt.domain)
  action        = "defer"
  enhanced_code = "4.7.1"
  message       = "mail to ${rcpt.domain} is paused, retry later"
}

rule "no-bare-ip-helo" {
  stage   = "mail"
  when    = regex("^\\[?[0-9.]+\\]?$", session.helo)
  action  = "warn"
  message = "client greeted with a bare IP address"
}

# can(x) is false when x fails: here, when the message has no such header.
# (It reads one header; keys(message.headers) would list them all.)
rule "bulk-list-unsubscribe" {
  stage   = "data"
  when    = auth != null && startswith(lower(auth.user), "news@") && !can(message.headers["list-unsubscribe"])
  action  = "warn"
  message = "bulk mail without List-Unsubscribe"
}

rule "tag-and-sign" {
  stage       = "data"
  when        = endswith(envelope.from_domain, "example.com")
  action      = "accept"
  add_headers = { "X-Mailgate-Policy" = "local" }
  dkim_domain = envelope.from_domain
}
