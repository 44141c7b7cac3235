//! Connecting to a compute as the authenticated client: TLS with the proxy's client
//! certificate (when configured), a `StartupMessage` with the client's parameters, SCRAM
//! with the client's recovered `ClientKey`, then the compute's startup messages up to the
//! first `ReadyForQuery`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pqproto::{self, CancelKey, MAX_COMPUTE_STARTUP_MESSAGE_LENGTH, StartupParams, fe};
use crate::scram::client::ClientExchange;
use crate::scram::{ClientKey, ScramSecret};
use crate::stream::{PqStream, ReadError, Stream};

/// How long one connection attempt (TCP, TLS, startup, auth) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a connection to a compute failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP or TLS failed, or the compute is starting or stopping (57P03): worth a new
    /// wake and another try.
    #[error("{0}")]
    Retryable(String),
    /// The compute refused the client's key: the password changed since we cached it.
    #[error("the compute refused the client's SCRAM key")]
    StaleSecret,
    /// Postgres answered with an error (e.g. database does not exist): send it to the
    /// client as it is.
    #[error("postgres error")]
    Postgres(Bytes),
    /// Anything else (a compute that breaks protocol, bad TLS setup).
    #[error("{0}")]
    Fatal(String),
}

/// A compute connection that finished its startup.
pub struct ComputeConn {
    /// The framed stream, positioned after the first `ReadyForQuery`.
    pub stream: PqStream<Stream>,
    /// The compute's own cancel key.
    pub key: CancelKey,
    /// `ParameterStatus` and notice messages, raw, in order, to pass to the client.
    pub startup: Vec<u8>,
}

/// Connects and logs in; see the module docs.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    params: &StartupParams,
    key: &ClientKey,
    secret: &ScramSecret,
) -> Result<ComputeConn, ConnectError> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_inner(addr, tls, params, key, secret),
    )
    .await
    .unwrap_or_else(|_| Err(ConnectError::Retryable("timed out".into())))
}

async fn connect_inner(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    params: &StartupParams,
    key: &ClientKey,
    secret: &ScramSecret,
) -> Result<ComputeConn, ConnectError> {
    let retry = |e: std::io::Error| ConnectError::Retryable(e.to_string());
    let mut tcp = TcpStream::connect(addr).await.map_err(retry)?;
    tcp.set_nodelay(true).map_err(retry)?;
    let io = match tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            let mut req = Vec::with_capacity(8);
            fe::ssl_request(&mut req);
            tcp.write_all(&req).await.map_err(retry)?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(retry)?;
            if answer[0] != b'S' {
                return Err(ConnectError::Fatal(
                    "the compute does not accept TLS".into(),
                ));
            }
            let name = ServerName::IpAddress(addr.ip().into());
            let conn = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(retry)?;
            Stream::ClientTls(Box::new(conn))
        }
    };
    let mut stream = PqStream::new(io);
    fe::startup(stream.out(), params);
    stream.flush().await.map_err(retry)?;

    let mut exchange = None;
    let mut awaiting = None;
    let mut compute_key = None;
    let mut startup = Vec::new();
    loop {
        let (tag, body) = stream
            .read_message(MAX_COMPUTE_STARTUP_MESSAGE_LENGTH)
            .await
            .map_err(|e| match e {
                ReadError::BadLength(n) => {
                    ConnectError::Fatal(format!("compute sent a message of length {n}"))
                }
                other => ConnectError::Retryable(other.to_string()),
            })?;
        match tag {
            b'R' => {
                let (code, data) = body
                    .split_first_chunk::<4>()
                    .map(|(c, d)| (u32::from_be_bytes(*c), d))
                    .ok_or_else(|| ConnectError::Fatal("short authentication message".into()))?;
                match code {
                    0 => {}
                    10 => {
                        if !sasl_mechanisms(data).any(|m| m == b"SCRAM-SHA-256") {
                            return Err(ConnectError::Fatal(
                                "compute does not offer SCRAM-SHA-256".into(),
                            ));
                        }
                        let (ex, first) = ClientExchange::start();
                        fe::sasl_initial(stream.out(), "SCRAM-SHA-256", first.as_bytes());
                        stream.flush().await.map_err(retry)?;
                        exchange = Some(ex);
                    }
                    11 => {
                        let ex = exchange.take().ok_or_else(|| {
                            ConnectError::Fatal("SASL continue out of order".into())
                        })?;
                        let (next, fin) = ex
                            .finish(data, key, secret)
                            .map_err(|e| ConnectError::Fatal(e.to_string()))?;
                        fe::sasl_response(stream.out(), fin.as_bytes());
                        stream.flush().await.map_err(retry)?;
                        awaiting = Some(next);
                    }
                    12 => {
                        awaiting
                            .take()
                            .ok_or_else(|| ConnectError::Fatal("SASL final out of order".into()))?
                            .verify(data)
                            .map_err(|e| {
                                ConnectError::Fatal(format!("compute failed SCRAM: {e}"))
                            })?;
                    }
                    other => {
                        return Err(ConnectError::Fatal(format!(
                            "compute asked for authentication method {other}"
                        )));
                    }
                }
            }
            b'E' => {
                let fields = pqproto::error_fields(&body);
                let code = fields
                    .iter()
                    .find(|(k, _)| *k == b'C')
                    .map(|(_, v)| v.as_str());
                return Err(match code {
                    Some("28P01") => ConnectError::StaleSecret,
                    Some("57P03") => {
                        ConnectError::Retryable("compute is starting or stopping".into())
                    }
                    _ => ConnectError::Postgres(raw(tag, &body)),
                });
            }
            b'K' => {
                let (pid, rest) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| ConnectError::Fatal("short BackendKeyData".into()))?;
                let secret = rest
                    .first_chunk::<4>()
                    .ok_or_else(|| ConnectError::Fatal("short BackendKeyData".into()))?;
                compute_key = Some(CancelKey {
                    pid: i32::from_be_bytes(*pid),
                    secret: i32::from_be_bytes(*secret),
                });
            }
            b'S' | b'N' => startup.extend_from_slice(&raw(tag, &body)),
            b'Z' => {
                return Ok(ComputeConn {
                    stream,
                    key: compute_key
                        .ok_or_else(|| ConnectError::Fatal("no BackendKeyData".into()))?,
                    startup,
                });
            }
            other => {
                return Err(ConnectError::Fatal(format!(
                    "unexpected message '{}' during startup",
                    other.escape_ascii()
                )));
            }
        }
    }
}

fn sasl_mechanisms(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == 0).take_while(|m| !m.is_empty())
}

/// A message as it goes on the wire.
fn raw(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.into()
}
