//! The gRPC handlers: validate the request into domain types, run the store operation on a
//! blocking thread, map the outcome to a response or a status.
//!
//! Wire types stay loose; everything the peer sends is checked here or in the store and
//! refused with `INVALID_ARGUMENT` (never a panic). Store errors map to codes as the proto
//! file documents; fencing and not-found errors carry a protobuf [`ErrorDetail`] in the
//! status details.
//!
//! Each call runs in a `pagestore.<rpc>` span that continues the caller's trace (the
//! `traceparent` metadata the client's interceptor sends), and is measured:
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `lakebed_pagestore_requests_total` | `rpc`, `outcome` (`ok` or the gRPC code, e.g. `not_found`) | calls answered |
//! | `lakebed_pagestore_request_duration_seconds` | `rpc` | histogram of the time to answer |
//! | `lakebed_pagestore_bytes_written_total` | | key and value bytes of the puts of committed writes |
//! | `lakebed_pagestore_bytes_read_total` | | value bytes answered by reads; key and value bytes by scans |

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lakebed_pageserver_api::limits::{MAX_RESPONSE_BYTES, MAX_SCAN_ENTRIES};
use lakebed_pageserver_api::proto::error_detail::Reason;
use lakebed_pageserver_api::proto::page_store_server::PageStore;
use lakebed_pageserver_api::proto::{
    AcquireRequest, AcquireResponse, BranchPoint, CreateTimelineRequest, CreateTimelineResponse,
    DeleteTimelineRequest, DeleteTimelineResponse, DescribeTimelineRequest,
    DescribeTimelineResponse, Entry, ErrorDetail, GcRequest, GcResponse, GcTimeline, MaybeValue,
    ReadRequest, ReadResponse, ScanRequest, ScanResponse, WriteRequest, WriteResponse,
};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};
use prost::Message;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span};

use crate::store::{Store, StoreError};

/// The `PageStore` gRPC service over a [`Store`].
#[derive(Debug, Clone)]
pub struct PageStoreService {
    store: Arc<Store>,
}

impl PageStoreService {
    /// A service serving `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Runs `op` on the store on a blocking thread (the store does synchronous file I/O and waits on fsync).
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(result) => result.map_err(to_status),
            Err(e) => {
                tracing::error!(error = %e, "page store task failed");
                Err(Status::internal("page store task failed"))
            }
        }
    }
}

/// Parses a timeline id from the wire.
fn timeline_id(id: &str) -> Result<TimelineId, Status> {
    id.parse()
        .map_err(|e: lakebed_pageserver_api::TimelineIdError| {
            Status::invalid_argument(e.to_string())
        })
}

/// A status with a protobuf-encoded [`ErrorDetail`].
fn with_detail(
    code: Code,
    message: String,
    reason: Reason,
    timeline: &TimelineId,
    generations: Option<(Generation, Generation)>,
    horizon: Option<Seq>,
) -> Status {
    let (sent, current) = generations.unwrap_or_default();
    let detail = ErrorDetail {
        reason: reason as i32,
        timeline: timeline.to_string(),
        sent_generation: sent.0,
        current_generation: current.0,
        horizon: horizon.map_or(0, |h| h.0),
    };
    Status::with_details(code, message, Bytes::from(detail.encode_to_vec()))
}

/// Maps a store error to the status the proto file documents.
fn to_status(error: StoreError) -> Status {
    let message = error.to_string();
    match &error {
        StoreError::NotFound(t) | StoreError::ParentNotFound(t) => with_detail(
            Code::NotFound,
            message,
            Reason::TimelineNotFound,
            t,
            None,
            None,
        ),
        StoreError::AlreadyExists(_) => Status::already_exists(message),
        StoreError::StaleGeneration {
            timeline,
            sent,
            current,
        } => with_detail(
            Code::FailedPrecondition,
            message,
            Reason::StaleGeneration,
            timeline,
            Some((*sent, *current)),
            None,
        ),
        StoreError::NotAcquired {
            timeline,
            sent,
            current,
        } => with_detail(
            Code::FailedPrecondition,
            message,
            Reason::GenerationNotAcquired,
            timeline,
            Some((*sent, *current)),
            None,
        ),
        StoreError::HasBranches { timeline, .. } => with_detail(
            Code::FailedPrecondition,
            message,
            Reason::HasBranches,
            timeline,
            None,
            None,
        ),
        StoreError::BelowHorizon {
            timeline, horizon, ..
        } => with_detail(
            Code::OutOfRange,
            message,
            Reason::BelowGcHorizon,
            timeline,
            None,
            Some(*horizon),
        ),
        StoreError::DiskFull { .. } => {
            log_disk_full(&error);
            Status::resource_exhausted(message)
        }
        StoreError::ShuttingDown => Status::unavailable(message),
        StoreError::Exhausted { .. } => Status::failed_precondition(message),
        StoreError::SeqBeyondLast { .. } | StoreError::InvalidArgument(_) => {
            Status::invalid_argument(message)
        }
        StoreError::Open { .. } | StoreError::Io { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(error = %error, "page store failure");
            Status::internal(message)
        }
    }
}

