#!/usr/bin/env bash
# run.sh — load benchmark for mailgate against Postfix's smtp-source/smtp-sink
# and against a classic Postfix + OpenDKIM stack. See README.md here.
#
# Everything runs on 127.0.0.1; every process this script starts is stopped
# by PID on exit.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: examples/bench/run.sh [flags]

  -n N             messages per run (default 20000; -quick: 2000)
  -size BYTES      message payload size, smtp-source -l (default 4096)
  -sessions S      parallel SMTP sessions, smtp-source -s (default 20)
  -reps R          repetitions; scenario order rotates each rep (default 3; -quick: 1)
  -mode M          conn | session | both (default both)
                     conn:    one message per connection
                     session: many messages per connection (smtp-source -d)
  -scenarios LIST  comma list of ceiling,plain,rsa,ed25519,policy,policy-nodkim,
                   quota,rsa-openssl,policy-openssl,classic (default: all)
                     policy-nodkim: the plain relay with the example policies,
                     no signing: the policies' own cost, against plain
                     quota: the plain relay with three quotas counted in a
                     redis-server the script starts
                     rsa-openssl, policy-openssl: rsa and policy with a build
                     made with -tags openssl (libcrypto's RSA signer); the run
                     also measures `openssl speed rsa2048` (the crypto floor)
  -pool N          mailgate upstream pool_size (default: unset, each build's own default)
  -baseline PATH   also run every mailgate scenario with another build, interleaved
                   (PATH: a mailgate binary, or a source tree to build); rows "@base"
  -out DIR         write table.md and raw.csv to DIR (default: the repository's
                   docs/performance/, as results-YYYY-mm-dd-HHMMSS.csv and .md,
                   next to RESULTS.md)
  -quick           2000 messages, 1 rep (explicit -n/-reps still win)
  -keep            keep the temporary directory (configs, logs, dumps)
  -h               this help
EOF
}

# ---------------------------------------------------------------- flags
N="" SIZE=4096 SESSIONS=20 REPS="" MODE=both SCENARIOS="ceiling,plain,rsa,ed25519,policy,policy-nodkim,quota,rsa-openssl,policy-openssl,classic"
POOL="" OUT="" QUICK=0 KEEP=0 BASE=""
while [ $# -gt 0 ]; do
	case "$1" in
	-n) N="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	-sessions) SESSIONS="$2"; shift 2 ;;
	-reps) REPS="$2"; shift 2 ;;
	-mode) MODE="$2"; shift 2 ;;
	-scenarios) SCENARIOS="$2"; shift 2 ;;
	-pool) POOL="$2"; shift 2 ;;
	-baseline) BASE="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-quick) QUICK=1; shift ;;
	-keep) KEEP=1; shift ;;
	-h | -help | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
	esac
done
if [ "$QUICK" = 1 ]; then
	N="${N:-2000}" REPS="${REPS:-1}"
else
	N="${N:-20000}" REPS="${REPS:-3}"
fi
for v in N SIZE SESSIONS REPS; do
	if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
		echo "run.sh: -$(tr '[:upper:]' '[:lower:]' <<<"$v") must be a positive integer" >&2
		exit 2
	fi
done
[ -z "$POOL" ] || [[ "$POOL" =~ ^[0-9]+$ ]] || { echo "run.sh: -pool must be an integer >= 0" >&2; exit 2; }
if [ -n "$BASE" ] && ! [ -d "$BASE" ] && ! [ -x "$BASE" ]; then
	echo "run.sh: -baseline $BASE: not a source tree or a mailgate binary" >&2
	exit 2
fi
case "$MODE" in
conn) MODES=(conn) ;;
session) MODES=(session) ;;
both) MODES=(conn session) ;;
*) echo "run.sh: -mode must be conn, session or both" >&2; exit 2 ;;
esac
IFS=, read -r -a SCEN <<<"$SCENARIOS"
for s in "${SCEN[@]}"; do
	case "$s" in ceiling | plain | rsa | ed25519 | policy | policy-nodkim | quota | rsa-openssl | policy-openssl | classic) ;;
	*) echo "run.sh: unknown scenario $s" >&2; exit 2 ;;
	esac
done

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -f "$REPO/go.mod" ] && [ -d "$REPO/cmd/mailgate" ] || die "cannot find the mailgate repository root from $0"
PY=/usr/bin/python3 # Debian's python: python3-dkim is installed for it

# ---------------------------------------------------------------- tools
need_classic=0 need_redis=0 need_openssl=0
for s in "${SCEN[@]}"; do
	[ "$s" = classic ] && need_classic=1
	[ "$s" = quota ] && need_redis=1
	[[ "$s" == *-openssl ]] && need_openssl=1
