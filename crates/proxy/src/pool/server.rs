//! Server connections as the pool holds them, and the bb8 manager that opens them.
//!
//! A pooled connection logs in with the SCRAM `ClientKey` of the client that created the
//! pool (every client of a pool authenticated as the same role against the same verifier,
//! so their keys are equal). Its `application_name` is `lakebed-pool`, which the compute
//! manager's autosuspend monitor uses to ignore idle pooled connections: an endpoint whose
//! clients are all idle in transaction pooling can be suspended.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use lakebed_config::{EndpointName, RoleName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::{Instrument, Span};

use crate::control::ControlPlane;
use crate::error::ProxyError;
use crate::pool::protocol::ServerStatements;
use crate::pool::state::SessionState;
use crate::pqproto::{CancelKey, StartupParams};
use crate::scram::{ClientKey, ScramSecret};
use crate::stream::Stream;

/// The `application_name` of pooled server connections (see the module docs).
pub const POOL_APPLICATION_NAME: &str = "lakebed-pool";

/// How often a connection waiting for a place in its endpoint's budget looks for an idle
/// connection of another pool to close.
const IDLE_RECHECK: Duration = Duration::from_millis(50);

/// One server connection in a pool.
pub struct ServerConn {
    /// Read half of the connection.
    pub rd: ReadHalf<Stream>,
    /// Write half.
    pub wr: WriteHalf<Stream>,
    /// Bytes read and not yet processed.
    pub buf: BytesMut,
    /// Statements prepared on it.
    pub statements: ServerStatements,
    /// Fingerprint of the session state applied to it.
    pub applied: u64,
    /// The `ParameterStatus` messages of its startup, raw.
    pub startup_params: Vec<u8>,
    /// Its own cancel key.
    pub key: CancelKey,
    /// Where it is.
    pub addr: SocketAddr,
    /// Set when it failed or its state is unknown; bb8 then drops it instead of reusing it.
    pub broken: bool,
    /// Its place in the endpoint's connection budget, given back when it closes.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// The spans of the clients waiting for a connection of one pool, oldest first.
///
/// bb8 opens connections in a task of its own, outside any client's span. So that a cold
/// start's `wake` and `connect_compute` spans belong to the trace of the client that waited
/// for them, [`ServerManager::connect`] runs in the span of the oldest waiting client it
/// [claims](Self::claim); a connection opened for no one (`min_idle`) has no parent.
#[derive(Debug, Default)]
pub(crate) struct Requesters {
    next: AtomicU64,
    waiting: Mutex<BTreeMap<u64, Span>>,
}

impl Requesters {
    /// Notes the current span as waiting until the guard is dropped. `None` (and no lock)
    /// when the current span is disabled.
    pub(crate) fn wait(&self) -> Option<Requester<'_>> {
        let span = Span::current();
        if span.is_disabled() {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, span);
        Some(Requester { of: self, id })
    }

    /// Takes the span of the oldest waiting client, so that concurrent connects claim
    /// different clients.
    fn claim(&self) -> Option<Span> {
        self.lock().pop_first().map(|(_, span)| span)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Span>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client waiting in [`Requesters`]; leaves when dropped.
pub(crate) struct Requester<'a> {
    of: &'a Requesters,
    id: u64,
}

impl Drop for Requester<'_> {
    fn drop(&mut self) {
        self.of.lock().remove(&self.id);
    }
}

/// Opens server connections for one pool (endpoint, role, database).
pub struct ServerManager {
    pub(crate) control: Arc<ControlPlane>,
    pub(crate) compute_tls: Option<Arc<ClientConfig>>,
    pub(crate) wake_timeout: Duration,
    pub(crate) endpoint: EndpointName,
    pub(crate) role: RoleName,
    pub(crate) database: Option<String>,
    pub(crate) key: ClientKey,
    pub(crate) secret: Arc<ScramSecret>,
    /// The endpoint's connection budget (`max_endpoint_connections`), shared by its pools.
    pub(crate) budget: Arc<tokio::sync::Semaphore>,
    /// Every pool, to close an idle connection of another pool when the budget is spent.
    pub(crate) pools: std::sync::Weak<super::Pools>,
    /// How long to wait for a place in the budget.
    pub(crate) acquire_timeout: Duration,
    /// The clients waiting for a connection, whose spans connects run in.
    pub(crate) requesters: Arc<Requesters>,
}

impl ServerManager {
    /// Opens one connection: a place in the budget, then wake and connect.
    async fn open(&self) -> Result<ServerConn, ProxyError> {
        let budget = self.budget_permit().await?;
        let mut params = StartupParams::default();
        params.set("user", self.role.to_string());
        if let Some(db) = &self.database {
            params.set("database", db.clone());
        }
        params.set("application_name", POOL_APPLICATION_NAME.to_owned());
        let login = crate::session::Login {
            endpoint: &self.endpoint,
            role: &self.role,
            key: &self.key,
            secret: &self.secret,
        };
        let (addr, conn) = crate::session::connect_with_wake(
            &self.control,
            self.compute_tls.as_ref(),
            self.wake_timeout,
            &login,
            &params,
        )
        .await?;
        let (stream, buf) = conn.stream.into_parts();
        let (rd, wr) = tokio::io::split(stream);
        Ok(ServerConn {
            rd,
            wr,
            buf,
            statements: ServerStatements::default(),
            applied: SessionState::empty_fingerprint(),
            startup_params: conn.startup,
            key: conn.key,
            addr,
            broken: false,
            _budget: budget,
        })
    }

