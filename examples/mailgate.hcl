# mailgate.hcl — the complete configuration reference.
#
# Every option appears here once with its default. Relative paths are
# resolved against the directory of this file. Run `mailgate check -config
# mailgate.hcl` to validate it (it also probes the upstreams).
#
# Secrets come from the environment with env("VAR"); an unset variable is
# an error at load, never an empty password.

# Name used in the greeting, Received headers and generated Message-IDs.
hostname = "mailgate.example.com"

# ---------------------------------------------------------------------------
# Listeners: as many as you like; every port is configurable.
# tls  = "starttls" (default) | "implicit" | "none"
#        starttls: RFC 3207; TLS is required before AUTH and MAIL.
#        implicit: RFC 8314 TLS from the first byte (port 465).
# auth = "required" (default) | "none"
#        "none" needs trusted_networks: mailgate is never an open relay.
# trusted_networks: CIDRs allowed to connect (default: anyone); others are
#        refused at connect with 554 5.7.1.
# allow_insecure_auth: AUTH without TLS; only on a loopback address
#        (default false).
# proxy_protocol: load balancers (CIDRs) in front of this listener; their
#        connections must start with a PROXY v1/v2 header whose client address
#        is used for everything; other connections are refused (default: none,
#        see examples/loadbalanced.hcl).
listener "submission" {
  address = "0.0.0.0:587"
  tls     = "starttls"
  auth    = "required"
}

listener "submissions" {
  address = "0.0.0.0:465"
  tls     = "implicit"
  auth    = "required"
}

listener "relay" {
  address          = "10.0.0.5:2525"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["10.0.0.0/24", "127.0.0.1/32"]
}

# Server certificate for starttls/implicit listeners (PEM chain + key).
# Reloaded on SIGHUP; a broken file keeps the certificate in use.
# The policy defaults to Mozilla's "intermediate" profile: TLS 1.2 or 1.3,
# and in TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305 (no CBC
# suites: testssl.sh flags them for LUCKY13). cipher_suites takes Go's
# names (crypto/tls); TLS 1.0/1.1, insecure suites (RC4, 3DES, RSA key
# exchange, CBC-SHA256) and TLS 1.3 suites (always all on) are refused at
# load. Only change them for clients that cannot do better.
tls {
  cert_file     = "tls/fullchain.pem"
  key_file      = "tls/privkey.pem"
  min_version   = "1.2" # "1.2" | "1.3" (default "1.2")
  cipher_suites = [     # TLS 1.2 suites (default: these six)
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
  ]
}

# ---------------------------------------------------------------------------
# SMTP AUTH (PLAIN and LOGIN, only over TLS).
# users_file lines are "user:hash"; accepted hashes: bcrypt ($2y$/$2b$/$2a$),
# argon2id ($argon2id$…), and Dovecot-style {BLF-CRYPT}, {ARGON2ID},
# {SHA512-CRYPT}. Plaintext and weak schemes are refused at load.
# Make a hash with: mailgate passwd -user alice@example.com
# The users file is reloaded on SIGHUP.
auth {
  users_file     = "users"
  max_failures   = 3     # per connection, then the connection closes (default 3)
  ip_failures    = 20    # per client address (IPv6: per /64) per window (default 20)
  user_failures  = 10    # per user name per window (default 10)
  failure_window = "15m" # (default "15m")
}

# Shared state for several instances behind a load balancer: with a redis
# block, the AUTH failure counters above (ip_failures, user_failures) and
# the quota counters live in Redis, so every instance sees every failure
# and every message. If Redis cannot be reached, AUTH is refused with
# 454 4.7.0 (fail closed) and each quota does what its on_error says.
# Default: none (counters in each instance's memory).
# redis {
#   address    = "127.0.0.1:6379"
#   username   = ""                          # Redis 6 ACL user (default none)
#   password   = env("MAILGATE_REDIS_PASS")  # (default none)
#   db         = 0                           # (default 0)
#   tls        = false                       # (default false)
#   key_prefix = "mailgate:"                 # (default "mailgate:")
# }

# ---------------------------------------------------------------------------
# Upstreams, tried in order when connecting fails. The client gets 250 only
# after the upstream's 250; upstream trouble is always a 4xx.
upstream "primary" {
  address  = "mail.internal.example.com:587"
  tls      = "starttls"                  # none | starttls | implicit (default "starttls")
  username = env("MAILGATE_UPSTREAM_USER") # optional; AUTH PLAIN (or LOGIN)
  password = env("MAILGATE_UPSTREAM_PASS")
  helo     = "mailgate.example.com"      # default: hostname

  max_connections             = 100   # open (idle + in use) at most; then a transaction waits
                                      # up to connect_timeout for one, else 451 4.4.1 (default 100)
  pool_size                   = 100   # idle connections kept, each until idle_timeout;
                                      # 0 = no reuse (default: max_connections)
  max_messages_per_connection = 100   # then QUIT and reconnect (default 100)
  connect_timeout             = "30s" # dial + greeting + EHLO + TLS + AUTH (default "30s")
  command_timeout             = "5m"  # each command reply (default "5m")
  data_timeout                = "10m" # DATA body + final reply (default "10m")
  idle_timeout                = "60s" # lifetime of an idle pooled connection (default "60s")

  insecure_skip_verify = false # certificates are verified unless true (default false)
  server_name          = ""    # TLS name to verify (default: host of address)
  ca_file              = ""    # extra PEM CA bundle (default: system roots only)
  tls_min_version      = "1.2" # "1.2" | "1.3" (default "1.2")
  # TLS 1.2 suites offered to the upstream, same names and rules as the
  # tls block's cipher_suites (default: ECDHE with AES-GCM or ChaCha20 only;
  # an upstream that offers only CBC suites is refused, 451 4.4.1).
  # tls_cipher_suites  = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
}

