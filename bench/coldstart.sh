#!/usr/bin/env bash
# Cold start, in one run, against a bare Postgres on local disk:
#   cycles   CYCLES suspend/wake cycles through the proxy, each timed from the end of the
#            suspend to the first row of `select 1` on a new connection (tokio-postgres:
#            crates/tests/examples/first_row.rs, so psql's own start is not counted), for an
#            empty endpoint and then for main once it holds DATA_MB of data (each with the
#            other suspended); p50 and p99, and the
#            p50 of each step of the wake from the boot history (`recent_boots[].steps`:
#            key unwrap, timeline, mount = pagefs's acquire + load + FUSE (and how many
#            wakes took a warm pool member), postgres start, roles; "rest" is the wake's
#            own overhead, "first row" the client's side: proxy, session start, query)
#   local    the anchor: the same client against a Postgres started on local disk (the same
#            settings: max_connections 128), from the spawn to its first row, CYCLES times
#   prewarm  pgbench -S (4 clients) through the proxy over the first PREWARM_SECS after a
#            wake of main, against the warm TPS just before it, with compute.prewarm on
#            and then off (lakebed up restarted with LAKEBED_COMPUTE__PREWARM=false)
# and ends with a table: measure | local | lakebed | ratio | goal.
#
# Usage: bench/coldstart.sh [CYCLES] [DATA_MB] [PREWARM_SECS]   (defaults 30, 1024, 10)
#        bench/coldstart.sh 10 64 5                             (a quick run)
# Environment: LAKEBED_BIN (default: build target/release/lakebed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CYCLES=${1:-30}
DATA_MB=${2:-1024}
PREWARM_SECS=${3:-10}
CLIENTS=4

scripts/install-deps.sh
if [ -z "${LAKEBED_BIN:-}" ]; then
  cargo build --locked --release -p lakebed >/dev/null
fi
cargo build --locked --release -p lakebed-tests --example first_row >/dev/null 2>&1 \
  || cargo build --locked --release -p lakebed-tests --example first_row
FIRST_ROW="$ROOT/target/release/examples/first_row"
source bench/lib.sh

