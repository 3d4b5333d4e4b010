# One configuration for every instance of the fleet (run.sh); each instance
# gets its own ports from the environment, as a real fleet gets its own
# address. Everything listens on loopback: this is a runnable example, not
# a production setup (see ../loadbalanced.hcl for that).
hostname = "mailgate.fleet.test"

listener "submission" {
  address             = "127.0.0.1:${env("MG_SMTP_PORT")}"
  tls                 = "none"
  allow_insecure_auth = true             # loopback only; use STARTTLS for real
  proxy_protocol      = ["127.0.0.1/32"] # only HAProxy may connect
}

# The same users file on every instance; failure counters shared in Redis,
# so guessing cannot be spread over instances.
auth {
  users_file    = env("FLEET_USERS")
  user_failures = 3
}

redis {
  address    = env("FLEET_REDIS")
  key_prefix = "fleet:"
}

upstream "relay" {
  address = env("FLEET_UPSTREAM")
  tls     = "none"
}

# Quota counters live in Redis too: a login's limit holds across instances.
quota "per-login" {
  key      = auth.user
  when     = auth != null
  messages = ["100/1h"]
}
quota "trial" {
  key      = auth.user
  when     = auth != null && auth.user == "trial@example.com"
  messages = ["2/1h"]
}

# The policy comes from the fleet's bundle server (run.sh, publish.sh):
# signed bundles only, polled every FLEET_BUNDLE_POLLING; the last good one
# is cached per instance, so a restart during a bundle-server outage still
# serves. Until an instance has a bundle it defers mail and /readyz says
# why, so HAProxy sends it nothing.
policy {
  rego {
    name = "fleet"
    bundle {
      url       = env("FLEET_BUNDLE_URL")
      polling   = env("FLEET_BUNDLE_POLLING")
      cache_dir = env("MG_BUNDLE_CACHE")
      verification {
        public_key_file = env("FLEET_BUNDLE_KEY") # the private key never leaves the publisher
      }
    }
  }
}

# /readyz for HAProxy's health check, /metrics for Prometheus.
metrics {
  address        = "127.0.0.1:${env("MG_METRICS_PORT")}"
  probe_interval = "1s"
  shutdown_delay = "2s" # above haproxy.cfg's inter 500ms x fall 2
}

log {
  format = "json"
}
