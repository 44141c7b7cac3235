//! Real clients for the end-to-end tests: client programs (`psql`, `pgbench`) with a clean
//! environment, tokio-postgres connections (plain, over rustls, or with their connection
//! task kept so a test can await how the server ended it), simple queries with a deadline,
//! server errors taken apart, and polling with a deadline.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::DEADLINE;

/// The role `lakebed up` creates on endpoint `main`.
pub const ROLE: &str = "lakebed";

/// How often a test polls for something it cannot await (a query showing up in
/// `pg_stat_activity`, an endpoint's state).
pub const POLL: Duration = Duration::from_millis(50);

/// A `Command` for a client program with no `PG*` variable from the test's environment,
/// killed if the test drops it.
pub fn client_command(program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.kill_on_drop(true);
    cmd
}

/// A rustls client configuration that trusts only the CA in `ca_pem`, offering `alpn`.
/// Panics if the file cannot be read or holds no valid certificate.
pub fn rustls_config(ca_pem: &Path, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read the CA file") {
        roots
            .add(cert.expect("parse the CA"))
            .expect("trust the CA");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// tokio-postgres's TLS connector trusting only the CA in `ca_pem` (see [`rustls_config`]).
pub fn tls(ca_pem: &Path) -> MakeRustlsConnect {
    MakeRustlsConnect::new(rustls_config(ca_pem, &[]))
}

/// `name` as a rustls server name; panics if it is not a valid one.
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("a valid server name")
}

/// Connects with `cfg` without TLS and runs the connection in the background; the client,
/// or the connect error. Panics if connecting takes over [`DEADLINE`].
pub async fn connect_plain(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    connect_spawned(cfg, NoTls).await
}

/// Connects with `cfg` over `tls` and runs the connection in the background; the client,
/// or the connect error. Panics if connecting takes over [`DEADLINE`].
pub async fn connect_tls(
    cfg: &Config,
    tls: MakeRustlsConnect,
) -> Result<Client, tokio_postgres::Error> {
    connect_spawned(cfg, tls).await
}

/// Connects with `cfg` over `tls` (at most [`DEADLINE`]) and spawns the connection.
async fn connect_spawned<T>(cfg: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = timeout(DEADLINE, cfg.connect(tls))
        .await
        .expect("connect finishes within the deadline")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A client and its connection task, whose result says how the connection ended.
pub struct Watched {
    /// The client.
    pub client: Client,
    /// The connection task: `Err` carries the server's error (a FATAL one, say), if one
    /// ended it.
    pub ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Watched {
    /// Waits (at most [`DEADLINE`]) for the server to end the connection; its error. Panics,
    /// naming `what`, if the connection stays open or ends without an error.
    pub async fn closed_by_server(&mut self, what: &str) -> tokio_postgres::Error {
        let ended = timeout(DEADLINE, &mut self.ended)
            .await
            .unwrap_or_else(|_| panic!("{what}: the connection still open after {DEADLINE:?}"))
            .expect("the connection task");
        match ended {
            Err(e) => e,
            Ok(()) => panic!("{what}: the connection ended without an error"),
        }
    }

    /// Kills the client as a crashed process would: the socket is closed with no
    /// `Terminate`.
    pub fn kill(self) {
        self.ended.abort();
        drop(self.client);
    }
}

/// Connects with `cfg` (no TLS) and runs the connection in a task that is kept; the
/// client, or the connect error. Panics if connecting takes over [`DEADLINE`].
pub async fn connect_watched(cfg: &Config) -> Result<Watched, tokio_postgres::Error> {
    let (client, conn) = timeout(DEADLINE, cfg.connect(NoTls))
        .await
        .expect("connect finishes within the deadline")?;
    let ended = tokio::spawn(conn);
    Ok(Watched { client, ended })
}

/// The SQLSTATE of a server error (panics, showing the error, if it is not one).
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .code()
        .code()
        .to_owned()
}

/// The message of a server error (panics, showing the error, if it is not one).
pub fn message_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .message()
        .to_owned()
}

/// The one text value `sql` returns (extended protocol). Panics if the query fails, does
/// not return exactly one row, or takes over [`DEADLINE`].
pub async fn query_text(client: &Client, sql: &str) -> String {
    let row = timeout(DEADLINE, client.query_one(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// The first column of the first row of `sql` as text (a simple query; `""` for NULL).
/// Panics if the query fails, returns no row, or takes over [`DEADLINE`].
pub async fn value(client: &Client, sql: &str) -> String {
    let rows = timeout(DEADLINE, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

/// Runs `sql` (simple query protocol); panics if it fails or takes over [`DEADLINE`].
pub async fn exec(client: &Client, sql: &str) {
    timeout(DEADLINE, client.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Polls `probe` (every [`POLL`], at most [`DEADLINE`]) until it returns `Ok`; its value.
/// Panics with `what` and the last `Err` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_within(DEADLINE, what, probe).await
}

/// [`eventually`] with its own deadline.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    let polled = timeout(deadline, async {
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(seen) => last = seen,
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    match polled {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {deadline:?}; last seen: {last}"),
    }
}

/// Waits (polling, at most [`DEADLINE`]) until a session runs exactly `query` (text as
/// sent), as `observer` sees in `pg_stat_activity`; panics if none does in time.
pub async fn wait_until_running(observer: &Client, query: &str) {
    eventually(&format!("{query:?} running"), || async {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                &[&query],
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
        match row.get::<_, i64>(0) {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
}
