#!/usr/bin/env bash
# Transaction pooling: pgbench -S (select-only) at 10, 100 and 1,000 clients, in one run,
# against
#   lakebed   Lakebed's proxy, transaction pooling for endpoint main, pool of 20
#   pgbouncer PgBouncer 1.18 in transaction mode, pool of 20 (SCRAM, TLS to the compute)
#   direct    the compute itself, where it accepts that many (max_connections 128: 10, 100)
# printing TPS, average and p99 latency and the ratios; then the resident memory of the
# `lakebed up` process (proxy and compute manager together) and of PgBouncer with 10,000
# idle clients connected, per client.
# Usage: bench/pool.sh [SECONDS_PER_RUN] [IDLE_CLIENTS]   (defaults 10, 10000)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${1:-10}
IDLE=${2:-10000}
source bench/lib.sh

# One socket per client, in pgbench, in the poolers and in the idle-client script.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE + 500)) ]; then
  echo "open files limit $(ulimit -n) is below $((IDLE + 500)); pass fewer idle clients" >&2
  exit 1
fi

scripts/install-deps.sh
cargo build --locked --release -p lakebed >/dev/null
LAKEBED_EXTRA_ENV="LAKEBED_PROXY__POOL__POOL_SIZE=20 LAKEBED_ENDPOINTS__MAIN__POOL_MODE=transaction LAKEBED_PROXY__MAX_CLIENT_CONNECTIONS=$((IDLE + 1000))" \
  start_lakebed
trap stop_lakebed EXIT
pgbench -i -q -s 10 "$PROXIED" >/dev/null 2>&1
mode=$("$ROOT/target/release/lakebed" --data-dir "$BENCH_DIR/data" pools --json \
  | python3 -c 'import json,sys; print(",".join(p["mode"] for p in json.load(sys.stdin)))')
[ "$mode" = transaction ] || { echo "lakebed pool mode is '$mode', not transaction" >&2; exit 1; }

results=$(mktemp)
# Direct first, while the poolers hold no server connections: the compute takes 128.
for clients in 10 100; do
  run_pgbench direct "$DIRECT" "$clients" "$SECS" -S >>"$results"
done

# Idle clients: resident memory of `lakebed up` before and after.
idle_rss() {
  local name=$1 port=$2 pid=$3
  read -r n before after secs < <(python3 bench/idle_clients.py 127.0.0.1 "$port" lakebed postgres "$pid" "$IDLE")
  echo "$name $n $before $after $secs"
}
memory=$(mktemp)
idle_rss lakebed "$PROXY_PORT" "$LAKEBED_PID" >>"$memory"

start_pgbouncer transaction 20
idle_rss pgbouncer "$PGBOUNCER_PORT" "$PGBOUNCER_PID" >>"$memory"

for clients in 10 100 1000; do
  # pgbench connects its clients one by one inside the run's duration (SCRAM each time):
  # 1,000 of them take a few seconds, so that run gets as many more.
  secs=$(( clients < 1000 ? SECS : SECS + 5 ))
  run_pgbench lakebed "$PROXIED" "$clients" "$secs" -S >>"$results"
  run_pgbench pgbouncer "$BOUNCED" "$clients" "$secs" -S >>"$results"
done

python3 - "$results" "$memory" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, clients, tps, avg, p99 = line.split()
    rows[(name, int(clients))] = (float(tps), float(avg), float(p99))
print("pgbench -S, transaction pooling, pool of 20 server connections")
print(f"{'clients':>7} {'target':>10} {'tps':>9} {'avg ms':>8} {'p99 ms':>8}")
for c in sorted({c for _, c in rows}):
    for n in ("direct", "lakebed", "pgbouncer"):
        if (n, c) in rows:
            t, a, p = rows[(n, c)]
            print(f"{c:>7} {n:>10} {t:>9.0f} {a:>8.3f} {p:>8.3f}")
    l, b = rows[("lakebed", c)], rows[("pgbouncer", c)]
    ratios = f"tps lakebed/pgbouncer {l[0]/b[0]:.2f}, p99 lakebed/pgbouncer {l[2]/b[2]:.2f}"
    if ("direct", c) in rows:
        d = rows[("direct", c)]
        ratios += f"; tps lakebed/direct {l[0]/d[0]:.2f}, p99 lakebed/direct {l[2]/d[2]:.2f}"
    print(f"{c:>7} {'ratios':>10}  {ratios}")
print()
print("idle clients: resident memory (VmRSS) before and after they connect")
print(f"{'process':>12} {'clients':>8} {'before MiB':>11} {'after MiB':>10} {'bytes/client':>13} {'connect s':>10}")
for line in open(sys.argv[2]):
    name, n, before, after, secs = line.split()
    n, before, after = int(n), int(before), int(after)
    label = "lakebed up" if name == "lakebed" else name
    print(f"{label:>12} {n:>8} {before/1024:>11.1f} {after/1024:>10.1f} {(after-before)*1024/n:>13.0f} {secs:>10}")
print("(lakebed up is the proxy and the compute manager in one process)")
PY
