//! The page store service (issue 4): a versioned, fenced, branchable key-value store of
//! opaque blobs, one keyspace per timeline, served over gRPC.
//!
//! The page store never interprets keys or values. The compute side (pagefs) maps a Postgres
//! data directory onto it (pages as keys like `p/<file-id>/<block>` with 8 KiB values,
//! namespace records as other keys) and seals values before they leave the compute, so only
//! ciphertext arrives here.
//!
//! - **Timelines** ([`store::Store`]): an id, a generation, the last seq, and for a branch
//!   its parent and branch point. Every committed write batch gets the timeline's next seq;
//!   reads ask for the newest seq or a given one and see, per key, the latest write at or
//!   below it (deletes are tombstones). A branch copies nothing: keys it has not written are
//!   read from its parent at the branch point.
//! - **Fencing**: [`store::Store::acquire`] raises the generation; writes must carry the
//!   current one, so a compute that lost its timeline to a newer boot changes nothing.
//! - **Durability**: a batch is one redb transaction committed with fsync before the RPC
//!   returns.
//! - **RPC** ([`service`], [`server`]): tonic gRPC, the `PageStore` service of
//!   `lakebed-pageserver-api`, with optional TLS (rustls on aws-lc-rs, already the
//!   workspace's TLS stack). Each call is traced as a `pagestore.<rpc>` span continuing the
//!   caller's trace, and counted and timed through the `metrics` facade (the binary installs
//!   the Prometheus recorder and serves `/metrics`); see [`service`].
//!
//! Why redb rather than fjall: a page store write must be durable before it is acknowledged,
//! and redb's unit of work is exactly that, an ACID transaction that fsyncs on commit
//! (`Durability::Immediate`), with MVCC readers that never block the writer. It keeps
//! everything in one file, is pure Rust with no dependencies, and compiles fast. fjall, an
//! LSM tree, writes faster under heavy random writes, but brings a journal, background
//! compaction threads and many files, and makes a durable cross-keyspace atomic batch a matter
//! of configuration rather than the default. One writer at a time (redb's model) bounds write
//! throughput by fsync latency; batching many pages per write, as pagefs will, amortizes it.
//! Group commit across RPCs can come later without a format change.

pub mod server;
pub mod service;
pub mod store;

pub use server::{PageServer, ServerError, ServerOptions, ServerTls};
pub use store::{ScanResult, Store, StoreError, TimelineInfo};

#[cfg(test)]
mod tests;
