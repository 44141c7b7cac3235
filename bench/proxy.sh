#!/usr/bin/env bash
# Proxy overhead: pgbench -S (select-only) at 1, 16 and 64 clients, in one run, against
#   direct    the compute itself (TLS with the proxy's client certificate, as only it may)
#   lakebed   Lakebed's proxy (plain client side; SCRAM at the proxy; TLS to the compute)
#   pgbouncer PgBouncer 1.18 in session mode, set up like the proxy (SCRAM, TLS to compute)
# and print TPS, average and p99 latency, and the ratios lakebed/direct, lakebed/pgbouncer.
# Usage: bench/proxy.sh [SECONDS_PER_RUN]   (default 10)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${1:-10}
source bench/lib.sh

scripts/install-deps.sh
cargo build --locked --release -p lakebed >/dev/null
start_lakebed
trap stop_lakebed EXIT
pgbench -i -q -s 10 "$PROXIED" >/dev/null 2>&1
start_pgbouncer session 80

results=$(mktemp)
for clients in 1 16 64; do
  for target in direct lakebed pgbouncer; do
    case $target in
      direct) conn=$DIRECT ;;
      lakebed) conn=$PROXIED ;;
      pgbouncer) conn=$BOUNCED ;;
    esac
    run_pgbench "$target" "$conn" "$clients" "$SECS" -S >>"$results"
  done
done

python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, clients, tps, avg, p99 = line.split()
    rows[(name, int(clients))] = (float(tps), float(avg), float(p99))
print(f"{'clients':>7} {'target':>10} {'tps':>9} {'avg ms':>8} {'p99 ms':>8}")
for c in sorted({c for _, c in rows}):
    for n in ("direct", "lakebed", "pgbouncer"):
        t, a, p = rows[(n, c)]
        print(f"{c:>7} {n:>10} {t:>9.0f} {a:>8.3f} {p:>8.3f}")
    l, d, b = rows[("lakebed", c)], rows[("direct", c)], rows[("pgbouncer", c)]
    print(f"{c:>7} {'ratios':>10}  tps lakebed/direct {l[0]/d[0]:.2f}, lakebed/pgbouncer {l[0]/b[0]:.2f}; "
          f"p99 lakebed/direct {l[2]/d[2]:.2f}, lakebed/pgbouncer {l[2]/b[2]:.2f}")
PY
