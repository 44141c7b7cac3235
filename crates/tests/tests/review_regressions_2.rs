//! Regression tests for what the second newcomer review found: each fails on the behaviour
//! before the fix.
//! - A customer role could grant itself `pg_execute_server_program` (CREATEROLE in
//!   PostgreSQL 15) and read other tenants' data directories through a shell, since every
//!   compute runs as the same OS user.
//! - A second `lakebed up` on a data dir in use took the running computes for orphans and
//!   killed them, and removed the running instance's address files.
//! - A missing local master key was silently made anew, leaving every DEK unwrappable.

#![allow(clippy::unwrap_used)]

use lakebed_tests::stack::Stack;
use lakebed_tests::{LakebedUp, lakebed_env, process_alive};
use nix::sys::signal::Signal;
use tokio_postgres::error::SqlState;

/// Settings so a `lakebed up` run here never fights over ports.
const FREE_PORTS: &[(&str, &str)] = &[
    ("LAKEBED_MANAGER__LISTEN", "127.0.0.1:0"),
    ("LAKEBED_PROXY__LISTEN", "127.0.0.1:0"),
    ("LAKEBED_PROXY__API_LISTEN", "127.0.0.1:0"),
    ("LAKEBED_PAGESERVER__LISTEN", "127.0.0.1:0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_roles_cannot_reach_the_host_and_one_data_dir_has_one_lakebed_up() {
    let mut stack = Stack::start().await;
    let client = stack.client().await;
    client
        .batch_execute("CREATE TABLE t (l text)")
        .await
        .unwrap();
    for sql in [
        "GRANT pg_execute_server_program TO lakebed",
        "GRANT pg_read_server_files TO lakebed",
        "CREATE ROLE escape LOGIN",
        "COPY t FROM PROGRAM 'id'",
        "COPY t FROM '/etc/passwd'",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
    }
    let pid = stack.show("main").await["compute"]["pid"].as_u64().unwrap() as u32;

    // A second `lakebed up` on the same data dir is refused before it touches anything.
    let out = lakebed_env(&stack.dir, &["up"], FREE_PORTS).await;
    let err = out.err();
    assert!(err.contains("already running"), "{err}");
    assert!(process_alive(pid), "the running compute was left alone");
    let status = stack.cli(&["status"]).await;
    assert!(status.contains("main"), "{status}");
    drop(client);

    // Stopped, with its local master key gone: refused at start, naming the file.
    stack.up.signal(Signal::SIGTERM);
    assert!(stack.up.wait().await.success());
    let key = stack.dir.path().join("keys/local-master.key");
    let aside = stack.dir.path().join("keys/aside.key");
    std::fs::rename(&key, &aside).unwrap();
    let out = lakebed_env(&stack.dir, &["up"], FREE_PORTS).await;
    let err = out.err();
    assert!(
        err.contains("local-master.key is missing") && err.contains("restore"),
        "{err}"
    );
    assert!(!key.exists(), "no new key was made");
    // Restored: it starts and the data is there.
    std::fs::rename(&aside, &key).unwrap();
    stack.up = LakebedUp::start(&stack.dir).await;
    let rows = stack
        .client()
        .await
        .query("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
}
