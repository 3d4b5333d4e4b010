# One of several identical mailgate instances behind HAProxy
# (examples/haproxy/haproxy.cfg). Instances keep no state: any of them can
# take any connection. HAProxy sends a PROXY protocol v2 header, so
# mailgate sees, limits, logs and decides on the real client address.
#
# Start each instance with its own address, e.g. MAILGATE_ADDR=10.0.0.11.
hostname = "mailgate.example.com"

listener "submission" {
  address        = "0.0.0.0:10587"
  tls            = "starttls"
  proxy_protocol = ["10.0.0.2/32", "10.0.0.3/32"] # the HAProxy pair
}

listener "submissions" {
  address        = "0.0.0.0:10465"
  tls            = "implicit"
  proxy_protocol = ["10.0.0.2/32", "10.0.0.3/32"]
}

tls {
  cert_file = "/etc/mailgate/tls/fullchain.pem"
  key_file  = "/etc/mailgate/tls/privkey.pem"
}

auth {
  users_file = "/etc/mailgate/users" # the same file on every instance
}

# AUTH failure counters shared by all instances.
redis {
  address  = "10.0.0.20:6379"
  password = env("MAILGATE_REDIS_PASS")
}

upstream "primary" {
  address  = "mail.internal.example.com:587"
  username = env("MAILGATE_UPSTREAM_USER")
  password = env("MAILGATE_UPSTREAM_PASS")
}

dkim {
  key "example.com" "mg2026r" { file = "/etc/mailgate/dkim/example.com.mg2026r.pem" }
}

# Metrics, /healthz and /readyz for Prometheus and HAProxy's health check
# (examples/haproxy/haproxy.cfg: check port 9151). Only the load
# balancers and Prometheus should reach this port.
metrics {
  address        = "0.0.0.0:9151"
  probe_interval = "10s" # upstreams and Redis, for /readyz
  shutdown_delay = "5s"  # SIGTERM: /readyz 503 this long before the listeners close
}

log {
  format = "json"
}