step() { echo "coldstart: $*" >&2; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
LOCAL_PID=""
stop_all() {
  if [ -n "$LOCAL_PID" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -m immediate stop >/dev/null 2>&1 || true
  fi
  stop_lakebed
}
trap stop_all EXIT
trap 'exit 130' INT TERM

step "starting lakebed"
start_lakebed
LB="$LAKEBED_BIN --data-dir $BENCH_DIR/data"
results="$BENCH_DIR/results"
: >"$results"
put() { echo "$*" >>"$results"; }

# The anchor: a local Postgres, initdb'd by the compute user, started and stopped CYCLES
# times; the client starts right after the spawn and retries until the first row.
step "local: $CYCLES starts of a Postgres on local disk"
LOCAL="$BENCH_DIR/local"
mkdir -p "$LOCAL" && chown postgres "$LOCAL"
runuser -u postgres -- "$PGBIN/initdb" -D "$LOCAL/pgdata" --auth=trust -U postgres >/dev/null
LOCAL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for _ in $(seq 1 "$CYCLES"); do
  runuser -u postgres -- "$PGBIN/postgres" -D "$LOCAL/pgdata" -p "$LOCAL_PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$LOCAL" -c max_connections=128 \
    >>"$LOCAL/log" 2>&1 &
  LOCAL_PID=$!
  put "local $("$FIRST_ROW" "host=127.0.0.1 port=$LOCAL_PORT user=postgres dbname=postgres" --retry)"
  quiet runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -m fast -w stop
  wait "$LOCAL_PID" || true
  LOCAL_PID=""
done

# The empty endpoint: a new one (its timeline a branch of the template), with the role
# `lakebed` and the same password.
$LB endpoint create fresh --suspend-timeout never >/dev/null
printf '%s\n' "$PGPASSWORD" | $LB role create lakebed --endpoint fresh --password-stdin >/dev/null
quiet $LB endpoint wake fresh

# main with DATA_MB of pgbench data (scale 1 is about 15 MB), then a pgbench -S run: the
# pages a workload reads, which the heat list and the prewarm are about.
SCALE=$(( DATA_MB / 15 > 0 ? DATA_MB / 15 : 1 ))
step "main: pgbench -i -s $SCALE (about $DATA_MB MB)"
quiet pgbench -i -q -s "$SCALE" "$DIRECT"
quiet psql -XAtq "$DIRECT" -c "vacuum analyze"
run_pgbench "warmup" "$PROXIED" "$CLIENTS" "$PREWARM_SECS" -S >/dev/null

# cold ENDPOINT CONNINFO: suspend, then the first row through the proxy (which wakes the
# compute); records the client's time, the manager's cold start and its steps.
cold() {
  $LB endpoint suspend "$1" >/dev/null
  local ms
  ms=$("$FIRST_ROW" "$2") || { echo "coldstart: select 1 on $1 failed" >&2; exit 1; }
  $LB endpoint show "$1" --json | python3 -c '
import json, sys
ep, ms = sys.argv[1], sys.argv[2]
b = json.load(sys.stdin)["recent_boots"][0]
s = b.get("steps") or {}
p = s.get("pagefs") or {}
keys = ("key_unwrap_ms", "timeline_ms", "mount_ms", "postgres_start_ms", "roles_ms")
print("cold-" + ep, ms, b["cold_start_ms"], *(s.get(k, 0) for k in keys),
      *(p.get(k, 0) for k in ("acquire_ms", "load_ms", "fuse_ms")),
      int(s.get("pooled", False)))' "$1" "$ms" >>"$results"
}
# Each endpoint on its own, the other suspended: a compute's background work (main's prewarm
# of DATA_MB) would otherwise share the two cores with the other's wakes.
step "cycles: $CYCLES suspend/wake cycles of fresh (empty), then of main ($DATA_MB MB)"
$LB endpoint suspend main >/dev/null
for _ in $(seq 1 "$CYCLES"); do
  cold fresh "$PROXIED options=endpoint=fresh"
done
$LB endpoint suspend fresh >/dev/null
for _ in $(seq 1 "$CYCLES"); do
  cold main "$PROXIED"
done

# prewarm LABEL: main's data read whole (so its pagefs cache holds it: warm), its warm TPS,
# then its TPS over the first PREWARM_SECS after a wake.
prewarm() {
  quiet psql -XAtq "$PROXIED" -c "select count(*) from pgbench_accounts" \
    -c "set enable_seqscan = off" -c "select count(aid) from pgbench_accounts"
  run_pgbench "warmup-$1" "$PROXIED" "$CLIENTS" "$PREWARM_SECS" -S >/dev/null
  run_pgbench "warm-$1" "$PROXIED" "$CLIENTS" "$PREWARM_SECS" -S | sed 's/^/tps /' >>"$results"
  $LB endpoint suspend main >/dev/null
  run_pgbench "wake-$1" "$PROXIED" "$CLIENTS" "$PREWARM_SECS" -S | sed 's/^/tps /' >>"$results"
}
step "prewarm on: pgbench -S for $PREWARM_SECS s warm, then for $PREWARM_SECS s right after a wake"
prewarm on
step "prewarm off (lakebed up restarted with LAKEBED_COMPUTE__PREWARM=false)"
LAKEBED_EXTRA_ENV="${LAKEBED_EXTRA_ENV:-} LAKEBED_COMPUTE__PREWARM=false"
restart_lakebed
LB="$LAKEBED_BIN --data-dir $BENCH_DIR/data"
prewarm off

python3 - "$results" "$DATA_MB" "$PREWARM_SECS" <<'PY'
import sys
path, data_mb, secs = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(path):
    parts = line.split()
    if parts[0] == "tps":
        parts = parts[1:]
    rows.setdefault(parts[0], []).append(parts[1:])

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]

local = [float(r[0]) for r in rows["local"]]
table = []
def row(measure, anchor, lakebed, ratio, goal, met=None):
    mark = "" if met is None else (" (met)" if met else " (MISSED)")
    table.append((measure, anchor, lakebed, ratio, goal + mark))

steps = ("key unwrap", "timeline", "mount", "postgres start", "roles")
for ep, label in (("fresh", "empty"), (f"main", f"{data_mb} MB")):
    r = [list(map(float, x)) for x in rows[f"cold-{ep}"]]
    client = [x[0] for x in r]
    for name, q, goal in (("p50", 0.5, 150), ("p99", 0.99, 300)):
        l, c = pct(local, q), pct(client, q)
        row(f"cold start {name} ms, {label}", f"{l:.0f}", f"{c:.0f}", f"{c / l:.2f}",
            f"<= {goal} ms", c <= goal)
    server = [x[1] for x in r]
    med = lambda i: pct([x[i] for x in r], 0.5)
    parts = [f"{n} {med(2 + i):.0f}" for i, n in enumerate(steps)]
    rest = pct([x[1] - sum(x[2:7]) for x in r], 0.5)
    first = pct([x[0] - x[1] for x in r], 0.5)
    print(f"{label}: {len(r)} cycles, first row p50 {pct(client, 0.5):.0f} ms "
          f"(manager's cold start p50 {pct(server, 0.5):.0f} ms: "
          + ", ".join(parts)
          + f" [pagefs: acquire {med(7):.0f}, load {med(8):.0f}, fuse {med(9):.0f}; "
          f"{sum(int(x[10]) for x in r)} of {len(r)} from the warm pool], rest {rest:.0f}; "
          f"then first row {first:.0f} ms)")
print(f"local Postgres: {len(local)} starts, spawn to first row p50 {pct(local, 0.5):.0f} ms, "
      f"p99 {pct(local, 0.99):.0f} ms")

for mode in ("on", "off"):
    warm, wake = float(rows[f"warm-{mode}"][0][1]), float(rows[f"wake-{mode}"][0][1])
    r = wake / warm
    goal, met = (">= 0.80", r >= 0.8) if mode == "on" else ("(reference)", None)
    row(f"pgbench -S tps, first {secs} s after wake, prewarm {mode}", f"{warm:.0f}", f"{wake:.0f}",
        f"{r:.2f}", goal, met)
    print(f"prewarm {mode}: warm {warm:.0f} tps; first {secs} s after a wake {wake:.0f} tps")

print()
heads = ("measure", "local / warm", "lakebed", "ratio", "goal")
widths = [max(len(str(r[i])) for r in [heads] + table) for i in range(5)]
fmt = lambda r: "| " + " | ".join(str(v).ljust(w) if i in (0, 4) else str(v).rjust(w)
                                  for i, (v, w) in enumerate(zip(r, widths))) + " |"
print(fmt(heads))
print("|" + "|".join(("-" * (w + 1) + ":") if 0 < i < 4 else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
for r in table:
    print(fmt(r))
PY
