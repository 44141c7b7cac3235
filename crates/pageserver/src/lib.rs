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
//!   reads ask for the newest seq or a given one at or above the GC horizon and see, per
//!   key, the latest write at or below it (deletes are tombstones). A branch copies nothing.
//! - **Fencing**: [`store::Store::acquire`] raises the generation; writes must carry the
//!   current one, so a compute that lost its timeline to a newer boot changes nothing.
//! - **Storage** ([`store`]): a log with group commit (one `fdatasync` for every write
//!   waiting, across computes), a memtable, and immutable layer files that keep each key's
//!   newest version apart from its history; compaction merges them and collects history
//!   older than `pageserver.history_retention` that no branch point needs, so the store's
//!   size tracks the databases it holds, not their write history.
//! - **RPC** ([`service`], [`server`]): tonic gRPC, the `PageStore` service of
//!   `lakebed-pageserver-api`, with optional TLS (rustls on aws-lc-rs, already the
//!   workspace's TLS stack). Each call is traced as a `pagestore.<rpc>` span continuing the
//!   caller's trace, and counted and timed through the `metrics` facade (the binary installs
//!   the Prometheus recorder and serves `/metrics`); see [`service`].
//!
//! Why our own log-structured store rather than redb (the first version) or fjall: redb
//! makes every write its own fsynced B-tree transaction, keeps every version in one tree with
//! the timeline id repeated in every entry, and returns freed pages to its own free list
//! rather than to the file system; per-fsync transactions made commits four times slower
//! than local disk. fjall is an LSM tree, but its files are its own: the next step, an S3
//! durable tier, uploads immutable files whose contents and lifetimes we decide (as Neon's
//! layer files), and garbage collection by a retention horizon and branch points is a merge
//! rule of ours, not something a generic engine offers. The formats here are small and
//! checksummed throughout ([`store`] documents each); the block cache is `quick_cache`.

pub mod server;
pub mod service;
pub mod store;

pub use server::{PageServer, ServerError, ServerOptions, ServerTls};
pub use store::{
    GcReport, GcTimeline, ScanResult, Store, StoreError, StoreOptions, StoreStats, TimelineInfo,
};

#[cfg(test)]
mod tests;
