//! One pooled client, from its first `ReadyForQuery` to its last byte.
//!
//! The loop reads client messages, lends a server connection at the first message when
//! it holds none, translates messages through [`Exchange`], and relays answers back. In
//! transaction pooling the connection goes back to the pool as soon as the exchange is idle
//! (every answer in, `ReadyForQuery` with status `I`, no COPY, no open extended cycle); in
//! session pooling at the end of the session, after `DISCARD ALL`.
//!
//! Reads and writes on both sides are multiplexed in one `select!`, with bounded output
//! buffers: when one side is slow, the proxy stops reading from the other (backpressure)
//! instead of buffering without bound, and pipelines cannot deadlock.
//!
//! If a lent connection dies before any answer reached the client (a compute that was
//! suspended between checkout and use), the client's messages are replayed once on a new
//! connection, which wakes the compute again. A client that leaves mid-transaction has the
//! transaction rolled back before the connection serves anyone else; one that leaves while
//! answers are still due has its connection closed instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use lakebed_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::protocol::{ClientStatements, Exchange, Message};
use super::server::{MAX_SERVER_MESSAGE, take_frame};
use super::state::{Change, SessionState, change_of, query_text};
use super::{Lent, Pool};
use crate::cancel::CancelGuard;
use crate::error::ProxyError;
use crate::pqproto::put_message;
use crate::stream::Stream;

/// Longest client message accepted after startup (PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
const MAX_CLIENT_MESSAGE: usize = 0x3fff_ffff;
/// Stop reading one side when this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Client messages kept for a replay on a fresh connection, at most.
const MAX_REPLAY: usize = 1 << 20;

/// A server connection lent to this client.
struct Attached {
    conn: Lent,
    ex: Exchange,
    /// The client messages sent on it, while a replay is still possible.
    replay: Option<(Vec<Message>, usize)>,
    /// When the oldest answer now due was asked for (for `query_timeout`).
    waiting_since: Option<Instant>,
    cancel_sent: bool,
}

/// What woke the loop.
enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Timer,
}

/// A pooled client's state.
pub struct PooledClient {
    pool: Arc<Pool>,
    state: SessionState,
    statements: ClientStatements,
    cancel: CancelGuard,
    /// `SET`s sent and not yet confirmed by their `CommandComplete`.
    pending_changes: VecDeque<Change>,
}

impl PooledClient {
    /// A client of `pool` with session settings `state`, whose cancel key is `cancel`.
    pub fn new(pool: Arc<Pool>, state: SessionState, cancel: CancelGuard) -> Self {
        Self {
            pool,
            state,
            statements: ClientStatements::default(),
            cancel,
            pending_changes: VecDeque::new(),
        }
    }

    /// Lends a connection, queueing the session-state query first if it needs one.
    async fn lend(&mut self, to_server: &mut Vec<u8>) -> Result<Attached, ProxyError> {
        let mut conn = self.pool.acquire().await?;
        let mut ex = Exchange::new(self.pool.mode == PoolMode::Session);
        let wanted = self.state.fingerprint();
        if conn.applied != wanted {
            put_message(to_server, b'Q', |b| {
                b.extend_from_slice(self.state.apply_sql().as_bytes());
                b.push(0);
            });
            ex.expect_reset();
            conn.applied = wanted;
        }
        self.cancel.retarget(Some((conn.addr, conn.key)));
        self.pool.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(Attached {
            conn,
            ex,
            replay: Some((Vec::new(), 0)),
            waiting_since: None,
            cancel_sent: false,
        })
    }

    /// Gives a connection back (dropping it returns it to the pool, or closes it if broken).
    fn release(&mut self, attached: Attached) {
        self.cancel.retarget(None);
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        drop(attached);
    }

