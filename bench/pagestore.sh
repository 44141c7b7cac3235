#!/usr/bin/env bash
# The page store's goals, in one run: Lakebed (Postgres on pagefs, the page store as a process
# of its own) against a local-disk Postgres with the same settings (shared_buffers 16MB, and
# TLS on the connection, as a compute requires of every client), pgbench connected to each
# directly (no proxy). The local Postgres over plain TCP is measured too and printed apart:
# on 2 cores, TLS alone costs the -S run about a fifth of its rate, which is no part of the
# page store's cost. Prewarm is off, so the cold scan reads only what the scan asks for.
#   tpcb      default pgbench (TPC-B-like), 4 clients, SECS seconds: TPS and p99 latency
#   select    pgbench -S, 4 clients, SECS seconds: TPS
#   seqscan   count(*) of a SCAN_MB table (vacuumed, so the scan only reads) right after a
#             suspend/wake: an empty pagefs cache, so every page comes from the page store
#             (MB/s); the local run reads from the OS page cache, which no one can empty here
#   size      du -sb of the page store's data dir after HISTORY_MIN minutes of TPC-B, a wait
#             past the retention (RETENTION seconds) and `lakebed pageserver gc`, against
#             du -sb of the same PGDATA (endpoint main's, copied to local disk)
#   writes    bytes the page store process wrote to disk (/proc/PID/io write_bytes) per
#             byte of WAL (pg_current_wal_lsn) during the tpcb run
#   coldstart 20 suspend/wake cycles each of a new, empty endpoint and of main once it holds
#             SCAN_MB of data and HISTORY_MIN minutes of TPC-B history: from the end of the
#             suspend to the first row of `select 1` through the proxy (p50, p99, in ms)
# and ends with a table: measure | local | lakebed | ratio | goal.
#
# Usage: bench/pagestore.sh [SECS] [SCAN_MB] [HISTORY_MIN]   (defaults 15, 1024, 10)
#        bench/pagestore.sh 5 64 1                           (a quick run)
# Environment:
#   RETENTION=30   pageserver.history_retention of the stack, in seconds
#   SKIP_GC=1      leave out the size measure (no retention setting, no `pageserver gc`),
#                  for a binary that has neither
#   SCALE=20       pgbench scale of the tpcb and select runs
#   LAKEBED_BIN    a lakebed binary to use as it is (default: build target/release/lakebed)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${1:-15}
SCAN_MB=${2:-1024}
HISTORY_MIN=${3:-10}
RETENTION=${RETENTION:-30}
SKIP_GC=${SKIP_GC:-0}
SCALE=${SCALE:-20}
CLIENTS=4
CYCLES=20

scripts/install-deps.sh
if [ -z "${LAKEBED_BIN:-}" ]; then
  cargo build --locked --release -p lakebed >/dev/null
fi
source bench/lib.sh
if [ "$SKIP_GC" != 1 ] && ! "$LAKEBED_BIN" pageserver gc --help >/dev/null 2>&1; then
  echo "pagestore: $LAKEBED_BIN has no \`pageserver gc\`; SKIP_GC=1 leaves the size measure out" >&2
  exit 1
fi

step() { echo "pagestore: $*" >&2; }

