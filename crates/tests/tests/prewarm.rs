//! Prewarm through `lakebed up`: a wake fetches back what the last compute read, reports it,
//! and a kill -9 of Postgres while it runs loses nothing.

#![allow(clippy::unwrap_used)]

use lakebed_tests::stack::Stack;
use lakebed_tests::{DEADLINE, POLL_INTERVAL};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::time::timeout;

/// Polls `endpoint show` until the running compute's prewarm is done; returns its report.
async fn prewarm_done(stack: &Stack) -> Value {
    let polled = timeout(DEADLINE, async {
        loop {
            let p = stack.show("main").await["pagefs"]["prewarm"].clone();
            if p["done"] == true {
                return p;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await;
    match polled {
        Ok(p) => p,
        Err(_) => panic!("no finished prewarm: {:#}", stack.show("main").await),
    }
}

/// `(bytes of the file in the kernel's page cache, its size)`, from `fincore`.
async fn page_cache(path: &std::path::Path) -> (u64, u64) {
    let out = tokio::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"])
        .arg(path)
        .output()
        .await
        .expect("fincore runs (scripts/install-deps.sh installs util-linux-extra)");
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        out.status.success() && nums.len() == 2,
        "fincore: {text} {out:?}"
    );
    (nums[0], nums[1])
}

const CHECK: &str = "SELECT count(*), sum(length(note)) FROM hot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_prewarms_what_was_read_and_a_kill_9_during_it_loses_nothing() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    // About 40 MB: 20,000 rows of 2,018 bytes, stored inline, 4 to a page.
    client
        .batch_execute(
            "CREATE TABLE hot (id int PRIMARY KEY, note text);
             ALTER TABLE hot ALTER note SET STORAGE PLAIN;
             INSERT INTO hot SELECT g, repeat(md5(g::text), 63) || 'ab' FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let want = client.query_one(CHECK, &[]).await.unwrap();
    let want: (i64, i64) = (want.get(0), want.get(1));
    assert_eq!(want, (20_000, 20_000 * 2_018));
    drop(client);

    // This compute read the table (and Postgres's own start): its heat list, written at
    // suspend, names the table's pages, and the next wake fetches them back.
    stack.suspend("main").await;
    stack.wake("main").await;
    let first = prewarm_done(&stack).await;
    assert!(first["listed"].as_u64().unwrap() > 5000, "{first}");
    assert!(first["fetched"].as_u64().unwrap() > 5000, "{first}");
    let listed = first["listed"].as_u64().unwrap();
    // The prewarm read the table through the mount too: before any query reads it, the
    // kernel's page cache holds nearly all of its file, so Postgres's reads of it will not
    // reach pagefs (the startup part, fetched before the mount is live, is not counted).
    assert!(first["in_page_cache"].as_u64().unwrap() > 5000, "{first}");
    let client = stack.client().await;
    let file: String = client
        .query_one("SELECT pg_relation_filepath('hot')", &[])
        .await
        .unwrap()
        .get(0);
    let (resident, size) = page_cache(&stack.dir.pgdata("main").join(file)).await;
    assert!(
        size > 40 << 20 && resident * 10 >= size * 9,
        "{resident} of {size} bytes cached"
    );
    let row = client.query_one(CHECK, &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), want);
    let shown = stack.cli(&["endpoint", "show", "main"]).await;
    assert!(shown.contains("pages fetched"), "{shown}");

    // kill -9 of Postgres right after the next wake, while the prewarm runs; the wake after
    // it runs crash recovery and everything is there.
    stack.suspend("main").await;
    stack.wake("main").await;
    let pid = stack.show("main").await["compute"]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let row = timeout(DEADLINE, async {
        loop {
            if let Ok(w) = stack.watched(&stack.config("postgres")).await
                && let Ok(row) = w.client.query_one(CHECK, &[]).await
            {
                return row;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await
    .expect("the endpoint comes back after the kill");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), want);
    // The killed compute read little before it died; the list its pagefs left still holds
    // the older pages after those reads (less those of files deleted since, such as the
    // relcache init files every start rewrites), so this wake prewarms the table again.
    let again = prewarm_done(&stack).await;
    assert!(
        again["listed"].as_u64().unwrap() + 100 >= listed,
        "{again} after {first}"
    );
}
