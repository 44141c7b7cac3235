//! Regression tests for the problems a newcomer's review found (all fixed): each test fails
//! on the behaviour before the fix. Everything is real: `lakebed up`, PostgreSQL computes,
//! tokio-postgres, and a raw wire-protocol client where a library would hide what the proxy
//! sends (a second error, a missing error, the order of messages).
//!
//! Checks that need the same settings share one `lakebed up`:
//! - session pooling with an endpoint budget of 5 and a 100ms monitor poll: the budget shared
//!   by pools (finding 1), FATAL startup errors (6), a private postgres.log (8), a client
//!   named `lakebed-pool` (5), one FATAL on suspend (3);
//! - transaction pooling, pools of 1, a 1s acquire timeout: errors instead of a closed
//!   socket (2), replication refused (4), FATAL startup errors (6), bad message types (7);
//! - defaults: a failed first start leaves nothing (12), API errors (10), deleted roles
//!   refused (13), cancel on hangup (14), the CLI and another instance (9);
//! - no instance at all: configuration typos (11).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use lakebed_tests::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

/// The pool of role `lakebed` on `main` for database `db` in `pools`, if there is one.
fn pool_of<'a>(pools: &'a [Value], db: &str) -> Option<&'a Value> {
    pools
        .iter()
        .find(|p| p["endpoint"] == "main" && p["role"] == ROLE && p["database"] == db)
}

/// A number field of a pool (0 when the pool is absent).
fn count(pool: Option<&Value>, field: &str) -> u64 {
    pool.map_or(0, |p| {
        p[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {p:#}"))
    })
}

/// Server connections endpoint `main` may have at once in the session-pooling stack.
const BUDGET: u64 = 5;

/// How long a deleted role may still log in: five times the default `auth_cache_ttl` (1s),
/// and half the TTL before the fix (10s), which therefore misses it.
const ROLE_GONE_WITHIN: Duration = Duration::from_secs(5);

/// The severity and SQLSTATE of a server error.
fn severity_and_code(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.severity().to_owned(), db.code().code().to_owned())
}

/// The field `kind` of an error given as fields.
fn field(fields: &[(u8, String)], kind: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_str())
}

