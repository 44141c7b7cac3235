//! A typed async client for the page store's gRPC service.
//!
//! - **Connecting**: [`PageStoreClient::connect`] waits (with retries, up to
//!   [`ClientOptions::total_timeout`]) until the server accepts a connection;
//!   [`PageStoreClient::new`] connects lazily at the first call. The channel reconnects by
//!   itself after the server goes away.
//! - **Deadlines**: each attempt of a call gets [`ClientOptions::request_timeout`] (sent to the
//!   server as `grpc-timeout` too), and the whole call, retries included, at most
//!   [`ClientOptions::total_timeout`].
//! - **Retries**: only when the page store could not be reached or did not answer: status
//!   `UNAVAILABLE`, an attempt's deadline passing, or a transport failure (connection refused,
//!   reset, closed). Exponential backoff from [`ClientOptions::initial_backoff`], doubling up
//!   to [`ClientOptions::max_backoff`]. Errors the server decided (`FAILED_PRECONDITION`,
//!   `INVALID_ARGUMENT`, `NOT_FOUND`, ...) are returned at once. When the budget runs out the
//!   call fails with [`RpcError::Unavailable`].
//!
//! - **Tracing**: every request carries the W3C `traceparent` of the caller's current span
//!   ([`TraceContext`]), so the page store's span of the call joins the caller's trace.
//!
//! A retried call may have been applied by a server that died before answering. Every
//! operation is safe to repeat in effect (a write of the same puts and deletes leaves the same
//! contents, under one more seq; an acquire moves the generation once more, still to one this
//! caller holds), except that a repeated `create_timeline` can report
//! [`RpcError::AlreadyExists`] for a timeline that the first attempt created.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lakebed_pageserver_api::http2;
use lakebed_pageserver_api::limits::{MAX_BATCH_BYTES, MAX_MESSAGE_BYTES};
use lakebed_pageserver_api::proto::error_detail::Reason;
use lakebed_pageserver_api::proto::page_store_client::PageStoreClient as Stub;
use lakebed_pageserver_api::proto::{
    self, AcquireRequest, BranchPoint, CreateTimelineRequest, DeleteTimelineRequest,
    DescribeTimelineRequest, ErrorDetail, ReadRequest, ScanRequest, WriteRequest,
};
use lakebed_pageserver_api::{GcReport, GcTimeline, Generation, Seq, TimelineId};
use prost::Message;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// How to reach the page store and how patiently.
#[derive(Clone)]
pub struct ClientOptions {
    /// The server's URL: `http://HOST:PORT`, or `https://HOST:PORT` with [`Self::tls`].
    pub url: String,
    /// Longest wait for one TCP (and TLS) connection attempt. Default 2 s.
    pub connect_timeout: Duration,
    /// Deadline of one attempt of a call. Default 10 s.
    pub request_timeout: Duration,
    /// Longest time one call may take, retries included, before it fails with
    /// [`RpcError::Unavailable`]. Default 30 s.
    pub total_timeout: Duration,
    /// Wait before the first retry; doubled after each. Default 50 ms.
    pub initial_backoff: Duration,
    /// Longest wait between retries. Default 1 s.
    pub max_backoff: Duration,
    /// TLS settings; required for `https://` URLs.
    pub tls: Option<ClientTls>,
}