# Everything this script starts is stopped here, however it ends.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
LOCAL=""
stop_all() {
  if [ -n "$LOCAL" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -m fast stop >/dev/null 2>&1 || true
  fi
  stop_lakebed
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# The stack, with the page store as a process of its own: its disk writes are its own in
# /proc/PID/io.
OWN_PAGESERVER=1
LAKEBED_EXTRA_ENV="${LAKEBED_EXTRA_ENV:-} LAKEBED_COMPUTE__PREWARM=false"
if [ "$SKIP_GC" != 1 ]; then
  LAKEBED_EXTRA_ENV="${LAKEBED_EXTRA_ENV:-} LAKEBED_PAGESERVER__HISTORY_RETENTION=${RETENTION}s"
fi
step "starting lakebed (page store pid and URL below)"
start_lakebed
step "page store: pid $PAGESERVER_PID, $PAGESERVER_URL, data in $BENCH_DIR/data/pageserver"
LB="$LAKEBED_BIN --data-dir $BENCH_DIR/data"

# The local Postgres: initdb'd by the compute user, trust on loopback, its own port.
LOCAL="$BENCH_DIR/local"
mkdir -p "$LOCAL" && chown postgres "$LOCAL"
runuser -u postgres -- "$PGBIN/initdb" -D "$LOCAL/pgdata" --auth=trust -U postgres >/dev/null
# TLS as on a compute: the stack's internal CA signs a server certificate for it.
openssl req -new -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$LOCAL/pgdata/server.key" \
  -out "$LOCAL/server.csr" 2>/dev/null
openssl x509 -req -in "$LOCAL/server.csr" -CA "$TLS/internal-ca.pem" -CAkey "$TLS/internal-ca.key" \
  -set_serial 1 -days 2 -out "$LOCAL/pgdata/server.crt" 2>/dev/null
chown postgres "$LOCAL/pgdata/server.key" "$LOCAL/pgdata/server.crt"
chmod 600 "$LOCAL/pgdata/server.key"
LOCAL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$LOCAL/pgdata" -l "$LOCAL/log" -w start \
  -o "-p $LOCAL_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$LOCAL -c shared_buffers=16MB -c ssl=on" >/dev/null
LOCALC="host=127.0.0.1 port=$LOCAL_PORT user=postgres dbname=postgres sslmode=verify-ca sslrootcert=$TLS/internal-ca.pem"
LOCALPLAIN="host=127.0.0.1 port=$LOCAL_PORT user=postgres dbname=postgres sslmode=disable"

# direct_conn: the connection string of main's running compute (a new port at every wake).
direct_conn() {
  COMPUTE_PORT=$($LB endpoint show main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["compute"]["address"].rsplit(":",1)[1])')
  DIRECT="host=127.0.0.1 port=$COMPUTE_PORT user=lakebed dbname=postgres sslmode=verify-ca sslrootcert=$TLS/internal-ca.pem sslcert=$TLS/proxy-client.pem sslkey=$TLS/proxy-client.key"
}
rewake() {  # a new compute for main: empty caches, settings reread
  quiet $LB endpoint suspend main
  quiet $LB endpoint wake main
  direct_conn
}

# The same shared_buffers for the computes: written into their PGDATA (on pagefs) and
# applied by a suspend/wake.
echo "shared_buffers = '16MB'" >>"$BENCH_DIR/data/endpoints/main/pgdata/postgresql.auto.conf"
rewake

# The empty endpoint for cold starts: a new one (its timeline a branch of the template), its
# own role `lakebed` with the same password, the same shared_buffers; suspended until then.
$LB endpoint create fresh --suspend-timeout never >/dev/null
printf '%s\n' "$PGPASSWORD" | $LB role create lakebed --endpoint fresh --password-stdin >/dev/null
quiet $LB endpoint wake fresh
echo "shared_buffers = '16MB'" >>"$BENCH_DIR/data/endpoints/fresh/pgdata/postgresql.auto.conf"
$LB endpoint suspend fresh >/dev/null

results="$BENCH_DIR/results"
: >"$results"
put() { echo "$*" >>"$results"; }
ps_written() { sed -n 's/^write_bytes: //p' "/proc/$PAGESERVER_PID/io"; }
wal_lsn() { psql -XAtq "$DIRECT" -c "select pg_current_wal_lsn()"; }
wal_since() { psql -XAtq "$DIRECT" -c "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')::bigint"; }

# 1, 2 and 5: pgbench -S and TPC-B on each side; the page store's disk writes and the
# compute's WAL during lakebed's TPC-B run. Before both runs, a checkpoint (a suspend for
# the compute, whose role may not CHECKPOINT), then caches warmed: pgbench_accounts and its
# index read whole, and a discarded -S run.
warm=$(( SECS < 5 ? SECS : 5 ))
warm_up() {  # warm_up NAME CONNINFO
  psql -XAtq "$2" -c "select count(*) from pgbench_accounts" \
    -c "set enable_seqscan = off" -c "select count(aid) from pgbench_accounts" >/dev/null
  run_pgbench "warm-$1" "$2" "$CLIENTS" "$warm" -S >/dev/null
}
for target in local lakebed; do
  step "$target: pgbench -i -s $SCALE, then -S and TPC-B, $SECS s each"
  if [ $target = local ]; then
    conn=$LOCALC
    quiet pgbench -i -q -s "$SCALE" "$conn"
    psql -XAtq "$conn" -c checkpoint
  else
    quiet pgbench -i -q -s "$SCALE" "$DIRECT"
    rewake
    conn=$DIRECT
  fi
  warm_up "$target" "$conn"
  run_pgbench "select-$target" "$conn" "$CLIENTS" "$SECS" -S >>"$results"
  [ $target = local ] && run_pgbench "select-plain" "$LOCALPLAIN" "$CLIENTS" "$SECS" -S >>"$results"
  if [ $target = lakebed ]; then
    lsn0=$(wal_lsn)
    w0=$(ps_written)
  fi
  run_pgbench "tpcb-$target" "$conn" "$CLIENTS" "$SECS" >>"$results"
  [ $target = local ] && run_pgbench "tpcb-plain" "$LOCALPLAIN" "$CLIENTS" "$SECS" >>"$results"
  if [ $target = lakebed ]; then
    sleep 1   # pagefs sends what it holds within 200 ms
    put "writes-tpcb $(( $(ps_written) - w0 )) $(wal_since "$lsn0")"
  fi
done

# 3: sequential scan of rows of ~1 KiB, SCAN_MB of them; timed by psql (no connection setup).
rows=$((SCAN_MB * 1024 * 1024 / 1100))
scan() {  # scan NAME CONNINFO -> "scan-NAME MB SECONDS"
  local mb ms
  mb=$(psql -XAtq "$2" -c "select pg_relation_size('big') / 1048576.0")
  ms=$(psql -XAtq "$2" -c '\timing on' -c "select count(*) from big" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
  put "scan-$1 $mb $(python3 -c "print($ms / 1000)")"
}
for target in local lakebed; do
  step "$target: a $SCAN_MB MB table, then a sequential scan"
  conn=$LOCALC; [ $target = lakebed ] && conn=$DIRECT
  psql -XAtq "$conn" -c "create table big as select g, repeat('x', 1000) as pad from generate_series(1, $rows) g" >/dev/null
  # VACUUM sets the hint bits: without it the first scan of a new table rewrites every page
  # (a write of the whole table, to the page cache locally but to the page store on
  # lakebed), where the measure is of reads, as of a table that has been in use.
  psql -XAtq "$conn" -c "vacuum big" >/dev/null
  if [ $target = lakebed ]; then
    rewake   # a new compute: empty pagefs cache
    conn=$DIRECT
  fi
  scan "$target" "$conn"
  [ $target = lakebed ] && scan "$target-warm" "$conn"
done

# History for main: HISTORY_MIN minutes of TPC-B (its writes and WAL noted too).
if [ "$HISTORY_MIN" -gt 0 ]; then
  step "lakebed: $HISTORY_MIN min of TPC-B history"
  lsn0=$(wal_lsn)
  w0=$(ps_written)
  run_pgbench "history-lakebed" "$DIRECT" "$CLIENTS" $((HISTORY_MIN * 60)) >>"$results"
  sleep 1
  put "writes-history $(( $(ps_written) - w0 )) $(wal_since "$lsn0")"
fi

# 6: cold starts, the two endpoints in turn: suspend, then `select 1` through the proxy,
# which wakes the compute. The manager's own figure (last_cold_start_ms) is noted too.
step "cold starts: $CYCLES suspend/wake cycles of each of fresh (empty) and main"
cold() {  # cold ENDPOINT CONNINFO
  local t0 t1 server
  $LB endpoint suspend "$1" >/dev/null
  t0=$(date +%s%N)
  [ "$(psql -XAtq "$2" -c 'select 1')" = 1 ] || { echo "select 1 on $1 failed" >&2; exit 1; }
  t1=$(date +%s%N)
  server=$($LB endpoint show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_cold_start_ms"])')
  put "cold-$1 $(( (t1 - t0) / 1000000 )) $server"
}
for _ in $(seq 1 "$CYCLES"); do
  cold fresh "$PROXIED options=endpoint=fresh"
  cold main "$PROXIED"
done
$LB endpoint suspend fresh >/dev/null
direct_conn

# 4: size, once history older than the retention may go: the page store's data dir after
# `lakebed pageserver gc`, against endpoint main's PGDATA copied to local disk.
if [ "$SKIP_GC" != 1 ]; then
  step "size: waiting $((RETENTION + 10)) s (retention ${RETENTION}s), then lakebed pageserver gc"
  sleep $((RETENTION + 10))
  before=$(du -sb "$BENCH_DIR/data/pageserver" | cut -f1)
  # The stack's own settings: the retention, and compute.pageserver_url naming the store.
  # shellcheck disable=SC2086 # NAME=VALUE words
  if ! gc_out=$(env ${LAKEBED_EXTRA_ENV:-} LAKEBED_COMPUTE__PAGESERVER_URL="$PAGESERVER_URL" \
      $LB pageserver gc 2>&1); then
    echo "pagestore: lakebed pageserver gc failed:" >&2
    echo "$gc_out" >&2
    exit 1
  fi
  sed 's/^/  gc: /' <<<"$gc_out" >&2
  after=$(du -sb "$BENCH_DIR/data/pageserver" | cut -f1)
  copy="$BENCH_DIR/pgdata-copy"
  cp -a "$BENCH_DIR/data/endpoints/main/pgdata/." "$copy" 2>"$BENCH_DIR/cp.err" \
    || { echo "pagestore: copying main's PGDATA (files that vanished while copying are fine):" >&2; cat "$BENCH_DIR/cp.err" >&2; }
  put "size $(du -sb "$copy" | cut -f1) $after $before $(du -sb "$LOCAL/pgdata" | cut -f1)"
  rm -rf "$copy"
fi

python3 - "$results" "$SKIP_GC" "$HISTORY_MIN" "$RETENTION" <<'PY'
import sys
path, skip_gc, history_min, retention = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
rows = {}
for line in open(path):
    parts = line.split()
    rows.setdefault(parts[0], []).append(parts[1:])
one = lambda k: rows[k][0]

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]

MB = 1 << 20
table = []  # (measure, local, lakebed, ratio, goal, met)

def row(measure, local, lakebed, ratio, goal, met=None):
    mark = "" if met is None else (" (met)" if met else " (MISSED)")
    table.append((measure, local, lakebed, ratio, goal + mark))

# pgbench rows: NAME CLIENTS TPS AVG_MS P99_MS
tl, tb = one("tpcb-local"), one("tpcb-lakebed")
r = float(tb[1]) / float(tl[1])
row("TPC-B tps", tl[1], tb[1], f"{r:.2f}", ">= 0.70", r >= 0.7)
r = float(tb[3]) / float(tl[3])
row("TPC-B p99 ms", tl[3], tb[3], f"{r:.2f}", "<= 2.00", r <= 2.0)
sl, sb = one("select-local"), one("select-lakebed")
r = float(sb[1]) / float(sl[1])
row("pgbench -S tps", sl[1], sb[1], f"{r:.2f}", ">= 0.95", r >= 0.95)

# scan rows: MB SECONDS
(ml, secl), (mb, secb) = [tuple(map(float, one(k))) for k in ("scan-local", "scan-lakebed")]
l, b = ml / secl, mb / secb
row("seq scan MB/s (cold)", f"{l:.0f}", f"{b:.0f}", f"{b / l:.2f}", ">= 500 MB/s", b >= 500)

if skip_gc:
    row("size MB (after gc)", "skipped", "skipped", "-", "<= 2.00 (SKIP_GC=1)")
else:
    copy, after, before, local_pg = map(int, one("size"))
    r = after / copy
    row("size MB (after gc)", f"{copy / MB:.0f}", f"{after / MB:.0f}", f"{r:.2f}", "<= 2.00", r <= 2.0)

written, wal = map(int, one("writes-tpcb"))
row("disk bytes / WAL byte", "-", f"{written / wal:.2f}" if wal else "n/a", "-", "-")

cold = {ep: [float(c[0]) for c in rows[f"cold-{ep}"]] for ep in ("fresh", "main")}
server = {ep: [float(c[1]) for c in rows[f"cold-{ep}"]] for ep in ("fresh", "main")}
for name, q in (("p50", 0.5), ("p99", 0.99)):
    e, h = pct(cold["fresh"], q), pct(cold["main"], q)
    row(f"cold start {name} ms (empty vs history)", f"{e:.0f}", f"{h:.0f}", f"{h / e:.2f}",
        "<= 1.20", h / e <= 1.2)

print()
print("local over plain TCP (no TLS), for reference:")
for k, name in (("tpcb-plain", "TPC-B"), ("select-plain", "pgbench -S")):
    if k in rows:
        p = one(k)
        mine = {"tpcb-plain": tb, "select-plain": sb}[k]
        print(f"  {name}: {p[1]} tps (p99 {p[3]} ms); lakebed / plain = {float(mine[1]) / float(p[1]):.2f}")
print(f"tpcb: local {tl[1]} tps (avg {tl[2]} ms, p99 {tl[3]} ms); lakebed {tb[1]} tps (avg {tb[2]} ms, p99 {tb[3]} ms)")
print(f"select: local {sl[1]} tps (p99 {sl[3]} ms); lakebed {sb[1]} tps (p99 {sb[3]} ms)")
for k in sorted(k for k in rows if k.startswith("scan-")):
    m, s = map(float, one(k))
    print(f"{k}: {m:.0f} MB in {s:.3f} s = {m / s:.0f} MB/s"
          + (" (local: from the OS page cache)" if k == "scan-local" else ""))
for k, what in (("writes-tpcb", "tpcb run"), ("writes-history", f"{history_min} min history run")):
    if k in rows:
        w, wal = map(int, one(k))
        ratio = f"{w / wal:.2f}" if wal else "n/a"
        print(f"page store disk writes over the {what}: {w / MB:.1f} MB for {wal / MB:.1f} MB of WAL = {ratio} bytes per WAL byte")
if "history-lakebed" in rows:
    h = one("history-lakebed")
    print(f"history: {history_min} min of TPC-B at {h[1]} tps")
if not skip_gc:
    print(f"size: page store {before / MB:.1f} MB before gc, {after / MB:.1f} MB after (retention {retention}s); "
          f"main's PGDATA {copy / MB:.1f} MB; the local Postgres's PGDATA {local_pg / MB:.1f} MB (no history run)")
for ep, label in (("fresh", "empty endpoint"), ("main", "main with history")):
    c, s = cold[ep], server[ep]
    print(f"cold start, {label}, {len(c)} cycles: suspend to first row p50 {pct(c, 0.5):.0f} ms, "
          f"p99 {pct(c, 0.99):.0f} ms; manager's figure p50 {pct(s, 0.5):.0f} ms, p99 {pct(s, 0.99):.0f} ms")
print()
heads = ("measure", "local", "lakebed", "ratio", "goal")
widths = [max(len(str(r[i])) for r in [heads] + table) for i in range(5)]
fmt = lambda r: "| " + " | ".join(str(v).ljust(w) if i == 0 or i == 4 else str(v).rjust(w)
                                  for i, (v, w) in enumerate(zip(r, widths))) + " |"
print(fmt(heads))
print("|" + "|".join(("-" * (w + 1) + ":") if 0 < i < 4 else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
for r in table:
    print(fmt(r))
PY
