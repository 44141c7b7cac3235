//! Connection pooling end to end (issue 6): `lakebed up` with pool settings in its
//! environment, and real clients — tokio-postgres, `psql`, `pgbench`, and a raw
//! extended-protocol client that names its statements itself. Nothing is mocked.
//!
//! Each test runs its own `lakebed up`, so checks that need the same settings share one.
//! Pools of size 1 make every client of a pool share one server connection, which the
//! tests prove with `pg_backend_pid()`. An observer connects to database `template1`: a
//! pool of its own, free while the pool of `postgres` is busy.

use std::process::Stdio;

use lakebed_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Pool size 1 and transaction pooling for endpoint `main`, set by the environment.
const ONE_SERVER_TRANSACTION_MODE: [(&str, &str); 2] = [
    ("LAKEBED_PROXY__POOL__POOL_SIZE", "1"),
    ("LAKEBED_ENDPOINTS__MAIN__POOL_MODE", "transaction"),
];

/// Starts `lakebed up` with `env` and a zero auth cache TTL (so a pool mode changed with the
/// CLI applies to the next client at once).
async fn start(env: &[(&str, &str)]) -> Stack {
    let mut all = vec![("LAKEBED_PROXY__AUTH_CACHE_TTL", "0s")];
    all.extend_from_slice(env);
    Stack::start_with(&all).await
}

/// Backends of the compute in state `idle in transaction` (or `... (aborted)`), as seen
/// by `observer`.
async fn idle_in_transaction(observer: &tokio_postgres::Client) -> i64 {
    value(
        observer,
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    )
    .await
    .parse()
    .expect("a count")
}

