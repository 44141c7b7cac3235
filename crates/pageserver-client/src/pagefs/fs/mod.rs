//! The filesystem's state and operations, apart from the FUSE plumbing.
//!
//! **Where things live.** The whole namespace (inodes and directory entries; a data
//! directory has a few thousand) is loaded from the page store at mount and kept in memory.
//! File contents are read through three layers: the dirty set (written, not yet in the page
//! store), the sealed local cache (clean pages), and the page store.
//!
//! **Durability.** Every change (a page, an inode's attributes, a directory entry) goes into
//! the dirty set first. [`PageFs::flush`] sends the dirty set to the page store, normally as
//! one atomic write: pages, namespace records and the deletes of pages of files nothing
//! links anymore, together, so an `fsync` costs one round trip and a crash leaves the
//! timeline either before the flush or after it. Only a flush too big for one write (past
//! [`MAX_BATCH_KEYS`] keys or [`MAX_BATCH_BYTES`] bytes) is split: pages first, in batches,
//! then the namespace changes and the deletes. Because pages are keyed by inode numbers that
//! are never reused, writing a page before the record that makes it reachable is harmless,
//! and a crash between batches leaves either the old namespace or the new one, never half a
//! rename. A flush runs in the background every [`Options::flush_interval`] or when the
//! dirty set passes [`Options::dirty_flush_bytes`], and `fsync` of any file or directory runs
//! one and returns only after it: so an `fsync` covers every change made before it, which is
//! stronger than POSIX asks and is what Postgres's `fsync` of WAL, data files and directories
//! relies on. An `fsync` that arrives while a flush's write is in flight sends its changes
//! at once, alongside that write, and returns once both are durable (the `ride` module).
//!
//! **Reads** fetch runs of blocks: a miss on a sequential read brings a growing window
//! past it in the same page store call (one `Scan` of the file's consecutive page keys),
//! readers of a block on the way wait for that one fetch, and a background prefetcher
//! fetches the next window before a sequential reader gets there (`readahead`, `fetch`,
//! `prefetch`).
//!
//! **Fencing.** pagefs writes with the generation it acquired at mount. Once the page store
//! says a newer generation exists, pagefs is fenced: every later change and `fsync` fails
//! with `EIO`, and nothing reaches the timeline.
//!
//! **Scratch files** (`postmaster.pid`, `postmaster.opts`, `pg_stat_tmp/*`, `pgsql_tmp`
//! directories) stay on the compute, sealed like the cache, and never reach the page store.
//!
//! The story, one part per module:
//!
//! - `state`: the in-memory namespace ([`Node`]) and the dirty set, with the version
//!   numbers that let a flush tell what changed while it was in flight.
//! - `load`: reading the namespace from the page store at mount ([`PageFs::load`]).
//! - `namespace`: lookup, create, remove, rename, attributes, open counts.
//! - `data`: read, write and truncate over the three layers.
//! - `readahead`: how many blocks past a read to fetch with it (sequential streams,
//!   growing windows), and when to fetch the next window in the background.
//! - `fetch`: page fetches from the page store, one call per run of blocks, shared by the
//!   readers of those blocks, and the bookkeeping that keeps a fetch from installing a page
//!   older than a write that raced it.
//! - `prefetch`: the background task that fetches the windows readahead queues.
//! - `heat`: which pages this boot read, in order; `prewarm`: that list written at
//!   unmount, and fetched back by the next mount before Postgres asks for the pages.
//! - `flush`: the commit path and the background flusher; fencing is detected here.
//! - `ride`: an `fsync` during another flush's write sends its changes alongside, not after.
//! - `values`: how values look in the page store (sealed under the tenant's DEK, or plain).
//! - `reseal`: re-sealing old values under the newest DEK after a rekey.
//! - `stats`: the page store traffic counters.
//!
//! [`MAX_BATCH_KEYS`]: lakebed_pageserver_api::limits::MAX_BATCH_KEYS
//! [`MAX_BATCH_BYTES`]: lakebed_pageserver_api::limits::MAX_BATCH_BYTES

mod data;
mod fetch;
mod flush;
mod heat;
mod kernel_warm;
mod load;
mod namespace;
mod prefetch;
mod prewarm;
mod readahead;
mod reseal;
mod ride;
mod staged;
mod state;
mod stats;
mod values;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::Errno;
use lakebed_pageserver_api::{Generation, TimelineId};
use tokio::sync::Notify;

use super::cache::{Cache, Scratch};
use super::data_key::DataKeys;
use super::store::PageStore;
use prefetch::Prefetch;
use state::State;
use stats::IoStats;

pub use fetch::{Fetched, Need};
pub use flush::flusher;
pub use kernel_warm::Reader;
pub use prefetch::prefetcher;
pub use prewarm::{HeatList, PrewarmProgress};
pub use reseal::ResealProgress;
pub use state::{DirEntry, Node};
pub use stats::{FETCH_BUCKETS, IoCounters};

/// Tuning of one mount.
#[derive(Debug, Clone)]
pub struct Options {
    /// Owner of every file (the compute's OS user).
    pub uid: u32,
    /// Group of every file.
    pub gid: u32,
    /// How often dirty data is sent to the page store in the background. Default 200 ms.
    pub flush_interval: Duration,
    /// Dirty bytes that start a background flush at once. Default 32 MiB.
    pub dirty_flush_bytes: usize,
    /// Dirty bytes past which writes wait for a flush. Default 256 MiB.
    pub dirty_max_bytes: usize,
}

impl Options {
    /// Defaults for files owned by `uid:gid`.
    pub fn new(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            flush_interval: Duration::from_millis(200),
            dirty_flush_bytes: 32 << 20,
            dirty_max_bytes: 256 << 20,
        }
    }
}

/// A mounted timeline's filesystem.
pub struct PageFs {
    store: Box<dyn PageStore>,
    timeline: TimelineId,
    generation: Generation,
    options: Options,
    state: Mutex<State>,
    cache: Cache,
    scratch: Scratch,
    /// Held by a flush, and by a re-seal while it writes a chunk: one writer at a time,
    /// but for a ride (see the `ride` module).
    flush_lock: tokio::sync::Mutex<()>,
    /// Held by a ride; a flush waits for it before copying the dirty set, a re-seal for
    /// the length of a chunk.
    rider_lock: tokio::sync::Mutex<()>,
    /// The flush whose single write is in flight, for a ride along it.
    flight: Mutex<Option<Arc<ride::FlushFlight>>>,
    fenced: AtomicBool,
    /// Woken when the dirty set passes `dirty_flush_bytes`.
    pub(crate) flush_wanted: Notify,
    io: IoStats,
    /// Windows of background readahead waiting for the prefetcher.
    prefetch: Prefetch,
    /// The tenant's DEKs: values are sealed before they leave; `None`: sent as they are.
    keys: Option<Arc<DataKeys>>,
    /// This mount's prewarm progress, once one started.
    prewarming: prewarm::Prewarming,
    /// Where the filesystem is mounted, once it is: prewarm reads through it.
    mountpoint: std::sync::OnceLock<std::path::PathBuf>,
    /// The thread id of the thread reading prewarmed pages into the kernel's page cache,
    /// 0 when none (see the `kernel_warm` module).
    kernel_warmer: Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for PageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFs")
            .field("timeline", &self.timeline)
            .field("generation", &self.generation)
            .finish()
    }
}

impl PageFs {
    /// The mount's options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The local cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// `EIO` once fenced: no change is accepted after the page store named a newer
    /// generation.
    fn check_writable(&self) -> Result<(), Errno> {
        if self.fenced.load(Ordering::Relaxed) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }
}
