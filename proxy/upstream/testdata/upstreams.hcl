upstream "primary" {
  address  = "mail.internal:587"
  tls      = "starttls"
  username = "relay@example.com"
  password = "s3cret"
  helo     = "mailgate.example.com"
  pool_size = 8
  max_messages_per_connection = 100
  connect_timeout = "15s"
  command_timeout = "60s"
  data_timeout    = "10m"
  idle_timeout    = "60s"
  insecure_skip_verify = false
  server_name = ""
  ca_file = ""
}

upstream "backup" {
  address   = "backup.internal:465"
  tls       = "implicit"
  pool_size = 0
}
