# Fixtures for rules.hcl, run by `mailgate policy test` and `go test`.
# Each input is a partial input document; missing fields take defaults.

case "own address passes" {
  input   = { stage = "mail", auth = { user = "a@example.com", mechanism = "PLAIN" }, envelope = { from = "a@example.com" } }
  outcome = "accept"
}

case "own domain passes" {
  input   = { stage = "mail", auth = { user = "a@example.com", mechanism = "PLAIN" }, envelope = { from = "noreply@Example.com" } }
  outcome = "accept"
}

case "rejects spoofed sender" {
  input   = { stage = "mail", auth = { user = "a@example.com", mechanism = "PLAIN" }, envelope = { from = "b@example.net" } }
  outcome = "reject"
  rule    = "sender-matches-login"
  message = "you may only send as a@example.com"
}

case "unauthenticated is not this rule's business" {
  input   = { stage = "mail", auth = null, envelope = { from = "b@example.net" } }
  outcome = "accept"
}

case "monitoring probe is allow-listed" {
  input   = { stage = "mail", auth = null, session = { client_ip = "127.0.0.1", helo = "1.2.3.4" }, envelope = { from = "monitor@example.com" } }
  outcome = "accept"
  rule    = "local-monitoring"
  # the accept ended evaluation: the bare-IP warning did not run
  warnings = []
}

case "bare IP greeting warns" {
  input    = { stage = "mail", session = { helo = "[192.0.2.7]" }, envelope = { from = "x@example.com" } }
  outcome  = "accept"
  warnings = ["no-bare-ip-helo"]
}

case "From header outside the user's domain" {
  input   = { stage = "data", auth = { user = "a@example.com", mechanism = "LOGIN" }, envelope = { from = "a@example.com" }, message = { from_addresses = ["a@example.com", "ceo@example.net"] } }
  outcome = "reject"
  rule    = "from-header-matches-login"
}

case "incident domain deferred" {
  input   = { stage = "rcpt", rcpt = { address = "x@broken.example" } }
  outcome = "defer"
  rule    = "incident-paused-domain"
  message = "broken.example"
}

case "other domain passes rcpt" {
  input   = { stage = "rcpt", rcpt = { address = "x@fine.example" } }
  outcome = "accept"
}

case "bulk without unsubscribe warns, then signs" {
  input    = { stage = "data", auth = { user = "news@example.com", mechanism = "PLAIN" }, envelope = { from = "news@example.com" }, message = { from_addresses = ["news@example.com"], headers = { subject = ["hi"] } } }
  outcome  = "accept"
  rule     = "tag-and-sign"
  warnings = ["bulk-list-unsubscribe"]
}

case "bulk with unsubscribe is quiet" {
  input    = { stage = "data", auth = { user = "news@example.com", mechanism = "PLAIN" }, envelope = { from = "news@example.com" }, message = { from_addresses = ["news@example.com"], headers = { "list-unsubscribe" = ["<https://example.com/u>"] } } }
  outcome  = "accept"
  warnings = []
}
