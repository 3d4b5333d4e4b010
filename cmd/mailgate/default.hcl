# The embedded default: what `go run ./cmd/mailgate` runs with no config.
# A self-contained demo on loopback: STARTTLS with a certificate made at
# start, one demo user whose password is printed, and an outbox that
# writes every accepted message into ./mailgate-outbox (a Maildir)
# instead of relaying it.
hostname = "localhost"

listener "submission" {
  address = "127.0.0.1:2525"
  tls     = "starttls"
  auth    = "required"
}

demo {
  user = "demo@example.com"
}

outbox {
  maildir = "./mailgate-outbox"
}

log {
  format = "text"
  level  = "info"
}