done
install_missing() {
	local pkgs=()
	command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && command -v postfix >/dev/null || pkgs+=(postfix)
	command -v opendkim >/dev/null || pkgs+=(opendkim)
	command -v opendkim-testkey >/dev/null || pkgs+=(opendkim-tools)
	"$PY" -c 'import dkim, nacl' 2>/dev/null || pkgs+=(python3-dkim python3-nacl)
	[ "$need_redis" = 0 ] || command -v redis-server >/dev/null || pkgs+=(redis-server)
	if [ "$need_openssl" = 1 ]; then
		command -v openssl >/dev/null || pkgs+=(openssl)
		command -v gcc >/dev/null || pkgs+=(gcc)
		[ -f /usr/include/openssl/evp.h ] || pkgs+=(libssl-dev)
	fi
	[ ${#pkgs[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: run as root, or: sudo apt-get install ${pkgs[*]}"
	log "installing ${pkgs[*]} with apt-get"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# Keep the system services from starting during the install.
	local prc=/usr/sbin/policy-rc.d had_prc=0
	[ -e "$prc" ] && had_prc=1
	[ "$had_prc" = 1 ] || { printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 755 "$prc"; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; }
	[ "$had_prc" = 1 ] || rm -f "$prc"
}
install_missing
command -v go >/dev/null || die "go is not on PATH"
if [ "$need_classic" = 1 ] && [ "$(id -u)" != 0 ]; then
	log "WARNING: the classic stack needs root (a Postfix master); dropping scenario classic"
	SCEN=($(printf '%s\n' "${SCEN[@]}" | grep -vx classic))
	need_classic=0
fi

# ---------------------------------------------------------------- cleanup
TMP="$(mktemp -d /tmp/mailgate-bench.XXXXXX)"
chmod 755 "$TMP" # Postfix daemons and smtp-sink (as nobody) traverse it
PIDS=()          # every long-running process we started
PF_DIRS=()       # Postfix instances to stop
DUMP=""
cleanup() {
	local rc=$?
	set +e
	for d in "${PF_DIRS[@]}"; do pf_stop "$d"; done
	for p in "${PIDS[@]}"; do stop_pid "$p"; done
	[ -n "$DUMP" ] && rm -rf "$DUMP"
	if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
	local p=$1 i
	kill -0 "$p" 2>/dev/null || return 0
	kill -TERM "$p" 2>/dev/null
	for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
	wait "$p" 2>/dev/null || true
}
forget_pid() { local p=$1 q keep=(); for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done; PIDS=("${keep[@]}"); }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT PID-or-empty
	local i
	for i in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		[ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
		sleep 0.05
	done
	return 1
}

# ---------------------------------------------------------------- /proc
# cpu_ticks PID: utime+stime; cpu_children PID: cutime+cstime (reaped children).
# cpu_busy: "busy total" jiffies of the whole machine (/proc/stat; idle+iowait are idle).
# The third number, user+nice+system, leaves out interrupt time (loopback TCP
# runs in softirq, charged to no process).
cpu_busy() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t, $2 + $3 + $4}' /proc/stat; }
proc_fields() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || echo; }
cpu_ticks() { proc_fields "$1" | awk '{print ($12+$13)+0}'; }
cpu_children() { proc_fields "$1" | awk '{print ($14+$15)+0}'; }
# pss_kb PID: proportional set size (shared pages split among their users).
pss_kb() { awk '/^Pss:/{print $2; f=1} END{if(!f)print 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/{print $2; f=1} END{if(!f)print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- build, keys
# Without -out, the results go next to the measured results they are compared
# with (docs/performance/RESULTS.md), named by date like the ones there.
if [ -n "$OUT" ]; then
	CSV="$OUT/raw.csv" TABLE="$OUT/table.md"
else
	OUT="$REPO/docs/performance"
	stamp="results-$(date +%Y-%m-%d-%H%M%S)"
	CSV="$OUT/$stamp.csv" TABLE="$OUT/$stamp.md"
fi
mkdir -p "$OUT"
log "building mailgate"
(cd "$REPO" && GOTOOLCHAIN=local go build -o "$TMP/mailgate" ./cmd/mailgate) || die "go build failed"
MG="$TMP/mailgate"
MG_OPENSSL="" FLOOR_US=""
if [ "$need_openssl" = 1 ]; then
	(cd "$REPO" && GOTOOLCHAIN=local CGO_ENABLED=1 go build -tags openssl -o "$TMP/mailgate-openssl" ./cmd/mailgate) ||
		die "go build -tags openssl failed (needs gcc and libssl-dev)"
	MG_OPENSSL="$TMP/mailgate-openssl"
	"$MG_OPENSSL" version | grep -q openssl || die "the -tags openssl build does not report the openssl backend"
fi
MG_BASE=""
if [ -n "$BASE" ]; then
	if [ -d "$BASE" ]; then
		log "building the baseline in $BASE"
		(cd "$BASE" && GOTOOLCHAIN=local go build -o "$TMP/mailgate-base" ./cmd/mailgate) || die "baseline go build failed"
	elif [ -x "$BASE" ]; then
		cp "$BASE" "$TMP/mailgate-base"
	else
		die "-baseline $BASE: not a directory or an executable"
	fi
	MG_BASE="$TMP/mailgate-base"
	for s in "${SCEN[@]}"; do
		case "$s" in plain | rsa | ed25519 | policy | policy-nodkim | quota) SCEN+=("$s@base") ;; esac
	done
