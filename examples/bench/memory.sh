#!/usr/bin/env bash
# memory.sh — mailgate's memory under two loads, on loopback only:
#   1. IDLE idle sessions (default 1,000) held open at once: RSS (target < 64 MB);
#   2. BIG concurrent messages of SIZE_MB each (default 50 × 20 MB): peak RSS
#      (target < 200 MB; bodies past spool_threshold go to temporary files).
# mailgate relays into Postfix's smtp-sink; every process started here is
# stopped by PID on exit. Usage: examples/bench/memory.sh [-idle N] [-big N] [-size MB]
set -euo pipefail
IDLE=1000 BIG=50 SIZE_MB=20
while (($#)); do
  case $1 in
    -idle) IDLE=$2; shift 2 ;;
    -big) BIG=$2; shift 2 ;;
    -size) SIZE_MB=$2; shift 2 ;;
    *) echo "usage: $0 [-idle N] [-big N] [-size MB]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="/usr/local/go/bin:$PATH:/usr/sbin:/sbin"
command -v smtp-sink >/dev/null || {
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix </dev/null >/dev/null
}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port) MG_PORT=$(free_port)
(cd "$ROOT" && go build -o "$TMP/mailgate" ./cmd/mailgate)
ulimit -n 65536 2>/dev/null || true
mkdir -p "$TMP/sink"
smtp-sink -u nobody -c 127.0.0.1:"$SINK_PORT" 2000 >/dev/null 2>&1 &
PIDS+=($!)
cat >"$TMP/mailgate.hcl" <<HCL
hostname = "bench.test"
listener "relay" {
  address          = "127.0.0.1:$MG_PORT"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
upstream "sink" {
  address   = "127.0.0.1:$SINK_PORT"
  tls       = "none"
  pool_size = 64
}
limits {
  max_connections        = $((IDLE + BIG + 100))
  max_connections_per_ip = $((IDLE + BIG + 100))
  max_message_size       = $(((SIZE_MB + 1) * 1048576))
}
message { spool_dir = "$TMP" }
log { level = "warn" }
HCL
"$TMP/mailgate" serve -config "$TMP/mailgate.hcl" 2>"$TMP/mailgate.log" &
MG=$!
PIDS+=("$MG")
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$MG_PORT") 2>/dev/null && break; sleep 0.1; done
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
base=$(rss "$MG" VmRSS)

/usr/bin/python3 - "$MG_PORT" "$IDLE" <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.recv(512)                       # greeting
    s.sendall(b"EHLO idle.test\r\n"); s.recv(4096)
    socks.append(s)
open("/dev/stdout", "w").write("ready\n")
time.sleep(6)
PY
IDLE_PID=$!
PIDS+=("$IDLE_PID")
sleep 4
idle_rss=$(rss "$MG" VmRSS)
wait "$IDLE_PID" || true

/usr/bin/python3 - "$MG_PORT" "$BIG" "$SIZE_MB" <<'PY'
import smtplib, sys, threading
port, n, mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line = b"x" * 998 + b"\r\n"
body = b"From: big@example.com\r\nSubject: big\r\n\r\n" + line * (mb * 1048576 // len(line))
errors = []
def send():
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=300)
        s.sendmail("big@example.com", ["sink@example.net"], body)
        s.quit()
    except Exception as e:
        errors.append(e)
ts = [threading.Thread(target=send) for _ in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
if errors:
    sys.exit("failures: %d, first: %r" % (len(errors), errors[0]))
PY
peak=$(rss "$MG" VmHWM)
printf '| measure | mailgate RSS | target |\n|---|---|---|\n'
printf '| started, idle | %d MB | |\n' $((base / 1024))
printf '| %d idle sessions | %d MB | < 64 MB |\n' "$IDLE" $((idle_rss / 1024))
printf '| peak with %d concurrent %d MB messages | %d MB | < 200 MB |\n' "$BIG" "$SIZE_MB" $((peak / 1024))
