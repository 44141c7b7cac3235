//! Helpers for the connection-pooling end-to-end tests: a `lakebed up` stack with pool
//! settings in its environment, tokio-postgres clients whose connection's end can be
//! awaited, `lakebed pools --json`, polling with a deadline, and a raw extended-protocol
//! client (SCRAM from postgres-protocol) that names its statements itself.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lakebed_tests::{DEADLINE, DataDir, LakebedUp, lakebed};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_postgres::{Client, Config, NoTls};

use crate::proxy_support::{
    POLL, ROLE, Reply, error_field, read_message, sasl_mechanisms, send, startup_packet, tcp,
    version,
};

/// A running `lakebed up` with pool settings. Fields drop in order: `lakebed up` first,
/// then the data dir (which kills any compute left behind).
pub struct PoolStack {
    /// The running binary.
    pub up: LakebedUp,
    /// Its data directory.
    pub dir: DataDir,
    /// The password of role `lakebed` on `main`.
    pub password: String,
}

impl PoolStack {
    /// Starts `lakebed up` with `env` and a zero auth cache TTL (so a pool mode changed
    /// with the CLI applies to the next client at once).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = DataDir::new();
        let mut all = vec![("LAKEBED_PROXY__AUTH_CACHE_TTL", "0s")];
        all.extend_from_slice(env);
        let up = LakebedUp::start_with(&dir, &all).await;
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

    /// tokio-postgres settings for the proxy as role `lakebed`, database `db`, endpoint
    /// `main` (the proxy's default).
    pub fn config(&self, db: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(self.proxy().ip().to_string())
            .port(self.proxy().port())
            .user(ROLE)
            .password(&self.password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(30));
        cfg
    }

    /// A client of database `postgres`.
    pub async fn client(&self) -> Client {
        self.watched(&self.config("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect through the proxy: {e:?}"))
            .client
    }

    /// A client of database `template1`: a pool of its own, so it can watch
    /// `pg_stat_activity` while the pool of `postgres` is busy.
    pub async fn observer(&self) -> Client {
        self.watched(&self.config("template1"))
            .await
            .unwrap_or_else(|e| panic!("connect the observer: {e:?}"))
            .client
    }

    /// Connects with `cfg` (no TLS), keeping the connection task's outcome.
    pub async fn watched(&self, cfg: &Config) -> Result<Watched, tokio_postgres::Error> {
        connect_watched(cfg).await
    }

    /// `lakebed pools --json`.
    pub async fn pools(&self) -> Vec<Value> {
        let v = lakebed(&self.dir, &["pools", "--json"]).await.json();
        v.as_array()
            .unwrap_or_else(|| panic!("pools is not a list: {v:#}"))
            .clone()
    }

    /// The pool of role `lakebed` on `main` for database `db`, if there is one.
    pub async fn pool(&self, db: &str) -> Option<Value> {
        self.pools().await.into_iter().find(|p| {
            p["endpoint"] == "main" && p["role"] == ROLE && p["database"].as_str() == Some(db)
        })
    }

    /// The compute's state and the endpoint's boot count, from `endpoint show main`.
    pub async fn state_and_boots(&self) -> (String, u64) {
        let ep = lakebed(&self.dir, &["endpoint", "show", "main", "--json"])
            .await
            .json();
        let state = ep["compute"]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no compute.state: {ep:#}"))
            .to_owned();
        let boots = ep["boots"]
            .as_u64()
            .unwrap_or_else(|| panic!("no boots: {ep:#}"));
        (state, boots)
    }
}

/// A client and its connection task, whose result says how the connection ended.
pub struct Watched {
    /// The client.
    pub client: Client,
    /// The connection task: `Err` carries the server's FATAL error, if one ended it.
    pub ended: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Watched {
    /// Waits (at most [`DEADLINE`]) for the server to end the connection; its error.
    pub async fn closed_by_server(self, what: &str) -> tokio_postgres::Error {
        let ended = timeout(DEADLINE, self.ended)
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

/// The message of a server error.
pub fn message_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .message()
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
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    let polled = timeout(DEADLINE, async {
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
        Err(_) => panic!("{what}: not within {DEADLINE:?}; last seen: {last}"),
    }
}

/// Backends of the compute in state `idle in transaction` (or `... (aborted)`), as seen
/// by `observer`.
pub async fn idle_in_transaction(observer: &Client) -> i64 {
    value(
        observer,
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    )
    .await
    .parse()
    .expect("a count")
}

// ---- A raw extended-protocol client (PostgreSQL docs §55.2.3, §55.7) ----

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

/// `Parse` of statement `name` (no parameter types given).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &b)
}

/// `Bind` of statement `name` to the unnamed portal, with text parameters, text results.
pub fn bind(name: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, name);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &b)
}

/// `Describe` of statement `name`.
pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    message(b'D', &b)
}

