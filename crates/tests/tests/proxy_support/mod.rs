//! Helpers for the proxy's end-to-end tests: a `lakebed up` stack with its data dir, real
//! clients (tokio-postgres with rustls, `psql`, `pgbench`), and a raw wire-protocol client
//! for the startup phase.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use lakebed_tests::{DEADLINE, DataDir, LakebedUp, lakebed};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The proxy's SNI domain in `lakebed up`'s default configuration.
pub const DOMAIN: &str = "lakebed.localhost";
/// The role `lakebed up` creates on endpoint `main`.
pub const ROLE: &str = "lakebed";
/// How often a test polls for something it cannot await (a query showing up in
/// `pg_stat_activity`, an endpoint's state).
pub const POLL: Duration = Duration::from_millis(50);

/// A running `lakebed up` on its own data directory. Fields drop in order: `lakebed up`
/// first, then the data dir (which kills any compute left behind).
pub struct Stack {
    /// The running binary.
    pub up: LakebedUp,
    /// Its data directory.
    pub dir: DataDir,
    /// The password of role `lakebed` on `main`, from the banner.
    pub password: String,
}

impl Stack {
    /// Starts `lakebed up` on a fresh data directory.
    pub async fn start() -> Self {
        let dir = DataDir::new();
        let up = LakebedUp::start(&dir).await;
        let password = up
            .password
            .clone()
            .expect("the first start prints the password of role lakebed");
        Self { up, dir, password }
    }

    /// Where the proxy listens.
    pub fn proxy(&self) -> SocketAddr {
        self.up
            .proxy_addr
            .expect("the banner names the proxy's address")
    }

    /// The development CA that signs the proxy's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// The internal CA that signs the computes' certificates.
    pub fn internal_ca(&self) -> PathBuf {
        self.dir.path().join("tls/internal-ca.pem")
    }

    /// `lakebed endpoint show NAME --json`.
    pub async fn show(&self, endpoint: &str) -> Value {
        lakebed(&self.dir, &["endpoint", "show", endpoint, "--json"])
            .await
            .json()
    }

    /// The compute's state (`suspended`, `active`, ...) and the endpoint's boot count.
    pub async fn state_and_boots(&self, endpoint: &str) -> (String, u64) {
        let ep = self.show(endpoint).await;
        let state = ep["compute"]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no compute.state: {ep:#}"))
            .to_owned();
        let boots = ep["boots"]
            .as_u64()
            .unwrap_or_else(|| panic!("no boots: {ep:#}"));
        (state, boots)
    }

    /// `lakebed endpoint wake NAME`: the compute's address.
    pub async fn wake(&self, endpoint: &str) -> SocketAddr {
        let out = lakebed(&self.dir, &["endpoint", "wake", endpoint])
            .await
            .ok();
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("wake printed {out:?}, not an address: {e}"))
    }

