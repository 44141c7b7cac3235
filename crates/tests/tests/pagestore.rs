//! The page store's own promises, end to end (issue 11): the real `lakebed pageserver`
//! process (killed with SIGKILL where a test says so), the real `lakebed pageserver gc`, real
//! pagefs mounts, real PostgreSQL computes, real files on a real (tmpfs) disk.
//!
//! - GC: overwritten history goes back to the file system, what reads need stays, reads
//!   below the horizon are refused naming it, a deleted timeline's space comes back.
//! - kill -9 in the middle of group commit, of compaction and GC: nothing acknowledged is
//!   lost, and what the dead process left half-written is collected.
//! - A full disk: a clear error, nothing acknowledged lost, writes resume by themselves once
//!   there is room, and a compute on it wakes again.
//! - A namespace load costs the same with 50 versions of each key as with one.
//! - A damaged store file or a bad setting stops the start, naming the file and the key.
//!
//! Run `cargo build -p lakebed` first (scripts/test does).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use lakebed_pageserver_client::{
    Generation, PageStoreClient, RpcError, Seq, TimelineId, WriteBatch,
};
use lakebed_tests::stack::Stack;
use lakebed_tests::{
    DEADLINE, DataDir, LakebedUp, PageServerProcess, PagefsProcess, Tmpfs, client_options,
    eventually, files_under, lakebed, lakebed_env, lakebed_with_stdin, pagefs_serving,
    postmasters_serving, prom,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::timeout;

const RETENTION: &str = "LAKEBED_PAGESERVER__HISTORY_RETENTION";
const CACHE_MIB: &str = "LAKEBED_PAGESERVER__CACHE_MIB";
const STORE_DIR: &str = "LAKEBED_PAGESERVER__DATA_DIR";

/// Bytes of one page (Postgres's BLCKSZ).
const PAGE: usize = 8192;
/// Bytes of the store's `RESERVE` file: room kept for its manifest on a full disk.
const RESERVE: u64 = 4 << 20;
const MIB: f64 = 1024.0 * 1024.0;

fn tl(id: &str) -> TimelineId {
    id.parse().unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// An 8 KiB page that starts with `tag` and is filled with bytes derived from it, so pages of
/// different tags differ all through.
fn page(tag: &str) -> Bytes {
    let seed = tag
        .bytes()
        .fold(17u8, |h, c| h.wrapping_mul(31).wrapping_add(c));
    let mut v = tag.as_bytes().to_vec();
    while v.len() < PAGE {
        v.push((v.len() as u8).wrapping_mul(7) ^ seed);
    }
    Bytes::from(v)
}

/// What a page's tag was, for messages (its text up to the first byte that is not one).
fn tag_of(value: Option<&Bytes>) -> String {
    match value {
        None => "nothing".to_owned(),
        Some(v) => {
            let end = v
                .iter()
                .position(|c| !c.is_ascii_graphic() && *c != b' ')
                .unwrap_or(v.len())
                .min(40);
            format!("{:?}", String::from_utf8_lossy(&v[..end]))
        }
    }
}

/// A client that gives up (with [`RpcError::Unavailable`]) half a second after the page
/// store went away: a writer that must notice the kill.
async fn impatient_client(server: &PageServerProcess) -> PageStoreClient {
    let mut o = client_options(server.url());
    o.total_timeout = Duration::from_millis(500);
    PageStoreClient::connect(o).await.unwrap()
}

/// The page store's directory of a `lakebed pageserver --data-dir dir` (the default).
fn store_dir(dir: &DataDir) -> PathBuf {
    dir.path().join("pageserver")
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// One timeline's line of `lakebed pageserver gc`.
#[derive(Debug, PartialEq, Eq)]
struct GcLine {
    timeline: String,
    horizon: u64,
    removed: u64,
}

/// `lakebed pageserver gc`'s output: per timeline `<tl>: horizon N, M versions removed`,
/// then `page store: X MiB before, Y MiB after, Z MiB freed` (returned as MiB).
fn parse_gc(out: &str) -> (Vec<GcLine>, [f64; 3]) {
    let mut lines = Vec::new();
    let mut totals = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("page store: ") {
            let nums: Vec<f64> = rest
                .split(", ")
                .map(|part| part.split(' ').next().unwrap().parse().unwrap())
                .collect();
            totals = Some([nums[0], nums[1], nums[2]]);
            assert_eq!(
                rest,
                format!(
                    "{:.1} MiB before, {:.1} MiB after, {:.1} MiB freed",
                    nums[0], nums[1], nums[2]
                ),
                "{out}"
            );
        } else {
            let (timeline, rest) = line.split_once(": horizon ").unwrap_or_else(|| {
                panic!("unexpected line {line:?} in:\n{out}");
            });
            let (horizon, rest) = rest.split_once(", ").unwrap();
            let removed = rest.strip_suffix(" versions removed").unwrap();
            lines.push(GcLine {
                timeline: timeline.to_owned(),
                horizon: horizon.parse().unwrap(),
                removed: removed.parse().unwrap(),
            });
        }
    }
    (
        lines,
        totals.unwrap_or_else(|| panic!("no totals in:\n{out}")),
    )
}

fn gc_line(timeline: &str, horizon: Seq, removed: u64) -> GcLine {
    GcLine {
        timeline: timeline.to_owned(),
        horizon: horizon.0,
        removed,
    }
}

/// The store's manifest (`MANIFEST`: a header line, then JSON).
fn manifest(store: &Path) -> serde_json::Value {
    let raw = std::fs::read(store.join("MANIFEST")).unwrap();
    let at = raw.iter().position(|&c| c == b'\n').unwrap();
    serde_json::from_slice(&raw[at + 1..]).unwrap()
}

/// The layer file names the manifest refers to.
fn referenced_layers(store: &Path) -> BTreeSet<String> {
    manifest(store)["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["layers"].as_array().unwrap().clone())
        .map(|n| format!("{:016x}.layer", n.as_u64().unwrap()))
        .collect()
}

/// The names of the files in `<store>/layers`.
fn layer_files(store: &Path) -> BTreeSet<String> {
    std::fs::read_dir(store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Asserts that every file of the store is one the manifest accounts for: layers it refers
/// to, log segments from its replay start on, the manifest itself and the lock.
fn assert_no_stray_files(store: &Path) {
    assert_eq!(
        layer_files(store),
        referenced_layers(store),
        "files in layers/ that the manifest does not refer to (or the reverse)"
    );
    let wal_start = manifest(store)["wal_start"].as_u64().unwrap();
    for f in files_under(store) {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        let parent = f.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let accounted = match parent {
            "layers" => true,
            "wal" => name
                .strip_suffix(".log")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .is_some_and(|segment| segment >= wal_start),
            _ => ["MANIFEST", "LOCK", "RESERVE"].contains(&name.as_str()),
        };
        assert!(accounted, "stray file {}", f.display());
    }
}

/// GC through the real CLI on a store that keeps no history: the overwritten pages' space
/// goes back to the file system, reads at the newest seq and through a branch (at its branch
/// point) still return the right values, reads below the horizon are refused naming it, and
/// a deleted timeline's space comes back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_by_the_cli_gives_back_overwritten_history_and_keeps_what_reads_need() {
    let dir = DataDir::new();
    let server =
        PageServerProcess::start_with(dir.path(), "127.0.0.1:0", &[], &[(RETENTION, "0s")]).await;
    let c = server.client().await;
    let t = tl("t");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    let put = |k: &str, v: Bytes| WriteBatch::new().put(b(k), v);
    let s1 = c.write(&t, g, put("k", b("v1"))).await.unwrap();
    let s2 = c.write(&t, g, put("k", b("v2"))).await.unwrap();
    // A branch made at s2 needs v2, however far the parent moves on.
    let br = tl("b");
    c.create_timeline(&br, Some((&t, Some(s2)))).await.unwrap();
    c.write(&t, g, put("k", b("v3"))).await.unwrap();
    // 64 pages written over 20 times: 19 rounds of 512 KiB are history nobody needs.
    const PAGES: usize = 64;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let mut batch = WriteBatch::new();
        for i in 0..PAGES {
            batch = batch.put(b(&format!("p/{i:03}")), page(&format!("p{i} r{round}")));
        }
        c.write(&t, g, batch).await.unwrap();
    }
    let last = c.write(&t, g, put("k", b("v4"))).await.unwrap();

    let store = store_dir(&dir);
    let live = (PAGES * PAGE) as u64;
    let over = ((ROUNDS - 1) * PAGES * PAGE) as u64;
    let before = dir_bytes(&store);
    assert!(before >= live + over, "{before} bytes before GC");

    // The CLI finds the page store through the data dir.
    let out = lakebed(&dir, &["pageserver", "gc"]).await.ok();
    let (lines, [mib_before, mib_after, mib_freed]) = parse_gc(&out);
    assert_eq!(
        lines,
        vec![
            // Every old page version, and v1 and v3 (v2 is the branch's, v4 the newest).
            gc_line("t", last, (ROUNDS as u64 - 1) * PAGES as u64 + 2),
            gc_line("b", s2, 0),
        ],
        "{out}"
    );
    let after = dir_bytes(&store);
    assert!(
        before - after >= over * 9 / 10,
        "GC freed {} of the {over} bytes written over ({before} -> {after})",
        before - after
    );
    assert!(
        after < 2 * live + RESERVE,
        "{after} bytes after GC for {live} live"
    );
    assert!(
        (mib_before - mib_after - mib_freed).abs() < 0.11
            && mib_freed >= over as f64 * 0.9 / MIB
            && mib_after < (2 * live + RESERVE) as f64 / MIB,
        "{out}"
    );

    // The newest values, and the branch's at its branch point.
    let got = c.read(&t, vec![b("k"), b("p/007")], None).await.unwrap();
    assert_eq!(got.seq, last);
    assert_eq!(
        got.values,
        vec![Some(b("v4")), Some(page(&format!("p7 r{}", ROUNDS - 1)))]
    );
    for at in [None, Some(s2)] {
        let got = c.read(&br, vec![b("k")], at).await.unwrap();
        assert_eq!(got.values, vec![Some(b("v2"))], "branch at {at:?}");
    }
    // Below the horizon: refused, naming it. The parent itself is not readable at the
    // branch point any more (only through the branch), nor can a branch be made there.
    for at in [s1, s2] {
        match c.read(&t, vec![b("k")], Some(at)).await.unwrap_err() {
            RpcError::BelowHorizon {
                timeline,
                horizon,
                message,
            } => {
                assert_eq!((timeline.as_str(), horizon), ("t", last));
                assert_eq!(
                    message,
                    format!(
                        "timeline t: seq {} is below the GC horizon {} (history is kept for \
                         pageserver.history_retention)",
                        at.0, last.0
                    )
                );
            }
            other => panic!("expected BelowHorizon, got {other:?}"),
        }
    }
    assert!(matches!(
        c.create_timeline(&tl("late"), Some((&t, Some(s1)))).await,
        Err(RpcError::BelowHorizon { horizon, .. }) if horizon == last
    ));
    assert_eq!(c.describe_timeline(&t).await.unwrap().gc_horizon, last);

    // Once more, for one timeline and with an explicit URL: nothing left to collect.
    let out = lakebed(
        &dir,
        &[
            "pageserver",
            "gc",
            "--timeline",
            "t",
            "--pageserver",
            &server.url(),
        ],
    )
    .await
    .ok();
    let (lines, [_, _, freed]) = parse_gc(&out);
    assert_eq!(lines, vec![gc_line("t", last, 0)], "{out}");
    assert!(freed < 0.1, "{out}");

    // A deleted timeline's space comes back: 2 MiB written (still in the log) and deleted.
    let d = tl("d");
    c.create_timeline(&d, None).await.unwrap();
    let gd = c.acquire(&d).await.unwrap();
    for round in 0..8 {
        let mut batch = WriteBatch::new();
        for i in 0..32 {
            batch = batch.put(b(&format!("p/{round}/{i}")), page(&format!("d{round} {i}")));
        }
        c.write(&d, gd, batch).await.unwrap();
    }
    let with_d = dir_bytes(&store);
    c.delete_timeline(&d).await.unwrap();
    let out = lakebed(&dir, &["pageserver", "gc"]).await.ok();
    let without_d = dir_bytes(&store);
    assert!(
        with_d - without_d >= 2 * 1024 * 1024 * 9 / 10,
        "deleting a 2 MiB timeline freed {} bytes; gc said:\n{out}",
        with_d - without_d
    );
    // And so do the rest: the branch, then its parent, whose layer goes at once.
    c.delete_timeline(&br).await.unwrap();
    c.delete_timeline(&t).await.unwrap();
    assert_eq!(layer_files(&store), BTreeSet::new());
    let left = dir_bytes(&store);
    assert!(left < RESERVE + 64 * 1024, "{left} bytes left");
    assert_no_stray_files(&store);
}

/// One write a writer sent: its keys, value and (once acknowledged) seq.
#[derive(Debug, Clone)]
struct Sent {
    keys: Vec<Bytes>,
    value: Bytes,
    seq: Option<Seq>,
}

/// What one writer did before the page store died: its acknowledged writes, in order, and
/// the write that was in flight (it may or may not have reached the log).
#[derive(Debug)]
struct Writer {
    timeline: TimelineId,
    acked: Vec<Sent>,
    in_flight: Option<Sent>,
}

/// Writes batch `i` (its keys, all with one value: `batch(i)`) for i = 0, 1, ... until
/// the page store stops answering, counting acknowledgements in `count`.
async fn write_until_killed(
    c: PageStoreClient,
    timeline: TimelineId,
    generation: Generation,
    count: Arc<AtomicU64>,
    batch: impl Fn(usize) -> (Vec<Bytes>, Bytes),
) -> Writer {
    let mut w = Writer {
        timeline: timeline.clone(),
        acked: Vec::new(),
        in_flight: None,
    };
    for i in 0.. {
        let (keys, value) = batch(i);
        let sent = Sent {
            keys,
            value,
            seq: None,
        };
        w.in_flight = Some(sent.clone());
        let write = sent.keys.iter().fold(WriteBatch::new(), |batch, k| {
            batch.put(k.clone(), sent.value.clone())
        });
        match c.write(&timeline, generation, write).await {
            Ok(seq) => {
                w.in_flight = None;
                w.acked.push(Sent {
                    seq: Some(seq),
                    ..sent
                });
                count.fetch_add(1, Ordering::SeqCst);
            }
            Err(RpcError::Unavailable { .. }) => return w,
            Err(e) => panic!("a writer on {timeline}: {e}"),
        }
    }
    w
}

/// Per key `w` wrote, what its newest value may be after a kill: its last acknowledged one,
/// or that of the write in flight at the kill (which may have reached the log), or nothing
/// if only that write had it.
fn newest_allowed(w: &Writer) -> HashMap<Bytes, Vec<Option<Bytes>>> {
    let mut allowed: HashMap<Bytes, Vec<Option<Bytes>>> = HashMap::new();
    for sent in &w.acked {
        for key in &sent.keys {
            allowed.insert(key.clone(), vec![Some(sent.value.clone())]);
        }
    }
    if let Some(sent) = &w.in_flight {
        for key in &sent.keys {
            allowed
                .entry(key.clone())
                .or_insert_with(|| vec![None])
                .push(Some(sent.value.clone()));
        }
    }
    allowed
}

/// Asserts that each key `w` wrote reads (at the newest seq) as [`newest_allowed`] says.
async fn check_newest(c: &PageStoreClient, w: &Writer) {
    let allowed = newest_allowed(w);
    let keys: Vec<Bytes> = allowed.keys().cloned().collect();
    for chunk in keys.chunks(256) {
        let got = c.read(&w.timeline, chunk.to_vec(), None).await.unwrap();
        for (key, value) in chunk.iter().zip(&got.values) {
            let ok = &allowed[key];
            assert!(
                ok.contains(value),
                "{} {key:?}: newest is {}, want one of {:?}",
                w.timeline,
                tag_of(value.as_ref()),
                ok.iter().map(|v| tag_of(v.as_ref())).collect::<Vec<_>>()
            );
        }
    }
}

/// Checks, on a page store started again after a kill, that every acknowledged write of `w`
/// reads back exactly at its seq, and that each key's newest value is its last acknowledged
/// one, or that of the write in flight at the kill.
async fn check_writer(c: &PageStoreClient, w: &Writer) {
    for sent in &w.acked {
        let got = c
            .read(&w.timeline, sent.keys.clone(), sent.seq)
            .await
            .unwrap();
        for (key, value) in sent.keys.iter().zip(&got.values) {
            assert!(
                value.as_ref() == Some(&sent.value),
                "{} {key:?} at {:?}: want {}, got {}",
                w.timeline,
                sent.seq,
                tag_of(Some(&sent.value)),
                tag_of(value.as_ref())
            );
        }
    }
    check_newest(c, w).await;
}

/// Twelve writers (three on each of four timelines, as four computes would) write 8 KiB
/// pages to one page store; they share log flushes. The store is killed with SIGKILL in the
/// middle of it and started again on the same directory: every acknowledged write is there,
/// exactly, at its own seq; each key's newest value is the last acknowledged one (or the one
/// in flight at the kill); the generations held are still the current ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_group_commit_of_several_computes_loses_no_acknowledged_write() {
    let dir = DataDir::new();
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &metrics).await;
    let setup = server.client().await;
    let mut timelines = Vec::new();
    for n in 0..4 {
        let t = tl(&format!("compute-{n}"));
        setup.create_timeline(&t, None).await.unwrap();
        let g = setup.acquire(&t).await.unwrap();
        timelines.push((t, g));
    }
    let count = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (t, g) in &timelines {
        for n in 0..3 {
            let c = impatient_client(&server).await;
            // Two different keys of its own per batch (6i + 3 is odd: never 0 mod 16).
            let tag = t.to_string();
            let batch = move |i: usize| {
                let keys = [i % 16, (i * 7 + 3) % 16].map(|k| b(&format!("w{n}/{k:03}")));
                (keys.to_vec(), page(&format!("{tag} w{n} i{i}")))
            };
            writers.push(tokio::spawn(write_until_killed(
                c,
                t.clone(),
                *g,
                count.clone(),
                batch,
            )));
        }
    }
    eventually("400 writes acknowledged", || async {
        match count.load(Ordering::SeqCst) {
            n if n >= 400 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    // Group commit: the writers shared log flushes.
    let m = prom::scrape(&format!("http://{}/metrics", server.metrics_addr.unwrap())).await;
    let syncs = prom::get(&m, "lakebed_pagestore_log_syncs_total", &[]);
    let writes = prom::get(
        &m,
        "lakebed_pagestore_requests_total",
        &[("rpc", "write"), ("outcome", "ok")],
    );
    // Kill mid-stream: writes are in flight right now.
    let status = server.stop(Signal::SIGKILL).await;
    assert_eq!(status.code(), None, "killed by a signal");
    assert!(
        writes >= 400.0 && syncs > 0.0 && syncs < writes,
        "{syncs} log flushes for {writes} writes"
    );
    let mut done = Vec::new();
    for w in writers {
        done.push(timeout(DEADLINE, w).await.unwrap().unwrap());
    }
    let acked: usize = done.iter().map(|w| w.acked.len()).sum();
    assert!(acked >= 400, "{acked} acknowledged");

    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    for w in &done {
        check_writer(&c, w).await;
    }
    for (t, g) in &timelines {
        let max = done
            .iter()
            .filter(|w| &w.timeline == t)
            .flat_map(|w| w.acked.iter().filter_map(|s| s.seq))
            .max()
            .unwrap();
        let info = c.describe_timeline(t).await.unwrap();
        assert!(info.last_seq >= max, "{t}: {info:?} < {max:?}");
        assert_eq!(info.generation, *g, "{t}");
        // The compute that held it may go on writing.
        let seq = c
            .write(t, *g, WriteBatch::new().put(b("after"), b("restart")))
            .await
            .unwrap();
        assert_eq!(seq, Seq(info.last_seq.0 + 1));
    }
}

/// Rows that several clients of two computes committed survive a kill -9 of the page store
/// under them: the store is started again on the same address (commits wait for it and go
/// on), then both computes' pagefs are killed, so the next compute of each endpoint starts
/// from what the page store holds, and every acknowledged row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_page_store_under_busy_computes_loses_no_committed_row() {
    let ps_dir = DataDir::new();
    let server = PageServerProcess::start(ps_dir.path(), "127.0.0.1:0", &[]).await;
    let (addr, url) = (server.addr.to_string(), server.url());
    let dir = DataDir::new();
    let up = LakebedUp::start_with(&dir, &[("LAKEBED_COMPUTE__PAGESERVER_URL", &url)]).await;
    let stack = Stack::of(up, dir);
    stack.cli(&["endpoint", "create", "second"]).await;
    lakebed_with_stdin(
        &stack.dir,
        &[
            "role",
            "create",
            "lakebed",
            "--endpoint",
            "second",
            "--password-stdin",
        ],
        &format!("{}\n", stack.password),
    )
    .await
    .ok();
    let config = |endpoint: &str| {
        let mut cfg = stack.config("postgres");
        cfg.options(format!("endpoint={endpoint}"));
        cfg
    };
    let endpoints = ["main", "second"];
    for ep in endpoints {
        let w = stack.watched(&config(ep)).await.unwrap();
        w.client
            .batch_execute(
                "CREATE TABLE ledger (client int, n int, pad text, PRIMARY KEY (client, n))",
            )
            .await
            .unwrap();
    }
    let acked: Arc<std::sync::Mutex<Vec<(usize, i32, i32)>>> = Arc::default();
    let mut clients = Vec::new();
    for (e, ep) in endpoints.iter().enumerate() {
        for c in 0..2i32 {
            let w = stack.watched(&config(ep)).await.unwrap();
            let acked = acked.clone();
            clients.push(tokio::spawn(async move {
                for n in 0.. {
                    let inserted = w
                        .client
                        .execute(
                            "INSERT INTO ledger VALUES ($1, $2, repeat('x', 500))",
                            &[&c, &n],
                        )
                        .await;
                    match inserted {
                        Ok(1) => acked.lock().unwrap().push((e, c, n)),
                        _ => return,
                    }
                }
            }));
        }
    }
    let acked_now = || acked.lock().unwrap().len();
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            eventually(&format!("{n} rows committed"), || async {
                match acked.lock().unwrap().len() {
                    have if have >= n => Ok(()),
                    have => Err(format!("{have}")),
                }
            })
            .await
        }
    };
    wait_for(60).await;
    server.stop(Signal::SIGKILL).await;
    let before_restart = acked_now();
    let _server = PageServerProcess::start(ps_dir.path(), &addr, &[]).await;
    // Work goes on against the restarted store.
    wait_for(before_restart + 60).await;

    // Kill both computes, pagefs first: what pagefs had not sent is gone with it, and
    // Postgres's buffers with the postmaster. What they acknowledged to clients (every
    // commit's fsync) must be in the page store, where the next computes start from.
    let mut boots = Vec::new();
    for ep in endpoints {
        boots.push(stack.state_and_boots(ep).await.1);
        let pgdata = stack.dir.pgdata(ep).canonicalize().unwrap();
        let pid = pagefs_serving(&pgdata).unwrap_or_else(|| panic!("no pagefs for {ep}"));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        for pm in postmasters_serving(&pgdata) {
            kill(Pid::from_raw(pm as i32), Signal::SIGKILL).unwrap();
        }
    }
    // Their sessions end. The backends (each in a session of its own, not in the
    // postmaster's process group) that waited on a lock the crashed ones held would wait
    // forever, with their clients: the manager kills what a dead postmaster left.
    for c in clients {
        timeout(DEADLINE, c)
            .await
            .expect("a session of a killed compute left hanging")
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for (e, ep) in endpoints.iter().enumerate() {
        let rows: BTreeSet<(i32, i32)> = eventually(&format!("{ep} back"), || async {
            let w = stack
                .watched(&config(ep))
                .await
                .map_err(|e| format!("{e:?}"))?;
            let rows = w
                .client
                .query("SELECT client, n FROM ledger", &[])
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await;
        assert!(
            stack.state_and_boots(ep).await.1 > boots[e],
            "{ep}: read from the killed compute"
        );
        let lost: Vec<_> = acked
            .iter()
            .filter(|(x, c, n)| *x == e && !rows.contains(&(*c, *n)))
            .collect();
        assert!(
            lost.is_empty(),
            "{ep}: {} of the acknowledged rows lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

/// Two writers overwrite an 8 MiB set of pages on a store with a 4 MiB memtable (so layers
/// pile up and are compacted) and no history, while `Gc` calls run; the store is killed with
/// SIGKILL while a compaction is writing its output. Started again: every acknowledged page
/// is there, the half-written files were removed at open (the log says which), and after one
/// more GC the store holds exactly what its manifest refers to, about the live data's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_compaction_and_gc_loses_nothing_and_leaves_nothing_behind() {
    let dir = DataDir::new();
    let env = [(RETENTION, "0s"), (CACHE_MIB, "16")];
    let server = PageServerProcess::start_with(dir.path(), "127.0.0.1:0", &[], &env).await;
    let store = store_dir(&dir);
    let c = server.client().await;
    let t = tl("busy");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    // Each writer owns 512 pages, written over in batches of 32.
    const KEYS: usize = 512;
    let count = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for n in 0..2usize {
        let c = impatient_client(&server).await;
        let batch = move |i: usize| {
            let keys = (0..32)
                .map(|j| b(&format!("w{n}/{:04}", (i * 32 + j) % KEYS)))
                .collect();
            (keys, page(&format!("w{n} round {}", i * 32 / KEYS)))
        };
        writers.push(tokio::spawn(write_until_killed(
            c,
            t.clone(),
            g,
            count.clone(),
            batch,
        )));
    }
    // GC on demand, over and over, as an operator's cron might.
    let gc = {
        let c = impatient_client(&server).await;
        tokio::spawn(async move {
            let mut ok = 0u32;
            loop {
                match c.gc(None).await {
                    Ok(_) => ok += 1,
                    Err(RpcError::Unavailable { .. }) => return ok,
                    Err(e) => panic!("gc: {e}"),
                }
            }
        })
    };
    // A flush writes at most a memtable (4 MiB); a temporary layer file past 5 MiB is a
    // compaction's output (8 MiB of newest pages) being written. Kill then.
    let compacting = eventually("a compaction writing its output", || async {
        let big_tmp = files_under(&store.join("layers")).into_iter().find(|f| {
            f.to_string_lossy().ends_with(".tmp")
                && std::fs::metadata(f).is_ok_and(|m| m.len() > 5 << 20)
        });
        big_tmp.ok_or_else(|| format!("{:?}", layer_files(&store)))
    });
    timeout(DEADLINE, compacting).await.unwrap();
    server.stop(Signal::SIGKILL).await;
    let gcs = timeout(DEADLINE, gc).await.unwrap().unwrap();
    let mut done = Vec::new();
    for w in writers {
        done.push(timeout(DEADLINE, w).await.unwrap().unwrap());
    }
    assert!(gcs >= 1, "no Gc call finished before the kill");

    // What the dead process left that the manifest does not refer to.
    let orphans: Vec<String> = layer_files(&store)
        .difference(&referenced_layers(&store))
        .cloned()
        .collect();
    assert!(
        orphans.iter().any(|f| f.ends_with(".tmp")),
        "no half-written layer left: {orphans:?}"
    );

    let server = PageServerProcess::start_with(dir.path(), "127.0.0.1:0", &[], &env).await;
    let log = server.log_text();
    for orphan in &orphans {
        let path = store.join("layers").join(orphan);
        assert!(
            log.contains(&format!(
                "removing an unreferenced layer file file={}",
                path.display()
            )),
            "{orphan} not removed at open; log:\n{log}"
        );
    }
    let c = server.client().await;
    // A compaction output past 5 MiB holds over 640 pages: nearly all of them acknowledged.
    let distinct: BTreeSet<(usize, &Bytes)> = done
        .iter()
        .enumerate()
        .flat_map(|(n, w)| {
            w.acked
                .iter()
                .flat_map(move |s| s.keys.iter().map(move |k| (n, k)))
        })
        .collect();
    assert!(
        distinct.len() > KEYS,
        "{} pages acknowledged",
        distinct.len()
    );
    // No history is kept: only the newest values can be read.
    for w in &done {
        check_newest(&c, w).await;
    }

    // One more GC, by the CLI: one layer of the live pages, nothing unaccounted for.
    let out = lakebed_env(
        &dir,
        &["pageserver", "gc", "--pageserver", &server.url()],
        &[],
    )
    .await
    .ok();
    assert_no_stray_files(&store);
    let live = (2 * KEYS * PAGE) as u64;
    let size = dir_bytes(&store) - RESERVE;
    assert!(
        size >= live && size < live * 3 / 2,
        "{size} bytes for {live} live after GC:\n{out}"
    );
}

/// A 64 MiB disk fills up: writes get `RESOURCE_EXHAUSTED` (`RpcError::DiskFull`), nothing
/// acknowledged is lost and reads go on. Deleting a timeline (with not a byte free: its
/// manifest goes in the store's `RESERVE`) and collecting gives room back and writes succeed
/// again; so does growing the disk (`mount -o remount,size=`), with no restart of the page
/// store either time; and all of it is there after a kill -9 and a start on the full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_writes_resume_once_there_is_room() {
    let dir = DataDir::new();
    let disk = Tmpfs::mount(64);
    let store = disk.path().join("ps").to_str().unwrap().to_owned();
    let env = [(STORE_DIR, store.as_str()), (CACHE_MIB, "16")];
    let server = PageServerProcess::start_with(dir.path(), "127.0.0.1:0", &[], &env).await;
    let c = server.client().await;
    let keep = tl("keep");
    c.create_timeline(&keep, None).await.unwrap();
    let gk = c.acquire(&keep).await.unwrap();
    let kept = c
        .write(&keep, gk, WriteBatch::new().put(b("k"), page("kept")))
        .await
        .unwrap();

    // Fills timeline `id` with new pages, 16 at a time, until the disk is full; returns the
    // pages acknowledged and the error's message.
    async fn fill(c: &PageStoreClient, id: &str, from: usize) -> (Vec<(Bytes, Bytes)>, String) {
        let t = tl(id);
        let g = match c.create_timeline(&t, None).await {
            Ok(_) | Err(RpcError::AlreadyExists { .. }) => c.acquire(&t).await.unwrap(),
            Err(e) => panic!("create {id}: {e}"),
        };
        let mut acked = Vec::new();
        for n in from.. {
            assert!(n < from + 4096, "64 MiB of pages written and no full disk");
            let pages: Vec<(Bytes, Bytes)> = (0..16)
                .map(|j| {
                    let key = format!("p/{n:05}/{j:02}");
                    (b(&key), page(&key))
                })
                .collect();
            let batch = pages
                .iter()
                .fold(WriteBatch::new(), |b, (k, v)| b.put(k.clone(), v.clone()));
            match c.write(&t, g, batch).await {
                Ok(_) => acked.extend(pages),
                Err(RpcError::DiskFull { message }) => return (acked, message),
                Err(e) => panic!("{id}: expected DiskFull, got {e:?}"),
            }
        }
        unreachable!()
    }
    async fn check(c: &PageStoreClient, id: &str, acked: &[(Bytes, Bytes)]) {
        for chunk in acked.chunks(512) {
            let keys = chunk.iter().map(|(k, _)| k.clone()).collect();
            let got = c.read(&tl(id), keys, None).await.unwrap();
            for ((k, v), got) in chunk.iter().zip(&got.values) {
                assert!(got.as_ref() == Some(v), "{id} {k:?} lost");
            }
        }
    }

    let (acked, message) = fill(&c, "filler", 0).await;
    assert!(
        message.starts_with("the page store's disk is full ("),
        "{message}"
    );
    assert!(acked.len() * PAGE > 32 << 20, "{} pages fit", acked.len());
    check(&c, "filler", &acked).await;
    assert_eq!(
        c.read(&keep, vec![b("k")], None).await.unwrap().values,
        vec![Some(page("kept"))]
    );

    // Room by deleting: the filler goes, GC runs, and the kept timeline takes writes again.
    // With not a byte free (a file of another takes what the store's last write left), the
    // delete's manifest is written in the room the store kept for it.
    let ballast = disk.path().join("ballast");
    fill_disk(&ballast);
    assert_eq!(disk.free_bytes(), 0);
    c.delete_timeline(&tl("filler")).await.unwrap();
    let report = c.gc(None).await.unwrap();
    assert!(
        report.bytes_after < RESERVE + (1 << 20),
        "{} bytes after deleting the filler",
        report.bytes_after
    );
    let log = server.log_text();
    let used = log.find("disk full: writing the manifest in the space kept for it");
    let again = log.find("space for the manifest on a full disk is reserved again");
    assert!(
        used.is_some() && again > used,
        "the reserve was not used, or not made again; log:\n{log}"
    );
    let seq = c
        .write(
            &keep,
            gk,
            WriteBatch::new().put(b("k2"), page("after delete")),
        )
        .await
        .unwrap();
    assert_eq!(seq, Seq(kept.0 + 1));
    std::fs::remove_file(&ballast).unwrap();

    // Full again; then room by growing the disk.
    let (acked, _) = fill(&c, "filler2", 0).await;
    disk.resize(96);
    // Refused (changing nothing) until the flusher's next try finds the room: within a
    // second or so.
    let seq = eventually("a write once the disk has grown", || async {
        let batch = WriteBatch::new().put(b("k3"), page("after growing"));
        match c.write(&keep, gk, batch).await {
            Ok(seq) => Ok(seq),
            Err(RpcError::DiskFull { message }) => Err(message),
            Err(e) => panic!("expected DiskFull until there is room, got {e:?}"),
        }
    })
    .await;
    assert_eq!(seq, Seq(kept.0 + 2));
    let (more, why) = fill(&c, "filler2", 1 << 16).await;
    // A good part of the 32 MiB added is usable: flushes go on, and compaction leaves
    // writes their room.
    assert!(
        more.len() * PAGE > 8 << 20,
        "{} more pages fit; then {why} with {} bytes free",
        more.len(),
        disk.free_bytes()
    );
    check(&c, "filler2", &acked).await;
    check(&c, "filler2", &more).await;

    // All of it survives a restart on the (full again) disk.
    server.stop(Signal::SIGKILL).await;
    let server = PageServerProcess::start_with(dir.path(), "127.0.0.1:0", &[], &env).await;
    let c = server.client().await;
    check(&c, "filler2", &acked).await;
    check(&c, "filler2", &more).await;
    let got = c
        .read(&keep, vec![b("k"), b("k2"), b("k3")], None)
        .await
        .unwrap();
    assert_eq!(
        got.values,
        vec![
            Some(page("kept")),
            Some(page("after delete")),
            Some(page("after growing"))
        ]
    );
}

/// Fills the file system at `path`'s directory to the last byte with `path` (zeros); returns
/// its size.
fn fill_disk(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match f.write(&zeros) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
    written
}

/// A compute whose page store's disk fills up: its next commit fails (Postgres gets EIO
/// from the fsync that pagefs cannot complete, and stops the session), a suspend and a wake
/// while the disk is full fail with an error, and once space returns the next connection
/// wakes the endpoint again, with every committed row, without restarting `lakebed up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_on_a_full_page_store_wakes_again_once_space_returns() {
    let disk = Tmpfs::mount(192);
    let store = disk.path().join("ps");
    let store_text = store.to_str().unwrap().to_owned();
    let dir = DataDir::new();
    let up = LakebedUp::start_with(
        &dir,
        &[
            (STORE_DIR, &store_text),
            (CACHE_MIB, "16"),
            (RETENTION, "0s"),
            ("LAKEBED_COMPUTE__START_TIMEOUT", "10s"),
            ("LAKEBED_COMPUTE__STOP_TIMEOUT", "5s"),
        ],
    )
    .await;
    let stack = Stack::of(up, dir);
    let client = stack.client().await;
    client
        .batch_execute(
            "CREATE TABLE ledger (n int PRIMARY KEY, pad text);
             INSERT INTO ledger SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();

    // Something else on the volume takes every byte left.
    let ballast = disk.path().join("ballast");
    fill_disk(&ballast);
    let refused = timeout(
        DEADLINE,
        client.batch_execute(
            "INSERT INTO ledger SELECT g, repeat('y', 200) FROM generate_series(1001, 50000) g",
        ),
    )
    .await
    .expect("a commit on a full disk ends, with an error");
    assert!(refused.is_err(), "a commit succeeded on a full disk");
    drop(client);
    stack.cli(&["endpoint", "suspend", "main"]).await;
    let woken = lakebed(&stack.dir, &["endpoint", "wake", "main"]).await;
    assert_ne!(woken.code, Some(0), "woke on a full disk: {woken:?}");

    // Space returns; the page store was not restarted.
    std::fs::remove_file(&ballast).unwrap();
    let rows: i64 = eventually("main woken after space returned", || async {
        let w = stack
            .watched(&stack.config("postgres"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let row = w
            .client
            .query_one("SELECT count(*) FROM ledger WHERE n <= 1000", &[])
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(row.get(0))
    })
    .await;
    assert_eq!(rows, 1000);
    let client = stack.client().await;
    client
        .batch_execute("INSERT INTO ledger VALUES (100000, 'after')")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM ledger WHERE n = 100000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// The work of a namespace load, counted by `lakebed_pagestore_entries_visited_total`:
/// scanning 200 keys that were each written 50 times visits exactly as many entries as
/// scanning 200 keys written once (history is kept: retention 24h); and a pagefs mount of a
/// timeline whose 60 files' inode records were rewritten 30 times loads its namespace with
/// about the work of one whose files were written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_load_work_does_not_grow_with_old_versions() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(
        dir.path(),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let metrics = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let visited = || {
        let metrics = metrics.clone();
        async move {
            let m = prom::scrape(&metrics).await;
            prom::get(&m, "lakebed_pagestore_entries_visited_total", &[])
        }
    };
    let c = server.client().await;
    let keys: Vec<String> = (0..200).map(|i| format!("i/{i:04}")).collect();
    for (id, versions) in [("once", 1), ("often", 50)] {
        let t = tl(id);
        c.create_timeline(&t, None).await.unwrap();
        let g = c.acquire(&t).await.unwrap();
        for v in 0..versions {
            let batch = keys.iter().fold(WriteBatch::new(), |batch, k| {
                batch.put(b(k), b(&format!("{k} v{v}")))
            });
            c.write(&t, g, batch).await.unwrap();
        }
    }
    // Into layer files, history and all (nothing is old enough to collect).
    let report = c.gc(None).await.unwrap();
    assert!(
        report.timelines.iter().all(|t| t.versions_removed == 0),
        "{report:?}"
    );
    let mut work = Vec::new();
    for id in ["once", "often"] {
        let before = visited().await;
        let (_, entries) = c.scan_all(&tl(id), b"i/", None, None).await.unwrap();
        work.push(visited().await - before);
        assert_eq!(entries.len(), 200);
        let last = if id == "once" { "v0" } else { "v49" };
        assert_eq!(entries[7].1, b(&format!("{} {last}", keys[7])));
    }
    assert_eq!(
        work[0], work[1],
        "scanning 200 keys of 50 versions did more work than of 1: {work:?}"
    );
    assert!(
        work[0] >= 200.0 && work[0] <= 2.0 * 200.0 + 10.0,
        "{work:?} entries visited for 200 keys"
    );

    // The same through pagefs: its mount loads the whole namespace (inode records and
    // directory entries).
    for (id, rounds) in [("fs-once", 1), ("fs-often", 30)] {
        c.create_timeline(&tl(id), None).await.unwrap();
        let mut fs = PagefsProcess::start(dir.path(), id, &server.url(), id, &[]).await;
        for round in 0..rounds {
            for f in 0..60 {
                // A different length each round: a new inode record each time.
                std::fs::write(
                    fs.mountpoint.join(format!("f{f:02}")),
                    vec![b'x'; 100 + round],
                )
                .unwrap();
            }
            // One fsync sends everything dirty.
            std::fs::File::open(fs.mountpoint.join("f00"))
                .unwrap()
                .sync_all()
                .unwrap();
        }
        assert!(fs.stop(Signal::SIGTERM).await.success());
        let info = c.describe_timeline(&tl(id)).await.unwrap();
        assert!(info.last_seq.0 >= rounds as u64, "{id}: {info:?}");
    }
    c.gc(None).await.unwrap();
    let mut work = Vec::new();
    for id in ["fs-once", "fs-often"] {
        let before = visited().await;
        // Without a prewarm: its fetches of the pages the last mount wrote are not the
        // namespace load's work.
        let fs = PagefsProcess::start(
            dir.path(),
            &format!("{id}-again"),
            &server.url(),
            id,
            &["--no-prewarm"],
        )
        .await;
        work.push(visited().await - before);
        assert_eq!(
            std::fs::read(fs.mountpoint.join("f42")).unwrap().len(),
            if id == "fs-once" { 100 } else { 129 }
        );
    }
    assert!(
        work[1] <= work[0] + 20.0 && work[0] < 300.0,
        "mounting after 30 rewrites of each file visited {} entries, after one {}",
        work[1],
        work[0]
    );
}

/// A layer file cut short, a manifest with a changed byte or cut short: `lakebed pageserver`
/// refuses to start, naming the file, and never listens. A changed byte inside a layer's data
/// is found when the block is read: that read fails naming the file, and no data is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_stops_the_start_naming_it() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    let t = tl("t");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    c.write(&t, g, WriteBatch::new().put(b("k"), page("layered")))
        .await
        .unwrap();
    c.gc(None).await.unwrap(); // into a layer file
    server.stop(Signal::SIGTERM).await;
    let store = store_dir(&dir);
    let layers: Vec<String> = layer_files(&store).into_iter().collect();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let layer = store.join("layers").join(&layers[0]);
    let manifest = store.join("MANIFEST");
    let (good_layer, good_manifest) = (
        std::fs::read(&layer).unwrap(),
        std::fs::read(&manifest).unwrap(),
    );

    let start = || lakebed(&dir, &["pageserver", "--listen", "127.0.0.1:0"]);
    let refused = |out: lakebed_tests::CliOutput, file: &Path, why: &str| {
        assert!(
            !out.stdout.contains("pageserver listening"),
            "it served: {out:?}"
        );
        let err = out.err();
        let want = format!("corrupt page store file {}: {why}", file.display());
        assert!(err.contains(&want), "{err:?} lacks {want:?}");
    };
    std::fs::write(&layer, &good_layer[..good_layer.len() - 10]).unwrap();
    refused(start().await, &layer, "");
    std::fs::write(&layer, &good_layer[..good_layer.len() / 2]).unwrap();
    refused(start().await, &layer, "");
    std::fs::write(&layer, &good_layer).unwrap();

    let mut bad = good_manifest.clone();
    let last = bad.len() - 2;
    bad[last] ^= 0x01;
    std::fs::write(&manifest, &bad).unwrap();
    refused(
        start().await,
        &manifest,
        "checksum mismatch (truncated or changed)",
    );
    std::fs::write(&manifest, &good_manifest[..good_manifest.len() / 2]).unwrap();
    refused(
        start().await,
        &manifest,
        "checksum mismatch (truncated or changed)",
    );
    std::fs::write(&manifest, &good_manifest).unwrap();

    // A changed byte in the page's block: the store opens (footer and index are whole), and
    // the read fails naming the file.
    let mut bad = good_layer.clone();
    bad[100] ^= 0xff;
    std::fs::write(&layer, &bad).unwrap();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    match c.read(&t, vec![b("k")], None).await.unwrap_err() {
        RpcError::Server { code, message } => {
            assert_eq!(code, tonic::Code::Internal);
            assert_eq!(
                message,
                format!(
                    "corrupt page store file {}: block at offset 0 fails its checksum",
                    layer.display()
                )
            );
        }
        other => panic!("expected an internal error, got {other:?}"),
    }
}

/// Bad `[pageserver]` settings, in the file or the environment: `lakebed pageserver` exits
/// with an error naming the file (or variable), the key and the value, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pageserver_settings_are_refused_naming_the_file_and_key() {
    let dir = DataDir::new();
    let file = dir.path().join("bad.toml");
    let file_arg = file.to_str().unwrap();
    let cases = [
        (
            "[pageserver]\nhistory_retention = \"-1s\"\n",
            "pageserver.history_retention: \"-1s\" is not a duration (examples: 90s, 5m, 1h)",
        ),
        (
            "[pageserver]\nhistory_retention = \"a while\"\n",
            "pageserver.history_retention: \"a while\" is not a duration (examples: 90s, 5m, 1h)",
        ),
        (
            "[pageserver]\ngc_interval = \"0s\"\n",
            "pageserver.gc_interval: must be more than 0s",
        ),
        (
            "[pageserver]\nhistory_retension = \"1h\"\n",
            "pageserver.history_retension: unknown key",
        ),
    ];
    for (toml, want) in cases {
        std::fs::write(&file, toml).unwrap();
        for args in [
            &[
                "--config",
                file_arg,
                "pageserver",
                "--listen",
                "127.0.0.1:0",
            ][..],
            &["--config", file_arg, "pageserver", "gc"][..],
        ] {
            let err = lakebed(&dir, args).await.err();
            let want = format!("{file_arg}: {want}");
            assert!(err.contains(&want), "{args:?}: {err:?} lacks {want:?}");
        }
    }
    let err = lakebed_env(
        &dir,
        &["pageserver", "--listen", "127.0.0.1:0"],
        &[(RETENTION, "-1s")],
    )
    .await
    .err();
    let want = format!(
        "environment variable {RETENTION}: pageserver.history_retention: \"-1s\" is not a \
         duration (examples: 90s, 5m, 1h)"
    );
    assert!(err.contains(&want), "{err:?} lacks {want:?}");
    assert!(!store_dir(&dir).exists(), "a refused start made the store");
}
