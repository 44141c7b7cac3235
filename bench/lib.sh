# Shared by the benchmark scripts: start a release `lakebed up` on a scratch data dir and
# read what its banner says. Source it; it defines start_lakebed and stop_lakebed.

# quiet CMD...: runs CMD, showing its output only if it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

# LAKEBED_BIN: the lakebed binary (default: the release build, target/release/lakebed).
LAKEBED_BIN=${LAKEBED_BIN:-$ROOT/target/release/lakebed}

# LAKEBED_EXTRA_ENV: more settings for `lakebed up` (and for the page store started with
# OWN_PAGESERVER), as NAME=VALUE words, e.g. LAKEBED_EXTRA_ENV="LAKEBED_PROXY__POOL__POOL_SIZE=20".
# OWN_PAGESERVER=1: run the page store as a process of its own (`lakebed pageserver`, its
# data in $BENCH_DIR/data/pageserver as with the embedded one) and point `lakebed up` at it;
# PAGESERVER_PID and PAGESERVER_URL name it.
start_lakebed() {
  BENCH_DIR=$(mktemp -d /tmp/lakebed-bench.XXXXXX)
  chmod 0711 "$BENCH_DIR"
  if [ "${OWN_PAGESERVER:-0}" = 1 ]; then
    start_pageserver
  fi
  launch_lakebed
}

# restart_lakebed: stops `lakebed up` (which suspends its computes) and starts it again on
# the same data dir, with the current LAKEBED_EXTRA_ENV; re-reads the banner.
restart_lakebed() {
  kill -TERM "$LAKEBED_PID" 2>/dev/null || true
  wait "$LAKEBED_PID" 2>/dev/null || true
  launch_lakebed
}

# launch_lakebed: `lakebed up` on $BENCH_DIR/data (and the page store started before, if
# any); sets LAKEBED_PID, PROXY_PORT, API_URL, PGPASSWORD, TLS, COMPUTE_PORT, DIRECT, PROXIED.
launch_lakebed() {
  local ps_env=""
  if [ -n "${PAGESERVER_URL:-}" ]; then
    ps_env="LAKEBED_COMPUTE__PAGESERVER_URL=$PAGESERVER_URL"
  fi
  : >"$BENCH_DIR/up.out"
  # shellcheck disable=SC2086 # NAME=VALUE words
  env LAKEBED_MANAGER__LISTEN=127.0.0.1:0 LAKEBED_PROXY__LISTEN=127.0.0.1:0 LAKEBED_PROXY__API_LISTEN=127.0.0.1:0 \
  LAKEBED_PAGESERVER__LISTEN=127.0.0.1:0 $ps_env \
  LAKEBED_ENDPOINTS__MAIN__SUSPEND_TIMEOUT=never RUST_LOG=warn ${LAKEBED_EXTRA_ENV:-} \
    "$LAKEBED_BIN" up --data-dir "$BENCH_DIR/data" >"$BENCH_DIR/up.out" 2>"$BENCH_DIR/up.err" &
  LAKEBED_PID=$!
  for _ in $(seq 1 600); do
    grep -q '^Ctrl-C suspends' "$BENCH_DIR/up.out" 2>/dev/null && break
    kill -0 "$LAKEBED_PID" 2>/dev/null || { cat "$BENCH_DIR/up.err" >&2; exit 1; }
    sleep 0.1
  done
  PROXY_PORT=$(sed -n 's/^  proxy *127\.0\.0\.1:\([0-9]*\).*/\1/p' "$BENCH_DIR/up.out")
  API_URL=$(sed -n 's/^  API *\(http:[^ ]*\).*/\1/p' "$BENCH_DIR/up.out")
  # The password is shown at the first start only; a restart keeps the one read then.
  local pw
  pw=$(sed -n 's/^  role *lakebed, password \([A-Za-z0-9]*\).*/\1/p' "$BENCH_DIR/up.out")
  export PGPASSWORD=${pw:-${PGPASSWORD:-}}
  TLS="$BENCH_DIR/data/tls"
  "$LAKEBED_BIN" --data-dir "$BENCH_DIR/data" endpoint wake main >/dev/null 2>&1
  COMPUTE_PORT=$("$LAKEBED_BIN" --data-dir "$BENCH_DIR/data" endpoint show main --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["compute"]["address"].rsplit(":",1)[1])')
  # Computes accept only the proxy's client certificate; "direct" uses it too.
  DIRECT="host=127.0.0.1 port=$COMPUTE_PORT user=lakebed dbname=postgres sslmode=verify-ca sslrootcert=$TLS/internal-ca.pem sslcert=$TLS/proxy-client.pem sslkey=$TLS/proxy-client.key"
  PROXIED="host=127.0.0.1 port=$PROXY_PORT user=lakebed dbname=postgres sslmode=disable"
}

