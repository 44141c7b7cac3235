//! The PostgreSQL wire protocol spoken by hand (PostgreSQL docs §55.2, §55.7), for tests
//! that must see exactly what the proxy sends or send what no library would: startup
//! packets, message framing, `ErrorResponse` fields, and [`RawClient`], a client that logs
//! in with SCRAM-SHA-256 (from postgres-protocol) and then leaves every message to the test.
//!
//! Every read has a deadline ([`DEADLINE`]): a server that neither answers nor closes fails
//! the test instead of hanging it.

use std::net::SocketAddr;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::DEADLINE;

/// `SSLRequest`.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest`.
pub const GSSENC_REQUEST: u32 = 80_877_104;

/// Protocol version `major.minor` as sent in a `StartupMessage`.
pub fn version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// A startup packet: length, `code` (protocol version or request code), `params` as
/// NUL-terminated pairs and a final NUL (none of it when `params` is `None`).
pub fn startup_packet(code: u32, params: Option<&[(&str, &str)]>) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    if let Some(params) = params {
        for (k, v) in params {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// One wire message: `tag`, length, `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Appends `s` and a NUL to `out`.
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

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// One message: tag and body.
    Message(u8, Vec<u8>),
    /// The connection ended (EOF or reset) before a whole message.
    Closed,
}

/// Reads one typed message; [`Reply::Closed`] if the connection ends first. Panics if
/// nothing arrives within [`DEADLINE`] or the length field is absurd (under 4 or 1 MiB and
/// up).
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

/// Reads one byte (the answer to `SSLRequest` or `GSSENCRequest`); `None` at EOF. Panics if
/// nothing arrives within [`DEADLINE`].
pub async fn read_byte<S: AsyncRead + Unpin>(stream: &mut S) -> Option<u8> {
    let mut b = [0u8; 1];
    match timeout(DEADLINE, stream.read_exact(&mut b)).await {
        Ok(Ok(_)) => Some(b[0]),
        Ok(Err(_)) => None,
        Err(_) => panic!("no answer within {DEADLINE:?}"),
    }
}

/// Writes `bytes` and flushes (a write error means the server already closed: ignored, the
/// reply tells).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// The fields of an `ErrorResponse` body: (type, value). Panics on a field without its NUL.
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

/// The value of field `kind` of an `ErrorResponse` body, if present.
pub fn error_field(body: &[u8], kind: u8) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// Asserts that `reply` is a FATAL `ErrorResponse` with SQLSTATE `code` and that the server
/// then closes the connection; returns the message (empty if none). `what` names the case
/// in the panic messages.
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

/// The mechanisms of an `AuthenticationSASL` message; panics naming what came instead.
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

/// A plain TCP connection to `addr`; panics if it fails or takes over [`DEADLINE`].
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect to the proxy")
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
    /// The connection to the proxy, for tests that read or write it directly.
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects to the proxy at `addr` as `user` to database `postgres` (application name
    /// `raw`) and logs in, up to and including the first `ReadyForQuery`. Panics if the
    /// server does not offer SCRAM-SHA-256, the exchange fails, or the login ends in an
    /// error or a closed connection.
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

    /// Reads messages up to and including the next `ReadyForQuery`; panics if the
    /// connection closes first.
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

/// The data of an `Authentication` message of type `kind`; panics (with the error's fields,
/// if the server sent an `ErrorResponse`) on anything else.
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

/// The first column of a `DataRow` as text (`NULL` for null).
fn first_column(body: &[u8]) -> String {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    if len < 0 {
        return "NULL".to_owned();
    }
    String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
}