/// `Execute` of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    b.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &b)
}

/// `Close` of statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    message(b'C', &b)
}

/// `Sync`.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// A simple `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    message(b'Q', &b)
}

/// What the server answered up to a `ReadyForQuery`.
#[derive(Debug, Default)]
pub struct Answers {
    /// The tags of the messages, in order (`1` ParseComplete, `2` BindComplete, `D` rows...).
    pub tags: String,
    /// The first column of each `DataRow`, as text.
    pub values: Vec<String>,
    /// The SQLSTATE of each `ErrorResponse`.
    pub errors: Vec<String>,
    /// The transaction status of the `ReadyForQuery`.
    pub status: char,
}

/// A client speaking the wire protocol itself, logged in with SCRAM-SHA-256.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to the proxy at `addr` as `user` to database `postgres` and logs in; panics
    /// if the login fails.
    pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> Self {
        let mut stream = tcp(addr).await;
        let params = [
            ("user", user),
            ("database", "postgres"),
            ("application_name", "raw"),
        ];
        send(&mut stream, &startup_packet(version(3, 0), Some(&params))).await;
        let mechanisms = sasl_mechanisms(&read_message(&mut stream).await);
        assert!(
            mechanisms.iter().any(|m| m == "SCRAM-SHA-256"),
            "{mechanisms:?}"
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
        let mut client = Self { stream };
        let welcome = client.until_ready().await;
        assert!(welcome.errors.is_empty(), "login: {welcome:?}");
        client
    }

    /// Sends `messages` in one write.
    pub async fn send(&mut self, messages: &[Vec<u8>]) {
        send(&mut self.stream, &messages.concat()).await;
    }

    /// Reads messages up to and including the next `ReadyForQuery`.
    pub async fn until_ready(&mut self) -> Answers {
        let mut answers = Answers::default();
        loop {
            match read_message(&mut self.stream).await {
                Reply::Message(tag, body) => {
                    answers.tags.push(tag as char);
                    match tag {
                        b'D' => answers.values.push(first_column(&body)),
                        b'E' => answers
                            .errors
                            .push(error_field(&body, b'C').unwrap_or_default()),
                        b'Z' => {
                            answers.status = body[0] as char;
                            return answers;
                        }
                        _ => {}
                    }
                }
                Reply::Closed => panic!("the proxy closed the connection; so far: {answers:?}"),
            }
        }
    }

    /// Sends `messages` (ending with `Sync` or a `Query`) and reads the answers.
    pub async fn round(&mut self, messages: &[Vec<u8>]) -> Answers {
        self.send(messages).await;
        self.until_ready().await
    }
}

/// The data of an `Authentication` message of type `kind`.
fn auth_data(reply: Reply, kind: u32) -> Vec<u8> {
    match reply {
        Reply::Message(b'R', body) if body[..4] == kind.to_be_bytes() => body[4..].to_vec(),
        other => panic!("expected Authentication type {kind}, got {other:?}"),
    }
}

/// The first column of a `DataRow` as text (`NULL` for null).
fn first_column(body: &[u8]) -> String {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    if len < 0 {
        return "NULL".to_owned();
    }
    String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
}