impl ClientOptions {
    /// Options for `url` with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            tls: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// TLS settings of the client, PEM-encoded.
#[derive(Clone)]
pub struct ClientTls {
    /// The CA that issued the server's certificate.
    pub ca_pem: Vec<u8>,
    /// The name to verify the server's certificate against; default: the URL's host.
    pub domain: Option<String>,
    /// Client certificate chain and key, for servers that require mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The write carried a generation older than the timeline's: another compute acquired
    /// the timeline. Nothing was changed.
    #[error("timeline {timeline}: stale generation {sent} < {current}")]
    StaleGeneration {
        /// The timeline.
        timeline: String,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// The write carried a generation that was never acquired. Nothing was changed.
    #[error("timeline {timeline}: generation {sent} was never acquired (current is {current})")]
    GenerationNotAcquired {
        /// The timeline.
        timeline: String,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// The timeline (or the parent of a new branch) does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message, naming the timeline.
        message: String,
    },
    /// `create_timeline` of an existing id.
    #[error("already exists: {message}")]
    AlreadyExists {
        /// The server's message.
        message: String,
    },
    /// The request broke a limit or was malformed; the message names the limit.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
    },
    /// Refused in the timeline's current state (e.g. deleting a timeline with branches).
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
    },
    /// A read, scan or branch point below the timeline's GC horizon: that history has been
    /// collected (or is outside `pageserver.history_retention`). Nothing was changed.
    #[error("{message}")]
    BelowHorizon {
        /// The timeline.
        timeline: String,
        /// The oldest seq the timeline can still be read or branched at.
        horizon: Seq,
        /// The server's message, naming the horizon.
        message: String,
    },
    /// The page store's disk is full: nothing was written. Retrying later succeeds once
    /// space returns.
    #[error("page store disk full: {message}")]
    DiskFull {
        /// The server's message.
        message: String,
    },
    /// The page store could not be reached, or did not answer, within
    /// [`ClientOptions::total_timeout`].
    #[error("page store unavailable after {after:?} ({attempts} attempts): {last}")]
    Unavailable {
        /// How long the call tried.
        after: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// Any other error status from the server (e.g. `INTERNAL` for a storage failure).
    #[error("page store error ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The options are unusable (bad URL, bad TLS material).
    #[error("page store client configuration: {0}")]
    Config(String),
    /// The server's answer does not fit the request (e.g. a value count that differs from the
    /// key count).
    #[error("unexpected answer from the page store: {0}")]
    Protocol(String),
}

/// A timeline's state, as [`PageStoreClient::describe_timeline`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineInfo {
    /// The current generation (0 until the first acquire).
    pub generation: Generation,
    /// The seq of the newest committed batch (for an unwritten branch: its branch point).
    pub last_seq: Seq,
    /// For a branch: the parent and the parent's seq it was branched at.
    pub parent: Option<(TimelineId, Seq)>,
    /// Reads and branches below this seq are refused (0: all history kept).
    pub gc_horizon: Seq,
}

