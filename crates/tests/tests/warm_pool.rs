//! The warm pool (`compute.warm_pool`) through `lakebed up`: a wake hands its mount to a
//! pagefs started ahead, which held nothing of a tenant before; a dead member is never
//! handed out; the pool refills; shutdown leaves no pagefs; without a pool, wakes start
//! their own pagefs as before.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use lakebed_tests::prom::{get, scrape};
use lakebed_tests::stack::Stack;
use lakebed_tests::{
    DEADLINE, POLL_INTERVAL, lakebed, pagefs_serving, pagefs_under, process_alive,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::time::timeout;

/// The manager's `/metrics`.
fn metrics_url(stack: &Stack) -> String {
    format!("{}/metrics", stack.up.api_url)
}

/// Waits (at most [`DEADLINE`]) until `lakebed_warm_pool_members` is `want`.
async fn pool_members_become(stack: &Stack, want: f64) {
    let url = metrics_url(stack);
    let polled = timeout(DEADLINE, async {
        loop {
            if get(&scrape(&url).await, "lakebed_warm_pool_members", &[]) == want {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "lakebed_warm_pool_members never became {want}"
    );
}

/// The pids of the pool's members: pagefs processes working in the pool's directory.
fn members(stack: &Stack) -> Vec<u32> {
    let pool = stack.dir.path().join("pagefs-pool");
    pagefs_under(stack.dir.path())
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == pool)
                && process_alive(*pid)
        })
        .collect()
}

/// The one live member; panics unless there is exactly one.
fn only_member(stack: &Stack) -> u32 {
    let m = members(stack);
    assert_eq!(m.len(), 1, "want one pool member, found {m:?}");
    m[0]
}

/// The newest boot's steps, from `endpoint show --json`.
async fn last_steps(stack: &Stack) -> Value {
    let shown = stack.show("main").await;
    let steps = shown["recent_boots"][0]["steps"].clone();
    assert!(steps.is_object(), "no steps in {shown:#}");
    steps
}

async fn select_one(stack: &Stack) {
    let row = stack
        .client()
        .await
        .query_one("SELECT 41 + 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// Whether `pid` has `/dev/fuse` open (a FUSE mount's channel).
fn holds_fuse(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| Path::new(t).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// `lakebed_warm_pool_handoffs_total` by outcome: (pooled, spawned, dead).
async fn handoffs(stack: &Stack) -> (f64, f64, f64) {
    let m = scrape(&metrics_url(stack)).await;
    let of = |outcome| {
        get(
            &m,
            "lakebed_warm_pool_handoffs_total",
            &[("outcome", outcome)],
        )
    };
    (of("pooled"), of("spawned"), of("dead"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_hands_its_mount_to_a_tenant_free_member_and_the_pool_refills() {
    let stack = Stack::start().await;
    pool_members_become(&stack, 1.0).await;
    let member = only_member(&stack);
    let shown = stack.show("main").await;
    let timeline = shown["timeline"].as_str().unwrap().to_owned();

    // Before its hand-off the member holds nothing of a tenant: no timeline, mount point or
    // key in its argv or environment, no FUSE channel, no mount anywhere in the data dir.
    let cmdline = String::from_utf8(std::fs::read(format!("/proc/{member}/cmdline")).unwrap())
        .unwrap()
        .replace('\0', " ");
    assert!(cmdline.contains("--assignment-from-stdin"), "{cmdline}");
    for absent in [
        timeline.as_str(),
        "--timeline",
        "--mountpoint",
        "--keys-from-stdin",
        "endpoints",
        "dek",
    ] {
        assert!(!cmdline.contains(absent), "{absent:?} in {cmdline}");
    }
    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{member}/environ")).unwrap())
            .replace('\0', "\n");
    for var in environ.lines() {
        let name = var.split('=').next().unwrap();
        assert!(
            name == "PATH" || name.starts_with("OTEL_"),
            "unexpected variable {name} in the member's environment"
        );
    }
    assert!(!holds_fuse(member), "a waiting member has /dev/fuse open");
    assert_eq!(mounts_under(stack.dir.path()), Vec::<String>::new());

    // The first wake (which also builds the template, with a pagefs of its own) takes it.
    stack.wake("main").await;
    let steps = last_steps(&stack).await;
    assert_eq!(steps["pooled"], true, "{steps:#}");
    assert_eq!(steps["dead_pool_members"], 0, "{steps:#}");
    let pgdata = stack.dir.pgdata("main");
    assert_eq!(pagefs_serving(&pgdata), Some(member));
    assert!(holds_fuse(member));
    select_one(&stack).await;
    let shown = stack.cli(&["endpoint", "show", "main"]).await;
    assert!(shown.contains("(pooled;"), "{shown}");

    // Refilled in the background with a new process: a member is used once.
    pool_members_become(&stack, 1.0).await;
    let next = only_member(&stack);
    assert_ne!(next, member);
    assert_eq!(handoffs(&stack).await, (1.0, 0.0, 0.0));

    // At suspend the used member exits with its mount; the next wake takes the next one.
    stack.suspend("main").await;
    assert!(!process_alive(member), "a used member outlived its compute");
    assert_eq!(mounts_under(stack.dir.path()), Vec::<String>::new());
    stack.wake("main").await;
    assert_eq!(last_steps(&stack).await["pooled"], true);
    assert_eq!(pagefs_serving(&pgdata), Some(next));
    select_one(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_is_given_up_at_hand_off_and_the_wake_goes_on() {
    let stack = Stack::start().await;
    pool_members_become(&stack, 1.0).await;
    let member = only_member(&stack);
    // Alive to `try_wait`, but it never reads its assignment.
    kill(Pid::from_raw(member as i32), Signal::SIGSTOP).unwrap();

    stack.wake("main").await;
    let steps = last_steps(&stack).await;
    assert_eq!(steps["pooled"], false, "{steps:#}");
    assert_eq!(steps["dead_pool_members"], 1, "{steps:#}");
    assert_ne!(pagefs_serving(&stack.dir.pgdata("main")), Some(member));
    assert!(!process_alive(member), "the stopped member was not killed");
    select_one(&stack).await;
    assert_eq!(handoffs(&stack).await, (0.0, 1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_before_the_wake_is_replaced_never_handed_out() {
    let stack = Stack::start().await;
    pool_members_become(&stack, 1.0).await;
    let member = only_member(&stack);
    kill(Pid::from_raw(member as i32), Signal::SIGKILL).unwrap();
    // Dead (a zombie until the manager reaps it), and seen so on /metrics.
    pool_members_become(&stack, 0.0).await;

    stack.wake("main").await;
    let steps = last_steps(&stack).await;
    assert_eq!(steps["pooled"], false, "{steps:#}");
    assert_eq!(steps["dead_pool_members"], 1, "{steps:#}");
    let served_by = pagefs_serving(&stack.dir.pgdata("main")).unwrap();
    assert_ne!(served_by, member);
    select_one(&stack).await;
    let shown = stack.cli(&["endpoint", "show", "main"]).await;
    assert!(shown.contains("(spawned;"), "{shown}");
    assert!(shown.contains("1 dead pool member(s) replaced"), "{shown}");

    assert_eq!(handoffs(&stack).await, (0.0, 1.0, 1.0));
    // A live member again, a new process.
    pool_members_become(&stack, 1.0).await;
    let again = only_member(&stack);
    assert!(again != member && again != served_by);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pool_each_wake_starts_its_pagefs() {
    let stack = Stack::start_with(&[("LAKEBED_COMPUTE__WARM_POOL", "0")]).await;
    let url = metrics_url(&stack);
    assert_eq!(
        get(&scrape(&url).await, "lakebed_warm_pool_members", &[]),
        0.0
    );
    assert_eq!(pagefs_under(stack.dir.path()), Vec::<u32>::new());

    stack.wake("main").await;
    let steps = last_steps(&stack).await;
    assert_eq!(steps["pooled"], false, "{steps:#}");
    assert_eq!(steps["dead_pool_members"], 0, "{steps:#}");
    select_one(&stack).await;
    // Only the compute's own pagefs runs: none waits in a pool.
    let served_by = pagefs_serving(&stack.dir.pgdata("main")).unwrap();
    assert_eq!(pagefs_under(stack.dir.path()), vec![served_by]);
    let m = scrape(&url).await;
    assert_eq!(get(&m, "lakebed_warm_pool_members", &[]), 0.0);
    assert_eq!(
        get(
            &m,
            "lakebed_warm_pool_handoffs_total",
            &[("outcome", "spawned")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_pagefs_and_no_mount_behind() {
    let mut stack = Stack::start_with(&[("LAKEBED_COMPUTE__WARM_POOL", "2")]).await;
    stack.wake("main").await;
    select_one(&stack).await;
    pool_members_become(&stack, 2.0).await;
    let before = pagefs_under(stack.dir.path());
    assert_eq!(
        before.len(),
        3,
        "the compute's pagefs and two members: {before:?}"
    );

    stack.up.signal(Signal::SIGTERM);
    let status = stack.up.wait().await;
    assert!(status.success(), "lakebed up: {status}");
    // Gone when `lakebed up` is: it waits for every pagefs it started.
    for pid in &before {
        assert!(!process_alive(*pid), "pagefs {pid} outlived lakebed up");
    }
    assert_eq!(pagefs_under(stack.dir.path()), Vec::<u32>::new());
    assert_eq!(mounts_under(stack.dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_that_fails_after_the_hand_off_leaves_nothing_behind() {
    let stack = Stack::start().await;
    stack.wake("main").await;
    stack.suspend("main").await;
    // Postgres will refuse to start: the wake fails after pagefs was handed its mount.
    stack
        .edit_pgdata("main", |pgdata| {
            let conf = pgdata.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("this is not a setting\n");
            std::fs::write(&conf, text).unwrap();
        })
        .await;
    pool_members_become(&stack, 1.0).await;
    let member = only_member(&stack);

    let failed = lakebed(&stack.dir, &["endpoint", "wake", "main"])
        .await
        .err();
    assert!(failed.contains("failed to start"), "{failed}");
    let boot = stack.show("main").await["recent_boots"][0].clone();
    assert_eq!(boot["steps"]["pooled"], true, "{boot:#}");
    // The handed-off member is gone with its mount and local files; the pool has a new one.
    assert!(
        !process_alive(member),
        "the failed wake's pagefs still runs"
    );
    assert_eq!(pagefs_serving(&stack.dir.pgdata("main")), None);
    assert_eq!(mounts_under(stack.dir.path()), Vec::<String>::new());
    assert!(!stack.dir.path().join("endpoints/main/local").exists());
    pool_members_become(&stack, 1.0).await;
    assert_ne!(only_member(&stack), member);

    // Mended, the next wake serves, from the pool again.
    stack
        .edit_pgdata("main", |pgdata| {
            let conf = pgdata.join("postgresql.conf");
            let text = std::fs::read_to_string(&conf).unwrap();
            std::fs::write(&conf, text.replace("this is not a setting\n", "")).unwrap();
        })
        .await;
    stack.wake("main").await;
    assert_eq!(last_steps(&stack).await["pooled"], true);
    select_one(&stack).await;
}
