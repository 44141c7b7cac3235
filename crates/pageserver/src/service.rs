//! The gRPC handlers: validate the request into domain types, run the store operation on a
//! blocking thread, map the outcome to a response or a status.
//!
//! Wire types stay loose; everything the peer sends is checked here or in the store and
//! refused with `INVALID_ARGUMENT` (never a panic). Store errors map to codes as the proto
//! file documents; fencing and not-found errors carry a protobuf [`ErrorDetail`] in the
//! status details.

use std::sync::Arc;

use bytes::Bytes;
use lakebed_pageserver_api::limits::{MAX_RESPONSE_BYTES, MAX_SCAN_ENTRIES};
use lakebed_pageserver_api::proto::error_detail::Reason;
use lakebed_pageserver_api::proto::page_store_server::PageStore;
use lakebed_pageserver_api::proto::{
    AcquireRequest, AcquireResponse, BranchPoint, CreateTimelineRequest, CreateTimelineResponse,
    DeleteTimelineRequest, DeleteTimelineResponse, DescribeTimelineRequest,
    DescribeTimelineResponse, Entry, ErrorDetail, MaybeValue, ReadRequest, ReadResponse,
    ScanRequest, ScanResponse, WriteRequest, WriteResponse,
};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};
use prost::Message;
use tonic::{Code, Request, Response, Status};

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

    /// Runs `op` on the store on a blocking thread (redb does synchronous I/O and fsync).
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
) -> Status {
    let (sent, current) = generations.unwrap_or_default();
    let detail = ErrorDetail {
        reason: reason as i32,
        timeline: timeline.to_string(),
        sent_generation: sent.0,
        current_generation: current.0,
    };
    Status::with_details(code, message, Bytes::from(detail.encode_to_vec()))
}

/// Maps a store error to the status the proto file documents.
fn to_status(error: StoreError) -> Status {
    let message = error.to_string();
    match &error {
        StoreError::NotFound(t) | StoreError::ParentNotFound(t) => {
            with_detail(Code::NotFound, message, Reason::TimelineNotFound, t, None)
        }
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
        ),
        StoreError::HasBranches { timeline, .. } => with_detail(
            Code::FailedPrecondition,
            message,
            Reason::HasBranches,
            timeline,
            None,
        ),
        StoreError::Exhausted { .. } => Status::failed_precondition(message),
        StoreError::SeqBeyondLast { .. } | StoreError::InvalidArgument(_) => {
            Status::invalid_argument(message)
        }
        StoreError::Open { .. } | StoreError::Storage(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %error, "page store failure");
            Status::internal(message)
        }
    }
}

#[tonic::async_trait]
impl PageStore for PageStoreService {
    #[tracing::instrument(skip_all, fields(timeline = %request.get_ref().id))]
    async fn create_timeline(
        &self,
        request: Request<CreateTimelineRequest>,
    ) -> Result<Response<CreateTimelineResponse>, Status> {
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
    }

    #[tracing::instrument(skip_all, fields(timeline = %request.get_ref().id))]
    async fn delete_timeline(
        &self,
        request: Request<DeleteTimelineRequest>,
    ) -> Result<Response<DeleteTimelineResponse>, Status> {
        let id = timeline_id(&request.get_ref().id)?;
        self.run(move |s| s.delete_timeline(&id)).await?;
        tracing::info!("timeline deleted");
        Ok(Response::new(DeleteTimelineResponse {}))
    }

    async fn describe_timeline(
        &self,
        request: Request<DescribeTimelineRequest>,
    ) -> Result<Response<DescribeTimelineResponse>, Status> {
        let id = timeline_id(&request.get_ref().id)?;
        let info = self.run(move |s| s.describe(&id)).await?;
        Ok(Response::new(DescribeTimelineResponse {
            generation: info.generation.0,
            last_seq: info.last_seq.0,
            parent: info.parent.map(|(p, seq)| BranchPoint {
                timeline: p.to_string(),
                seq: Some(seq.0),
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(timeline = %request.get_ref().id))]
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let id = timeline_id(&request.get_ref().id)?;
        let generation = self.run(move |s| s.acquire(&id)).await?;
        tracing::info!(generation = generation.0, "generation acquired");
        Ok(Response::new(AcquireResponse {
            generation: generation.0,
        }))
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let req = request.into_inner();
        let id = timeline_id(&req.id)?;
        let generation = Generation(req.generation);
        let puts: Vec<(Bytes, Bytes)> = req.puts.into_iter().map(|p| (p.key, p.value)).collect();
        let deletes = req.deletes;
        let seq = self
            .run(move |s| s.write(&id, generation, &puts, &deletes))
            .await?;
        Ok(Response::new(WriteResponse { seq: seq.0 }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let req = request.into_inner();
        let id = timeline_id(&req.id)?;
        let keys = req.keys;
        let at = req.at_seq.map(Seq);
        let (seq, values) = self.run(move |s| s.read(&id, &keys, at)).await?;
        Ok(Response::new(ReadResponse {
            values: values
                .into_iter()
                .map(|value| MaybeValue {
                    value: value.map(Bytes::from),
                })
                .collect(),
            seq: seq.0,
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
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
                // Stop before the response could pass the cap: one more value may follow the
                // check, so leave room for the largest one.
                let budget = MAX_RESPONSE_BYTES
                    - lakebed_pageserver_api::limits::MAX_VALUE_BYTES
                    - lakebed_pageserver_api::limits::MAX_KEY_BYTES * limit as usize;
                s.scan(&id, &req.start, end, at, limit as usize, budget)
            })
            .await?;
        Ok(Response::new(ScanResponse {
            entries: result
                .entries
                .into_iter()
                .map(|(key, value)| Entry {
                    key: Bytes::from(key),
                    value: Bytes::from(value),
                })
                .collect(),
            more: result.more,
            seq: result.seq.0,
        }))
    }
}
