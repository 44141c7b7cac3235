//! Computes on the page store, through `lakebed up` and real clients: nothing of an endpoint
//! stays on the compute's disk, what a suspended compute wrote is there on a fresh directory
//! with an empty cache, and kill -9 of Postgres or of pagefs at any moment loses no
//! acknowledged commit.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakebed_tests::stack::Stack;
use lakebed_tests::{
    DEADLINE, POLL_INTERVAL, contains_bytes, files_under, is_mounted, pagefs_serving,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::timeout;

fn endpoint_dir(stack: &Stack, endpoint: &str) -> PathBuf {
    stack.dir.path().join("endpoints").join(endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_survive_a_suspend_and_nothing_readable_stays_on_the_compute() {
    let stack = Stack::start().await;
    let marker = "MARKER-c0ffee-4d2b-row-text";
    let client = stack.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE ledger (id int PRIMARY KEY, note text);
             INSERT INTO ledger SELECT g, '{marker}' FROM generate_series(1, 5000) g;"
        ))
        .await
        .unwrap();
    // The commit's WAL went through pagefs (and its cache, once flushed).
    let n: i64 = client
        .query_one("SELECT count(*) FROM ledger WHERE note = $1", &[&marker])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);

    let ep = endpoint_dir(&stack, "main");
    assert!(is_mounted(&ep.join("pgdata")), "PGDATA is a pagefs mount");
    let local = files_under(&ep.join("local"));
    assert!(
        local.iter().any(|p| p.ends_with("cache")),
        "a cache file: {local:?}"
    );
    // Everything of the endpoint on the compute's own disk (the mount is the page store's).
    for path in local.iter().chain(files_under(&ep.join("run")).iter()) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !contains_bytes(&bytes, marker.as_bytes()),
            "plaintext row in {}",
            path.display()
        );
    }
    drop(client);

    stack.suspend("main").await;
    assert!(!is_mounted(&ep.join("pgdata")), "unmounted at suspend");
    assert!(
        !ep.join("local").exists(),
        "cache and scratch files deleted"
    );
    assert_eq!(std::fs::read_dir(ep.join("pgdata")).unwrap().count(), 0);

    // A fresh directory, an empty cache: every row is there.
    let client = stack.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM ledger WHERE note = $1", &[&marker])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    Postgres,
    Pagefs,
}

/// Several clients insert numbered rows, each recording what was acknowledged; after a
/// varying number of acknowledgements the victim is killed with SIGKILL. After each kill the
/// endpoint is woken again and every acknowledged row must be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_postgres_or_pagefs_loses_no_acknowledged_commit() {
    let stack = Stack::start().await;
    stack
        .client()
        .await
        .batch_execute("CREATE TABLE ledger (client int, n int, PRIMARY KEY (client, n))")
        .await
        .unwrap();
    let ep = endpoint_dir(&stack, "main");
    let acknowledged: Arc<Mutex<Vec<(i32, i32)>>> = Arc::default();
    let mut next = [0i32; 4];
    for (round, (victim, after)) in [
        (Victim::Postgres, 37),
        (Victim::Pagefs, 23),
        (Victim::Postgres, 61),
        (Victim::Pagefs, 45),
    ]
    .into_iter()
    .enumerate()
    {
        let clients = futures_like_join(&stack, &acknowledged, &mut next).await;
        // Wait for `after` more acknowledgements, then kill.
        let start = acknowledged.lock().unwrap().len();
        timeout(DEADLINE, async {
            while acknowledged.lock().unwrap().len() < start + after {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the workload made no progress"));
        let pid = match victim {
            Victim::Postgres => stack.show("main").await["compute"]["pid"].as_i64().unwrap() as i32,
            Victim::Pagefs => pagefs_serving(&ep.join("pgdata").canonicalize().unwrap())
                .unwrap_or_else(|| panic!("round {round}: no pagefs process"))
                as i32,
        };
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        for c in clients {
            let _ = timeout(DEADLINE, c).await;
        }
        // The manager notices, cleans up; a new connection wakes a fresh compute, which runs
        // crash recovery from the page store.
        let rows: Vec<(i32, i32)> = timeout(DEADLINE, async {
            loop {
                if let Ok(w) = stack.watched(&stack.config("postgres")).await
                    && let Ok(rows) = w.client.query("SELECT client, n FROM ledger", &[]).await
                {
                    return rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} ({victim:?}): the endpoint did not come back"));
        let present: std::collections::HashSet<_> = rows.into_iter().collect();
        let acked = acknowledged.lock().unwrap().clone();
        let lost: Vec<_> = acked.iter().filter(|r| !present.contains(r)).collect();
        assert!(
            lost.is_empty(),
            "round {round} ({victim:?}): {} of {} acknowledged rows lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        for (c, n) in next.iter_mut().enumerate() {
            *n = present
                .iter()
                .filter(|r| r.0 == c as i32)
                .map(|r| r.1 + 1)
                .max()
                .unwrap_or(0);
        }
    }
}

/// Starts 4 inserting clients (numbering on from `next`); each runs until its connection
/// breaks, recording every committed row.
async fn futures_like_join(
    stack: &Stack,
    acknowledged: &Arc<Mutex<Vec<(i32, i32)>>>,
    next: &mut [i32; 4],
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for (c, start) in next.iter().enumerate() {
        let w = stack.watched(&stack.config("postgres")).await.unwrap();
        let acknowledged = acknowledged.clone();
        let start = *start;
        handles.push(tokio::spawn(async move {
            let client = w.client;
            for n in start.. {
                let ok = client
                    .execute("INSERT INTO ledger VALUES ($1, $2)", &[&(c as i32), &n])
                    .await;
                match ok {
                    Ok(1) => acknowledged.lock().unwrap().push((c as i32, n)),
                    _ => return,
                }
            }
        }));
    }
    handles
}

/// The page store goes away for 2 s while a transaction commits (its WAL fsync waits): the
/// commit completes once the page store is back, and the row is there after a suspend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_out_a_two_second_page_store_outage() {
    use lakebed_tests::{DataDir, LakebedUp, PageServerProcess};
    let ps_dir = DataDir::new();
    let server = PageServerProcess::start(ps_dir.path(), "127.0.0.1:0", &[]).await;
    let addr = server.addr.to_string();
    let url = server.url();
    let dir = DataDir::new();
    let up = LakebedUp::start_with(&dir, &[("LAKEBED_COMPUTE__PAGESERVER_URL", &url)]).await;
    let stack = Stack::of(up, dir);
    let client = stack.client().await;
    client
        .batch_execute("CREATE TABLE t (n int)")
        .await
        .unwrap();

    server.stop(Signal::SIGKILL).await;
    let commit =
        tokio::spawn(async move { client.execute("INSERT INTO t VALUES (42)", &[]).await });
    // The outage is the fault under test; its length is the point.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !commit.is_finished(),
        "the commit returned while the page store was down"
    );
    let _server = PageServerProcess::start(ps_dir.path(), &addr, &[]).await;
    let inserted = timeout(DEADLINE, commit).await.unwrap().unwrap().unwrap();
    assert_eq!(inserted, 1);

    stack.suspend("main").await;
    let n: i32 = stack
        .client()
        .await
        .query_one("SELECT n FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
}