    /// A place in the endpoint's budget: at once if free; else after closing an idle
    /// connection of another pool of the endpoint; else when one is given back.
    ///
    /// While it waits, it looks for idle connections of other pools again every
    /// [`IDLE_RECHECK`]: a connection that goes back idle to its pool (its client left)
    /// keeps its place in the budget, so waiting only for one to be given back would wait
    /// out the acquire timeout while the budget sits idle in another pool.
    async fn budget_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = self.budget.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let timed_out = || ProxyError::PoolTimeout {
            waited: self.acquire_timeout,
            limit: "max_endpoint_connections".into(),
        };
        // One acquire for the whole wait, so that this client keeps its place in the queue.
        let mut acquire = std::pin::pin!(self.budget.clone().acquire_owned());
        let mut deadline = std::pin::pin!(tokio::time::sleep(self.acquire_timeout));
        // Its first tick is at once.
        let mut recheck = tokio::time::interval(IDLE_RECHECK);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit.map_err(|_| timed_out()),
                _ = &mut deadline => return Err(timed_out()),
                _ = recheck.tick() => {
                    if let Some(pools) = self.pools.upgrade() {
                        pools.close_one_idle(
                            &self.endpoint,
                            self.role.as_str(),
                            self.database.as_deref(),
                        );
                    }
                }
            }
        }
    }
}

impl bb8::ManageConnection for ServerManager {
    type Connection = ServerConn;
    type Error = ProxyError;

    async fn connect(&self) -> Result<ServerConn, ProxyError> {
        let span = self.requesters.claim().unwrap_or_else(Span::none);
        self.open().instrument(span).await
    }

    /// Cheap check at checkout: an idle connection must have nothing to say. If the socket
    /// is readable (a FATAL from a compute that shut down, or EOF) it is dead.
    ///
    /// The read is polled once, not raced against `timeout(Duration::ZERO)`: tokio's timer
    /// rounds deadlines up to the next millisecond tick, which cost every checkout (every
    /// transaction, in transaction pooling) up to a millisecond of waiting.
    async fn is_valid(&self, conn: &mut ServerConn) -> Result<(), ProxyError> {
        if conn.broken || !conn.buf.is_empty() {
            return Err(ProxyError::StaleConnection);
        }
        let mut read = std::pin::pin!(conn.rd.read_buf(&mut conn.buf));
        let polled = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        match polled {
            Poll::Pending => Ok(()), // nothing to read: alive and idle
            Poll::Ready(_) => {
                conn.broken = true;
                Err(ProxyError::StaleConnection)
            }
        }
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.broken
    }
}

impl ServerConn {
    /// Runs a simple query whose answers nobody needs (`ROLLBACK`, `DISCARD ALL`), up to its
    /// `ReadyForQuery`. Returns that status byte; marks the connection broken on failure.
    pub async fn run_quietly(&mut self, sql: &str) -> Option<u8> {
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let mut out = Vec::new();
            crate::pqproto::put_message(&mut out, b'Q', |b| {
                b.extend_from_slice(sql.as_bytes());
                b.push(0);
            });
            self.wr.write_all(&out).await.ok()?;
            loop {
                while let Some((tag, body)) = take_frame(&mut self.buf, MAX_SERVER_MESSAGE).ok()? {
                    if tag == b'Z' {
                        return body.first().copied();
                    }
                }
                if self.rd.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        if outcome.is_none() {
            self.broken = true;
        }
        outcome
    }
}

impl ServerConn {
    /// Applies a session state (`sql` from [`SessionState::apply_sql`]) and returns the
    /// parameters the server reported as changed.
    ///
    /// # Errors
    ///
    /// The server's first `ErrorResponse`, raw (the client's settings are invalid), or an
    /// empty message if the connection failed; either way the connection's applied state
    /// is unknown afterwards.
    pub async fn apply_state(&mut self, sql: &str) -> Result<Vec<(String, String)>, bytes::Bytes> {
        let mut out = Vec::new();
        crate::pqproto::put_message(&mut out, b'Q', |b| {
            b.extend_from_slice(sql.as_bytes());
            b.push(0);
        });
        let mut changed = Vec::new();
        let mut error = None;
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            self.wr.write_all(&out).await.ok()?;
            loop {
                while let Some((tag, body)) = take_frame(&mut self.buf, MAX_SERVER_MESSAGE).ok()? {
                    match tag {
                        b'S' => changed.extend(parameter_status(&body)),
                        b'E' if error.is_none() => {
                            let mut raw = Vec::with_capacity(body.len() + 5);
                            crate::pqproto::put_message(&mut raw, b'E', |b| {
                                b.extend_from_slice(&body)
                            });
                            error = Some(bytes::Bytes::from(raw));
                        }
                        b'Z' => return Some(()),
                        _ => {}
                    }
                }
                if self.rd.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        match (done, error) {
            (Some(()), None) => Ok(changed),
            (Some(()), Some(e)) => {
                self.applied = 0;
                Err(e)
            }
            (None, _) => {
                self.broken = true;
                Err(bytes::Bytes::new())
            }
        }
    }
}

/// The (name, value) of a `ParameterStatus` body.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = crate::pqproto::split_cstr(body)?;
    let (value, _) = crate::pqproto::split_cstr(rest)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Longest message accepted from a compute (PostgreSQL's own limit, `MaxAllocSize`).
pub const MAX_SERVER_MESSAGE: usize = 0x3fff_ffff;

pub use crate::stream::{BadLength, take_frame};