    /// Leaves a connection clean for the next client, or marks it broken.
    async fn clean_up(&mut self, mut attached: Attached) {
        let conn = &mut attached.conn;
        let in_transaction = matches!(attached.ex.status, Some(b'T') | Some(b'E'));
        // Answers still due: the state can't be known, so the connection is closed. An
        // open transaction is rolled back.
        if attached.ex.is_waiting() && !conn.broken {
            // The client left while a query runs: stop it now (its locks go with it)
            // rather than when it next tries to send a row.
            crate::cancel::send_cancel(conn.addr, conn.key).await;
        }
        conn.broken = conn.broken
            || attached.ex.is_mid_exchange()
            || !conn.buf.is_empty()
            || (in_transaction && conn.run_quietly("ROLLBACK").await != Some(b'I'));
        if self.pool.mode == PoolMode::Session && !conn.broken {
            if conn.run_quietly("DISCARD ALL").await == Some(b'I') {
                conn.statements.clear();
                conn.applied = SessionState::empty_fingerprint();
            } else {
                conn.broken = true;
            }
        }
        self.release(attached);
    }

    /// Runs the client until it leaves. `attached` is the connection it holds already
    /// (session pooling) or `None`.
    ///
    /// # Errors
    ///
    /// An error to report to the client (timeouts, a compute that went away mid-answer).
    pub async fn run(
        mut self,
        client: Stream,
        mut cbuf: BytesMut,
        mut attached: Option<Lent>,
    ) -> Result<(), ProxyError> {
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut attached: Option<Attached> = match attached.take() {
            Some(conn) => {
                self.cancel.retarget(Some((conn.addr, conn.key)));
                self.pool.stats.active.fetch_add(1, Ordering::Relaxed);
                Some(Attached {
                    conn,
                    ex: Exchange::new(true),
                    replay: None,
                    waiting_since: None,
                    cancel_sent: false,
                })
            }
            None => None,
        };
        let mut to_client: Vec<u8> = Vec::new();
        let mut to_server: Vec<u8> = Vec::new();
        let mut last_client = Instant::now();
        let timeouts = self.pool.timeouts;

        let result = loop {
            // Client messages, while the server side keeps up.
            if to_server.len() < HIGH_WATER {
                match self
                    .take_client_messages(&mut cbuf, &mut attached, &mut to_server, &mut to_client)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            if let Some(a) = &attached
                && self.pool.mode == PoolMode::Transaction
                && a.ex.is_idle()
                && to_server.is_empty()
                && a.conn.buf.is_empty()
                && let Some(a) = attached.take()
            {
                self.release(a);
            }

            let deadline = next_deadline(&timeouts, &attached, last_client);
            let event = tokio::select! {
                r = crd.read_buf(&mut cbuf), if to_server.len() < HIGH_WATER => Event::ClientRead(r),
                r = cwr.write(&to_client), if !to_client.is_empty() => Event::ClientWrote(r),
                e = server_io(&mut attached, &to_server, to_client.len() < HIGH_WATER) => e,
                _ = sleep_until(deadline) => Event::Timer,
            };
            match event {
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => break Ok(()),
                Event::ClientRead(Ok(_)) => last_client = Instant::now(),
                Event::ClientWrote(Ok(n)) => {
                    to_client.drain(..n);
                }
                Event::ClientWrote(Err(_)) => break Ok(()),
                Event::ServerWrote(Ok(n)) => {
                    self.pool
                        .stats
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    to_server.drain(..n);
                }
                Event::ServerRead(Ok(n)) if n > 0 => {
                    if let Some(a) = attached.as_mut()
                        && let Err(e) = self.take_server_messages(a, &mut to_client)
                    {
                        break Err(e);
                    }
                }
                Event::ServerRead(_) | Event::ServerWrote(_)
                    if attached.as_ref().is_some_and(|a| a.ex.fatal) =>
                {
                    // The compute ended the session with a FATAL the client has already
                    // received (an administrator shutdown, a protocol error): end here too.
                    if let Some(mut a) = attached.take() {
                        a.conn.broken = true;
                        self.release(a);
                    }
                    break Ok(());
                }
                Event::ServerRead(_) | Event::ServerWrote(_) => {
                    // The server connection failed.
                    if let Some(a) = attached.take() {
                        match self.replay(a, &mut to_server).await {
                            Ok(fresh) => attached = Some(fresh),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Event::Timer => {
                    if let Err(e) = self.on_timer(&timeouts, &mut attached, last_client).await {
                        break Err(e);
                    }
                }
            }
        };

        // Deliver what the client is owed, then leave the connection clean.
        if !to_client.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), cwr.write_all(&to_client)).await;
        }
        if let Some(a) = attached.take() {
            self.clean_up(a).await;
        }
        if let Err(e) = &result
            && let Some(out) = e.to_wire()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), cwr.write_all(&out)).await;
        }
        result
    }

    /// Processes the whole client messages in `cbuf`. Returns `false` at `Terminate`.
    async fn take_client_messages(
        &mut self,
        cbuf: &mut BytesMut,
        attached: &mut Option<Attached>,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<bool, ProxyError> {
        loop {
            let Some((tag, body)) = take_frame(cbuf, MAX_CLIENT_MESSAGE)
                .map_err(|e| ProxyError::Protocol(e.to_string().into()))?
            else {
                return Ok(true);
            };
            // What a client may send after startup (PostgreSQL docs §55.7); anything else
            // ends the session as Postgres ends it, whether or not a server is lent.
            if !b"BCdcfDEHFPQSX".contains(&tag) {
                return Err(ProxyError::Protocol(
                    format!("invalid frontend message type {tag}").into(),
                ));
            }
            let msg = Message { tag, body };
            if attached.is_none() {
                if tag == b'X' {
                    return Ok(false);
                }
                *attached = Some(self.lend(to_server).await?);
            }
            let Some(a) = attached.as_mut() else {
                return Ok(true);
            };
            if let Some((msgs, size)) = &mut a.replay {
                *size += msg.body.len() + 5;
                if *size > MAX_REPLAY || a.ex.answered {
                    a.replay = None;
                } else {
                    msgs.push(msg.clone());
                }
            }
            if let Some(change) = query_text(&msg).and_then(change_of) {
                self.pending_changes.push_back(change);
            }
            let go_on =
                a.ex.client_message(
                    &msg,
                    &mut self.statements,
                    &mut a.conn.statements,
                    to_server,
                )
                .map_err(|e| ProxyError::Protocol(e.to_string().into()))?;
            if !go_on {
                return Ok(false);
            }
            if a.waiting_since.is_none() && a.ex.is_waiting() {
                a.waiting_since = Some(Instant::now());
                a.cancel_sent = false;
            }
            a.ex.flush_made(to_client);
            if to_server.len() >= HIGH_WATER {
                return Ok(true);
            }
        }
    }

    /// Processes the whole server messages read so far.
    fn take_server_messages(
        &mut self,
        a: &mut Attached,
        to_client: &mut Vec<u8>,
    ) -> Result<(), ProxyError> {
        let conn = &mut *a.conn;
        while let Some((tag, body)) =
            take_frame(&mut conn.buf, MAX_SERVER_MESSAGE).map_err(|e| {
                conn.broken = true;
                ProxyError::ComputeLost {
                    endpoint: self.pool.key.endpoint.to_string(),
                    detail: e.to_string(),
                }
            })?
        {
            let before = to_client.len();
            a.ex.server_message(tag, &body, &mut conn.statements, to_client);
            self.pool
                .stats
                .bytes_out
                .fetch_add((to_client.len() - before) as u64, Ordering::Relaxed);
            match tag {
                b'C' if body.starts_with(b"SET\0") || body.starts_with(b"RESET\0") => {
                    if let Some(change) = self.pending_changes.pop_front() {
                        self.state.apply(change);
                        conn.applied = self.state.fingerprint();
                    }
                }
                b'Z' => {
                    self.pending_changes.clear();
                    if body.first() == Some(&b'I') {
                        self.pool.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
            a.waiting_since = if a.ex.is_waiting() {
                a.waiting_since.or(Some(Instant::now()))
            } else {
                None
            };
        }
        Ok(())
    }

    /// The lent connection failed: replay on a new one if no answer reached the client yet.
    async fn replay(
        &mut self,
        mut dead: Attached,
        to_server: &mut Vec<u8>,
    ) -> Result<Attached, ProxyError> {
        dead.conn.broken = true;
        let messages = match (&dead.replay, dead.ex.answered) {
            (Some((msgs, _)), false) => msgs.clone(),
            _ => {
                let endpoint = self.pool.key.endpoint.to_string();
                self.release(dead);
                return Err(ProxyError::ComputeLost {
                    endpoint,
                    detail: "the compute closed the connection".into(),
                });
            }
        };
        self.release(dead);
        to_server.clear();
        let mut fresh = self.lend(to_server).await?;
        for msg in &messages {
            fresh
                .ex
                .client_message(
                    msg,
                    &mut self.statements,
                    &mut fresh.conn.statements,
                    to_server,
                )
                .map_err(|e| ProxyError::Protocol(e.to_string().into()))?;
        }
        fresh.replay = None;
        tracing::info!(endpoint = %self.pool.key.endpoint, "server connection lost before any answer; replayed on a new one");
        Ok(fresh)
    }

    async fn on_timer(
        &mut self,
        t: &super::ClientTimeouts,
        attached: &mut Option<Attached>,
        last_client: Instant,
    ) -> Result<(), ProxyError> {
        let now = Instant::now();
        match attached {
            None => {
                if t.client_idle.is_some_and(|d| now >= last_client + d) {
                    return Err(ProxyError::ClientIdleTimeout);
                }
            }
            Some(a) => {
                if let (Some(d), Some(since)) = (t.query, a.waiting_since)
                    && now >= since + d
                    && !a.cancel_sent
                {
                    a.cancel_sent = true;
                    crate::cancel::send_cancel(a.conn.addr, a.conn.key).await;
                } else if t.idle_transaction.is_some_and(|d| now >= last_client + d)
                    && !a.ex.is_waiting()
                    && matches!(a.ex.status, Some(b'T') | Some(b'E'))
                {
                    return Err(ProxyError::IdleInTransactionTimeout);
                }
            }
        }
        Ok(())
    }
}

/// Reads from or writes to the lent connection; never completes without one.
async fn server_io(attached: &mut Option<Attached>, to_server: &[u8], may_read: bool) -> Event {
    let Some(a) = attached.as_mut() else {
        return std::future::pending().await;
    };
    let conn = &mut *a.conn;
    let (rd, wr, buf): (&mut ReadHalf<Stream>, &mut WriteHalf<Stream>, &mut BytesMut) =
        (&mut conn.rd, &mut conn.wr, &mut conn.buf);
    tokio::select! {
        r = rd.read_buf(buf), if may_read => Event::ServerRead(r),
        r = wr.write(to_server), if !to_server.is_empty() => Event::ServerWrote(r),
        else => std::future::pending().await,
    }
}

/// When the next timeout could fire, if any applies now.
fn next_deadline(
    t: &super::ClientTimeouts,
    attached: &Option<Attached>,
    last_client: Instant,
) -> Option<Instant> {
    match attached {
        None => t.client_idle.map(|d| last_client + d),
        Some(a) => {
            let query = match (t.query, a.waiting_since) {
                (Some(d), Some(since)) if !a.cancel_sent => Some(since + d),
                _ => None,
            };
            let idle_tx = t
                .idle_transaction
                .filter(|_| matches!(a.ex.status, Some(b'T') | Some(b'E')) && !a.ex.is_waiting())
                .map(|d| last_client + d);
            [query, idle_tx].into_iter().flatten().min()
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
