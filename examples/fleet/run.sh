#!/usr/bin/env bash
# Runs the fleet example on loopback: one Redis, a bundle server
# (bundle-server.py) with the policy as a signed bundle, three mailgate
# instances (mailgate.hcl) and HAProxy (haproxy.cfg) in front, plus an
# smtp-sink as the upstream unless FLEET_UPSTREAM names one. Stays in the
# foreground; SIGTERM or Ctrl-C stops everything it started.
#
#   MAILGATE=./mailgate examples/fleet/run.sh
#   swaks --server 127.0.0.1:2587 --auth-user alice@example.com \
#         --auth-password 'fleet demo password' --from alice@example.com --to bob@example.net
#   FLEET_DIR=... examples/fleet/publish.sh my-policy/   # a new signed bundle
#
# Environment (defaults): MAILGATE (mailgate; may be a command with
# arguments), FLEET_DIR (a new temporary directory: logs, pid files,
# users file, HAProxy's stats socket), FLEET_FRONT_PORT (2587),
# FLEET_REDIS_PORT (6391), FLEET_SINK_PORT (2526), FLEET_UPSTREAM (the
# sink), FLEET_SMTP_PORTS ("10587 10588 10589"), FLEET_METRICS_PORTS
# ("9151 9152 9153"), FLEET_PASSWORD (every user's password),
# FLEET_BUNDLE_PORT (8190), FLEET_BUNDLE_POLLING (5s).
# Users: alice@example.com, bob@example.com, trial@example.com (2 messages
# an hour). Instance N's pid is in $FLEET_DIR/mgN.pid, its log in mgN.log.
# The bundle signing key pair is $FLEET_DIR/bundle-signing.pem and .pub,
# the published bundle $FLEET_DIR/bundles/mail.tar.gz (revision 1: the
# policy/ directory), each instance's bundle cache $FLEET_DIR/mgN-cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -r -a mailgate <<<"${MAILGATE:-mailgate}"
export FLEET_DIR=${FLEET_DIR:-$(mktemp -d -t mailgate-fleet.XXXXXX)}
export FLEET_FRONT_PORT=${FLEET_FRONT_PORT:-2587}
redis_port=${FLEET_REDIS_PORT:-6391}
sink_port=${FLEET_SINK_PORT:-2526}
read -r -a smtp_ports <<<"${FLEET_SMTP_PORTS:-10587 10588 10589}"
read -r -a metrics_ports <<<"${FLEET_METRICS_PORTS:-9151 9152 9153}"
password=${FLEET_PASSWORD:-fleet demo password}
bundle_port=${FLEET_BUNDLE_PORT:-8190}
export FLEET_BUNDLE_POLLING=${FLEET_BUNDLE_POLLING:-5s}
PATH=$PATH:/usr/sbin:/sbin

pids=()
stop() {
  trap - EXIT TERM INT
  # Only what this script started, by pid: mailgate instances first (they
  # drain), then the bundle server, Redis, the sink and HAProxy.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' TERM INT

# The users file: one password hash per user (mailgate passwd).
export FLEET_USERS=$FLEET_DIR/users
: >"$FLEET_USERS"
for u in alice@example.com bob@example.com trial@example.com; do
  printf '%s\n' "$password" | "${mailgate[@]}" passwd -user "$u" >>"$FLEET_USERS"
done
chmod 600 "$FLEET_USERS"

# The policy: a signing key pair (the private key stays with whoever
# publishes, the public key goes to every instance), the first signed
# bundle, and a static file server for it. Instances start only once it
# answers, so each is ready (policy loaded) at its first poll.
export FLEET_SIGNING_KEY=$FLEET_DIR/bundle-signing.pem
export FLEET_BUNDLE_KEY=$FLEET_DIR/bundle-signing.pub
if [[ ! -e $FLEET_SIGNING_KEY ]]; then
  (umask 077 && openssl genrsa -out "$FLEET_SIGNING_KEY" 2048 2>/dev/null)
  openssl rsa -in "$FLEET_SIGNING_KEY" -pubout -out "$FLEET_BUNDLE_KEY" 2>/dev/null
fi
mkdir -p "$FLEET_DIR/bundles"
"$here/publish.sh" "$here/policy" 1 >/dev/null
python3 "$here/bundle-server.py" "$bundle_port" "$FLEET_DIR/bundles" \
  >"$FLEET_DIR/bundle-server.log" 2>&1 &
pids+=($!)
export FLEET_BUNDLE_URL=http://127.0.0.1:$bundle_port/mail.tar.gz
for _ in $(seq 100); do
  (: </dev/tcp/127.0.0.1/"$bundle_port") 2>/dev/null && break
  sleep 0.1
done

redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --dir "$FLEET_DIR" >"$FLEET_DIR/redis.log" 2>&1 &
pids+=($!)
export FLEET_REDIS=127.0.0.1:$redis_port

if [[ -z ${FLEET_UPSTREAM:-} ]]; then
  sink_user=()
  if [[ $EUID -eq 0 ]]; then sink_user=(-u nobody); fi # smtp-sink will not run as root
  smtp-sink "${sink_user[@]}" -c "127.0.0.1:$sink_port" 100 >"$FLEET_DIR/sink.log" 2>&1 &
  pids+=($!)
  export FLEET_UPSTREAM=127.0.0.1:$sink_port
fi

for i in 0 1 2; do
  n=$((i + 1))
  MG_SMTP_PORT=${smtp_ports[$i]} MG_METRICS_PORT=${metrics_ports[$i]} \
    MG_BUNDLE_CACHE=$FLEET_DIR/mg$n-cache \
    "${mailgate[@]}" serve -config "$here/mailgate.hcl" 2>"$FLEET_DIR/mg$n.log" &
  pids=("$!" "${pids[@]}") # stopped first
  echo "$!" >"$FLEET_DIR/mg$n.pid"
  export "MG${n}_SMTP_PORT=${smtp_ports[$i]}" "MG${n}_METRICS_PORT=${metrics_ports[$i]}"
done

haproxy -db -f "$here/haproxy.cfg" >"$FLEET_DIR/haproxy.log" 2>&1 &
pids+=($!)

echo "fleet: submission on 127.0.0.1:$FLEET_FRONT_PORT (HAProxy), bundles on $FLEET_BUNDLE_URL, state in $FLEET_DIR"
wait