upstream "backup" {
  address = "mail2.internal.example.com:25"
  tls     = "starttls"
}

# ---------------------------------------------------------------------------
# Limits. Every one has a safe default (Postfix's defaults are the model).
limits {
  max_message_size       = 10485760 # bytes; SIZE= at MAIL and during DATA (default 10 MiB)
  max_recipients         = 1000     # per message; then 452 4.5.3 (default 1000)
  max_line_length        = 1000     # bytes incl. CRLF, commands and body (default 1000)
  max_header_size        = 102400   # bytes of header section (default 100 KiB)
  # A deadline for a whole command line, the wait for it included; bytes of
  # the line do not extend it (Postfix smtpd_per_record_deadline): 421 4.4.2
  # (default "300s")
  command_timeout        = "300s"
  # A body (DATA or BDAT) may take data_timeout plus 1 s for every
  # min_data_rate bytes received, and may never stall for data_timeout:
  # a client slower than min_data_rate on average is cut off, 451 4.4.2
  # (Postfix smtpd_min_data_rate). At 500 bytes/s a 10 MiB message may take
  # up to 5.8 hours; raise it to free slots from slow senders sooner.
  data_timeout           = "300s"   # (default "300s")
  min_data_rate          = 500      # bytes per second (default 500)
  tls_handshake_timeout  = "30s"    # (default "30s")
  # From connect until the client has logged in (AUTH succeeded; EHLO/HELO
  # on an auth = "none" listener), STARTTLS and the TLS handshake included;
  # then 421 4.4.2. Stops connections that never log in from holding slots
  # by sending a command now and then. (default "60s")
  login_timeout          = "60s"
  max_connections        = 1000     # in total; then 421 (default 1000)
  max_connections_per_ip = 50       # per client address; then 421 (default 50)
}

# ---------------------------------------------------------------------------
# What happens to the message on its way through.
message {
  # Received header added on top (RFC 5321 §4.4):
  #   "private" (default): by HOSTNAME with ESMTPSA id …; no client IP or HELO
  #   "full": adds "from HELO ([client IP])"
  #   "none": no Received header
  received_header = "private"
  # Bodies larger than this many bytes go to a temporary file (default 1 MiB).
  spool_threshold = 1048576
  # Directory of those temporary files (default: the system temp directory).
  spool_dir = ""
}

# ---------------------------------------------------------------------------
# DKIM signing. The signing domain is the From header's domain; several keys
# for one domain sign once each (RSA + Ed25519, or old + new in a rotation).
# Keys are reloaded on SIGHUP; a broken key keeps the old keyring.
# Make a key: mailgate dkim keygen -domain example.com -selector mg2026r -algorithm rsa -out FILE
dkim {
  key "example.com" "mg2026r" {
    file = "dkim/example.com.mg2026r.pem" # PKCS#1/PKCS#8 RSA >= 1024 bits
  }
  key "example.com" "mg2026e" {
    file       = "dkim/example.com.mg2026e.pem" # PKCS#8 Ed25519
    subdomains = true                           # also sign for *.example.com (default false)
  }
  expiration = "120h"  # x= after t=; "0" disables x= (default "120h")
  unsigned   = "relay" # From domain without a key: "relay" unsigned or "reject" (default "relay")
  # headers  = [...]   # signed headers (default: From To Cc Subject Date Message-ID Reply-To
  #                    # In-Reply-To References MIME-Version Content-Type
  #                    # Content-Transfer-Encoding List-Id List-Unsubscribe List-Unsubscribe-Post)
  # oversign = [...]   # oversigned headers (default: every signed header)
  rsa_backend = "auto" # RSA signs with "openssl" when built with -tags openssl, else "go";
  #                    # or force "go" / "openssl" (default "auto")
}