fi
mkdir -p "$TMP/keys"
txt_of() { sed -n 's/^; v=DKIM1/v=DKIM1/p' | head -1; }
RSA_TXT="$("$MG" dkim keygen -domain example.com -selector bench-rsa -algorithm rsa -out "$TMP/keys/rsa.pem" | txt_of)"
ED_TXT="$("$MG" dkim keygen -domain example.com -selector bench-ed -algorithm ed25519 -out "$TMP/keys/ed.pem" | txt_of)"
[ -n "$RSA_TXT" ] && [ -n "$ED_TXT" ] || die "mailgate dkim keygen printed no TXT record"
DNS_JSON="$(RSA="$RSA_TXT" ED="$ED_TXT" "$PY" -c 'import json,os; print(json.dumps({"bench-rsa._domainkey.example.com": os.environ["RSA"], "bench-ed._domainkey.example.com": os.environ["ED"]}))')"

# ---------------------------------------------------------------- the sink
# One smtp-sink for the whole run; each transaction becomes one file in DUMP
# (tmpfs when available, so the sink's disk does not become the ceiling).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then DUMP="$(mktemp -d /dev/shm/mailgate-bench-sink.XXXXXX)"; else DUMP="$TMP/sink"; mkdir -p "$DUMP"; fi
SINK_ARGS=()
if [ "$(id -u)" = 0 ]; then chown nobody "$DUMP"; SINK_ARGS=(-u nobody); fi
SINK_PORT="$(free_port)"
# -c: running counters ("sess=N quit=N mesg=N") in sink.log, for the
# upstream connections each run opened (sink_sessions).
smtp-sink "${SINK_ARGS[@]}" -c -d "$DUMP/%H%M%S." "127.0.0.1:$SINK_PORT" 1024 >"$TMP/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_port "$SINK_PORT" "$SINK_PID" || die "smtp-sink did not start: $(cat "$TMP/sink.log")"
sink_count() { find "$DUMP" -type f | wc -l; }
# SMTP sessions the sink has seen end so far.
sink_sessions() { local n; n=$(tr '\r' '\n' <"$TMP/sink.log" | sed -n 's/^sess=\([0-9]*\).*/\1/p' | tail -1); echo "${n:-0}"; }

# ---------------------------------------------------------------- redis (scenario quota)
if [ "$need_redis" = 1 ]; then
	REDIS_PORT="$(free_port)"
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
	REDIS_PID=$!
	PIDS+=("$REDIS_PID")
	wait_port "$REDIS_PORT" "$REDIS_PID" || die "redis-server did not start: $(cat "$TMP/redis.log")"
fi
sink_clear() { find "$DUMP" -mindepth 1 -delete; }

# ---------------------------------------------------------------- mailgate
# mg_start SCENARIO RUNDIR: writes a config, starts mailgate, sets MG_PID MG_PORT.
mg_start() {
	local scen=$1 dir=$2 extra="" bin="$MG" backend=""
	if [[ "$scen" == *@base ]]; then
		scen="${scen%@base}" bin="$MG_BASE"
	fi
	if [[ "$scen" == *-openssl ]]; then
		# The same configuration as rsa/policy, with rsa_backend = "openssl".
		scen="${scen%-openssl}" bin="$MG_OPENSSL" backend=$'  rsa_backend = "openssl"\n'
	fi
	MG_PORT="$(free_port)"
	case "$scen" in
	rsa | policy) extra+=$'dkim {\n'"$backend"$'  key "example.com" "bench-rsa" { file = "'"$TMP/keys/rsa.pem"$'" }\n}\n' ;;
	ed25519) extra+=$'dkim {\n  key "example.com" "bench-ed" { file = "'"$TMP/keys/ed.pem"$'" }\n}\n' ;;
	esac
	if [ "$scen" = quota ]; then
		# Three quotas a deployment would have, with limits the run never
		# reaches: the cost of checking, reserving and committing in Redis.
		# A fresh key prefix per run, so runs do not see each other's counts.
		extra+="redis {
  address    = \"127.0.0.1:$REDIS_PORT\"
  key_prefix = \"bench-$RANDOM$RANDOM:\"
}
quota \"per-sender\" {
  key      = envelope.from
  messages = [\"100000000/1h\", \"1000000000/24h\"]
}
quota \"per-ip\" {
  key      = session.client_ip
  messages = [\"100000000/1h\"]
}
quota \"per-destination\" {
  key        = rcpt.domain
  recipients = [\"100000000/1m\"]
}
"
	fi
	if [ "$scen" = policy ] || [ "$scen" = policy-nodkim ]; then
		extra+="policy {
  rego {
    name = \"org\"
    path = \"$REPO/examples/policies\"
  }
  rules {
    name = \"local\"
    path = \"$REPO/examples/policies/rules.hcl\"
  }
}
"
	fi
	cat >"$dir/mailgate.hcl" <<EOF
hostname = "mailgate.bench.invalid"
listener "relay" {
  address          = "127.0.0.1:$MG_PORT"
  tls              = "none"
  auth             = "none"
  trusted_networks = ["127.0.0.0/8"]
}
upstream "sink" {
  address   = "127.0.0.1:$SINK_PORT"
  tls       = "none"
  $([ -n "$POOL" ] && echo "pool_size = $POOL")
}
limits {
  # one load generator on one address
  max_connections        = 100000
  max_connections_per_ip = 100000
}
log {
  level = "info"
}
$extra
EOF
	"$bin" serve -config "$dir/mailgate.hcl" >"$dir/mailgate.log" 2>&1 &
	MG_PID=$!
	PIDS+=("$MG_PID")
	wait_port "$MG_PORT" "$MG_PID" || die "mailgate ($scen) did not start:
$(cat "$dir/mailgate.log")"
}

# ---------------------------------------------------------------- classic stack
# Postfix relaying to the sink, signing through a private OpenDKIM milter.
# Recipe from internal/peertest/postfix.go.
PF_MASTER_CF='%s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
'
# write_conf FILE: stdin to FILE, mtime a minute ago (Postfix waits while a
# config file's mtime is the current second).
write_conf() { cat >"$1"; touch -d '-1 minute' "$1"; }

# classic_start RUNDIR: sets PF_DIR PF_PORT PF_MASTER DKIM_PID.
classic_start() {
	local dir=$1
	PF_DIR="$dir/postfix"
	mkdir -p "$PF_DIR/etc" "$PF_DIR/queue" "$PF_DIR/data"
	chmod 755 "$dir" "$PF_DIR" "$PF_DIR/etc" "$PF_DIR/queue"
	chmod 700 "$PF_DIR/data"
	chown postfix: "$PF_DIR/data"
	local mport
	mport="$(free_port)"
	write_conf "$dir/opendkim.conf" <<EOF
Syslog                  no
Mode                    s
Domain                  example.com
Selector                bench-rsa
KeyFile                 $TMP/keys/rsa.pem
Canonicalization        relaxed/relaxed
SignatureAlgorithm      rsa-sha256
InternalHosts           127.0.0.1
RequireSafeKeys         false
Socket                  inet:$mport@127.0.0.1
PidFile                 $dir/opendkim.pid
EOF
	opendkim -f -x "$dir/opendkim.conf" >"$dir/opendkim.log" 2>&1 &
	DKIM_PID=$!
	PIDS+=("$DKIM_PID")
	wait_port "$mport" "$DKIM_PID" || die "opendkim did not start:
$(cat "$dir/opendkim.log")"
	PF_PORT="$(free_port)"
	write_conf "$PF_DIR/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF_DIR/queue
data_directory = $PF_DIR/data
maillog_file = $PF_DIR/maillog
maillog_file_prefixes = $PF_DIR
myhostname = postfix.bench.invalid
mydomain = bench.invalid
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:no local delivery
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:$SINK_PORT
biff = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject
default_destination_concurrency_limit = $SESSIONS
default_destination_rate_delay = 0s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
smtpd_milters = inet:127.0.0.1:$mport
non_smtpd_milters = \$smtpd_milters
milter_default_action = tempfail
EOF
	# shellcheck disable=SC2059
	printf "$PF_MASTER_CF" "127.0.0.1:$PF_PORT" | write_conf "$PF_DIR/etc/master.cf"
	postfix -c "$PF_DIR/etc" check >"$dir/postfix-check.log" 2>&1 || die "postfix check: $(cat "$dir/postfix-check.log")"
	PF_DIRS+=("$PF_DIR")
	postfix -c "$PF_DIR/etc" start >"$dir/postfix-start.log" 2>&1 || die "postfix start: $(cat "$dir/postfix-start.log"; cat "$PF_DIR/maillog" 2>/dev/null)"
	wait_port "$PF_PORT" "" || die "postfix smtpd did not listen: $(cat "$PF_DIR/maillog")"
	PF_MASTER="$(tr -d ' \n' <"$PF_DIR/queue/pid/master.pid")"
}
pf_stop() {
	local d=$1 pid=""
	[ -f "$d/queue/pid/master.pid" ] && pid="$(tr -d ' \n' <"$d/queue/pid/master.pid")"
	postfix -c "$d/etc" stop >/dev/null 2>&1 || true
	if [ -n "$pid" ]; then
		local i
		for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	fi
	local keep=() x
	for x in "${PF_DIRS[@]}"; do [ "$x" = "$d" ] || keep+=("$x"); done
	PF_DIRS=("${keep[@]}")
}
# The classic stack's processes: the Postfix master, its children, OpenDKIM.
classic_pids() { echo "$PF_MASTER"; pgrep -P "$PF_MASTER" || true; echo "$DKIM_PID"; }
# Ticks of the classic stack: live processes, plus what the master reaped
# (children that exited during the run).
# One awk per call: the sampler must not cost the system under test much.
classic_ticks() {
	local files=() p
	for p in $(classic_pids); do files+=("/proc/$p/stat"); done
	echo $(($(sed 's/^.*) //' "${files[@]}" 2>/dev/null | awk '{t += $12 + $13} END {print t+0}') + $(cpu_children "$PF_MASTER")))
}
classic_sum() { # classic_sum FILE FIELD: sum FIELD over the stack's /proc/PID/FILE
	local files=() p
	for p in $(classic_pids); do files+=("/proc/$p/$1"); done
	awk -v k="$2:" '$1 == k {s += $2} END {print s+0}' "${files[@]}" 2>/dev/null || echo 0
}
classic_hwm() { classic_sum status VmHWM; }
classic_pss() { classic_sum smaps_rollup Pss; }

# ---------------------------------------------------------------- verification
# verify_sample SCENARIO: checks 5 dumped messages; prints "ok" or a reason.
VERIFY_PY='
import json, os, random, sys
import dkim
scen, dump, records = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def dnsfunc(name, timeout=5):
    v = records.get(name.decode("ascii", "replace").rstrip(".").lower())
    return None if v is None else v.encode()