/// Logs in with `-c bogus_guc=1` in `options`; asserts the error is FATAL 42704.
async fn assert_bad_startup_setting_is_fatal(s: &Stack, mode: &str) {
    let mut cfg = s.config("postgres");
    cfg.options("-c bogus_guc=1");
    let err = match connect_watched(&cfg).await {
        Ok(_) => panic!("{mode}: a login with -c bogus_guc=1 succeeded"),
        Err(e) => e,
    };
    assert_eq!(
        severity_and_code(&err),
        ("FATAL".to_owned(), "42704".to_owned()),
        "{mode}: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pools_share_the_endpoint_budget_bad_settings_are_fatal_a_client_named_lakebed_pool_keeps_main_awake_and_a_suspend_sends_one_fatal()
 {
    let s = Stack::start_with(&[
        ("LAKEBED_PROXY__POOL__MAX_ENDPOINT_CONNECTIONS", "5"),
        // A regression then fails with 53300 well within the test's deadline.
        ("LAKEBED_PROXY__POOL__ACQUIRE_TIMEOUT", "10s"),
        ("LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL", "100ms"),
    ])
    .await;

    // ---- Finding 1: pools of one endpoint share its connection budget. ----
    let admin = s.watched_client("postgres").await;
    exec(&admin.client, "CREATE DATABASE shopdb").await;
    drop(admin);

    // Five sessions at once on database postgres leave five idle pooled connections.
    let mut sessions = Vec::new();
    for _ in 0..BUDGET {
        sessions.push(s.watched_client("postgres").await);
    }
    for w in &sessions {
        assert_eq!(value(&w.client, "SELECT 1").await, "1");
    }
    drop(sessions);
    eventually("five idle server connections of postgres", || async {
        let pools = s.pools().await;
        let p = pool_of(&pools, "postgres");
        match (count(p, "servers_idle"), count(p, "clients_active")) {
            (BUDGET, 0) => Ok(()),
            _ => Err(format!("{pools:#?}")),
        }
    })
    .await;

    // Five clients of another database at once: each gets a server connection, by closing
    // an idle one of the other pool.
    let mut shop = JoinSet::new();
    for _ in 0..BUDGET {
        let cfg = s.config("shopdb");
        shop.spawn(async move {
            let w = connect_watched(&cfg).await?;
            let db = w.client.simple_query("SELECT current_database()").await?;
            Ok::<_, tokio_postgres::Error>((w, db))
        });
    }
    let mut held = Vec::new();
    while let Some(joined) = shop.join_next().await {
        let (w, rows) = joined
            .expect("client task")
            .unwrap_or_else(|e| panic!("a client of shopdb failed: {e:?}"));
        let db = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(db.as_deref(), Some("shopdb"));
        held.push(w);
    }
    let pools = s.pools().await;
    let main_servers: u64 = pools
        .iter()
        .filter(|p| p["endpoint"] == "main")
        .map(|p| count(Some(p), "servers_active") + count(Some(p), "servers_idle"))
        .sum();
    assert_eq!(
        (
            count(pool_of(&pools, "shopdb"), "servers_active"),
            count(pool_of(&pools, "postgres"), "servers_idle"),
            main_servers
        ),
        (BUDGET, 0, BUDGET),
        "shopdb holds the whole budget, postgres none: {pools:#?}"
    );

    // A client of postgres now waits: no place in the budget, nothing idle to close. When
    // the shopdb clients leave, their connections go back idle to their pool; one of them
    // must be closed for the waiting client then, not only when it asked.
    let late_cfg = s.config("postgres");
    let late = tokio::spawn(async move { connect_watched(&late_cfg).await });
    eventually("a client of postgres waiting for the budget", || async {
        let pools = s.pools().await;
        match count(pool_of(&pools, "postgres"), "clients_waiting") {
            0 => Err(format!("{pools:#?}")),
            _ => Ok(()),
        }
    })
    .await;
    drop(held);
    let late = timeout(DEADLINE, late)
        .await
        .expect("the waiting client logs in within the deadline")
        .expect("client task")
        .unwrap_or_else(|e| panic!("the waiting client of postgres: {e:?}"));
    assert_eq!(
        value(&late.client, "SELECT current_database()").await,
        "postgres"
    );
    drop(late);

    // ---- Finding 6: a bad startup setting is FATAL, as Postgres makes it. ----
    assert_bad_startup_setting_is_fatal(&s, "session pooling").await;

    // ---- Finding 8: the compute's log is private. ----
    s.cli(&["endpoint", "wake", "main"]).await;
    let log = s.dir.path().join("endpoints/main/postgres.log");
    let mode = std::fs::metadata(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} has mode {mode:o}", log.display());

    // ---- Finding 5: a client cannot pose as an idle pooled connection. ----
    s.cli(&["endpoint", "set", "main", "--suspend-timeout", "1s"])
        .await;
    let mut cfg = s.config("postgres");
    cfg.application_name("lakebed-pool");
    let poser = connect_watched(&cfg)
        .await
        .unwrap_or_else(|e| panic!("connect as application lakebed-pool: {e:?}"));
    assert_eq!(
        value(&poser.client, "SHOW application_name").await,
        "lakebed-pool (client)"
    );
    // The session is idle from here on; the monitor must still count it.
    let start = s.show("main").await["compute"]["autosuspend"]["checks"]
        .as_u64()
        .expect("compute.autosuspend.checks");
    let until = start + checks_past_timeout();
    let seen = eventually("enough monitor checks", || async {
        let ep = s.show("main").await;
        let checks = ep["compute"]["autosuspend"]["checks"].as_u64();
        if ep["compute"]["state"] != "active" || checks.is_some_and(|c| c >= until) {
            Ok(ep)
        } else {
            Err(ep.to_string())
        }
    })
    .await;
    assert_eq!(
        (
            &seen["compute"]["state"],
            &seen["compute"]["autosuspend"]["last"]["decision"]
        ),
        (&json!("active"), &json!("busy")),
        "an idle client session named lakebed-pool must keep main awake: {seen:#}"
    );

    // ---- Finding 3: a compute's FATAL is the only error the client gets. ----
    let mut watched = s.watched_client("postgres").await;
    assert_eq!(value(&watched.client, "SELECT 1").await, "1");
    let mut raw = RawClient::connect(s.proxy(), ROLE, &s.password).await;
    s.suspend("main").await;
    let ended = watched.closed_by_server("suspend").await;
    assert_eq!(code_of(&ended), "57P01", "{ended:?}");
    let after = watched
        .client
        .simple_query("SELECT 1")
        .await
        .expect_err("the session has ended");
    assert!(
        after.is_closed(),
        "no second error, only a closed connection: {after:?}"
    );
    raw.send(&[query("SELECT 1")]).await;
    let errors = raw.errors_until_closed().await;
    let codes: Vec<_> = errors.iter().map(|e| field(e, b'C')).collect();
    assert_eq!(codes, [Some("57P01")], "exactly one error: {errors:?}");
    assert_eq!(field(&errors[0], b'S'), Some("FATAL"), "{errors:?}");
    drop(poser);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_reports_pool_and_compute_errors_refuses_replication_and_bad_message_types_and_makes_bad_settings_fatal()
 {
    let s = Stack::start_with(&[
        ("LAKEBED_ENDPOINTS__MAIN__POOL_MODE", "transaction"),
        ("LAKEBED_PROXY__POOL__POOL_SIZE", "1"),
        ("LAKEBED_PROXY__POOL__ACQUIRE_TIMEOUT", "1s"),
    ])
    .await;
    // Awake first: the acquire timeout would not cover a cold start.
    s.cli(&["endpoint", "wake", "main"]).await;

    // ---- Finding 4: replication connections get 0A000. ----
    let mut stream = tcp(s.proxy()).await;
    send(
        &mut stream,
        &startup_packet(
            version(3, 0),
            Some(&[
                ("user", ROLE),
                ("database", "postgres"),
                ("replication", "database"),
            ]),
        ),
    )
    .await;
    let reply = read_message(&mut stream).await;
    let Reply::Message(b'E', body) = &reply else {
        panic!("replication=database: expected an ErrorResponse, got {reply:?}");
    };
    let fields = error_fields(body);
    assert_eq!(
        (field(&fields, b'S'), field(&fields, b'C')),
        (Some("FATAL"), Some("0A000")),
        "{fields:?}"
    );
    assert!(
        field(&fields, b'M')
            .is_some_and(|m| m.contains("replication connections are not supported")),
        "{fields:?}"
    );
    assert_eq!(read_message(&mut stream).await, Reply::Closed);

    // ---- Finding 6: a bad startup setting is FATAL here too. ----
    assert_bad_startup_setting_is_fatal(&s, "transaction pooling").await;

    // ---- Finding 7: an unknown message type after login is FATAL 08P01, with or without
    // a server connection lent. ----
    for in_transaction in [false, true] {
        let mut raw = RawClient::connect(s.proxy(), ROLE, &s.password).await;
        if in_transaction {
            raw.send(&[query("BEGIN")]).await;
            loop {
                match read_message(&mut raw.stream).await {
                    Reply::Message(b'Z', status) => {
                        assert_eq!(status, b"T", "BEGIN opens a transaction");
                        break;
                    }
                    Reply::Message(b'E', body) => panic!("BEGIN: {:?}", error_fields(&body)),
                    Reply::Message(..) => {}
                    Reply::Closed => panic!("BEGIN: the proxy closed the connection"),
                }
            }
        }
        raw.send(&[message(b'!', b"")]).await;
        let errors = raw.errors_until_closed().await;
        let got: Vec<_> = errors
            .iter()
            .map(|e| (field(e, b'S'), field(e, b'C')))
            .collect();
        assert_eq!(
            got,
            [(Some("FATAL"), Some("08P01"))],
            "in transaction: {in_transaction}: {errors:?}"
        );
    }

    // ---- Finding 2: no server connection for the next query means an ErrorResponse, never
    // a silently closed socket. ----
    // The pool timing out (53300): the only server connection is in another's transaction.
    let waiter = s.watched_client("postgres").await;
    let holder = s.watched_client("postgres").await;
    exec(&holder.client, "BEGIN; SELECT 1").await;
    let err = waiter
        .client
        .simple_query("SELECT 1")
        .await
        .expect_err("no server connection within the acquire timeout");
    assert_eq!(
        err.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "an ErrorResponse, not a closed connection: {err:?}"
    );
    exec(&holder.client, "COMMIT").await;

    // The compute refusing a new server connection with its own error (3D000 for a
    // database dropped since the client logged in).
    exec(&holder.client, "CREATE DATABASE dropme").await;
    let orphan = s.watched_client("dropme").await;
    assert_eq!(
        value(&orphan.client, "SELECT current_database()").await,
        "dropme"
    );
    exec(&holder.client, "DROP DATABASE dropme WITH (FORCE)").await;
    let err = orphan
        .client
        .simple_query("SELECT 1")
        .await
        .expect_err("the database is gone");
    assert_eq!(
        err.code(),
        Some(&SqlState::UNDEFINED_DATABASE),
        "an ErrorResponse, not a closed connection: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_start_leaves_no_role_api_errors_are_json_deleted_roles_are_refused_hangups_cancel_queries_and_the_cli_never_talks_to_another_instance()
 {
    // ---- Finding 12: a first start that fails on a port in use creates nothing. ----
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_addr = taken.local_addr().expect("its address").to_string();
    let dir = DataDir::new();
    let failed = lakebed_env(
        &dir,
        &["up"],
        &[
            ("LAKEBED_MANAGER__LISTEN", taken_addr.as_str()),
            ("LAKEBED_PROXY__LISTEN", "127.0.0.1:0"),
            ("LAKEBED_PROXY__API_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    assert!(
        failed.code.is_some_and(|c| c != 0),
        "lakebed up on a port in use: {failed:#?}"
    );
    assert!(
        failed.stderr.contains("manager.listen: cannot listen"),
        "{failed:#?}"
    );
    drop(taken);
    let up = LakebedUp::start(&dir).await;
    assert!(
        up.password.is_some(),
        "the start after the failed one is the first: it prints role lakebed's password"
    );
    let mut s = Stack::of(up, dir);

    // ---- Finding 10: API errors are JSON, and absurd verifiers are refused. ----
    let token = std::fs::read_to_string(s.dir.path().join("admin-token")).expect("admin-token");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", s.up.api_url);
    async fn answer(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("HTTP {status}: not JSON ({e}): {text:?}"));
        (status, body)
    }
    let (status, body) = answer(
        http.put(url("/v1/endpoints"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("PUT /v1/endpoints"),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (405, &json!("method_not_allowed")),
        "{body}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
    let verifier = "SCRAM-SHA-256$4294967295:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, body) = answer(
        http.post(url("/v1/endpoints/main/roles"))
            .bearer_auth(token.trim())
            .json(&json!({"name": "x", "verifier": verifier}))
            .send()
            .await
            .expect("POST a role"),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_input")),
        "{body}"
    );
    let (status, roles) = answer(
        http.get(url("/v1/endpoints/main/roles"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("GET roles"),
    )
    .await;
    assert_eq!(status, 200, "{roles}");
    let names: Vec<_> = roles
        .as_array()
        .unwrap_or_else(|| panic!("roles is not a list: {roles}"))
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [json!(ROLE)], "no role x was created: {roles}");

    // ---- Finding 13: a deleted role is refused within auth_cache_ttl (default 1s). ----
    let app_password = "app-password-4711";
    lakebed_with_stdin(
        &s.dir,
        &[
            "role",
            "create",
            "app",
            "--endpoint",
            "main",
            "--password-stdin",
        ],
        &format!("{app_password}\n"),
    )
    .await
    .ok();
    let app = s.config_as("app", app_password, "postgres");
    let before = connect_watched(&app)
        .await
        .unwrap_or_else(|e| panic!("role app logs in: {e:?}"));
    assert_eq!(value(&before.client, "SELECT current_user").await, "app");
    drop(before);
    s.cli(&["role", "delete", "app", "--endpoint", "main"])
        .await;
    eventually_within(
        ROLE_GONE_WITHIN,
        "the deleted role refused (28P01)",
        || async {
            match connect_watched(&app).await {
                Ok(_) => Err("role app still logs in".to_owned()),
                Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => Ok(()),
                Err(e) => Err(format!("{e:?}")),
            }
        },
    )
    .await;

    // ---- Finding 14: a client that hangs up mid-query has its query cancelled. ----
    let observer = s.watched_client("postgres").await;
    exec(&observer.client, "CREATE TABLE t (x int)").await;
    let Watched { client, ended } = s.watched_client("postgres").await;
    exec(&client, "BEGIN; LOCK TABLE t").await;
    let sleeper = tokio::spawn(async move {
        let _ = client.simple_query("SELECT pg_sleep(30)").await;
    });
    wait_until_running(&observer.client, "SELECT pg_sleep(30)").await;
    // The client goes away abruptly: its socket closes, with no Terminate.
    sleeper.abort();
    ended.abort();
    let locked = timeout(
        Duration::from_secs(25),
        observer
            .client
            .batch_execute("SET lock_timeout = '20s'; BEGIN; LOCK TABLE t; COMMIT"),
    )
    .await
    .expect("LOCK TABLE finishes within its lock_timeout");
    assert!(
        locked.is_ok(),
        "the hung-up client's query still holds its lock: {locked:?}"
    );

    // ---- Finding 9: the CLI talks only to the instance of its data dir. ----
    let other_dir = DataDir::new();
    let other = LakebedUp::start(&other_dir).await;
    s.up.signal(Signal::SIGTERM);
    assert!(s.up.wait().await.success(), "lakebed up stops on SIGTERM");
    let other_api = other
        .api_url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();
    // Even with a configuration whose manager.listen is the other instance's address.
    for args in [&["endpoint", "list"][..], &["pools"][..]] {
        let out = lakebed_env(
            &s.dir,
            args,
            &[("LAKEBED_MANAGER__LISTEN", other_api.as_str())],
        )
        .await;
        let stderr = out.err();
        assert!(
            stderr.contains("lakebed up is not running for data dir"),
            "lakebed {args:?}: {stderr}"
        );
    }
    assert!(
        lakebed(&other_dir, &["endpoint", "list"])
            .await
            .ok()
            .contains("main"),
        "the other instance still answers for its own data dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_nested_env_var_and_a_bad_proxy_domain_fail_every_command_naming_the_variable_and_key()
 {
    // No instance runs on this data dir: the configuration error must come first.
    let dir = DataDir::new();
    let stderr = lakebed_env(
        &dir,
        &["endpoint", "list"],
        &[("LAKEBED_PROXI__LISTEN", "127.0.0.1:1")],
    )
    .await
    .err();
    assert!(
        stderr.contains("environment variable LAKEBED_PROXI__LISTEN")
            && stderr.contains("unknown key"),
        "{stderr}"
    );
    let stderr = lakebed_env(
        &dir,
        &["endpoint", "list"],
        &[("LAKEBED_PROXY__DOMAIN", "not a domain")],
    )
    .await
    .err();
    assert!(stderr.contains("proxy.domain"), "{stderr}");
    assert!(
        !stderr.contains("not running"),
        "the configuration is checked before anything else: {stderr}"
    );
}