/// A libpq connection string for the proxy as role `lakebed`, database `postgres`.
fn conninfo(s: &Stack) -> String {
    format!(
        "host={} port={} user={ROLE} dbname=postgres sslmode=disable connect_timeout=30",
        s.proxy().ip(),
        s.proxy().port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_preparing_statements_named_alike_on_one_server_connection_get_right_answers_without_42p05_or_26000()
 {
    let s = start(&[("LAKEBED_PROXY__POOL__POOL_SIZE", "1")]).await;
    s.cli(&["endpoint", "set", "main", "--pool-mode", "transaction"])
        .await;

    // Two raw clients, both connected to a pool of one server connection (in session
    // pooling the second would wait for the first to leave), both name their statement
    // `s1`, with different texts.
    let mut a = RawClient::connect(s.proxy(), ROLE, &s.password).await;
    let mut b = RawClient::connect(s.proxy(), ROLE, &s.password).await;
    let pa = a
        .round(&[parse("s1", "SELECT $1::int4 + 1000"), sync()])
        .await;
    assert_eq!((pa.tags.as_str(), pa.errors.len()), ("1Z", 0), "{pa:?}");
    let pb = b
        .round(&[
            parse("s1", "SELECT $1::int4 * 2"),
            describe_statement("s1"),
            sync(),
        ])
        .await;
    assert_eq!(pb.tags, "1tTZ", "no 42P05 for the second s1: {pb:?}");
    let server = a.round(&[query("SELECT pg_backend_pid()")]).await.values;
    assert_eq!(
        b.round(&[query("SELECT pg_backend_pid()")]).await.values,
        server,
        "both clients are served by the one server connection"
    );

    // Interleaved: both send before either reads, many times.
    for i in 0..200 {
        let p = i.to_string();
        a.send(&[bind("s1", &[&p]), execute(), sync()]).await;
        b.send(&[bind("s1", &[&p]), execute(), sync()]).await;
        let (ra, rb) = (a.until_ready().await, b.until_ready().await);
        assert_eq!(ra.tags, "2DCZ", "a, round {i}: {ra:?}");
        assert_eq!(ra.values, [(i + 1000).to_string()], "a, round {i}");
        assert_eq!(rb.tags, "2DCZ", "b, round {i}: {rb:?}");
        assert_eq!(rb.values, [(i * 2).to_string()], "b, round {i}");
    }

    // Parse, Bind and Execute in one pipeline, inside a transaction that b waits out.
    assert_eq!(a.round(&[query("BEGIN")]).await.status, 'T');
    b.send(&[bind("s1", &["21"]), execute(), sync()]).await;
    let ra = a
        .round(&[
            parse("s2", "SELECT $1::text || '!'"),
            bind("s2", &["hi"]),
            execute(),
            bind("s1", &["1"]),
            execute(),
            sync(),
        ])
        .await;
    assert_eq!(
        (ra.tags.as_str(), ra.values.clone(), ra.status),
        ("12DC2DCZ", vec!["hi!".to_owned(), "1001".to_owned()], 'T'),
        "{ra:?}"
    );
    assert_eq!(a.round(&[query("COMMIT")]).await.status, 'I');
    let rb = b.until_ready().await;
    assert_eq!(rb.values, ["42"], "b waited for a's transaction: {rb:?}");

    // Close and DISCARD ALL are honoured for the client that sent them (Postgres's own
    // 26000), and only for it: the other client's s1 still runs, prepared again on the
    // server connection whose statements DISCARD ALL dropped.
    let closed = a
        .round(&[close_statement("s1"), bind("s1", &["1"]), execute(), sync()])
        .await;
    assert_eq!(
        (closed.tags.as_str(), closed.errors.clone()),
        ("3EZ", vec!["26000".to_owned()])
    );
    let again = a
        .round(&[
            parse("s1", "SELECT $1::int4 - 1"),
            bind("s1", &["1"]),
            execute(),
            sync(),
        ])
        .await;
    assert_eq!(again.values, ["0"], "a's new s1: {again:?}");
    assert_eq!(
        b.round(&[query("DISCARD ALL")]).await.errors,
        Vec::<String>::new()
    );
    let gone = b.round(&[bind("s1", &["1"]), execute(), sync()]).await;
    assert_eq!(gone.errors, ["26000"], "b discarded its s1: {gone:?}");
    let kept = a.round(&[bind("s1", &["5"]), execute(), sync()]).await;
    assert_eq!(
        (kept.tags.as_str(), kept.values.clone()),
        ("2DCZ", vec!["4".to_owned()])
    );

    // A new server connection (the old one terminated): statements are prepared on it
    // before they are used.
    let pb = b.round(&[parse("s1", "SELECT $1::int4 * 3"), sync()]).await;
    assert!(pb.errors.is_empty(), "{pb:?}");
    let observer = s.observer().await;
    exec(
        &observer,
        &format!("SELECT pg_terminate_backend({})", server[0]),
    )
    .await;
    eventually("the terminated backend is gone", || async {
        let n = value(
            &observer,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {}",
                server[0]
            ),
        )
        .await;
        if n == "0" { Ok(()) } else { Err(n) }
    })
    .await;
    for i in 0..20 {
        let p = i.to_string();
        a.send(&[bind("s1", &[&p]), execute(), sync()]).await;
        b.send(&[bind("s1", &[&p]), execute(), sync()]).await;
        let (ra, rb) = (a.until_ready().await, b.until_ready().await);
        assert_eq!(
            (ra.tags.as_str(), ra.values.clone()),
            ("2DCZ", vec![(i - 1).to_string()]),
            "a, round {i}"
        );
        assert_eq!(
            (rb.tags.as_str(), rb.values.clone()),
            ("2DCZ", vec![(i * 3).to_string()]),
            "b, round {i}"
        );
    }
    assert_ne!(
        a.round(&[query("SELECT pg_backend_pid()")]).await.values,
        server,
        "a new server connection"
    );

    // tokio-postgres: two clients prepare statements (one text shared, one each) and run
    // them interleaved, concurrently, and pipelined on each client.
    let c1 = s.client().await;
    let c2 = s.client().await;
    let plus = c1
        .prepare("SELECT $1::int4 + 1")
        .await
        .expect("prepare on c1");
    let twice = c1
        .prepare("SELECT $1::int4 * 2")
        .await
        .expect("prepare on c1");
    let plus2 = c2
        .prepare("SELECT $1::int4 + 1")
        .await
        .expect("prepare on c2");
    let neg = c2.prepare("SELECT -$1::int4").await.expect("prepare on c2");
    for i in 0..100i32 {
        let param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
        let (r1, r2, r3, r4) = tokio::join!(
            c1.query_one(&plus, &param),
            c2.query_one(&neg, &param),
            c1.query_one(&twice, &param),
            c2.query_one(&plus2, &param),
        );
        let got: Vec<i32> = [r1, r2, r3, r4]
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("round {i}: {e:?}")).get(0))
            .collect();
        assert_eq!(got, [i + 1, -i, i * 2, i + 1], "round {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_and_extended_in_transaction_mode_have_no_failed_transactions_and_lakebed_pools_counts_them()
 {
    let s = start(&[
        ("LAKEBED_PROXY__POOL__POOL_SIZE", "2"),
        ("LAKEBED_ENDPOINTS__MAIN__POOL_MODE", "transaction"),
    ])
    .await;
    let conn = conninfo(&s);
    let pgbench = |args: Vec<String>| {
        let password = s.password.clone();
        async move {
            let mut cmd = client_command("pgbench");
            cmd.args(&args).env("PGPASSWORD", password);
            let out = timeout(DEADLINE, cmd.output())
                .await
                .unwrap_or_else(|_| panic!("pgbench {args:?}: not done within {DEADLINE:?}"))
                .expect("run pgbench (install postgresql-client)");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "pgbench {args:?}: {}\n{text}",
                out.status
            );
            text
        }
    };
    // Initialisation: DDL, COPY, VACUUM and primary keys, through transaction pooling.
    pgbench(vec!["-i".into(), "-s".into(), "1".into(), conn.clone()]).await;
    let before = s.pool("postgres").await.expect("the pool of postgres");
    assert_eq!(before["mode"], "transaction", "{before:#}");

    // Eight clients on two server connections; with -M prepared every one of them names
    // its statements P_0, P_1, ... and the names meet on the shared connections.
    // pgbench prepares a statement with a blocking PQprepare at its first use, which stalls
    // every client of that pgbench thread until a server connection is free; if the other
    // clients of the thread hold both inside their transactions, none is ever freed (as
    // with any transaction pooler). So -M prepared runs one client per thread.
    let mut processed = 0;
    for (mode, threads) in [("prepared", "8"), ("extended", "2")] {
        let out = pgbench(
            [
                "-n", "-M", mode, "-c", "8", "-j", threads, "-t", "50", &conn,
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "-M {mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "-M {mode}:\n{out}"
        );
        processed += 400;
    }

    // The pool's counters after the known workload; nobody is connected now.
    let after = eventually("the pool is idle", || async {
        let p = s.pool("postgres").await.expect("the pool of postgres");
        if p["clients_active"] == 0 && p["servers_active"] == 0 {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    })
    .await;
    let n =
        |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v:#}"));
    assert_eq!(after["mode"], "transaction", "{after:#}");
    assert!(
        n(&after, "transactions") >= n(&before, "transactions") + processed,
        "{processed} pgbench transactions not counted: before {before:#}, after {after:#}"
    );
    assert!(n(&after, "bytes_in") > n(&before, "bytes_in"), "{after:#}");
    assert!(
        n(&after, "bytes_out") > n(&before, "bytes_out"),
        "{after:#}"
    );
    assert_eq!(n(&after, "clients_waiting"), 0, "{after:#}");
    assert_eq!(n(&after, "longest_wait_ms"), 0, "{after:#}");
    assert!(
        (1..=2).contains(&n(&after, "servers_idle")),
        "at most pool_size server connections: {after:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stays_with_its_client_in_transaction_mode_and_session_mode_discards_it_before_the_next_client()
 {
    let s = start(&[("LAKEBED_PROXY__POOL__POOL_SIZE", "1")]).await;
    s.cli(&["endpoint", "set", "main", "--pool-mode", "transaction"])
        .await;
    let setup = s.client().await;
    exec(
        &setup,
        "CREATE SCHEMA a; CREATE SCHEMA b; \
         CREATE TABLE public.t (v text); INSERT INTO public.t VALUES ('public'); \
         CREATE TABLE a.t (v text); INSERT INTO a.t VALUES ('a'); \
         CREATE TABLE b.t (v text); INSERT INTO b.t VALUES ('b')",
    )
    .await;
    let server = value(&setup, "SELECT pg_backend_pid()").await;

    let c1 = s.client().await;
    let c2 = s.client().await;
    exec(&c1, "SET search_path = a").await;
    assert_eq!(value(&c1, "SELECT v FROM t").await, "a");
    assert_eq!(
        value(&c2, "SELECT v FROM t").await,
        "public",
        "c1's SET reached c2"
    );
    assert_eq!(value(&c2, "SHOW search_path").await, "\"$user\", public");
    exec(&c2, "SET search_path TO b").await;
    // A client whose startup options set search_path gets it on every transaction too.
    let mut with_option = s.config("postgres");
    with_option.options("-c search_path=b,public");
    let c3 = s
        .watched(&with_option)
        .await
        .expect("connect with options")
        .client;
    let c4 = s.client().await;
    for round in 0..20 {
        let (v1, v2, v3, v4) = tokio::join!(
            value(&c1, "SELECT v FROM t"),
            value(&c2, "SELECT v FROM t"),
            value(&c3, "SHOW search_path"),
            value(&c4, "SELECT v FROM t"),
        );
        assert_eq!(
            [v1, v2, v3, v4],
            ["a", "b", "b,public", "public"],
            "round {round}"
        );
        // The extended protocol, and an explicit transaction, see the same.
        let row = c1.query_one("SELECT v FROM t", &[]).await.expect("c1");
        assert_eq!(row.get::<_, String>(0), "a", "round {round}");
    }
    let mut c1 = c1;
    let tx = c1.transaction().await.expect("BEGIN on c1");
    let row = tx
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("c1 in a transaction");
    assert_eq!(row.get::<_, String>(0), "a");
    tx.commit().await.expect("COMMIT on c1");
    exec(&c2, "RESET search_path").await;
    assert_eq!(value(&c2, "SELECT v FROM t").await, "public");
    assert_eq!(value(&c1, "SELECT v FROM t").await, "a");
    for c in [&c1, &c2, &c3, &c4] {
        assert_eq!(
            value(c, "SELECT pg_backend_pid()").await,
            server,
            "every client was served by the one server connection"
        );
    }
    drop((setup, c1, c2, c3, c4));

    // Session pooling for the role: its settings, prepared statements and temporary tables
    // are gone (DISCARD ALL) for the next client of the same server connection.
    s.cli(&["role", "set", ROLE, "--pool-mode", "session"])
        .await;
    let x = s.client().await;
    exec(
        &x,
        "SET search_path = a; PREPARE p AS SELECT 1; CREATE TEMP TABLE scratch (v int)",
    )
    .await;
    assert_eq!(value(&x, "SELECT v FROM t").await, "a");
    let session_server = value(&x, "SELECT pg_backend_pid()").await;
    let pool = s.pool("postgres").await.expect("the pool of postgres");
    assert_eq!(pool["mode"], "session", "{pool:#}");
    drop(x);
    let y = s.client().await;
    assert_eq!(
        value(&y, "SELECT pg_backend_pid()").await,
        session_server,
        "the next client has the same server connection"
    );
    assert_eq!(value(&y, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(value(&y, "SELECT v FROM t").await, "public");
    let err = y
        .simple_query("EXECUTE p")
        .await
        .expect_err("the prepared statement is gone");
    assert_eq!(code_of(&err), "26000", "{err:?}");
    assert_eq!(
        value(
            &y,
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'"
        )
        .await,
        "0",
        "the temporary table is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_transaction_is_rolled_back_before_the_next_client_and_limits_answer_53300()
 {
    let mut env = ONE_SERVER_TRANSACTION_MODE.to_vec();
    env.push(("LAKEBED_PROXY__POOL__ACQUIRE_TIMEOUT", "1s"));
    env.push(("LAKEBED_PROXY__MAX_CLIENT_CONNECTIONS", "3"));
    let s = start(&env).await;
    // A cold start takes longer than the acquire timeout: wake the compute first.
    s.cli(&["endpoint", "wake", "main"]).await;
    let observer = s.observer().await;
    let idle_again = || async {
        let busy = idle_in_transaction(&observer).await;
        let p = s.pool("postgres").await.expect("the pool of postgres");
        if busy == 0 && p["clients_active"] == 0 && p["servers_idle"] == 1 {
            Ok(())
        } else {
            Err(format!("{busy} idle in transaction; {p}"))
        }
    };
    let state_of = |pid: String| {
        let observer = &observer;
        async move {
            value(
                observer,
                &format!(
                    "SELECT coalesce(max(state), 'gone') FROM pg_stat_activity WHERE pid = {pid}"
                ),
            )
            .await
        }
    };

    // tokio-postgres: BEGIN; INSERT; SELECT 1; then the client is killed.
    let k = s.watched(&s.config("postgres")).await.expect("connect k");
    exec(&k.client, "CREATE TABLE killed (v int)").await;
    exec(&k.client, "BEGIN; INSERT INTO killed VALUES (1)").await;
    assert_eq!(value(&k.client, "SELECT 1").await, "1");
    let server = value(&k.client, "SELECT pg_backend_pid()").await;
    assert_eq!(state_of(server.clone()).await, "idle in transaction");
    k.kill();
    eventually("the killed client's transaction is rolled back", idle_again).await;
    assert_eq!(state_of(server.clone()).await, "idle");
    let next = s.client().await;
    assert_eq!(value(&next, "SELECT count(*) FROM killed").await, "0");
    assert_eq!(
        value(&next, "SELECT pg_backend_pid()").await,
        server,
        "the same server connection serves the next client"
    );

    // psql, killed with SIGKILL inside its transaction.
    let mut psql = client_command("psql");
    psql.args(["-X", "-q", "-A", "-t", &conninfo(&s)])
        .env("PGPASSWORD", &s.password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut psql = psql.spawn().expect("spawn psql");
    let mut input = psql.stdin.take().expect("stdin is piped");
    input
        .write_all(b"BEGIN;\nINSERT INTO killed VALUES (2);\nSELECT 'in' || 'side';\n")
        .await
        .expect("write to psql");
    input.flush().await.expect("flush psql's stdin");
    let mut lines = BufReader::new(psql.stdout.take().expect("stdout is piped")).lines();
    let seen = timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read psql") {
            if line.trim() == "inside" {
                return true;
            }
        }
        false
    })
    .await
    .expect("psql answers within the deadline");
    assert!(seen, "psql ended before its SELECT answered");
    assert_eq!(state_of(server.clone()).await, "idle in transaction");
    psql.start_kill().expect("kill psql");
    psql.wait().await.expect("reap psql");
    drop(input);
    eventually("psql's transaction is rolled back", idle_again).await;
    assert_eq!(value(&next, "SELECT count(*) FROM killed").await, "0");
    assert_eq!(value(&next, "SELECT pg_backend_pid()").await, server);

    // max_client_connections 3: observer, next and one more; the 4th gets 53300.
    let third = eventually("a third client connects", || async {
        match s.watched(&s.config("postgres")).await {
            Ok(w) => Ok(w),
            // psql's slot may not be released yet.
            Err(e) if code_of(&e) == "53300" => Err(message_of(&e)),
            Err(e) => panic!("third client: {e:?}"),
        }
    })
    .await;
    let err = s
        .watched(&s.config("postgres"))
        .await
        .err()
        .expect("a 4th connection is refused");
    assert_eq!(code_of(&err), "53300", "{err:?}");
    assert_eq!(message_of(&err), "sorry, too many clients already");

    // Pool size 1, acquire timeout 1s: while `next` holds the server connection in a
    // transaction, the third client's query gets 53300, not a hang.
    exec(&next, "BEGIN").await;
    assert_eq!(value(&next, "SELECT 'holding'").await, "holding");
    let err = timeout(DEADLINE, third.client.simple_query("SELECT 1"))
        .await
        .expect("an answer, not a hang")
        .expect_err("no server connection for the third client");
    assert_eq!(code_of(&err), "53300", "{err:?}");
    assert!(
        message_of(&err).starts_with("no server connection available within 1s"),
        "{err:?}"
    );
    exec(&next, "COMMIT").await;
    assert_eq!(value(&next, "SELECT 'served'").await, "served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_query_and_client_idle_timeouts_end_with_25p03_57014_and_57p05() {
    let s = start(&[
        ("LAKEBED_ENDPOINTS__MAIN__POOL_MODE", "transaction"),
        ("LAKEBED_PROXY__POOL__IDLE_TRANSACTION_TIMEOUT", "1s"),
        ("LAKEBED_PROXY__POOL__QUERY_TIMEOUT", "1s"),
        ("LAKEBED_PROXY__POOL__CLIENT_IDLE_TIMEOUT", "3s"),
    ])
    .await;

    // Idle in a transaction: 25P03, and the transaction is rolled back.
    let mut idle_tx = s.watched(&s.config("postgres")).await.expect("connect");
    exec(&idle_tx.client, "CREATE TABLE t8 (v int)").await;
    exec(&idle_tx.client, "BEGIN; INSERT INTO t8 VALUES (1)").await;
    let err = idle_tx.closed_by_server("idle in transaction").await;
    assert_eq!(code_of(&err), "25P03", "{err:?}");
    let other = s.client().await;
    assert_eq!(value(&other, "SELECT count(*) FROM t8").await, "0");
    eventually("no backend idle in transaction", || async {
        match idle_in_transaction(&other).await {
            0 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    // A query running past query_timeout is cancelled: 57014; the session goes on.
    let q = s.client().await;
    let err = timeout(DEADLINE, q.simple_query("SELECT pg_sleep(30)"))
        .await
        .expect("cancelled before the deadline")
        .expect_err("pg_sleep(30) is cancelled");
    assert_eq!(code_of(&err), "57014", "{err:?}");
    assert_eq!(value(&q, "SELECT 'still here'").await, "still here");

    // A client idle (no transaction) past client_idle_timeout: 57P05.
    let mut idle = s.watched(&s.config("postgres")).await.expect("connect");
    assert_eq!(value(&idle.client, "SELECT 1").await, "1");
    let err = idle.closed_by_server("idle client").await;
    assert_eq!(code_of(&err), "57P05", "{err:?}");
}

/// How many file descriptors this process and `pid` may open (the soft limit), at most.
fn open_files_limit(pid: u32) -> u64 {
    [
        "/proc/self/limits".to_owned(),
        format!("/proc/{pid}/limits"),
    ]
    .iter()
    .map(|path| {
        let text = std::fs::read_to_string(path).expect("read the limits");
        text.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    })
    .min()
    .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_clients_on_a_pool_of_ten_all_complete_their_transactions() {
    let s = start(&[
        ("LAKEBED_PROXY__POOL__POOL_SIZE", "10"),
        ("LAKEBED_ENDPOINTS__MAIN__POOL_MODE", "transaction"),
        ("LAKEBED_PROXY__MAX_CLIENT_CONNECTIONS", "2100"),
    ])
    .await;
    // One socket per client here and one in the proxy, plus room for the rest.
    let limit = open_files_limit(s.up.pid());
    let clients = 2000.min(limit.saturating_sub(200) as i32);
    if clients < 2000 {
        eprintln!("open files limit {limit}: {clients} clients instead of 2000");
    }
    let setup = s.client().await;
    exec(
        &setup,
        "CREATE TABLE hits (client int PRIMARY KEY, server int)",
    )
    .await;

    // Connect all of them, 100 at a time, and keep every connection open.
    let cfg = s.config("postgres");
    let waves = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut connecting = JoinSet::new();
    for i in 0..clients {
        let (cfg, waves) = (cfg.clone(), waves.clone());
        connecting.spawn(async move {
            let _turn = waves.acquire_owned().await.expect("the semaphore");
            let w = connect_watched(&cfg)
                .await
                .unwrap_or_else(|e| panic!("client {i} connects: {e:?}"));
            (i, w)
        });
    }
    let mut open = Vec::new();
    while let Some(joined) = timeout(DEADLINE * 3, connecting.join_next())
        .await
        .expect("every client connects within the deadline")
    {
        open.push(joined.expect("a connecting task"));
    }
    assert_eq!(open.len(), clients as usize);
    assert!(
        open.iter().all(|(_, w)| !w.client.is_closed()),
        "every client is still connected"
    );

    // All of them open at once, each runs a transaction of several statements.
    let mut running = JoinSet::new();
    for (i, w) in open {
        running.spawn(async move {
            let mut client = w.client;
            let tx = client
                .transaction()
                .await
                .unwrap_or_else(|e| panic!("client {i} BEGIN: {e:?}"));
            tx.execute("INSERT INTO hits VALUES ($1, pg_backend_pid())", &[&i])
                .await
                .unwrap_or_else(|e| panic!("client {i} INSERT: {e:?}"));
            let mine: i64 = tx
                .query_one("SELECT count(*) FROM hits WHERE client = $1", &[&i])
                .await
                .unwrap_or_else(|e| panic!("client {i} SELECT: {e:?}"))
                .get(0);
            assert_eq!(mine, 1, "client {i} sees its own row");
            tx.commit()
                .await
                .unwrap_or_else(|e| panic!("client {i} COMMIT: {e:?}"));
            (client, w.ended)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = timeout(DEADLINE * 3, running.join_next())
        .await
        .expect("every transaction completes within the deadline")
    {
        done.push(joined.expect("a client task"));
    }
    assert_eq!(done.len(), clients as usize);
    assert!(done.iter().all(|(c, _)| !c.is_closed()));

    assert_eq!(
        value(&setup, "SELECT count(*) FROM hits").await,
        clients.to_string()
    );
    let servers: usize = value(&setup, "SELECT count(DISTINCT server) FROM hits")
        .await
        .parse()
        .expect("a count");
    assert!((1..=10).contains(&servers), "{servers} server connections");
    let pool = s.pool("postgres").await.expect("the pool of postgres");
    let n = |k: &str| pool[k].as_u64().unwrap_or_else(|| panic!("{k}: {pool:#}"));
    assert!(n("servers_active") + n("servers_idle") <= 10, "{pool:#}");
    assert!(n("transactions") >= clients as u64, "{pool:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_idle_across_a_suspend_keeps_its_connection_and_its_next_query_wakes_the_compute()
 {
    let s = start(&[("LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL", "100ms")]).await;
    s.cli(&[
        "endpoint",
        "set",
        "main",
        "--suspend-timeout",
        "1s",
        "--pool-mode",
        "transaction",
    ])
    .await;
    let p = s.watched(&s.config("postgres")).await.expect("connect");
    let plus = p
        .client
        .prepare("SELECT $1::int4 + 1")
        .await
        .expect("prepare");
    exec(&p.client, "SET search_path = kept, public").await;
    assert_eq!(value(&p.client, "SELECT 'awake'").await, "awake");
    let (state, boots) = s.state_and_boots("main").await;
    assert_eq!(state, "active");

    // The client stays connected, idle: the compute is suspended anyway.
    eventually(
        "main is suspended while its pooled client is idle",
        || async {
            match s.state_and_boots("main").await {
                (state, _) if state == "suspended" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        !p.client.is_closed() && !p.ended.is_finished(),
        "the client's connection survived the suspend"
    );

    // Its next query wakes the compute; its statement and its SET come along.
    assert_eq!(value(&p.client, "SELECT 'woken'").await, "woken");
    assert_eq!(
        s.state_and_boots("main").await,
        ("active".to_owned(), boots + 1)
    );
    let row = p
        .client
        .query_one(&plus, &[&41i32])
        .await
        .expect("the statement prepared before the suspend");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(value(&p.client, "SHOW search_path").await, "kept, public");
}

/// A session whose compute dies under a query (its backend killed with SIGKILL, so Postgres
/// sends nothing and restarts) ends with a FATAL 08006 that says the connection to the
/// compute was lost, not that one could not be made; once Postgres has recovered, a new
/// session works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_backend_dies_mid_query_is_told_the_compute_connection_was_lost() {
    let s = start(&[]).await;
    let client = s.client().await;
    let pid: i32 = value(&client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("a pid");
    let sleeping = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(60)").await;
        (client, result)
    });
    let observer = s.observer().await;
    eventually("the query is running", || async {
        let n = value(
            &observer,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query LIKE 'SELECT pg_sleep%'"),
        )
        .await;
        if n == "1" { Ok(()) } else { Err(n) }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the backend");
    let (_client, result) = timeout(std::time::Duration::from_secs(60), sleeping)
        .await
        .expect("the query ends")
        .expect("no panic");
    let err = result.expect_err("the backend died");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("an ErrorResponse, got {err:?}"));
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(
        db.message()
            .starts_with("lost the connection to the compute of endpoint \"main\""),
        "{db:?}"
    );
    let after = eventually("a new session works once Postgres recovered", || async {
        match connect_plain(&s.config("postgres")).await {
            Ok(c) => c
                .simple_query("SELECT 1")
                .await
                .map(|_| c)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(value(&after, "SELECT 41 + 1").await, "42");
}
