//! The compute side of the page store (issue 4).
//!
//! - [`rpc`]: a typed async client for the page store's gRPC service, with connect timeouts,
//!   per-call deadlines and retries with exponential backoff when the page store is
//!   unreachable.
//!
//! - [`pagefs`]: the FUSE filesystem each compute's PGDATA is mounted on, with its local
//!   cache sealed under a per-boot key.

pub mod pagefs;
pub mod rpc;

pub use lakebed_pageserver_api::{
    GcReport, GcTimeline, Generation, Seq, TimelineId, TimelineIdError, limits,
};
pub use rpc::{
    ClientOptions, ClientTls, PageStoreClient, ReadResult, RpcError, ScanPage, TimelineInfo,
    WriteBatch,
};