want = {"ceiling": None, "plain": None, "quota": None, "policy-nodkim": None, "rsa": b"rsa-sha256", "policy": b"rsa-sha256",
        "rsa-openssl": b"rsa-sha256", "policy-openssl": b"rsa-sha256",
        "classic": b"rsa-sha256", "ed25519": b"ed25519-sha256"}[scen]
files = sorted(os.listdir(dump))
random.seed(len(files))
for f in random.sample(files, min(5, len(files))):
    raw = open(os.path.join(dump, f), "rb").read()
    # smtp-sink records X-Client-Addr..X-Rcpt-Args, adds a Received header and
    # drops CR bytes; the signed headers are untouched, CRLF is restored here.
    msg = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    hdrs, body = dkim.rfc822_parse(msg)
    sigs = [v for (k, v) in hdrs if k.lower() == b"dkim-signature"]
    if want is None:
        if sigs:
            print("%s: unexpected DKIM-Signature" % f); sys.exit(1)
        continue
    if len(sigs) != 1:
        print("%s: %d DKIM-Signature headers, want 1" % (f, len(sigs))); sys.exit(1)
    if b"a=" + want not in sigs[0].replace(b" ", b""):
        print("%s: signature is not %s" % (f, want.decode())); sys.exit(1)
    if not dkim.DKIM(msg).verify(dnsfunc=dnsfunc):
        print("%s: DKIM signature does not verify" % f); sys.exit(1)
    if scen.startswith("policy") and not any(k.lower() == b"x-mailgate-policy" for (k, v) in hdrs):
        print("%s: no X-Mailgate-Policy header (HCL rule tag-and-sign did not run)" % f); sys.exit(1)
print("ok")
'
verify_sample() { "$PY" -c "$VERIFY_PY" "$1" "$DUMP" "$DNS_JSON" 2>&1 | tail -3; }

# ---------------------------------------------------------------- one run
echo "rep,mode,scenario,messages,size,sessions,accept_seconds,deliver_seconds,accept_msgs_per_s,deliver_msgs_per_s,cpu_seconds,cpu_s_per_1k,peak_rss_kb,peak_pss_kb,machine_busy_pct,other_load_pct,sink_count,verified,redis_cpu_s_per_1k" >"$CSV"
FAILED=0

