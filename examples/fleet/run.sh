#!/usr/bin/env bash
# Runs the fleet example on loopback: one Redis, three mailgate instances
# (mailgate.hcl) and HAProxy (haproxy.cfg) in front, plus an smtp-sink as
# the upstream unless FLEET_UPSTREAM names one. Stays in the foreground;
# SIGTERM or Ctrl-C stops everything it started.
#
#   MAILGATE=./mailgate examples/fleet/run.sh
#   swaks --server 127.0.0.1:2587 --auth-user alice@example.com \
#         --auth-password 'fleet demo password' --from alice@example.com --to bob@example.net
#
# Environment (defaults): MAILGATE (mailgate; may be a command with
# arguments), FLEET_DIR (a new temporary directory: logs, pid files,
# users file, HAProxy's stats socket), FLEET_FRONT_PORT (2587),
# FLEET_REDIS_PORT (6391), FLEET_SINK_PORT (2526), FLEET_UPSTREAM (the
# sink), FLEET_SMTP_PORTS ("10587 10588 10589"), FLEET_METRICS_PORTS
# ("9151 9152 9153"), FLEET_PASSWORD (every user's password).
# Users: alice@example.com, bob@example.com, trial@example.com (2 messages
# an hour). Instance N's pid is in $FLEET_DIR/mgN.pid, its log in mgN.log.
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
PATH=$PATH:/usr/sbin:/sbin

pids=()
stop() {
  trap - EXIT TERM INT
  # Only what this script started, by pid: mailgate instances first (they
  # drain), then HAProxy, Redis and the sink.
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

redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --dir "$FLEET_DIR" >"$FLEET_DIR/redis.log" 2>&1 &
pids+=($!)
export FLEET_REDIS=127.0.0.1:$redis_port

if [[ -z ${FLEET_UPSTREAM:-} ]]; then
  smtp-sink -c "127.0.0.1:$sink_port" 100 >"$FLEET_DIR/sink.log" 2>&1 &
  pids+=($!)
  export FLEET_UPSTREAM=127.0.0.1:$sink_port
fi

for i in 0 1 2; do
  n=$((i + 1))
  MG_SMTP_PORT=${smtp_ports[$i]} MG_METRICS_PORT=${metrics_ports[$i]} \
    "${mailgate[@]}" serve -config "$here/mailgate.hcl" 2>"$FLEET_DIR/mg$n.log" &
  pids=("$!" "${pids[@]}") # stopped first
  echo "$!" >"$FLEET_DIR/mg$n.pid"
  export "MG${n}_SMTP_PORT=${smtp_ports[$i]}" "MG${n}_METRICS_PORT=${metrics_ports[$i]}"
done

haproxy -db -f "$here/haproxy.cfg" >"$FLEET_DIR/haproxy.log" 2>&1 &
pids+=($!)

echo "fleet: submission on 127.0.0.1:$FLEET_FRONT_PORT (HAProxy), state in $FLEET_DIR"
wait
