# The embedded default: what `go run ./cmd/mailgate` runs with no config.
# A self-contained demo on loopback that shows relay, policy and signing:
#   - STARTTLS with a self-signed certificate made at start;
#   - one user whose random password is printed;
#   - the demo policy (cmd/mailgate/demo/policy.rego, embedded): MAIL FROM
#     and every From: address must be the login;
#   - DKIM signing for the user's domain with an RSA-2048 and an Ed25519
#     key made at start (their DNS TXT records are printed);
#   - a sending quota: 100 messages an hour per login (docs/quotas.md);
#   - an outbox that writes every accepted message into ./mailgate-outbox
#     (a Maildir) instead of relaying it, printing each file's path.
# Users file, keys and policy live in a private temporary directory that
# is removed when mailgate stops. A dkim or policy block here would replace
# the demo's own.
hostname = "localhost"

listener "submission" {
  address = "127.0.0.1:2525"
  tls     = "starttls"
  auth    = "required"
}

demo {
  user = "demo@example.com" # its domain is the DKIM signing domain
}

quota "per-login" {
  key      = auth.user
  when     = auth != null
  messages = ["100/1h"]
}

outbox {
  maildir = "./mailgate-outbox"
}

log {
  format = "text"
  level  = "info"
}