# run_one REP MODE SCENARIO
run_one() {
	local rep=$1 mode=$2 scen=$3 dir target pid="" t0 t1 t2 c0=0 c1=0 hwm=0 count verified rc
	dir="$TMP/run-$rep-$mode-$scen"
	mkdir -p "$dir"
	chmod 755 "$dir"
	sink_clear
	local sess0
	sess0=$(sink_sessions)
	case "$scen" in
	ceiling) target="127.0.0.1:$SINK_PORT" ;;
	classic) classic_start "$dir"; target="127.0.0.1:$PF_PORT" ;;
	*) mg_start "$scen" "$dir"; target="127.0.0.1:$MG_PORT"; pid=$MG_PID ;;
	esac
	local src=(smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -M bench.example.com
		-f app@example.com -t bob@example.com -S "mailgate bench $scen")
	[ "$mode" = session ] && src+=(-d)
	# Memory sampler, every 0.5 s: summed VmHWM of the classic stack's
	# processes (they come and go) and summed PSS (shared pages counted
	# once), for either system under test.
	local sampler="" pss=0
	if [ "$scen" = classic ]; then
		c0=$(classic_ticks)
		(h=0 m=0; while :; do
			s=$(classic_hwm); [ "$s" -gt "$h" ] && h=$s && echo "$h" >"$dir/hwm"
			s=$(classic_pss); [ "$s" -gt "$m" ] && m=$s && echo "$m" >"$dir/pss"
			sleep 0.5; done) &
		sampler=$!
		PIDS+=("$sampler")
	elif [ -n "$pid" ]; then
		c0=$(cpu_ticks "$pid")
		(m=0; while :; do s=$(pss_kb "$pid"); [ "$s" -gt "$m" ] && m=$s && echo "$m" >"$dir/pss"; sleep 0.5; done) &
		sampler=$!
		PIDS+=("$sampler")
	fi
	local m0 m1 k0 k1 h0 h1 r0=0 r1=0
	m0=$(cpu_busy)
	k0=$(cpu_ticks "$SINK_PID")
	# The quota scenario's redis-server is part of the system under test:
	# its CPU is reported beside mailgate's, not as foreign load.
	[[ "$scen" == quota* ]] && r0=$(cpu_ticks "$REDIS_PID")
	h0=$(cpu_children $$) # this script's reaped children: smtp-source, find, awk...
	t0=$(date +%s%N)
	rc=0
	# In the background and waited for, so a signal to this script runs the
	# cleanup trap at once (it stops smtp-source too).
	timeout 1800 "${src[@]}" "$target" >"$dir/smtp-source.log" 2>&1 &
	local srcpid=$!
	PIDS+=("$srcpid")
	wait "$srcpid" || rc=$?
	forget_pid "$srcpid"
	t1=$(date +%s%N)
	# Wait until the sink has every message (Postfix queues; mailgate and
	# the ceiling are synchronous, so this returns at once for them).
	local deadline=$(($(date +%s) + 120 + N / 20))
	# Poll fast at first, then gently: counting 20,000 files costs CPU the
	# system under test would miss.
	local polls=0
	while count=$(sink_count); [ "$count" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do
		polls=$((polls + 1))
		if [ "$polls" -lt 10 ]; then sleep 0.05; else sleep 0.25; fi
	done
	t2=$(date +%s%N)
	m1=$(cpu_busy)
	k1=$(cpu_ticks "$SINK_PID")
	[[ "$scen" == quota* ]] && r1=$(cpu_ticks "$REDIS_PID")
	h1=$(cpu_children $$)
	if [ "$scen" = classic ]; then
		c1=$(classic_ticks)
		hwm=$(classic_hwm)
		pss=$(classic_pss)
		[ -f "$dir/hwm" ] && [ "$(cat "$dir/hwm")" -gt "$hwm" ] && hwm=$(cat "$dir/hwm")
	elif [ -n "$pid" ]; then
		c1=$(cpu_ticks "$pid")
		hwm=$(hwm_kb "$pid")
		pss=$(pss_kb "$pid")
	fi
	if [ -n "$sampler" ]; then
		stop_pid "$sampler"; forget_pid "$sampler"
		[ -f "$dir/pss" ] && [ "$(cat "$dir/pss")" -gt "$pss" ] && pss=$(cat "$dir/pss")
	fi
	# Anything late (bounces, duplicates) shows up in the count.
	sleep 0.5
	count=$(sink_count)
	if [ "$rc" != 0 ]; then
		verified="smtp-source exit $rc: $(tail -2 "$dir/smtp-source.log" | tr '\n,' '  ')"
	elif [ "$count" != "$N" ]; then
		verified="sink has $count messages, want $N"
	else
		verified="$(verify_sample "${scen%@base}" | tr '\n,' '  ' | sed 's/ *$//')"
	fi
	case "$scen" in
	classic) stop_pid "$DKIM_PID"; forget_pid "$DKIM_PID"; pf_stop "$PF_DIR" ;;
	ceiling) ;;
	*) stop_pid "$MG_PID"; forget_pid "$MG_PID" ;;
	esac
	if [ "$scen" != classic ]; then
		# Every upstream session has ended (mailgate QUITs its pool on
		# exit); the sink counts a session when it ends.
		sleep 0.3
		log "rep $rep $mode $scen: $(($(sink_sessions) - sess0)) connections at the sink for $N messages"
	fi
	if [ "$verified" != ok ]; then
		FAILED=1
		log "FAILED rep $rep $mode $scen: $verified (logs in $dir)"
		KEEP=1
	fi
	awk -v rep="$rep" -v mode="$mode" -v scen="$scen" -v n="$N" -v size="$SIZE" -v s="$SESSIONS" \
		-v t0="$t0" -v t1="$t1" -v t2="$t2" -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v hwm="$hwm" -v pss="$pss" -v m0="$m0" -v m1="$m1" -v known=$((c1 - c0 + k1 - k0 + h1 - h0 + r1 - r0)) -v redis=$((r1 - r0)) \
		-v count="$count" -v ver="$verified" -v sut="$([ "$scen" = ceiling ] && echo 0 || echo 1)" 'BEGIN {
		a = (t1 - t0) / 1e9; d = (t2 - t0) / 1e9
		cpu = (c1 - c0) / hz
		if (!sut) { cpuS = ""; per = ""; rss = ""; ps = "" } else { cpuS = sprintf("%.2f", cpu); per = sprintf("%.3f", cpu * 1000 / n); rss = hwm; ps = pss }
		split(m0, x, " "); split(m1, y, " ")
		busy = (y[2] > x[2]) ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 0
		other = (y[2] > x[2]) ? 100 * (y[3] - x[3] - known) / (y[2] - x[2]) : 0
		if (other < 0) other = 0
		rc = (redis > 0) ? sprintf("%.3f", redis / hz * 1000 / n) : ""
		printf "%d,%s,%s,%d,%d,%d,%.3f,%.3f,%.1f,%.1f,%s,%s,%s,%s,%.0f,%.0f,%d,%s,%s\n", rep, mode, scen, n, size, s, a, d, n / a, n / d, cpuS, per, rss, ps, busy, other, count, ver, rc
	}' >>"$CSV"
	log "$(tail -1 "$CSV")"
	[ "$KEEP" = 1 ] || rm -rf "$dir"
}

# ---------------------------------------------------------------- the crypto floor
# One RSA-2048 signature with OpenSSL (one core, `openssl speed`): the least
# CPU a signed message can cost. Measured before and after the runs; the
# table uses the mean and prints both.
floor_us() {
	openssl speed -seconds 3 rsa2048 2>/dev/null | awk '$1 == "rsa" && $2 == "2048" { sub(/s$/, "", $4); printf "%.1f", $4 * 1e6 }'
}
FLOOR0="" FLOOR1=""
if [ "$need_openssl" = 1 ]; then
	FLOOR0="$(floor_us)"
	[ -n "$FLOOR0" ] || die "openssl speed rsa2048 printed no sign time"
	log "crypto floor before the runs: openssl speed rsa2048 sign $FLOOR0 µs"
fi