/// Lines about a full disk: at most one per this long.
const DISK_FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a refusal for a full disk, at most once per [`DISK_FULL_LOG_EVERY`] with the count
/// of those left out: a full disk refuses every write of every compute until space returns
/// (several a second each), and a line per refusal buried the log.
fn log_disk_full(error: &StoreError) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|t| now.duration_since(t) < DISK_FULL_LOG_EVERY) {
        LEFT_OUT.fetch_add(1, Ordering::Relaxed);
        return;
    }
    *last = Some(now);
    let left_out = LEFT_OUT.swap(0, Ordering::Relaxed);
    tracing::error!(error = %error, refusals_not_logged = left_out,
        "page store disk full: writes are refused until there is room");
}

/// Makes `span` (an RPC's server span) a child of the caller's span when the request carries
/// trace context, and returns it.
fn continued<T>(span: Span, request: &Request<T>) -> Span {
    let metadata = request.metadata();
    lakebed_telemetry::set_parent(&span, |key| metadata.get(key).and_then(|v| v.to_str().ok()));
    span
}

/// Runs one RPC's `body` in `span`, then counts it by outcome and records its duration.
async fn observe<T>(
    rpc: &'static str,
    span: Span,
    body: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = body.instrument(span).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(status) => code_label(status.code()),
    };
    metrics::counter!("lakebed_pagestore_requests_total", "rpc" => rpc, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("lakebed_pagestore_request_duration_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The `outcome` label of a gRPC code: its name in snake case.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[tonic::async_trait]
impl PageStore for PageStoreService {
    async fn create_timeline(
        &self,
        request: Request<CreateTimelineRequest>,
    ) -> Result<Response<CreateTimelineResponse>, Status> {
        let span =
            tracing::info_span!("pagestore.create_timeline", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("create_timeline", span, async move {
            let req = request.into_inner();
            let id = timeline_id(&req.id)?;
            let parent = match req.parent {
                None => None,
                Some(p) => Some((timeline_id(&p.timeline)?, p.seq.map(Seq))),
            };
            let info = self
                .run(move |s| s.create_timeline(&id, parent.as_ref().map(|(p, seq)| (p, *seq))))
                .await?;
            tracing::info!(last_seq = info.last_seq.0, "timeline created");
            Ok(Response::new(CreateTimelineResponse {
                last_seq: info.last_seq.0,
            }))
        })
        .await
    }

    async fn delete_timeline(
        &self,
        request: Request<DeleteTimelineRequest>,
    ) -> Result<Response<DeleteTimelineResponse>, Status> {
        let span =
            tracing::info_span!("pagestore.delete_timeline", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("delete_timeline", span, async move {
            let id = timeline_id(&request.get_ref().id)?;
            self.run(move |s| s.delete_timeline(&id)).await?;
            tracing::info!("timeline deleted");
            Ok(Response::new(DeleteTimelineResponse {}))
        })
        .await
    }

    async fn describe_timeline(
        &self,
        request: Request<DescribeTimelineRequest>,
    ) -> Result<Response<DescribeTimelineResponse>, Status> {
        let span =
            tracing::info_span!("pagestore.describe_timeline", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("describe_timeline", span, async move {
            let id = timeline_id(&request.get_ref().id)?;
            let (info, horizon) = self
                .run(move |s| Ok((s.describe(&id)?, s.gc_horizon(&id)?)))
                .await?;
            Ok(Response::new(DescribeTimelineResponse {
                gc_horizon: horizon.0,
                generation: info.generation.0,
                last_seq: info.last_seq.0,
                parent: info.parent.map(|(p, seq)| BranchPoint {
                    timeline: p.to_string(),
                    seq: Some(seq.0),
                }),
            }))
        })
        .await
    }

    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let span = tracing::info_span!("pagestore.acquire", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("acquire", span, async move {
            let id = timeline_id(&request.get_ref().id)?;
            let generation = self.run(move |s| s.acquire(&id)).await?;
            tracing::info!(generation = generation.0, "generation acquired");
            Ok(Response::new(AcquireResponse {
                generation: generation.0,
            }))
        })
        .await
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let span = tracing::info_span!("pagestore.write", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("write", span, async move {
            let req = request.into_inner();
            let id = timeline_id(&req.id)?;
            let generation = Generation(req.generation);
            let puts: Vec<(Bytes, Bytes)> =
                req.puts.into_iter().map(|p| (p.key, p.value)).collect();
            let bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
            let deletes = req.deletes;
            let seq = self
                .run(move |s| s.write_owned(&id, generation, puts, deletes))
                .await?;
            metrics::counter!("lakebed_pagestore_bytes_written_total").increment(bytes as u64);
            Ok(Response::new(WriteResponse { seq: seq.0 }))
        })
        .await
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let span = tracing::info_span!("pagestore.read", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("read", span, async move {
            let req = request.into_inner();
            let id = timeline_id(&req.id)?;
            let keys = req.keys;
            let at = req.at_seq.map(Seq);
            let (seq, values) = self.run(move |s| s.read(&id, &keys, at)).await?;
            let bytes: usize = values.iter().flatten().map(Bytes::len).sum();
            metrics::counter!("lakebed_pagestore_bytes_read_total").increment(bytes as u64);
            Ok(Response::new(ReadResponse {
                values: values
                    .into_iter()
                    .map(|value| MaybeValue { value })
                    .collect(),
                seq: seq.0,
            }))
        })
        .await
    }

    async fn gc(&self, request: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        let span = tracing::info_span!("pagestore.gc", timeline = ?request.get_ref().timeline);
        let span = continued(span, &request);
        observe("gc", span, async move {
            let id = match &request.get_ref().timeline {
                Some(t) => Some(timeline_id(t)?),
                None => None,
            };
            let report = self.run(move |s| s.gc(id.as_ref())).await?;
            tracing::info!(
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                "history collected on demand"
            );
            Ok(Response::new(GcResponse {
                timelines: report
                    .timelines
                    .into_iter()
                    .map(|t| GcTimeline {
                        timeline: t.timeline.to_string(),
                        horizon: t.horizon.0,
                        versions_removed: t.versions_removed,
                    })
                    .collect(),
                bytes_before: report.bytes_before,
                bytes_after: report.bytes_after,
            }))
        })
        .await
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let span = tracing::info_span!("pagestore.scan", timeline = %request.get_ref().id);
        let span = continued(span, &request);
        observe("scan", span, async move {
            let req = request.into_inner();
            let id = timeline_id(&req.id)?;
            let limit = match req.limit {
                0 => MAX_SCAN_ENTRIES,
                n if n > MAX_SCAN_ENTRIES => {
                    return Err(Status::invalid_argument(format!(
                        "scan limit {n}: at most {MAX_SCAN_ENTRIES} (MAX_SCAN_ENTRIES)"
                    )));
                }
                n => n,
            };
            let at = req.at_seq.map(Seq);
            let result = self
                .run(move |s| {
                    let end = (!req.end.is_empty()).then_some(&req.end[..]);
                    // Stop before the response could pass the cap: one more value may follow
                    // the check, so leave room for the largest one.
                    let budget = MAX_RESPONSE_BYTES
                        - lakebed_pageserver_api::limits::MAX_VALUE_BYTES
                        - lakebed_pageserver_api::limits::MAX_KEY_BYTES * limit as usize;
                    s.scan(&id, &req.start, end, at, limit as usize, budget)
                })
                .await?;
            let bytes: usize = result.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            metrics::counter!("lakebed_pagestore_bytes_read_total").increment(bytes as u64);
            Ok(Response::new(ScanResponse {
                entries: result
                    .entries
                    .into_iter()
                    .map(|(key, value)| Entry { key, value })
                    .collect(),
                more: result.more,
                seq: result.seq.0,
            }))
        })
        .await
    }
}
