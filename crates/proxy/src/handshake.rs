//! The startup phase up to the `StartupMessage`: `SSLRequest` (TLS after `S`),
//! `GSSENCRequest` (answered `N`), direct TLS with ALPN `postgresql` (PostgreSQL 17's
//! `sslnegotiation=direct`), and `CancelRequest` (PostgreSQL docs §55.2.10, §55.2.11).

use std::borrow::Cow;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::error::ProxyError;
use crate::pqproto::{self, CancelKey, StartupPacket, StartupParams};
use crate::stream::{PqStream, ReadError, Stream};
use crate::tls::{ALPN_POSTGRESQL, TlsServer};

/// The first byte of a TLS handshake record: a client starting TLS directly.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How the startup phase ended.
pub enum Handshake {
    /// A `StartupMessage`: go on to authentication.
    Startup {
        /// The client stream (TLS or not).
        stream: PqStream<Stream>,
        /// Requested protocol minor version.
        minor: u16,
        /// Startup parameters.
        params: StartupParams,
        /// The TLS server name the client sent, if any.
        server_name: Option<String>,
    },
    /// A `CancelRequest`: forward it and close.
    Cancel(CancelKey),
}

/// A failed startup phase: the error, and the stream if something can still be written.
pub struct Failed {
    /// Where to send the error, if anywhere.
    pub stream: Option<PqStream<Stream>>,
    /// What went wrong.
    pub error: ProxyError,
}

fn fail(stream: Option<PqStream<Stream>>, error: ProxyError) -> Failed {
    Failed { stream, error }
}

fn violation(what: &'static str) -> ProxyError {
    ProxyError::Protocol(Cow::Borrowed(what))
}

/// Runs the startup phase on a fresh TCP connection.
///
/// # Errors
///
/// [`Failed`], with the stream when an `ErrorResponse` can still be written.
pub async fn handshake(tcp: TcpStream, tls: Option<&TlsServer>) -> Result<Handshake, Failed> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => {
            return Err(fail(
                None,
                ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(fail(None, ProxyError::ClientIo(e))),
    }
    let mut stream = if first[0] == TLS_HANDSHAKE_RECORD {
        let Some(tls) = tls else {
            // A TLS client can't read a plain error; closing is all we can do.
            return Err(fail(
                None,
                violation("direct TLS but TLS is not configured"),
            ));
        };
        let stream = PqStream::new(accept(tcp, tls).await?);
        let alpn_ok = match stream.get_ref() {
            Stream::ServerTls(s) => s.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL),
            _ => false,
        };
        if !alpn_ok {
            return Err(fail(
                Some(stream),
                violation("direct TLS connections must use ALPN \"postgresql\""),
            ));
        }
        stream
    } else {
        PqStream::new(Stream::Plain(tcp))
    };

    let mut gss_answered = false;
    loop {
        let body = match stream.read_startup().await {
            Ok(b) => b,
            Err(ReadError::BadLength(_)) => {
                return Err(fail(
                    Some(stream),
                    violation("invalid length of startup packet"),
                ));
            }
            Err(ReadError::Eof) => {
                return Err(fail(
                    None,
                    ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
                ));
            }
            Err(ReadError::Io(e)) => return Err(fail(None, ProxyError::ClientIo(e))),
        };
        let packet = match pqproto::parse_startup(&body) {
            Ok(p) => p,
            Err(e) => return Err(fail(Some(stream), e)),
        };
        let tls_on = stream.get_ref().is_tls();
        match packet {
            StartupPacket::SslRequest if tls_on => {
                return Err(fail(Some(stream), violation("SSLRequest inside TLS")));
            }
            StartupPacket::SslRequest => {
                let Some(tls) = tls else {
                    stream.write_raw(b"N");
                    flush(&mut stream).await?;
                    continue;
                };
                // Bytes after SSLRequest would be plaintext injected before the handshake
                // (CVE-2021-23214): refuse, as Postgres does.
                if stream.has_buffered_input() {
                    return Err(fail(
                        Some(stream),
                        violation("received unencrypted data after SSL request"),
                    ));
                }
                stream.write_raw(b"S");
                flush(&mut stream).await?;
                let (io, _) = stream.into_parts();
                let Stream::Plain(tcp) = io else {
                    return Err(fail(None, violation("SSLRequest inside TLS")));
                };
                stream = PqStream::new(accept(tcp, tls).await?);
            }
            StartupPacket::GssEncRequest if tls_on || gss_answered => {
                return Err(fail(Some(stream), violation("unexpected GSSENCRequest")));
            }
            StartupPacket::GssEncRequest => {
                gss_answered = true;
                stream.write_raw(b"N");
                flush(&mut stream).await?;
            }
            StartupPacket::Cancel(key) => return Ok(Handshake::Cancel(key)),
            StartupPacket::Startup { minor, params } => {
                let server_name = match stream.get_ref() {
                    Stream::ServerTls(s) => s.get_ref().1.server_name().map(str::to_owned),
                    _ => None,
                };
                return Ok(Handshake::Startup {
                    stream,
                    minor,
                    params,
                    server_name,
                });
            }
        }
    }
}

async fn flush(stream: &mut PqStream<Stream>) -> Result<(), Failed> {
    stream
        .flush()
        .await
        .map_err(|e| fail(None, ProxyError::ClientIo(e)))
}

async fn accept(tcp: TcpStream, tls: &TlsServer) -> Result<Stream, Failed> {
    TlsAcceptor::from(tls.config.clone())
        .accept(tcp)
        .instrument(tracing::info_span!("tls"))
        .await
        .map(|s| Stream::ServerTls(Box::new(s)))
        .map_err(|e| fail(None, ProxyError::TlsHandshake(e)))
}
