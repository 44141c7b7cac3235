//! Helpers for the review regression tests (`review_regressions.rs`): a `lakebed up` stack
//! with settings in its environment, the CLI with environment variables, tokio-postgres
//! clients whose connection's end can be awaited, `lakebed pools --json` and
//! `endpoint show --json`, polling with a deadline, and a raw wire-protocol client that logs
//! in with SCRAM-SHA-256 (postgres-protocol) and reads every message the proxy sends.
//!
//! Copied in part from `proxy_support` and `pool_support` (which other work is changing), so
//! these tests keep their own copy.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use lakebed_tests::{CliOutput, DEADLINE, DataDir, LakebedUp, lakebed, lakebed_bin};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_postgres::{Client, Config, NoTls};

/// The role `lakebed up` creates on endpoint `main`.
pub const ROLE: &str = "lakebed";
/// How often a test polls for what it cannot await.
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
    /// Starts `lakebed up` on a fresh data directory with `env` (`LAKEBED_*` settings).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = DataDir::new();
        let up = LakebedUp::start_with(&dir, env).await;
        Self::of(up, dir)
    }

    /// A stack of a `lakebed up` already started on `dir` for the first time.
    pub fn of(up: LakebedUp, dir: DataDir) -> Self {
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

    /// Runs `lakebed ARGS`, asserting success; its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        lakebed(&self.dir, args).await.ok()
    }

    /// tokio-postgres settings for the proxy as `user` with `password`, database `db`, no
    /// TLS (allowed on loopback), endpoint `main` (the proxy's default).
    pub fn config_as(&self, user: &str, password: &str, db: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(self.proxy().ip().to_string())
            .port(self.proxy().port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(30));
        cfg
    }

    /// [`Self::config_as`] as role `lakebed`.
    pub fn config(&self, db: &str) -> Config {
        self.config_as(ROLE, &self.password, db)
    }

    /// A client of database `db`, its connection watched; panics if the login fails.
    pub async fn client(&self, db: &str) -> Watched {
        connect_watched(&self.config(db))
            .await
            .unwrap_or_else(|e| panic!("connect to {db} through the proxy: {e:?}"))
    }

    /// `lakebed pools --json`.
    pub async fn pools(&self) -> Vec<Value> {
        let v = lakebed(&self.dir, &["pools", "--json"]).await.json();
        v.as_array()
            .unwrap_or_else(|| panic!("pools is not a list: {v:#}"))
            .clone()
    }

    /// `lakebed endpoint show main --json`.
    pub async fn show_main(&self) -> Value {
        lakebed(&self.dir, &["endpoint", "show", "main", "--json"])
            .await
            .json()
    }

    /// `lakebed endpoint suspend main`, then waits (at most [`DEADLINE`]) until `endpoint
    /// show` says `suspended`.
    pub async fn suspend_main(&self) {
        self.cli(&["endpoint", "suspend", "main"]).await;
        eventually("main suspended", || async {
            let ep = self.show_main().await;
            match ep["compute"]["state"].as_str() {
                Some("suspended") => Ok(()),
                _ => Err(ep.to_string()),
            }
        })
        .await;
    }
}

/// The pool of role `lakebed` on `main` for database `db` in `pools`, if there is one.
pub fn pool_of<'a>(pools: &'a [Value], db: &str) -> Option<&'a Value> {
    pools
        .iter()
        .find(|p| p["endpoint"] == "main" && p["role"] == ROLE && p["database"] == db)
}

