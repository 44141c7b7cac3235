//! Byte streams (plain or TLS) and a framed message reader/writer on top of them.
//!
//! [`PqStream`] is not `AsyncRead`/`AsyncWrite` itself, so during the startup phase nobody
//! can slip raw bytes past the framing; [`PqStream::into_parts`] hands over the stream and
//! whatever was read ahead when the relay begins.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream, plain or under TLS (either side of the handshake).
pub enum Stream {
    /// No TLS.
    Plain(TcpStream),
    /// TLS, the proxy as server (client connections).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, the proxy as client (connections to computes).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
            Self::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
            Self::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::ServerTls(s) => Pin::new(s).poll_flush(cx),
            Self::ClientTls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
            Self::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What went wrong reading a message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Eof,
    /// The length word is below 4 or above the limit for this phase.
    #[error("message length {0} out of bounds")]
    BadLength(u64),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A Postgres message stream: reads whole messages, buffers writes until [`Self::flush`].
pub struct PqStream<S> {
    io: S,
    read: BytesMut,
    write: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PqStream<S> {
    /// Wraps `io` with empty buffers.
    pub fn new(io: S) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(1024),
            write: Vec::with_capacity(1024),
        }
    }

    /// Whether bytes beyond the last message have been read (a client must not pipeline
    /// past `SSLRequest`).
    pub fn has_buffered_input(&self) -> bool {
        !self.read.is_empty()
    }

    async fn fill_to(&mut self, n: usize) -> Result<(), ReadError> {
        while self.read.len() < n {
            self.read.reserve(n - self.read.len());
            if self.io.read_buf(&mut self.read).await? == 0 {
                return Err(ReadError::Eof);
            }
        }
        Ok(())
    }

    /// Reads an untyped startup packet and returns its body (after the length word).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a partial packet stays in the buffer, but callers drop the stream.
    pub async fn read_startup(&mut self) -> Result<Bytes, ReadError> {
        self.fill_to(4).await?;
        let len = u32::from_be_bytes([self.read[0], self.read[1], self.read[2], self.read[3]]);
        let len =
            crate::pqproto::startup_length(len).map_err(|_| ReadError::BadLength(len.into()))?;
        self.fill_to(len).await?;
        let mut packet = self.read.split_to(len);
        packet.advance(4);
        Ok(packet.freeze())
    }

    /// Reads one typed message (tag, body) whose length word is at most `max_len`.
    pub async fn read_message(&mut self, max_len: usize) -> Result<(u8, Bytes), ReadError> {
        loop {
            match take_frame(&mut self.read, max_len) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {
                    if self.io.read_buf(&mut self.read).await? == 0 {
                        return Err(ReadError::Eof);
                    }
                }
                Err(BadLength(len)) => return Err(ReadError::BadLength(len as u64)),
            }
        }
    }

    /// The write buffer, for the builders in [`crate::pqproto`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.write
    }

    /// Writes raw bytes (e.g. a message relayed as received).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.write.extend_from_slice(bytes);
    }

    /// Sends everything buffered.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.write.is_empty() {
            self.io.write_all(&self.write).await?;
            self.write.clear();
        }
        self.io.flush().await
    }

    /// The stream and the bytes read ahead of the last message.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.read)
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

/// A length word out of bounds: the peer does not speak the protocol.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("message length {0} out of bounds")]
pub struct BadLength(pub usize);

/// Takes one whole message (tag, body) off the front of `buf`, if one is there.
///
/// # Errors
///
/// [`BadLength`] if the length word is below 4 or above `max`.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, bytes::Bytes)>, BadLength> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=max).contains(&len) {
        return Err(BadLength(len));
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let mut msg = buf.split_to(1 + len);
    let tag = msg[0];
    let _ = msg.split_to(5);
    Ok(Some((tag, msg.freeze())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn frames_are_taken_whole_and_bad_lengths_refused() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05IC\0\0"[..]);
        assert_eq!(
            take_frame(&mut buf, 100).unwrap(),
            Some((b'Z', bytes::Bytes::from_static(b"I")))
        );
        assert_eq!(
            take_frame(&mut buf, 100).unwrap(),
            None,
            "partial message stays"
        );
        assert_eq!(&buf[..], b"C\0\0");
        let mut bad = BytesMut::from(&b"Z\0\0\0\x02"[..]);
        assert_eq!(take_frame(&mut bad, 100), Err(BadLength(2)));
        let mut big = BytesMut::from(&b"D\x7f\xff\xff\xff"[..]);
        assert!(take_frame(&mut big, 100).is_err());
    }
}