/// A batch of puts and deletes for [`PageStoreClient::write`], applied atomically under one
/// seq. A key may appear only once in a batch.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    puts: Vec<proto::Put>,
    deletes: Vec<Bytes>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` (at most 1 MiB) under `key` (1 byte to 1 KiB).
    pub fn put(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.puts.push(proto::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete (tombstone) of `key`.
    pub fn delete(mut self, key: impl Into<Bytes>) -> Self {
        self.deletes.push(key.into());
        self
    }

    /// Key and value bytes in the batch (the server caps it at 64 MiB).
    pub fn size(&self) -> usize {
        self.puts
            .iter()
            .map(|p| p.key.len() + p.value.len())
            .sum::<usize>()
            + self.deletes.iter().map(Bytes::len).sum::<usize>()
    }
}

/// The result of a read: the seq it was served at and one value per key, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The seq read at.
    pub seq: Seq,
    /// Per key: its value, or `None` if absent at that seq.
    pub values: Vec<Option<Bytes>>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Keys in ascending byte order with their values.
    pub entries: Vec<(Bytes, Bytes)>,
    /// More keys may follow: scan again from the last key plus a `0` byte, at `seq`.
    pub more: bool,
    /// The seq scanned at.
    pub seq: Seq,
}

/// Adds the trace context of the current span to each request as `traceparent` (and
/// `tracestate`) metadata; adds nothing when traces are not exported.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        lakebed_telemetry::inject(&tracing::Span::current(), |key, value| {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        });
        Ok(request)
    }
}

/// The generated client over the channel, with [`TraceContext`].
type Rpc = Stub<InterceptedService<Channel, TraceContext>>;

/// A page store client. Cheap to clone (clones share one HTTP/2 connection).
#[derive(Debug, Clone)]
pub struct PageStoreClient {
    stub: Rpc,
    options: Arc<ClientOptions>,
    retries: Arc<AtomicU64>,
}

impl PageStoreClient {
    /// A client that connects at its first call (no I/O here).
    ///
    /// # Errors
    ///
    /// [`RpcError::Config`] for a malformed URL or TLS material.
    pub fn new(options: ClientOptions) -> Result<Self, RpcError> {
        let channel = endpoint(&options)?.connect_lazy();
        Ok(Self::with_channel(channel, options))
    }

    /// A client connected to the server, retrying the connection with backoff for up to
    /// [`ClientOptions::total_timeout`].
    ///
    /// # Errors
    ///
    /// [`RpcError::Config`]; [`RpcError::Unavailable`] if no connection could be made in time.
    pub async fn connect(options: ClientOptions) -> Result<Self, RpcError> {
        let endpoint = endpoint(&options)?;
        let started = Instant::now();
        let deadline = started + options.total_timeout;
        let mut backoff = options.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match endpoint.connect().await {
                Ok(channel) => return Ok(Self::with_channel(channel, options)),
                Err(e) => lakebed_pageserver_api::error_chain(&e),
            };
            if Instant::now() + backoff >= deadline {
                return Err(RpcError::Unavailable {
                    after: started.elapsed(),
                    attempts,
                    last: error,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(options.max_backoff);
        }
    }

    fn with_channel(channel: Channel, options: ClientOptions) -> Self {
        let stub = Stub::with_interceptor(channel, TraceContext)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self {
            stub,
            options: Arc::new(options),
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many attempts this client (and its clones) retried so far, over all calls: a
    /// measure of how often the page store was unreachable.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Creates timeline `id`: empty, or (with `parent`) a copy-on-write branch of
    /// `parent.0` at seq `parent.1` (default: the parent's last seq). Returns the new
    /// timeline's last seq (0, or the branch point).
    ///
    /// # Errors
    ///
    /// [`RpcError::AlreadyExists`], [`RpcError::NotFound`] (parent),
    /// [`RpcError::InvalidArgument`] (branch point beyond the parent's last seq), and the
    /// errors every call can return ([`RpcError::Unavailable`], [`RpcError::Server`]).
    pub async fn create_timeline(
        &self,
        id: &TimelineId,
        parent: Option<(&TimelineId, Option<Seq>)>,
    ) -> Result<Seq, RpcError> {
        let req = CreateTimelineRequest {
            id: id.to_string(),
            parent: parent.map(|(p, seq)| BranchPoint {
                timeline: p.to_string(),
                seq: seq.map(|s| s.0),
            }),
        };
        let resp = self
            .call(
                |mut stub, r| async move { stub.create_timeline(r).await },
                req,
            )
            .await?;
        Ok(Seq(resp.last_seq))
    }

    /// Deletes timeline `id` and its data.
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`]; [`RpcError::FailedPrecondition`] while it has branches.
    pub async fn delete_timeline(&self, id: &TimelineId) -> Result<(), RpcError> {
        let req = DeleteTimelineRequest { id: id.to_string() };
        self.call(
            |mut stub, r| async move { stub.delete_timeline(r).await },
            req,
        )
        .await?;
        Ok(())
    }

    /// Generation, last seq and parent of timeline `id`.
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`].
    pub async fn describe_timeline(&self, id: &TimelineId) -> Result<TimelineInfo, RpcError> {
        let req = DescribeTimelineRequest { id: id.to_string() };
        let resp = self
            .call(
                |mut stub, r| async move { stub.describe_timeline(r).await },
                req,
            )
            .await?;
        let parent = match resp.parent {
            None => None,
            Some(p) => {
                let id = p
                    .timeline
                    .parse()
                    .map_err(|e| RpcError::Protocol(format!("parent id: {e}")))?;
                let seq = p
                    .seq
                    .ok_or_else(|| RpcError::Protocol("a parent without a seq".to_owned()))?;
                Some((id, Seq(seq)))
            }
        };
        Ok(TimelineInfo {
            generation: Generation(resp.generation),
            last_seq: Seq(resp.last_seq),
            parent,
            gc_horizon: Seq(resp.gc_horizon),
        })
    }

    /// Collects history now (of timeline `id`, or of every timeline): versions older than the
    /// retention window that neither a read within it nor a branch point needs. Returns what
    /// was freed.
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`] (no such timeline).
    pub async fn gc(&self, id: Option<&TimelineId>) -> Result<GcReport, RpcError> {
        let req = proto::GcRequest {
            timeline: id.map(ToString::to_string),
        };
        let resp = self
            .call(|mut stub, r| async move { stub.gc(r).await }, req)
            .await?;
        Ok(GcReport {
            timelines: resp
                .timelines
                .into_iter()
                .map(|t| {
                    Ok(GcTimeline {
                        timeline: t.timeline.parse().map_err(|e| {
                            RpcError::Protocol(format!("collected timeline id: {e}"))
                        })?,
                        horizon: Seq(t.horizon),
                        versions_removed: t.versions_removed,
                    })
                })
                .collect::<Result<_, RpcError>>()?,
            bytes_before: resp.bytes_before,
            bytes_after: resp.bytes_after,
        })
    }

    /// Takes the next generation of timeline `id` (a compute does this at boot); writes with
    /// older generations are refused from then on.
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`].
    pub async fn acquire(&self, id: &TimelineId) -> Result<Generation, RpcError> {
        let req = AcquireRequest { id: id.to_string() };
        let resp = self
            .call(|mut stub, r| async move { stub.acquire(r).await }, req)
            .await?;
        Ok(Generation(resp.generation))
    }

    /// Applies `batch` to timeline `id` under `generation`; returns the batch's seq once the
    /// page store has made it durable.
    ///
    /// # Errors
    ///
    /// Nothing is changed on any error.
    /// [`RpcError::StaleGeneration`], [`RpcError::GenerationNotAcquired`],
    /// [`RpcError::NotFound`], [`RpcError::InvalidArgument`] (a limit: key 1 KiB, value 1 MiB,
    /// batch 64 MiB or 65,536 keys; an empty or repeated key).
    pub async fn write(
        &self,
        id: &TimelineId,
        generation: Generation,
        batch: WriteBatch,
    ) -> Result<Seq, RpcError> {
        // Refused here rather than by the server's message size cap, with the same message
        // the server would give.
        let size = batch.size();
        if size > MAX_BATCH_BYTES {
            return Err(RpcError::InvalidArgument {
                message: format!(
                    "a write of {size} bytes: at most {MAX_BATCH_BYTES} (MAX_BATCH_BYTES)"
                ),
            });
        }
        let req = WriteRequest {
            id: id.to_string(),
            generation: generation.0,
            puts: batch.puts,
            deletes: batch.deletes,
        };
        let resp = self
            .call(|mut stub, r| async move { stub.write(r).await }, req)
            .await?;
        Ok(Seq(resp.seq))
    }

    /// Reads `keys` from timeline `id` at seq `at` (default: the newest).
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`]; [`RpcError::InvalidArgument`] (seq beyond the last one, over
    /// 8192 keys, a key over 1 KiB, over 64 MiB of values).
    pub async fn read(
        &self,
        id: &TimelineId,
        keys: Vec<Bytes>,
        at: Option<Seq>,
    ) -> Result<ReadResult, RpcError> {
        let count = keys.len();
        let req = ReadRequest {
            id: id.to_string(),
            keys,
            at_seq: at.map(|s| s.0),
        };
        let resp = self
            .call(|mut stub, r| async move { stub.read(r).await }, req)
            .await?;
        if resp.values.len() != count {
            return Err(RpcError::Protocol(format!(
                "{} values for {count} keys",
                resp.values.len()
            )));
        }
        Ok(ReadResult {
            seq: Seq(resp.seq),
            values: resp.values.into_iter().map(|v| v.value).collect(),
        })
    }

    /// One page of the keys of timeline `id` in `[start, end)` (`end` `None`: unbounded) at
    /// seq `at` (default: the newest), at most `limit` entries (0: the server's maximum,
    /// 10,000).
    ///
    /// # Errors
    ///
    /// [`RpcError::NotFound`]; [`RpcError::InvalidArgument`] (seq beyond the last one, limit
    /// over 10,000).
    pub async fn scan(
        &self,
        id: &TimelineId,
        start: &[u8],
        end: Option<&[u8]>,
        at: Option<Seq>,
        limit: u32,
    ) -> Result<ScanPage, RpcError> {
        let req = ScanRequest {
            id: id.to_string(),
            start: Bytes::copy_from_slice(start),
            end: end.map(Bytes::copy_from_slice).unwrap_or_default(),
            at_seq: at.map(|s| s.0),
            limit,
        };
        let resp = self
            .call(|mut stub, r| async move { stub.scan(r).await }, req)
            .await?;
        Ok(ScanPage {
            entries: resp.entries.into_iter().map(|e| (e.key, e.value)).collect(),
            more: resp.more,
            seq: Seq(resp.seq),
        })
    }

    /// Every key of timeline `id` in `[start, end)` at one seq (`at`, default the newest at
    /// the first page), scanning page by page. Returns the seq and the entries.
    ///
    /// # Errors
    ///
    /// As [`Self::scan`].
    pub async fn scan_all(
        &self,
        id: &TimelineId,
        start: &[u8],
        end: Option<&[u8]>,
        at: Option<Seq>,
    ) -> Result<(Seq, Vec<(Bytes, Bytes)>), RpcError> {
        let mut page = self.scan(id, start, end, at, 0).await?;
        let seq = page.seq;
        let mut entries = Vec::new();
        loop {
            let more = page.more;
            let next = page.entries.last().map(|(k, _)| {
                let mut k = k.to_vec();
                k.push(0);
                k
            });
            entries.extend(page.entries);
            match next {
                Some(next) if more => page = self.scan(id, &next, end, Some(seq), 0).await?,
                _ => return Ok((seq, entries)),
            }
        }
    }

    /// Runs one RPC with the per-attempt deadline, retrying transport failures with backoff
    /// until the total timeout.
    async fn call<Req, Resp, F, Fut>(&self, f: F, req: Req) -> Result<Resp, RpcError>
    where
        Req: Clone,
        F: Fn(Rpc, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let o = &self.options;
        let started = Instant::now();
        let deadline = started + o.total_timeout;
        let mut backoff = o.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(o.request_timeout)
                .max(Duration::from_millis(1));
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(budget);
            let status = match tokio::time::timeout(budget, f(self.stub.clone(), request)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {budget:?}")),
            };
            if !retryable(&status) {
                return Err(map_status(status));
            }
            tracing::debug!(attempts, error = %status_text(&status), "page store call failed; retrying");
            if Instant::now() + backoff >= deadline {
                return Err(RpcError::Unavailable {
                    after: started.elapsed(),
                    attempts,
                    last: status_text(&status),
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(o.max_backoff);
        }
    }
}

/// The endpoint for `options`: URL, timeouts, TLS.
fn endpoint(options: &ClientOptions) -> Result<Endpoint, RpcError> {
    let mut endpoint = Endpoint::from_shared(options.url.clone())
        .map_err(|e| RpcError::Config(format!("url {:?}: {e}", options.url)))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(http2::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(http2::CONNECTION_WINDOW_BYTES)
        .max_frame_size(http2::MAX_FRAME_BYTES);
    if let Some(tls) = &options.tls {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(tls.ca_pem.clone()));
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert.clone(), key.clone()));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| {
            RpcError::Config(format!("TLS: {}", lakebed_pageserver_api::error_chain(&e)))
        })?;
    }
    Ok(endpoint)
}