# start_pageserver: `lakebed pageserver` on a free loopback port, data in
# $BENCH_DIR/data/pageserver; sets PAGESERVER_PID and PAGESERVER_URL. Called by
# start_lakebed with OWN_PAGESERVER=1.
start_pageserver() {
  mkdir -p "$BENCH_DIR/data"
  # shellcheck disable=SC2086 # NAME=VALUE words
  env RUST_LOG=warn ${LAKEBED_EXTRA_ENV:-} \
    "$LAKEBED_BIN" --data-dir "$BENCH_DIR/data" pageserver --listen 127.0.0.1:0 \
    >"$BENCH_DIR/pageserver.out" 2>"$BENCH_DIR/pageserver.err" &
  PAGESERVER_PID=$!
  local addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/^pageserver listening on \(.*\)$/\1/p' "$BENCH_DIR/pageserver.out" 2>/dev/null || true)
    [ -n "$addr" ] && break
    kill -0 "$PAGESERVER_PID" 2>/dev/null || { cat "$BENCH_DIR/pageserver.err" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "lakebed pageserver did not start" >&2; exit 1; }
  PAGESERVER_URL="http://$addr"
}

# Runs as an EXIT trap under `set -e`: a failing status here (`wait` returns 143 for the
# PgBouncer it just stopped) would end it before `lakebed up` is stopped, so none may fail.
# The page store goes last: `lakebed up` suspends computes, which flush to it.
stop_lakebed() {
  if [ -n "${PGBOUNCER_PID:-}" ]; then
    kill "$PGBOUNCER_PID" 2>/dev/null || true
    wait "$PGBOUNCER_PID" 2>/dev/null || true
  fi
  if [ -n "${LAKEBED_PID:-}" ]; then
    kill -TERM "$LAKEBED_PID" 2>/dev/null || true
    wait "$LAKEBED_PID" 2>/dev/null || true
  fi
  if [ -n "${PAGESERVER_PID:-}" ]; then
    kill -TERM "$PAGESERVER_PID" 2>/dev/null || true
    wait "$PAGESERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$BENCH_DIR"
}

# start_pgbouncer MODE POOL_SIZE: PgBouncer in front of the compute, as the proxy is: SCRAM
# with the role's verifier (PgBouncer passes the client's SCRAM keys through, as we do) and
# TLS with the proxy's client certificate toward the compute.
start_pgbouncer() {
  local mode=$1 pool=$2 pb="$BENCH_DIR/pgbouncer"
  mkdir -p "$pb"
  cp "$TLS/internal-ca.pem" "$TLS/proxy-client.pem" "$TLS/proxy-client.key" "$pb/"
  local verifier
  verifier=$(python3 - "$API_URL" "$BENCH_DIR/data/admin-token" <<'PY'
import json, sys, urllib.request
url, token_file = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url + "/v1/endpoints/main/roles/lakebed/secret",
                             headers={"Authorization": "Bearer " + open(token_file).read().strip()})
print(json.load(urllib.request.urlopen(req))["verifier"])
PY
)
  printf '"lakebed" "%s"\n' "$verifier" >"$pb/userlist.txt"
  PGBOUNCER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$pb/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$COMPUTE_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $pb/userlist.txt
pool_mode = $mode
default_pool_size = $pool
max_client_conn = 20000
max_db_connections = $pool
server_tls_sslmode = verify-ca
server_tls_ca_file = $pb/internal-ca.pem
server_tls_cert_file = $pb/proxy-client.pem
server_tls_key_file = $pb/proxy-client.key
logfile = $pb/pgbouncer.log
pidfile = $pb/pgbouncer.pid
INI
  local user_flag=()
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$pb"; user_flag=(-u postgres); fi
  pgbouncer "${user_flag[@]}" "$pb/pgbouncer.ini" >/dev/null 2>&1 &
  PGBOUNCER_PID=$!
  for _ in $(seq 1 100); do
    pg_isready -q -h 127.0.0.1 -p "$PGBOUNCER_PORT" && break
    sleep 0.1
  done
  BOUNCED="host=127.0.0.1 port=$PGBOUNCER_PORT user=lakebed dbname=postgres sslmode=disable"
}

# run_pgbench NAME CONNINFO CLIENTS SECONDS [extra pgbench args]: one pgbench run, printed as
# "NAME CLIENTS TPS AVG_MS P99_MS" from pgbench's per-transaction log.
run_pgbench() {
  local name=$1 conn=$2 clients=$3 secs=$4
  shift 4
  local logdir="$BENCH_DIR/log-$name-$clients"
  mkdir -p "$logdir"
  local jobs=$(( clients < 2 ? clients : 2 ))
  local out
  out=$(cd "$logdir" && pgbench -n "$@" -c "$clients" -j "$jobs" -T "$secs" -l --log-prefix=tx "$conn" 2>&1) || {
    echo "$name: pgbench failed: $out" >&2
    return 1
  }
  local tps
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)
  python3 - "$logdir" "$name" "$clients" "$tps" <<'PY'
import glob, sys
logdir, name, clients, tps = sys.argv[1:]
lat = []
for f in glob.glob(logdir + "/tx*"):
    with open(f) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
lat.sort()
avg = sum(lat) / len(lat) / 1000 if lat else float("nan")
p99 = lat[int(len(lat) * 0.99) - 1] / 1000 if lat else float("nan")
print(f"{name} {clients} {float(tps):.0f} {avg:.3f} {p99:.3f}")
PY
}