    /// `lakebed endpoint suspend NAME`, then waits (at most [`DEADLINE`]) until `endpoint
    /// show` says `suspended`.
    pub async fn suspend(&self, endpoint: &str) {
        lakebed(&self.dir, &["endpoint", "suspend", endpoint])
            .await
            .ok();
        let polled = timeout(DEADLINE, async {
            loop {
                let (state, _) = self.state_and_boots(endpoint).await;
                if state == "suspended" {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        assert!(
            polled.is_ok(),
            "{endpoint} not suspended within {DEADLINE:?}: {:#}",
            self.show(endpoint).await
        );
    }

    /// tokio-postgres settings for the proxy: plain TCP to its address, as `user` with
    /// `password`, database `postgres`, no endpoint named (the default, `main`, applies).
    pub fn config(&self, user: &str, password: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(self.proxy().ip().to_string());
        self.login(&mut cfg, user, password);
        cfg
    }

    fn login(&self, cfg: &mut Config, user: &str, password: &str) {
        cfg.port(self.proxy().port())
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
    }

    /// [`Self::config`] as role `lakebed` with its password, over TLS (required) with the
    /// server name `host`, connecting to 127.0.0.1: `host` is what the certificate is
    /// checked against and what the proxy sees as SNI.
    pub fn tls_config(&self, host: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(host)
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .ssl_mode(SslMode::Require);
        self.login(&mut cfg, ROLE, &self.password);
        cfg
    }

    /// A libpq connection string for the proxy as role `lakebed`, database `postgres`,
    /// followed by `extra` (which may override any of it).
    pub fn conninfo(&self, extra: &str) -> String {
        format!(
            "host={} port={} user={ROLE} dbname=postgres connect_timeout=10 {extra}",
            self.proxy().ip(),
            self.proxy().port()
        )
    }

    /// Runs a client program (`psql`, `pgbench`) to completion (at most [`DEADLINE`]), with
    /// `PGPASSWORD` set to role `lakebed`'s password, no other `PG*` variable inherited, and
    /// `env` added.
    pub async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = client_command(program);
        cmd.args(args).env("PGPASSWORD", &self.password);
        for (k, v) in env {
            cmd.env(k, v);
        }
        timeout(DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("run {program}: {e} (install postgresql-client)"))
    }

    /// `psql -X -A -t -v ON_ERROR_STOP=1 -c SQL CONNINFO`: its output.
    pub async fn psql(&self, conninfo: &str, sql: &str, env: &[(&str, &str)]) -> Output {
        self.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                conninfo,
            ],
            env,
        )
        .await
    }

    /// Like [`Self::psql`], asserting success; its standard output, trimmed.
    pub async fn psql_ok(&self, conninfo: &str, sql: &str, env: &[(&str, &str)]) -> String {
        let out = self.psql(conninfo, sql, env).await;
        assert!(
            out.status.success(),
            "psql {conninfo:?} -c {sql:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

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

/// tokio-postgres's TLS connector trusting only `ca_pem`.
pub fn tls(ca_pem: &Path) -> MakeRustlsConnect {
    MakeRustlsConnect::new(rustls_config(ca_pem, &[]))
}

/// Connects without TLS and runs the connection in the background.
pub async fn connect_plain(cfg: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = timeout(DEADLINE, cfg.connect(NoTls))
        .await
        .expect("connect finishes within the deadline")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects with `tls` and runs the connection in the background.
pub async fn connect_tls(
    cfg: &Config,
    tls: MakeRustlsConnect,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = timeout(DEADLINE, cfg.connect(tls))
        .await
        .expect("connect finishes within the deadline")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The one text value `sql` returns.
pub async fn query_text(client: &Client, sql: &str) -> String {
    let row = timeout(DEADLINE, client.query_one(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// Waits (polling, at most [`DEADLINE`]) until a session runs exactly `query` (text as sent).
pub async fn wait_until_running(observer: &Client, query: &str) {
    let polled = timeout(DEADLINE, async {
        loop {
            let row = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                    &[&query],
                )
                .await
                .expect("query pg_stat_activity");
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{query:?} never showed up as active");
}

/// The server name for rustls.
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("a valid server name")
}

// ---- The raw wire protocol (PostgreSQL docs §55.7) ----

/// A startup packet: length, `code` (protocol version or request code), `params` as
/// NUL-terminated pairs and a final NUL (none of it when `params` is `None`).
pub fn startup_packet(code: u32, params: Option<&[(&str, &str)]>) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    if let Some(params) = params {
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Protocol version `major.minor` as sent in a `StartupMessage`.
pub fn version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// `SSLRequest`.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest`.
pub const GSSENC_REQUEST: u32 = 80_877_104;

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// One message: tag and body.
    Message(u8, Vec<u8>),
    /// The connection ended (EOF or reset) before a whole message.
    Closed,
}

/// Reads one typed message (at most [`DEADLINE`]).
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> Reply {
    let read = async {
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        assert!(
            (4..1 << 20).contains(&len),
            "message '{}' with length {len}",
            head[0].escape_ascii()
        );
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(Reply::Message(head[0], body))
    };
    match timeout(DEADLINE, read).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::Closed,
        Err(_) => panic!("the server sent nothing and kept the connection for {DEADLINE:?}"),
    }
}

/// Reads one byte (the answer to `SSLRequest` or `GSSENCRequest`); `None` at EOF.
pub async fn read_byte<S: AsyncRead + Unpin>(stream: &mut S) -> Option<u8> {
    let mut b = [0u8; 1];
    match timeout(DEADLINE, stream.read_exact(&mut b)).await {
        Ok(Ok(_)) => Some(b[0]),
        Ok(Err(_)) => None,
        Err(_) => panic!("no answer within {DEADLINE:?}"),
    }
}

/// Writes `bytes` (a write error means the server already closed: ignored, the reply
/// tells).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// The fields of an `ErrorResponse` body: (type, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .expect("NUL-terminated field");
        fields.push((kind, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = &tail[end + 1..];
    }
    fields
}

/// The value of field `kind` of an `ErrorResponse` body.
pub fn error_field(body: &[u8], kind: u8) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// Asserts that `reply` is an `ErrorResponse` with SQLSTATE `code` and that the server then
/// closes the connection; returns the message.
pub async fn expect_error_then_close<S: AsyncRead + Unpin>(
    what: &str,
    reply: Reply,
    stream: &mut S,
    code: &str,
) -> String {
    let Reply::Message(b'E', body) = &reply else {
        panic!("{what}: expected an ErrorResponse {code}, got {reply:?}");
    };
    assert_eq!(
        error_field(body, b'C').as_deref(),
        Some(code),
        "{what}: {:?}",
        error_fields(body)
    );
    assert_eq!(
        error_field(body, b'S').as_deref(),
        Some("FATAL"),
        "{what}: {:?}",
        error_fields(body)
    );
    assert_eq!(
        read_message(stream).await,
        Reply::Closed,
        "{what}: the connection stays open after the error"
    );
    error_field(body, b'M').unwrap_or_default()
}

/// The mechanisms of an `AuthenticationSASL` message, or a panic naming what came instead.
pub fn sasl_mechanisms(reply: &Reply) -> Vec<String> {
    let Reply::Message(b'R', body) = reply else {
        panic!("expected AuthenticationSASL, got {reply:?}");
    };
    let (code, list) = body.split_at(4);
    assert_eq!(code, 10u32.to_be_bytes(), "authentication request {body:?}");
    list.split(|&b| b == 0)
        .take_while(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// A plain TCP connection to `addr`.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect to the proxy")
}
