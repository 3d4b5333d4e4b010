# The policy block of a mailgate configuration using these examples.
# Paths are relative to the directory of the configuration file.
policy {
  # Rego: every .rego module (except *_test.rego) and data.json here.
  rego {
    name     = "org"
    path     = "."
    mode     = "enforce"   # enforce | dry-run            (default enforce)
    on_error = "defer"     # defer (451 4.3.0) | accept   (default defer)
    package  = "mailgate"  #                              (default mailgate)
    allow_io = false       # http.send, net.lookup_ip_addr, opa.runtime (default false)
  }

  # HCL rules, evaluated after the Rego policy.
  rules {
    name     = "local"
    path     = "rules.hcl"
    mode     = "dry-run"
    on_error = "defer"
  }

  # decision_log   = "/var/log/mailgate/decisions.jsonl"  # default: none
  # watch_interval = "5s"                                 # default 5s
}
