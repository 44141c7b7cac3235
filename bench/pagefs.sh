#!/usr/bin/env bash
# Postgres on pagefs against Postgres on a local data directory, in one run:
#   select    pgbench -S, shared_buffers 16MB so reads reach the filesystem (warm caches)
#   tpcb      default pgbench (TPC-B-like), which fsyncs WAL at every commit
#   seqscan   a sequential scan of a SCAN_MB table right after a suspend/wake: an empty
#             pagefs cache, so every page comes from the page store (MB/s); the local run
#             reads from the OS page cache, which no one can empty here
#   coldstart suspend/wake of the pagefs compute, 20 cycles (p50, p99 in ms), and the first
#             wake of a new endpoint (its timeline branched from the template)
# Both Postgres get the same settings; pgbench connects to each compute directly (no proxy).
# Usage: bench/pagefs.sh [SECONDS_PER_RUN] [SCAN_MB]   (defaults 15 and 1024)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${1:-15}
SCAN_MB=${2:-1024}
CLIENTS=4
source bench/lib.sh

scripts/install-deps.sh
cargo build --locked --release -p lakebed >/dev/null
start_lakebed
LB="$ROOT/target/release/lakebed --data-dir $BENCH_DIR/data"

# The local Postgres: initdb'd by the compute user, trust on loopback, its own port.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
LOCAL="$BENCH_DIR/local"
mkdir -p "$LOCAL" && chown postgres "$LOCAL"
runuser -u postgres -- "$PGBIN/initdb" -D "$LOCAL/pgdata" --auth=trust -U postgres >/dev/null
LOCAL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -l "$LOCAL/log" -w start \
  -o "-p $LOCAL_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$LOCAL -c shared_buffers=16MB" >/dev/null
stop_all() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -m fast stop >/dev/null 2>&1 || true
  stop_lakebed
}
trap stop_all EXIT
LOCALC="host=127.0.0.1 port=$LOCAL_PORT user=postgres dbname=postgres"

# The same shared_buffers for the compute: written into its PGDATA (on pagefs) and applied
# by a suspend/wake.
echo "shared_buffers = '16MB'" >>"$BENCH_DIR/data/endpoints/main/pgdata/postgresql.auto.conf"
rewake() {
  $LB endpoint suspend main >/dev/null
  $LB endpoint wake main >/dev/null
  COMPUTE_PORT=$($LB endpoint show main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["compute"]["address"].rsplit(":",1)[1])')
  DIRECT="host=127.0.0.1 port=$COMPUTE_PORT user=lakebed dbname=postgres sslmode=verify-ca sslrootcert=$TLS/internal-ca.pem sslcert=$TLS/proxy-client.pem sslkey=$TLS/proxy-client.key"
}
rewake

results=$(mktemp)
for target in local pagefs; do
  conn=$LOCALC; [ $target = pagefs ] && conn=$DIRECT
  pgbench -i -q -s 20 "$conn" >/dev/null 2>&1
  run_pgbench "select-$target" "$conn" "$CLIENTS" "$SECS" -S >>"$results"
  run_pgbench "tpcb-$target" "$conn" "$CLIENTS" "$SECS" >>"$results"
done

# Sequential scan: rows of ~1 KiB, SCAN_MB of them.
rows=$((SCAN_MB * 1024 * 1024 / 1100))
scan() {  # scan NAME CONNINFO -> "NAME MB SECONDS"
  local t0 t1 mb
  mb=$(psql -XAtq "$2" -c "select pg_relation_size('big') / 1048576")
  t0=$(date +%s.%N)
  psql -XAtq "$2" -c "select count(*) from big" >/dev/null
  t1=$(date +%s.%N)
  echo "scan-$1 $mb $(python3 -c "print($t1 - $t0)")" >>"$results"
}
for target in local pagefs; do
  conn=$LOCALC; [ $target = pagefs ] && conn=$DIRECT
  psql -XAtq "$conn" -c "create table big as select g, repeat('x', 1000) as pad from generate_series(1, $rows) g" >/dev/null
  if [ $target = pagefs ]; then
    rewake   # a new compute: empty pagefs cache, new port
    conn=$DIRECT
  fi
  scan "$target" "$conn"
  [ $target = pagefs ] && scan "$target-warm" "$conn"
done

# Cold starts.
for _ in $(seq 1 20); do
  $LB endpoint suspend main >/dev/null
  $LB endpoint wake main >/dev/null
  $LB endpoint show main --json | python3 -c 'import json,sys; print("cold", json.load(sys.stdin)["last_cold_start_ms"])' >>"$results"
done
t0=$(date +%s.%N)
$LB endpoint create fresh >/dev/null
$LB endpoint wake fresh >/dev/null
t1=$(date +%s.%N)
echo "newendpoint $(python3 -c "print(round(($t1 - $t0) * 1000))")" >>"$results"

python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
pg = {r[0]: r for r in rows if r[0].startswith(("select", "tpcb"))}
print(f"{'workload':>10} {'local tps':>10} {'pagefs tps':>10} {'ratio':>6} {'local p99':>9} {'pagefs p99':>10}")
for w in ("select", "tpcb"):
    l, p = pg[f"{w}-local"], pg[f"{w}-pagefs"]
    print(f"{w:>10} {float(l[2]):>10.0f} {float(p[2]):>10.0f} {float(p[2])/float(l[2]):>6.2f} {l[4]:>9} {p[4]:>10}")
scans = {r[0]: (float(r[1]), float(r[2])) for r in rows if r[0].startswith("scan")}
for name, (mb, s) in scans.items():
    print(f"{name:>16}: {mb:.0f} MB in {s:.2f} s = {mb / s:.0f} MB/s")
l, p = scans["scan-local"], scans["scan-pagefs"]
print(f"seqscan ratio pagefs(cold)/local(OS-cached) MB/s: {(p[0]/p[1]) / (l[0]/l[1]):.2f}")
cold = sorted(float(r[1]) for r in rows if r[0] == "cold")
p50 = cold[len(cold) // 2]
p99 = cold[min(len(cold) - 1, int(len(cold) * 0.99))]
print(f"cold start on pagefs over {len(cold)} cycles: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
ne = [r for r in rows if r[0] == "newendpoint"][0]
print(f"new endpoint: create + first wake {ne[1]} ms")
PY