# ---------------------------------------------------------------- main loop
MACHINE="$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), Linux $(uname -r), $(awk '/MemTotal/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
log "machine: $MACHINE"
log "$N messages x ${#SCEN[@]} scenarios x ${#MODES[@]} modes x $REPS reps; payload $SIZE bytes, $SESSIONS sessions; output $OUT"
# Warm-up, not measured: page cache, the sink's first connections.
sink_clear
smtp-source -s "$SESSIONS" -m $((SESSIONS * 10)) -l "$SIZE" -M bench.example.com -f app@example.com -t bob@example.com "127.0.0.1:$SINK_PORT" >/dev/null 2>&1 || die "warm-up smtp-source -> smtp-sink failed"
sink_clear
START=$(date +%s)
for rep in $(seq "$REPS"); do
	for mode in "${MODES[@]}"; do
		# Rotate the scenario order each rep so drift (thermal, page cache,
		# TIME_WAIT build-up) does not always hit the same scenario.
		k=$(((rep - 1) % ${#SCEN[@]}))
		order=("${SCEN[@]:k}" "${SCEN[@]:0:k}")
		for scen in "${order[@]}"; do
			run_one "$rep" "$mode" "$scen"
		done
	done
done
ELAPSED=$(($(date +%s) - START))
if [ "$need_openssl" = 1 ]; then
	FLOOR1="$(floor_us)"
	log "crypto floor after the runs: openssl speed rsa2048 sign $FLOOR1 µs"
fi

# ---------------------------------------------------------------- table
"$PY" - "$CSV" "$MACHINE" "$ELAPSED" "$FLOOR0" "$FLOOR1" >"$TABLE" <<'EOF'
import csv, statistics, sys
path, machine, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])
floors = [float(x) for x in sys.argv[4:6] if x]
floor = statistics.mean(floors) if floors else None
rows = list(csv.DictReader(open(path)))
names = {"ceiling": "ceiling: smtp-source → smtp-sink",
         "plain": "mailgate plain relay",
         "rsa": "mailgate + DKIM RSA-2048",
         "ed25519": "mailgate + DKIM Ed25519",
         "policy": "**mailgate + DKIM RSA-2048 + Rego/HCL policy**",
         "quota": "mailgate plain relay + 3 quotas in Redis",
         "policy-nodkim": "mailgate plain relay + Rego/HCL policy (no DKIM)",
         "rsa-openssl": "mailgate + DKIM RSA-2048, OpenSSL signer",
         "policy-openssl": "**mailgate + DKIM RSA-2048 + Rego/HCL policy, OpenSSL signer**",
         "classic": "Postfix + OpenDKIM (RSA-2048)"}
for s in ["plain", "rsa", "ed25519", "policy", "policy-nodkim", "quota"]:
    names[s + "@base"] = names[s].strip("*") + " — baseline build"
modes = {"conn": "one message per connection", "session": "many messages per connection (smtp-source -d)"}
med = lambda xs: statistics.median(xs) if xs else None
r0 = rows[0] if rows else {}
print("machine: %s" % machine)
print("load: %s messages/run, %s-byte payload, 1 recipient, %s sessions; %d rep(s); whole run %d s"
      % (r0.get("messages"), r0.get("size"), r0.get("sessions"), max(int(r["rep"]) for r in rows) if rows else 0, elapsed))
bad = [r for r in rows if r["verified"] != "ok"]
noisy = [r for r in rows if float(r["other_load_pct"]) > 10]
if noisy:
    print("\n**warning: %d of %d runs shared the machine with other work (other load > 10%% of all CPUs, max %.0f%%);"
          " compare scenarios within this run only, and rerun on a quiet machine for absolute numbers.**"
          % (len(noisy), len(rows), max(float(r["other_load_pct"]) for r in noisy)))
if bad:
    print("\n**%d run(s) FAILED verification; their numbers are excluded:** %s"
          % (len(bad), "; ".join("%s/%s/%s: %s" % (r["rep"], r["mode"], r["scenario"], r["verified"]) for r in bad)))
for mode in ["conn", "session"]:
    mr = [r for r in rows if r["mode"] == mode and r["verified"] == "ok"]
    if not mr:
        continue
    stats = {}
    for s in names:
        sr = [r for r in mr if r["scenario"] == s]
        if not sr:
            continue
        stats[s] = {
            "acc": med([float(r["accept_msgs_per_s"]) for r in sr]),
            "del": med([float(r["deliver_msgs_per_s"]) for r in sr]),
            "cpu": med([float(r["cpu_s_per_1k"]) for r in sr if r["cpu_s_per_1k"]]),
            "rss": max([int(r["peak_rss_kb"]) for r in sr if r["peak_rss_kb"]], default=None),
            "pss": max([int(r["peak_pss_kb"]) for r in sr if r["peak_pss_kb"]], default=None),
            "n": len(sr),
            "busy": med([float(r["machine_busy_pct"]) for r in sr]),
            "other": med([float(r["other_load_pct"]) for r in sr]),
            "redis": med([float(r["redis_cpu_s_per_1k"]) for r in sr if r.get("redis_cpu_s_per_1k")]),
        }
    print("\n### %s\n" % modes[mode])
    print("| scenario | msgs/s | CPU s / 1k msgs | peak RSS MiB | peak PSS MiB | machine busy (other) | × ceiling msgs/s | × classic msgs/s | × classic CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ceil = stats.get("ceiling", {}).get("del")
    cl = stats.get("classic")
    f = lambda v, fmt: "—" if v is None else fmt % v
    for s, st in stats.items():
        rate = st["del"]
        label = names[s]
        if s == "classic":
            label += " (delivered; accepted %.0f msgs/s)" % st["acc"]
        print("| %s | %.0f | %s | %s | %s | %.0f%% (%.0f%%) | %s | %s | %s |" % (
            label, rate, f(st["cpu"], "%.3f"), f(None if st["rss"] is None else st["rss"] / 1024, "%.1f"),
            f(None if st["pss"] is None else st["pss"] / 1024, "%.1f"), st["busy"], st["other"],
            f(rate / ceil if ceil else None, "%.2f"),
            f(rate / cl["del"] if cl else None, "%.2f"),
            f(st["cpu"] / cl["cpu"] if cl and cl["cpu"] and st["cpu"] is not None else None, "%.2f")))
    base = [s for s in stats if s.endswith("@base") and s[:-5] in stats]
    if base:
        print("\nthis build / baseline build (same run): msgs/s ratio, CPU per message ratio\n")
        print("| scenario | msgs/s this / base | CPU per msg this / base |")
        print("|---|---:|---:|")
        for b in base:
            a, z = stats[b[:-5]], stats[b]
            print("| %s | %s | %s |" % (names[b[:-5]].strip("*"), f(a["del"] / z["del"] if z["del"] else None, "%.2f"),
                                         f(a["cpu"] / z["cpu"] if a["cpu"] and z["cpu"] else None, "%.2f")))
    quotas = [s for s in ["quota", "quota@base"] if s in stats and stats[s]["redis"] is not None]
    if quotas:
        print("\nquotas: redis-server's CPU, counted with mailgate's as the system under test (not in \"other\")\n")
        print("| scenario | mailgate CPU s / 1k msgs | redis-server CPU s / 1k msgs | together | msgs/s ÷ plain relay |")
        print("|---|---:|---:|---:|---:|")
        for q in quotas:
            st, pl = stats[q], stats.get("plain@base" if q.endswith("@base") else "plain")
            print("| %s | %s | %.3f | %s | %s |" % (names[q].strip("*"), f(st["cpu"], "%.3f"), st["redis"],
                  f(st["cpu"] + st["redis"] if st["cpu"] is not None else None, "%.3f"),
                  f(st["del"] / pl["del"] if pl and pl["del"] else None, "%.2f")))
    signed = [s for s in ["rsa", "policy", "rsa-openssl", "policy-openssl"] if s in stats and stats[s]["cpu"] is not None]
    if floor is not None and signed:
        print("\nabove the crypto floor: one OpenSSL RSA-2048 signature = %.0f µs (`openssl speed -seconds 3 rsa2048`,"
              " %s µs before and after the runs)\n" % (floor, " / ".join("%.0f" % x for x in floors)))
        print("| scenario | CPU µs per msg | minus the floor |")
        print("|---|---:|---:|")
        for s in signed:
            us = stats[s]["cpu"] * 1000  # CPU s per 1k messages -> µs per message
            print("| %s | %.0f | %+.0f |" % (names[s].strip("*"), us, us - floor))
        if "policy" in stats and "policy-openssl" in stats and stats["policy"]["del"]:
            print("\nRSA + policies, msgs/s OpenSSL build / pure-Go build: %.2f"
                  % (stats["policy-openssl"]["del"] / stats["policy"]["del"]))
    # The policies' share: CPU per message with them minus the same
    # configuration without them, pair by pair within this run.
    pairs = [(p, q) for p, q in [("policy-nodkim", "plain"), ("policy", "rsa"), ("policy-openssl", "rsa-openssl"),
                                 ("policy-nodkim@base", "plain@base"), ("policy@base", "rsa@base")]
             if p in stats and q in stats and stats[p]["cpu"] is not None and stats[q]["cpu"] is not None]
    if pairs:
        print("\nthe example policies' share: CPU µs per message with them minus without, same run\n")
        print("| with | without | policies µs per msg |")
        print("|---|---|---:|")
        for p, q in pairs:
            print("| %s | %s | %+.0f |" % (names[p].strip("*"), names[q].strip("*"), (stats[p]["cpu"] - stats[q]["cpu"]) * 1000))
print("\nmsgs/s: messages / (time from smtp-source start until the sink holds all of them); for the classic")
print("stack the acceptance rate (smtp-source done) is given too. msgs/s and CPU: median over reps; memory:")
print("max over reps. CPU and memory are the system under test only (mailgate; or Postfix master +")
print("children + OpenDKIM; redis-server's CPU for quota in its own table), never smtp-source/smtp-sink. Peak RSS sums VmHWM (classic: over its")
print("processes, shared libraries counted once per process); peak PSS is sampled every 0.5 s.")
print("machine busy: all CPUs, everything (load generator and sink included), during the run; (other): the")
print("user+system time not from the system under test, smtp-sink or this script's children (smtp-source…):")
print("foreign load. Short runs make it noisy (10 ms ticks).")
EOF
cat "$TABLE"
log "raw numbers: $CSV; table: $TABLE; $ELAPSED s"
[ "$FAILED" = 0 ] || die "some runs failed verification (see above)"