/// Whether a failed attempt should be retried: the server was unreachable or unresponsive,
/// not a decision it made. Statuses the server sent have no local source error; transport
/// failures (connect refused, connection reset or closed) do.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// The status's message with its source chain, for error texts.
fn status_text(status: &Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!(
            "{}: {}",
            status.message(),
            lakebed_pageserver_api::error_chain(source)
        ),
        None => status.message().to_owned(),
    }
}

/// Maps a non-retryable status to an [`RpcError`], using the [`ErrorDetail`] when present.
fn map_status(status: Status) -> RpcError {
    let message = status.message().to_owned();
    let detail = (!status.details().is_empty())
        .then(|| ErrorDetail::decode(status.details()).ok())
        .flatten();
    if let Some(d) = &detail {
        let (sent, current) = (
            Generation(d.sent_generation),
            Generation(d.current_generation),
        );
        match Reason::try_from(d.reason) {
            Ok(Reason::StaleGeneration) => {
                return RpcError::StaleGeneration {
                    timeline: d.timeline.clone(),
                    sent,
                    current,
                };
            }
            Ok(Reason::GenerationNotAcquired) => {
                return RpcError::GenerationNotAcquired {
                    timeline: d.timeline.clone(),
                    sent,
                    current,
                };
            }
            Ok(Reason::BelowGcHorizon) => {
                return RpcError::BelowHorizon {
                    timeline: d.timeline.clone(),
                    horizon: Seq(d.horizon),
                    message,
                };
            }
            _ => {}
        }
    }
    match status.code() {
        Code::NotFound => RpcError::NotFound { message },
        Code::AlreadyExists => RpcError::AlreadyExists { message },
        Code::InvalidArgument => RpcError::InvalidArgument { message },
        Code::FailedPrecondition => RpcError::FailedPrecondition { message },
        Code::ResourceExhausted => RpcError::DiskFull { message },
        code => RpcError::Server {
            code,
            message: status_text(&status),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_unreachable_is_retried() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(retryable(&Status::deadline_exceeded("slow")));
        // Decided by the server (no local source): never retried.
        for status in [
            Status::failed_precondition("stale generation 1 < 2"),
            Status::invalid_argument("too big"),
            Status::not_found("no timeline"),
            Status::internal("disk"),
            Status::unknown("?"),
        ] {
            assert!(!retryable(&status), "{status:?}");
        }
        // A local transport failure surfaces as UNKNOWN with a source: retried.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(retryable(&Status::from_error(Box::new(io))));
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let detail = ErrorDetail {
            reason: Reason::StaleGeneration as i32,
            timeline: "ep".into(),
            sent_generation: 1,
            current_generation: 2,
            horizon: 0,
        };
        let status = Status::with_details(
            Code::FailedPrecondition,
            "timeline ep: stale generation 1 < 2",
            Bytes::from(detail.encode_to_vec()),
        );
        match map_status(status) {
            RpcError::StaleGeneration {
                timeline,
                sent,
                current,
            } => {
                assert_eq!(timeline, "ep");
                assert_eq!((sent, current), (Generation(1), Generation(2)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            map_status(Status::failed_precondition("has branches")),
            RpcError::FailedPrecondition { .. }
        ));
        assert!(matches!(
            map_status(Status::invalid_argument("x")),
            RpcError::InvalidArgument { message } if message == "x"
        ));
        assert!(matches!(
            map_status(Status::internal("disk")),
            RpcError::Server {
                code: Code::Internal,
                ..
            }
        ));
        let detail = ErrorDetail {
            reason: Reason::BelowGcHorizon as i32,
            timeline: "ep".into(),
            horizon: 42,
            ..ErrorDetail::default()
        };
        let status = Status::with_details(
            Code::OutOfRange,
            "timeline ep: 7 is below the gc horizon 42",
            Bytes::from(detail.encode_to_vec()),
        );
        assert!(matches!(
            map_status(status),
            RpcError::BelowHorizon { timeline, horizon: Seq(42), .. } if timeline == "ep"
        ));
        assert!(matches!(
            map_status(Status::resource_exhausted("no space")),
            RpcError::DiskFull { message } if message == "no space"
        ));
        // Garbage details don't hide the code.
        let status = Status::with_details(Code::NotFound, "gone", Bytes::from_static(b"\xff\xff"));
        assert!(matches!(map_status(status), RpcError::NotFound { .. }));
    }

    #[test]
    fn bad_url_is_a_config_error() {
        let err = PageStoreClient::new(ClientOptions::new("not a url")).unwrap_err();
        assert!(matches!(err, RpcError::Config(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_server_fails_with_unavailable_after_the_budget() {
        // A port that was just free: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut options = ClientOptions::new(format!("http://127.0.0.1:{port}"));
        options.total_timeout = Duration::from_millis(300);
        options.initial_backoff = Duration::from_millis(10);
        let client = PageStoreClient::new(options).unwrap();
        match client.acquire(&"t".parse().unwrap()).await.unwrap_err() {
            RpcError::Unavailable { attempts, .. } => assert!(attempts > 1, "{attempts}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
