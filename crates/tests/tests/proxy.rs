//! The proxy end to end (issue 3): `lakebed up` with real clients — `psql` and `pgbench`
//! from postgresql-client, tokio-postgres with rustls, and raw wire-protocol bytes for the
//! startup phase. Nothing is mocked: SQLSTATEs come from the proxy or the compute as a
//! client sees them.
//!
//! Each test runs its own `lakebed up` (a process plus a postgres per woken endpoint), so
//! related checks share one stack.

use std::sync::Arc;

use lakebed_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The proxy's SNI domain in `lakebed up`'s default configuration.
const DOMAIN: &str = "lakebed.localhost";

/// The message of a server error (panics, showing the error, if it is not one).
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .message()
        .to_owned()
}

/// Asserts that `e` carries `code`; returns its message.
fn expect_code(what: &str, e: &tokio_postgres::Error, code: &SqlState) -> String {
    assert_eq!(e.code(), Some(code), "{what}: {e:?}");
    db_message(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_with_verify_full_sni_and_channel_binding_passes_options_and_runs_pgbench() {
    let s = Stack::start().await;
    let ca = s.ca().display().to_string();

    // sslmode=require: TLS to the proxy, the default endpoint.
    let require = s.conninfo("sslmode=require");
    assert_eq!(s.psql_ok(&require, "SELECT 1", &[]).await, "1");

    // verify-full against the dev CA, the endpoint named by SNI, then also SCRAM-SHA-256-PLUS.
    let verified = s.conninfo(&format!(
        "host=main.{DOMAIN} hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"
    ));
    assert_eq!(s.psql_ok(&verified, "SELECT current_user", &[]).await, ROLE);
    let bound = format!("{verified} channel_binding=require");
    assert_eq!(
        s.psql_ok(&bound, "SELECT current_database()", &[]).await,
        "postgres"
    );

    // A name the certificate does not cover fails verification.
    let wrong_name = s.conninfo(&format!(
        "host=db.example.com hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"
    ));
    let out = s.psql(&wrong_name, "SELECT 1", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify-full accepted db.example.com");
    assert!(
        stderr.contains("does not match host name \"db.example.com\""),
        "{stderr}"
    );

    // PGOPTIONS reach the compute; so does the rest of options=endpoint=NAME ...
    let search_path = s
        .psql_ok(
            &require,
            "SHOW search_path",
            &[("PGOPTIONS", "-c search_path=app")],
        )
        .await;
    assert_eq!(search_path, "app");
    let routed = s.conninfo("sslmode=require options='endpoint=main -c search_path=x'");
    assert_eq!(s.psql_ok(&routed, "SHOW search_path", &[]).await, "x");

    // pgbench: initialise, then a short run with prepared statements (extended protocol).
    let init = s
        .run("pgbench", &["-i", "-s", "1", "-q", &require], &[])
        .await;
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert_eq!(
        s.psql_ok(&require, "SELECT count(*) FROM pgbench_accounts", &[])
            .await,
        "100000"
    );
    let run = s
        .run(
            "pgbench",
            &["-c", "4", "-j", "2", "-t", "50", "-M", "prepared", &require],
            &[],
        )
        .await;
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench: {report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        report.contains("number of transactions actually processed: 200/200"),
        "{report}"
    );
    assert!(
        report.contains("number of failed transactions: 0 (0.000%)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_tls_routes_by_sni_cancels_queries_and_computes_refuse_direct_clients()
{
    let s = Stack::start().await;
    let tls = tls(&s.ca());
    let main_host = format!("main.{DOMAIN}");

    // TLS with the dev CA, SNI naming main, channel binding required; startup parameters
    // reach the compute.
    let mut cfg = s.tls_config(&main_host);
    cfg.channel_binding(ChannelBinding::Require)
        .application_name("proxy-e2e");
    let client = connect_tls(&cfg, tls.clone())
        .await
        .expect("tokio-postgres over TLS");
    assert_eq!(
        query_text(
            &client,
            "SELECT current_user || ' ' || current_setting('application_name')"
        )
        .await,
        "lakebed proxy-e2e"
    );

    // SNI routes: an endpoint that does not exist gets the answer a wrong password gets ...
    let err = connect_tls(&s.tls_config(&format!("nope.{DOMAIN}")), tls.clone())
        .await
        .expect_err("SNI naming an unknown endpoint");
    expect_code("SNI nope", &err, &SqlState::INVALID_PASSWORD);
    // ... and SNI and options naming different endpoints is an error.
    let mut conflict = s.tls_config(&main_host);
    conflict.options("endpoint=other");
    let err = connect_tls(&conflict, tls.clone())
        .await
        .expect_err("SNI main, options other");
    let message = expect_code(
        "SNI/options conflict",
        &err,
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(
        message.contains("\"main\"") && message.contains("\"other\""),
        "{message}"
    );

    // Cancel through the proxy's cancel key (over TLS, as tokio-postgres sends it).
    let observer = connect_tls(&s.tls_config(&main_host), tls.clone())
        .await
        .expect("observer session");
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.batch_execute("SELECT pg_sleep(30)").await;
        (result, client)
    });
    wait_until_running(&observer, "SELECT pg_sleep(30)").await;
    token
        .cancel_query(tls.clone())
        .await
        .expect("send the cancel request");
    let (result, client) = timeout(DEADLINE, sleeper)
        .await
        .expect("the cancelled query returns")
        .expect("the query task");
    let err = result.expect_err("pg_sleep(30) was cancelled");
    expect_code("cancel", &err, &SqlState::QUERY_CANCELED);
    assert_eq!(
        query_text(&client, "SELECT 'still here'").await,
        "still here"
    );

    // psql's cancel (SIGINT: libpq sends a CancelRequest with the proxy's key).
    let sql = "SELECT pg_sleep(30) /* psql */";
    let psql = client_command("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .args(["-c", sql, &s.conninfo("sslmode=require")])
        .env("PGPASSWORD", &s.password)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    wait_until_running(&observer, sql).await;
    let pid = psql.id().expect("psql is running");
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).expect("SIGINT psql");
    let out = timeout(DEADLINE, psql.wait_with_output())
        .await
        .expect("psql returns after the cancel")
        .expect("wait for psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql: {out:?}");
    assert!(
        stderr.contains("57014: canceling statement due to user request"),
        "{stderr}"
    );

    // Nothing but the proxy logs in to the compute: not without TLS, and not with TLS but
    // no client certificate, even with the right password.
    let compute = s.wake("main").await;
    let mut direct = tokio_postgres::Config::new();
    direct
        .host(compute.ip().to_string())
        .port(compute.port())
        .user(ROLE)
        .password(&s.password)
        .dbname("postgres")
        .connect_timeout(std::time::Duration::from_secs(10));
    let err = connect_plain(&direct)
        .await
        .expect_err("a plain direct connection to the compute");
    expect_code(
        "direct, plain",
        &err,
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    direct.ssl_mode(SslMode::Require);
    let compute_tls = MakeRustlsConnect::new(rustls_config(&s.internal_ca(), &[]));
    let err = connect_tls(&direct, compute_tls)
        .await
        .expect_err("a TLS direct connection without a client certificate");
    expect_code(
        "direct, TLS without certificate",
        &err,
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_errors_direct_tls_needs_alpn_and_proxy_keeps_serving() {
    let s = Stack::start().await;
    let proxy = s.proxy();
    let login = [("user", ROLE), ("database", "postgres")];

    // Each gets a FATAL ErrorResponse with the SQLSTATE, then the connection closes.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length 4", vec![0, 0, 0, 4], "08P01"),
        (
            "length 0x7fffffff",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            "08P01",
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            "08P01",
        ),
        (
            "garbage of a valid length",
            [&[0, 0, 0, 12][..], &[0, 3, 0, 0], b"user"].concat(),
            "08P01",
        ),
        (
            "protocol 2.0",
            startup_packet(version(2, 0), Some(&login)),
            "0A000",
        ),
    ];
    for (what, bytes, code) in cases {
        let mut conn = tcp(proxy).await;
        send(&mut conn, &bytes).await;
        let reply = read_message(&mut conn).await;
        expect_error_then_close(what, reply, &mut conn, code).await;
    }

    // A truncated packet, then the client stops writing: an error or a close, no hang.
    let mut conn = tcp(proxy).await;
    let packet = startup_packet(version(3, 0), Some(&login));
    send(&mut conn, &packet[..packet.len() / 2]).await;
    conn.shutdown().await.expect("close the write side");
    match read_message(&mut conn).await {
        Reply::Closed => {}
        reply => {
            expect_error_then_close("truncated", reply, &mut conn, "08P01").await;
        }
    }

    // An unknown cancel key is dropped silently, as Postgres does.
    let mut conn = tcp(proxy).await;
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102u32.to_be_bytes());
    cancel.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]);
    send(&mut conn, &cancel).await;
    assert_eq!(read_message(&mut conn).await, Reply::Closed);

    // Bytes pipelined after SSLRequest could be injected plaintext (CVE-2021-23214).
    let mut conn = tcp(proxy).await;
    let pipelined = [
        startup_packet(SSL_REQUEST, None),
        startup_packet(version(3, 0), Some(&login)),
    ]
    .concat();
    send(&mut conn, &pipelined).await;
    let reply = read_message(&mut conn).await;
    let message = expect_error_then_close("SSLRequest + data", reply, &mut conn, "08P01").await;
    assert!(message.contains("after SSL request"), "{message}");

    // GSSENCRequest: 'N', and the client carries on in the clear.
    let mut conn = tcp(proxy).await;
    send(&mut conn, &startup_packet(GSSENC_REQUEST, None)).await;
    assert_eq!(read_byte(&mut conn).await, Some(b'N'));
    send(&mut conn, &startup_packet(version(3, 0), Some(&login))).await;
    assert_eq!(
        sasl_mechanisms(&read_message(&mut conn).await),
        ["SCRAM-SHA-256"]
    );

    // Protocol 3.99 with an unknown _pq_ option: NegotiateProtocolVersion (3.0, the option)
    // before the authentication request.
    let mut conn = tcp(proxy).await;
    let newer = [("user", ROLE), ("database", "postgres"), ("_pq_.foo", "1")];
    send(&mut conn, &startup_packet(version(3, 99), Some(&newer))).await;
    let mut negotiate = version(3, 0).to_be_bytes().to_vec();
    negotiate.extend_from_slice(&1u32.to_be_bytes());
    negotiate.extend_from_slice(b"_pq_.foo\0");
    assert_eq!(
        read_message(&mut conn).await,
        Reply::Message(b'v', negotiate)
    );
    assert_eq!(
        sasl_mechanisms(&read_message(&mut conn).await),
        ["SCRAM-SHA-256"]
    );

    // Direct TLS (PostgreSQL 17's sslnegotiation=direct) with ALPN "postgresql": SCRAM with
    // channel binding is offered.
    let config = rustls_config(&s.ca(), &[b"postgresql"]);
    let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(&format!("main.{DOMAIN}")), tcp(proxy).await)
        .await
        .expect("direct TLS handshake");
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    send(&mut conn, &startup_packet(version(3, 0), Some(&login))).await;
    assert_eq!(
        sasl_mechanisms(&read_message(&mut conn).await),
        ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );

    // Direct TLS without ALPN is refused: an error or a close, never authentication.
    let config = rustls_config(&s.ca(), &[]);
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(&format!("main.{DOMAIN}")), tcp(proxy).await)
        .await;
    if let Ok(mut conn) = handshake {
        send(&mut conn, &startup_packet(version(3, 0), Some(&login))).await;
        match read_message(&mut conn).await {
            Reply::Closed => {}
            reply => {
                let message =
                    expect_error_then_close("direct TLS, no ALPN", reply, &mut conn, "08P01").await;
                assert!(message.contains("ALPN"), "{message}");
            }
        }
    }

    // After all that, a normal client is served.
    assert_eq!(
        s.psql_ok(&s.conninfo("sslmode=require"), "SELECT 'served'", &[])
            .await,
        "served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_endpoint_wakes_once_for_100_concurrent_clients_and_never_for_failed_logins() {
    let s = Stack::start().await;
    assert_eq!(s.state_and_boots("main").await, ("suspended".to_owned(), 0));

    // Wrong password, unknown endpoint (even with main's right password), unknown role:
    // one answer, 28P01, and no compute is woken.
    let err = connect_plain(&s.postgres_config(ROLE, "not the password"))
        .await
        .expect_err("wrong password");
    let wrong_password = expect_code("wrong password", &err, &SqlState::INVALID_PASSWORD);
    assert_eq!(
        wrong_password,
        "password authentication failed for user \"lakebed\""
    );
    let mut nope = s.postgres_config(ROLE, &s.password);
    nope.options("endpoint=nope");
    let err = connect_plain(&nope).await.expect_err("unknown endpoint");
    let unknown_endpoint = expect_code("unknown endpoint", &err, &SqlState::INVALID_PASSWORD);
    assert_eq!(unknown_endpoint, wrong_password);
    let err = connect_plain(&s.postgres_config("nobody", &s.password))
        .await
        .expect_err("unknown role");
    let unknown_role = expect_code("unknown role", &err, &SqlState::INVALID_PASSWORD);
    assert_eq!(
        unknown_role,
        "password authentication failed for user \"nobody\""
    );
    assert_eq!(
        s.state_and_boots("main").await,
        ("suspended".to_owned(), 0),
        "a client that did not authenticate woke the compute"
    );

    // A client of a suspended endpoint wakes it and is answered.
    let client = connect_plain(&s.postgres_config(ROLE, &s.password))
        .await
        .expect("connect to the suspended endpoint");
    assert_eq!(query_text(&client, "SELECT 'woken'").await, "woken");
    assert_eq!(s.state_and_boots("main").await, ("active".to_owned(), 1));
    drop(client);

    // 100 clients at once to the suspended endpoint: one boot, all served, all sessions
    // open together.
    s.suspend("main").await;
    let cfg = s.postgres_config(ROLE, &s.password);
    let mut clients = JoinSet::new();
    for i in 0..100i32 {
        let cfg = cfg.clone();
        clients.spawn(async move {
            let client = connect_plain(&cfg)
                .await
                .unwrap_or_else(|e| panic!("client {i}: {e:?}"));
            let row = client
                .query_one("SELECT $1::int4", &[&i])
                .await
                .unwrap_or_else(|e| panic!("client {i} query: {e:?}"));
            assert_eq!(row.get::<_, i32>(0), i);
            client
        });
    }
    let mut sessions = Vec::new();
    while let Some(joined) = timeout(DEADLINE, clients.join_next())
        .await
        .expect("every client finishes within the deadline")
    {
        sessions.push(joined.expect("a client task"));
    }
    assert_eq!(sessions.len(), 100);
    assert_eq!(s.state_and_boots("main").await, ("active".to_owned(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_endpoint_and_an_unstartable_compute_gets_57p03() {
    let s = Stack::start().await;

    // An endpoint whose compute cannot start: 57P03 naming the endpoint, with the reason.
    lakebed(&s.dir, &["endpoint", "create", "broken"])
        .await
        .ok();
    lakebed_with_stdin(
        &s.dir,
        &[
            "role",
            "create",
            "r",
            "--endpoint",
            "broken",
            "--password-stdin",
        ],
        "r-password\n",
    )
    .await
    .ok();
    s.wake("broken").await;
    s.suspend("broken").await;
    s.edit_pgdata("broken", |pgdata| {
        let conf = pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("this is not a setting\n");
        std::fs::write(&conf, text).expect("break postgresql.conf");
    })
    .await;
    let mut broken = s.postgres_config("r", "r-password");
    broken.options("endpoint=broken");
    let err = connect_plain(&broken)
        .await
        .expect_err("a compute that cannot start");
    let message = expect_code("broken compute", &err, &SqlState::CANNOT_CONNECT_NOW);
    // The reason is the manager's one line; the log tail stays with the operator.
    assert!(
        message.starts_with("endpoint \"broken\" cannot be woken: ")
            && message.contains("failed to start"),
        "{message}"
    );

    // Ten failed logins to main from this address: the eleventh attempt is refused with
    // 53300 even with the right password, and main is never woken.
    for attempt in 1..=10 {
        let err = connect_plain(&s.postgres_config(ROLE, "guess"))
            .await
            .expect_err("wrong password");
        expect_code(
            &format!("failure {attempt}"),
            &err,
            &SqlState::INVALID_PASSWORD,
        );
    }
    let err = connect_plain(&s.postgres_config(ROLE, &s.password))
        .await
        .expect_err("the limit is reached");
    let message = expect_code("rate limited", &err, &SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        message.contains("too many failed authentication"),
        "{message}"
    );
    assert_eq!(s.state_and_boots("main").await, ("suspended".to_owned(), 0));
    // The limit is per endpoint: broken still gets a password check.
    broken.password("guess");
    let err = connect_plain(&broken)
        .await
        .expect_err("wrong password for broken");
    expect_code("broken, wrong password", &err, &SqlState::INVALID_PASSWORD);
}
