//! The compute manager as a library, against real PostgreSQL: wake, connect, concurrent
//! wakes, autosuspend (and what prevents it), and the bad inputs of the lifecycle.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

use lakebed_compute_manager::compute::{ComputeState, ComputeStatus, Decision};
use lakebed_compute_manager::{Manager, ManagerError};
use lakebed_config::{EndpointName, PortRange, RoleName};
use lakebed_tests::{
    DataDir, checks_past_timeout, connect, create_endpoint, manager_options, open_manager, policy,
    postmasters_serving, process_alive, wait_status,
};
use tokio_postgres::error::SqlState;

/// Creates role `name` on `endpoint` with a generated password, and returns the password.
async fn create_role(manager: &Manager, endpoint: &EndpointName, name: &str) -> String {
    let role: RoleName = name.parse().expect("role name");
    manager
        .create_role(endpoint, &role, None)
        .await
        .expect("create role")
        .expect("a generated password is returned")
}

fn is_suspended(s: &ComputeStatus) -> bool {
    s.state == ComputeState::Suspended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn woken_compute_accepts_catalog_role_and_refuses_wrong_password_and_system_role() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    let password = create_role(&manager, &ep, "app").await;

    let woken = manager.wake(&ep).await.expect("wake");
    assert!(woken.address.ip().is_loopback(), "{woken:?}");
    assert_eq!(manager.status(&ep).state, ComputeState::Active);
    assert_eq!(manager.status(&ep).address, Some(woken.address));

    let client = connect(woken.address, "app", &password)
        .await
        .expect("log in as the catalog role");
    let row = client
        .query_one("SELECT current_user::text, 40 + 2", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "app");
    assert_eq!(row.get::<_, i32>(1), 42);

    let wrong = connect(woken.address, "app", "not-the-password")
        .await
        .expect_err("a wrong password must be refused");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong}");

    // The system role has no password and is rejected over TCP by pg_hba.conf.
    let system = connect(woken.address, "lakebed_system", "anything")
        .await
        .expect_err("the system role must not log in over TCP");
    assert_eq!(
        system.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{system}"
    );

    drop(client);
    manager.shutdown().await;
    assert!(postmasters_serving(&dir.pgdata("main")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_wakes_start_exactly_one_postmaster() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    assert_eq!(manager.status(&ep).state, ComputeState::Suspended);

    let mut wakes = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (manager, ep) = (manager.clone(), ep.clone());
        wakes.spawn(async move { manager.wake(&ep).await });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = wakes.join_next().await {
        outcomes.push(joined.expect("wake task").expect("wake"));
    }

    assert_eq!(outcomes.len(), 20);
    let addresses: HashSet<_> = outcomes.iter().map(|o| o.address).collect();
    let pids: HashSet<_> = outcomes.iter().map(|o| o.pid).collect();
    assert_eq!(addresses.len(), 1, "{outcomes:?}");
    assert_eq!(pids.len(), 1, "{outcomes:?}");
    let starters = outcomes
        .iter()
        .filter(|o| o.cold_start_ms.is_some())
        .count();
    assert_eq!(
        starters, 1,
        "exactly one wake started the compute: {outcomes:?}"
    );
    assert_eq!(manager.show(&ep).expect("show").boots, 1);

    let pid = outcomes[0].pid;
    assert_eq!(postmasters_serving(&dir.pgdata("main")), vec![pid]);

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_compute_is_suspended_after_timeout_and_next_wake_brings_rows_back() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    // The 1s timeout is set once the rows are written, so a slow machine cannot suspend the
    // compute before the client connects.
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    let password = create_role(&manager, &ep, "app").await;
    let _monitor = lakebed_compute_manager::activity::spawn_monitor(manager.clone());
    let mut status = manager.subscribe(&ep);

    let first = manager.wake(&ep).await.expect("first wake");
    let client = connect(first.address, "app", &password)
        .await
        .expect("connect");
    client
        .batch_execute(
            "CREATE TABLE kept (id int PRIMARY KEY, note text);
             INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
        )
        .await
        .expect("write rows");
    drop(client);
    manager
        .set_policy(&ep, &policy("1s", &[]))
        .expect("set a 1s timeout");

    let suspended = wait_status(&mut status, "autosuspend", is_suspended).await;
    assert!(suspended.pid.is_none() && suspended.address.is_none());
    // The decision is recorded right after the state changes.
    let decision = wait_status(&mut status, "the suspend decision", |s| {
        matches!(s.autosuspend.last, Some(Decision::Suspended { .. }))
    })
    .await
    .autosuspend
    .last;
    assert!(
        matches!(decision, Some(Decision::Suspended { idle_ms }) if idle_ms >= 1000),
        "{decision:?}"
    );
    assert!(
        !process_alive(first.pid),
        "postmaster {} still runs",
        first.pid
    );
    assert!(postmasters_serving(&dir.pgdata("main")).is_empty());

    let second = manager.wake(&ep).await.expect("second wake");
    assert_ne!(second.pid, first.pid);
    assert!(second.cold_start_ms.is_some());
    let client = connect(second.address, "app", &password)
        .await
        .expect("reconnect");
    let row = client
        .query_one("SELECT count(*), max(note) FROM kept", &[])
        .await
        .expect("read rows back");
    assert_eq!(row.get::<_, i64>(0), 100);
    assert_eq!(row.get::<_, String>(1), "row 99");
    assert_eq!(manager.show(&ep).expect("show").boots, 2);

    drop(client);
    manager.shutdown().await;
}

/// Waits until the monitor has decided `want` at least [`checks_past_timeout`] times in a row
/// past the first such decision, with the compute active throughout; returns the decision.
async fn stays_up_because(
    status: &mut tokio::sync::watch::Receiver<ComputeStatus>,
    what: &str,
    want: impl Fn(&Decision) -> bool,
) -> Decision {
    let first = wait_status(status, what, |s| {
        s.state != ComputeState::Active || s.autosuspend.last.as_ref().is_some_and(&want)
    })
    .await;
    assert_eq!(first.state, ComputeState::Active, "{first:#?}");
    let first = first.autosuspend.checks;
    let until = first + checks_past_timeout();
    let seen = wait_status(status, "enough monitor checks", |s| {
        s.autosuspend.checks >= until
            || s.state != ComputeState::Active
            || !s.autosuspend.last.as_ref().is_some_and(&want)
    })
    .await;
    assert_eq!(seen.state, ComputeState::Active, "{seen:#?}");
    let last = seen.autosuspend.last.expect("a decision");
    assert!(want(&last), "the monitor changed its mind: {last:?}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_session_keeps_compute_up_until_it_ends() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    // The 1s timeout is set once the transaction is open (see the test above).
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    let password = create_role(&manager, &ep, "app").await;
    let _monitor = lakebed_compute_manager::activity::spawn_monitor(manager.clone());
    let mut status = manager.subscribe(&ep);

    let woken = manager.wake(&ep).await.expect("wake");
    let client = connect(woken.address, "app", &password)
        .await
        .expect("connect");
    client
        .batch_execute("BEGIN; SELECT 1;")
        .await
        .expect("open a transaction");
    manager
        .set_policy(&ep, &policy("1s", &[]))
        .expect("set a 1s timeout");

    let decision = stays_up_because(
        &mut status,
        "a busy decision",
        |d| matches!(d, Decision::Busy { activity } if activity.idle_in_transaction == 1),
    )
    .await;
    let Decision::Busy { activity } = decision else {
        unreachable!()
    };
    assert_eq!(activity.sessions, 1, "{activity:?}");
    assert!(process_alive(woken.pid));

    client.batch_execute("COMMIT").await.expect("commit");
    drop(client);
    wait_status(
        &mut status,
        "autosuspend after the session ended",
        is_suspended,
    )
    .await;
    assert!(!process_alive(woken.pid));

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_warm_window_covering_now_keeps_idle_compute_up_until_removed() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    let ep = create_endpoint(&manager, "main", policy("1s", &["daily 00:00-24:00 UTC"]));
    let _monitor = lakebed_compute_manager::activity::spawn_monitor(manager.clone());
    let mut status = manager.subscribe(&ep);

    let woken = manager.wake(&ep).await.expect("wake");
    let decision = stays_up_because(&mut status, "a keep-warm decision", |d| {
        matches!(d, Decision::KeepWarm { .. })
    })
    .await;
    assert_eq!(
        decision,
        Decision::KeepWarm {
            window: "daily 00:00-24:00 UTC".into()
        }
    );
    assert!(process_alive(woken.pid));

    manager
        .set_policy(&ep, &policy("1s", &[]))
        .expect("remove the window");
    wait_status(
        &mut status,
        "autosuspend after the window was removed",
        is_suspended,
    )
    .await;
    assert!(!process_alive(woken.pid));

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_postgres_binaries_say_how_to_install_them() {
    let tmp = DataDir::new();
    let data_dir = tmp.path().join("data");
    let mut opts = manager_options(&data_dir);
    opts.compute.pg_bin_dir = Some("/nonexistent".into());
    let Err(err) = Manager::open(opts).await else {
        panic!("opening with pg_bin_dir = /nonexistent must fail");
    };
    assert!(
        matches!(err, ManagerError::PostgresNotFound { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("apt-get install postgresql"), "{text}");
    assert!(!data_dir.exists(), "nothing may be created on disk");
}

/// Binds a loopback port below Linux's ephemeral range (32768 and up by default), so that
/// once released no `bind(0)` or outgoing connection of a parallel test takes it.
fn hold_port_outside_ephemeral_range() -> (TcpListener, u16) {
    let seed = std::process::id() as usize
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or_default();
    (0..20_000)
        .map(|i| 10_000 + ((seed + i) % 20_000) as u16)
        .find_map(|port| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .ok()
                .map(|l| (l, port))
        })
        .expect("a free port between 10000 and 30000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_port_fails_the_wake_and_leaves_no_postmaster() {
    let dir = DataDir::new();
    let (held, port) = hold_port_outside_ephemeral_range();
    let manager = open_manager(&dir, |o| {
        o.compute.port_range = PortRange::Range {
            low: port,
            high: port,
        }
    })
    .await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));

    let err = manager.wake(&ep).await.expect_err("no port is free");
    assert!(matches!(err, ManagerError::NoFreePort { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("{port}-{port}")), "{err}");
    let status = manager.status(&ep);
    assert_eq!(status.state, ComputeState::Failed);
    assert!(status.pid.is_none());
    assert!(postmasters_serving(&dir.pgdata("main")).is_empty());
    assert_eq!(manager.show(&ep).expect("show").boots, 0);

    // Once the port is free, the endpoint wakes on it.
    drop(held);
    let woken = manager.wake(&ep).await.expect("wake once the port is free");
    assert_eq!(woken.address.port(), port);

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failing_to_start_reports_its_log_tail_and_recovers_once_fixed() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    manager.wake(&ep).await.expect("first boot");
    assert_eq!(
        manager.suspend(&ep).await.expect("suspend"),
        ComputeState::Suspended
    );

    let conf = dir.pgdata("main").join("postgresql.conf");
    let good = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    std::fs::write(&conf, format!("{good}\nthis is not a setting\n")).expect("break the conf");

    let err = manager.wake(&ep).await.expect_err("postgres cannot start");
    assert!(matches!(err, ManagerError::StartFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("syntax error"), "{text}");
    let status = manager.status(&ep);
    assert_eq!(status.state, ComputeState::Failed);
    let failure = status.failure.expect("a failure is recorded");
    assert!(failure.log_tail.contains("syntax error"), "{failure:?}");
    assert!(postmasters_serving(&dir.pgdata("main")).is_empty());

    std::fs::write(&conf, good).expect("repair the conf");
    let woken = manager.wake(&ep).await.expect("wake after the repair");
    let status = manager.status(&ep);
    assert_eq!(status.state, ComputeState::Active);
    assert!(status.failure.is_none());
    assert_eq!(postmasters_serving(&dir.pgdata("main")), vec![woken.pid]);

    manager.shutdown().await;
}

/// The system role's connection to `ep`'s running compute (peer login over its socket).
async fn system_client(
    manager: &Manager,
    dir: &DataDir,
    ep: &EndpointName,
) -> tokio_postgres::Client {
    let port = manager.status(ep).address.expect("active").port();
    let run_dir = lakebed_compute_manager::postgres::EndpointDir::new(dir.path(), ep).run_dir();
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(run_dir)
        .port(port)
        .user(lakebed_compute_manager::postgres::SYSTEM_ROLE)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the system role over the socket");
    tokio::spawn(conn);
    client
}

/// This boot's Postgres log (the compute logs DDL from the first boot on).
fn boot_log(dir: &DataDir, ep: &EndpointName) -> String {
    let path = lakebed_compute_manager::postgres::EndpointDir::new(dir.path(), ep).log_file();
    std::fs::read_to_string(path).expect("postgres log")
}

/// Roles are applied at a boot only when the compute is not already as they say (the setup
/// writes catalogs, and each write costs the boot a commit): a boot with the same roles runs
/// no DDL; a password changed while suspended is applied at the next boot; so is a role
/// changed on the compute behind the catalog's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_applied_at_a_boot_only_when_they_changed() {
    let dir = DataDir::new();
    let manager = open_manager(&dir, |_| {}).await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    let password = create_role(&manager, &ep, "app").await;
    let ddl = |log: &str| log.contains("statement: ALTER ROLE") || log.contains("statement: GRANT");

    manager.wake(&ep).await.expect("wake");
    system_client(&manager, &dir, &ep)
        .await
        .batch_execute("ALTER SYSTEM SET log_statement = 'ddl'")
        .await
        .expect("log DDL from the next boot on");
    manager.suspend(&ep).await.expect("suspend");
    let woken = manager.wake(&ep).await.expect("wake with the same roles");
    let log = boot_log(&dir, &ep);
    assert!(!ddl(&log), "a boot with the same roles ran DDL:\n{log}");
    connect(woken.address, "app", &password)
        .await
        .expect("the role logs in");

    manager.suspend(&ep).await.expect("suspend");
    let role: RoleName = "app".parse().expect("role name");
    let new_password = manager
        .set_role_password(&ep, &role, None)
        .await
        .expect("new password")
        .expect("a generated password");
    let woken = manager.wake(&ep).await.expect("wake with a changed role");
    assert!(
        ddl(&boot_log(&dir, &ep)),
        "the new password was not applied"
    );
    connect(woken.address, "app", &new_password)
        .await
        .expect("the new password logs in");

    // Changed on the compute, not in the catalog: repaired at the next boot.
    system_client(&manager, &dir, &ep)
        .await
        .batch_execute("ALTER ROLE app NOLOGIN")
        .await
        .expect("drift");
    manager.suspend(&ep).await.expect("suspend");
    let woken = manager.wake(&ep).await.expect("wake");
    connect(woken.address, "app", &new_password)
        .await
        .expect("the role logs in again");
    let boots = manager.show(&ep).expect("show").recent_boots;
    let steps = boots[0]
        .steps
        .as_ref()
        .expect("a boot's steps are recorded");
    assert!(steps.pagefs.is_none(), "a local PGDATA has no pagefs steps");
    manager.shutdown().await;
}