/// A number field of a pool (0 when the pool is absent).
pub fn count(pool: Option<&Value>, field: &str) -> u64 {
    pool.map_or(0, |p| {
        p[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {p:#}"))
    })
}

/// Runs `lakebed --data-dir DIR ARGS` (in `dir`, with no inherited `LAKEBED_*` variable, but
/// with `env`) to completion, at most [`DEADLINE`].
pub async fn lakebed_env(dir: &DataDir, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(lakebed_bin());
    cmd.arg("--data-dir")
        .arg(dir.path())
        .current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LAKEBED_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("lakebed {args:?} did not finish within {DEADLINE:?}"))
        .expect("run lakebed");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A client and its connection task, whose result says how the connection ended.
pub struct Watched {
    /// The client.
    pub client: Client,
    /// The connection task: `Err` carries the server's error, if one ended it.
    pub ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Watched {
    /// Waits (at most [`DEADLINE`]) for the server to end the connection; its error.
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
}

/// Connects (no TLS, at most [`DEADLINE`]) and runs the connection in a task.
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

/// The one value of `sql` as text (a simple query, at most [`DEADLINE`]).
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

/// Runs `sql` (simple query protocol) and asserts it succeeds.
pub async fn exec(client: &Client, sql: &str) {
    timeout(DEADLINE, client.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Polls `probe` (every [`POLL`], at most [`DEADLINE`]) until it returns `Ok`; panics with
/// `what` and the last `Err` otherwise.
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

/// Waits (polling, at most [`DEADLINE`]) until a session runs exactly `query`, as seen by
/// `observer`.
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

// ---- The raw wire protocol (PostgreSQL docs §55.7) ----

/// A startup packet: length, protocol 3.0, `params` as NUL-terminated pairs, a final NUL.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// One wire message with its tag.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A simple `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    message(b'Q', &b)
}

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

/// A plain TCP connection to `addr`.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect to the proxy")
}

/// A client speaking the wire protocol itself, logged in with SCRAM-SHA-256.
pub struct RawClient {
    /// The connection to the proxy.
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects to the proxy at `addr` as `user` to database `postgres` and logs in (up to
    /// the first `ReadyForQuery`); panics if the login fails.
    pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> Self {
        let mut stream = tcp(addr).await;
        let params = [
            ("user", user),
            ("database", "postgres"),
            ("application_name", "raw"),
        ];
        send(&mut stream, &startup_packet(&params)).await;
        let sasl = auth_data(read_message(&mut stream).await, 10);
        assert!(
            sasl.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256"),
            "mechanisms {:?}",
            sasl.escape_ascii().to_string()
        );
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut initial = Vec::new();
        cstr(&mut initial, "SCRAM-SHA-256");
        initial.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        initial.extend_from_slice(scram.message());
        send(&mut stream, &message(b'p', &initial)).await;
        let server_first = auth_data(read_message(&mut stream).await, 11);
        scram.update(&server_first).expect("server-first-message");
        send(&mut stream, &message(b'p', scram.message())).await;
        let server_final = auth_data(read_message(&mut stream).await, 12);
        scram.finish(&server_final).expect("server-final-message");
        assert!(auth_data(read_message(&mut stream).await, 0).is_empty());
        loop {
            match read_message(&mut stream).await {
                Reply::Message(b'Z', _) => break,
                Reply::Message(b'E', body) => panic!("login failed: {:?}", error_fields(&body)),
                Reply::Message(..) => {}
                Reply::Closed => panic!("the proxy closed the connection during login"),
            }
        }
        Self { stream }
    }

    /// Sends `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        send(&mut self.stream, bytes).await;
    }

    /// Reads every message up to the end of the connection (at most [`DEADLINE`] per
    /// message); the `ErrorResponse`s among them, as their fields.
    pub async fn errors_until_closed(&mut self) -> Vec<Vec<(u8, String)>> {
        let mut errors = Vec::new();
        loop {
            match read_message(&mut self.stream).await {
                Reply::Message(b'E', body) => errors.push(error_fields(&body)),
                Reply::Message(..) => {}
                Reply::Closed => return errors,
            }
        }
    }
}

/// The data of an `Authentication` message of type `kind`.
fn auth_data(reply: Reply, kind: u32) -> Vec<u8> {
    match reply {
        Reply::Message(b'R', body) if body[..4] == kind.to_be_bytes() => body[4..].to_vec(),
        Reply::Message(b'E', body) => panic!(
            "expected Authentication type {kind}, got an error: {:?}",
            error_fields(&body)
        ),
        other => panic!("expected Authentication type {kind}, got {other:?}"),
    }
}