# ---------------------------------------------------------------------------
# Policy: Rego and HCL rules, evaluated at MAIL, at each RCPT and after DATA.
# First reject wins, then first defer, else accept. See examples/policies.
policy {
  rego {
    name     = "org"
    path     = "policies"
    mode     = "enforce"  # enforce | dry-run (default "enforce")
    on_error = "defer"    # defer (451 4.3.0) | accept (default "defer")
    package  = "mailgate" # (default "mailgate")
    allow_io = false      # http.send and other I/O builtins (default false)
  }
  # Or, for a fleet, the Rego policy from an OPA bundle server instead of path
  # (build it with "mailgate policy bundle"; see docs/policy.md, "Policies from a bundle server"):
  # rego {
  #   name = "org"
  #   bundle {
  #     url       = "https://policy.example.com/bundles/mail.tar.gz" # required
  #     polling   = "60s"          # at least 1s; SIGHUP polls at once (default "60s")
  #     cache_dir = "bundle-cache" # last good bundle, used at start (default "bundle-cache")
  #     ca_file   = ""             # PEM CA for https (default: system roots)
  #     verification {             # only signed bundles (default: no signature check)
  #       public_key_file = "/etc/mailgate/bundle-signing.pub"
  #       algorithm       = "RS256" # (default "RS256")
  #       scope           = ""      # (default "")
  #     }
  #   }
  # }
  rules {
    name     = "local"
    path     = "policies/rules.hcl"
    mode     = "enforce"
    on_error = "defer"
  }
  decision_log   = ""   # JSON lines, one record per decision (default: none). Written by a
  #                     # background writer, flushed at least every second and on shutdown;
  #                     # reopened on SIGHUP (logrotate: rename, then SIGHUP). Replay it
  #                     # against a candidate policy with "mailgate policy replay"; see docs/replay.md.
  log_headers    = true # false: records of stage data keep header names, not values (default true)
  watch_interval = "5s" # how often policy files are checked for changes (default "5s")
  # A shadow chain: evaluated beside the enforcing one on the same input, never
  # enforced; disagreements are counted (mailgate_policy_shadow_disagreements_total)
  # and each decision log record carries "shadow": {...}. Same blocks as above;
  # name an engine like the enforcing engine it is a candidate for. (default: none)
  # shadow {
  #   rego {
  #     name = "org"
  #     path = "policies-next"
  #   }
  #   rules {
  #     name = "local"
  #     path = "policies-next/rules.hcl"
  #   }
  # }
}

# ---------------------------------------------------------------------------
# Quotas: how much each key may send. key and when are HCL expressions over
# the policy input document (like rule conditions); a key that refers to
# rcpt is checked per recipient. Windows are "COUNT/DURATION" (s, m, h, d,
# w); every window must have room. Units are reserved when checked (MAIL
# for messages, each RCPT for recipients) and counted only when the
# upstream says 250: refused, failed, reset or dropped transactions cost
# nothing. Counters live in memory, or in Redis with a redis block (exact
# across instances). Reloaded from this file on SIGHUP. See docs/quotas.md.
quota "per-login" {
  key        = auth.user                # one counter per login
  when       = auth != null             # optional: which transactions it applies to (default: all)
  messages   = ["200/1h", "1000/24h"]   # counted at MAIL
  recipients = ["2000/24h"]             # counted per accepted recipient
  action     = "defer"                  # defer (451 4.7.1) | reject (550 5.7.1) | warn (default "defer")
  on_error   = "defer"                  # counter store unreachable: defer (451 4.7.1) | accept (default "defer")
}
quota "per-destination" {
  key        = rcpt.domain              # per recipient: refuses only that recipient
  recipients = ["100/1m"]
}
quota "first-time-recipients" {
  key            = auth.user
  when           = auth != null
  new_recipients = ["200/24h"]          # recipients this login has not sent to within remember
  remember       = "30d"                # (default "30d")
}

# ---------------------------------------------------------------------------
# Prometheus metrics at http://ADDRESS/metrics (default: none): connections by
# listener and result, open connections, transactions by outcome and their
# duration, relayed message sizes, AUTH results and lockouts, policy
# decisions by stage, policy refusals by rule, quota refusals by quota,
# upstream errors by upstream, DKIM failures by reason, plus Go runtime and
# process metrics (docs/operations.md; a dashboard in examples/grafana,
# alerts in examples/prometheus). The same listener serves GET /healthz (200
# while the process serves) and GET /readyz (200 when the listeners are
# bound, the policy is loaded, an upstream answered its last probe and Redis
# answers; else 503 with what is missing) for load balancers. With quotas
# counted in memory it also serves GET /quota and POST /quota/reset (used by
# `mailgate quota show|reset`). Bind it to a private address.
metrics {
  address        = "127.0.0.1:9151"
  probe_interval = "10s" # how often /readyz probes the upstreams and Redis (default "10s")
  shutdown_delay = "5s"  # SIGTERM: /readyz is 503 this long before the listeners close (a
                         # second signal cuts it short); keep it above the load balancer's
                         # check interval x fall (default "5s")
}

# ---------------------------------------------------------------------------
log {
  format = "text" # text | json (default "text")
  level  = "info" # debug | info | warn | error (default "info")
}

# outbox { maildir = "./mailgate-outbox" }
#   Replaces the upstreams: accepted messages are written to a Maildir.
#   For trying mailgate out; the embedded default uses it.
