//! Counters of the mount's page store traffic, reported as JSON to the process running it
//! (which turns them into the compute manager's `/metrics`), and readable as
//! [`IoCounters`] by tests, which assert how many calls an operation cost.
//!
//! Atomics, so that counting never takes the state lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::PageFs;
use super::state::lock;

/// Upper bounds (seconds) of the page fetch latency histogram pagefs reports.
pub const FETCH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Page store traffic since mount.
#[derive(Debug, Default)]
pub(super) struct IoStats {
    fetches: AtomicU64,
    fetched_pages: AtomicU64,
    background_fetches: AtomicU64,
    joined_pages: AtomicU64,
    fetch_nanos: AtomicU64,
    /// Fetches by latency: one count per bound of [`FETCH_BUCKETS`] (not cumulative), the
    /// last for slower ones.
    fetch_buckets: [AtomicU64; FETCH_BUCKETS.len() + 1],
    flushes: AtomicU64,
    flushed_bytes: AtomicU64,
    writes: AtomicU64,
    rides: AtomicU64,
    reorders: AtomicU64,
}

/// A snapshot of a mount's page store counters, since mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Page store calls that fetched pages (a `Read` or a `Scan`), failed ones too.
    pub fetches: u64,
    /// Blocks those calls asked for (holes included).
    pub fetched_pages: u64,
    /// Of `fetches`, those made by background readahead.
    pub background_fetches: u64,
    /// Blocks a read waited for from a fetch already in flight instead of asking again.
    pub joined_pages: u64,
    /// Flushes that sent something and succeeded.
    pub flushes: u64,
    /// Page bytes those flushes sent.
    pub flushed_bytes: u64,
    /// Write calls to the page store (flushes, rides, repairs), failed ones too.
    pub writes: u64,
    /// Flushes sent while another flush was in flight, instead of after it.
    pub rides: u64,
    /// Rides that landed before the flush they rode with, and so sent their overlap again.
    pub reorders: u64,
}

impl IoStats {
    /// Counts one page store call of `pages` blocks that took `elapsed` (failed ones too),
    /// made by background readahead if `background`.
    pub(super) fn record_fetch(&self, pages: u64, elapsed: Duration, background: bool) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.fetched_pages.fetch_add(pages, Ordering::Relaxed);
        if background {
            self.background_fetches.fetch_add(1, Ordering::Relaxed);
        }
        self.fetch_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let bucket = FETCH_BUCKETS
            .iter()
            .position(|&b| elapsed.as_secs_f64() <= b)
            .unwrap_or(FETCH_BUCKETS.len());
        self.fetch_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `pages` blocks taken from another reader's fetch.
    pub(super) fn record_joined(&self, pages: u64) {
        self.joined_pages.fetch_add(pages, Ordering::Relaxed);
    }

    /// Counts one successful flush that sent `bytes` bytes of page content.
    pub(super) fn record_flush(&self, bytes: usize) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flushed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one write call.
    pub(super) fn record_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a ride, and whether it had to send its overlap again.
    pub(super) fn record_ride(&self, reordered: bool) {
        self.rides.fetch_add(1, Ordering::Relaxed);
        if reordered {
            self.reorders.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PageFs {
    /// The page store counters now.
    pub fn io_counters(&self) -> IoCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let io = &self.io;
        IoCounters {
            fetches: get(&io.fetches),
            fetched_pages: get(&io.fetched_pages),
            background_fetches: get(&io.background_fetches),
            joined_pages: get(&io.joined_pages),
            flushes: get(&io.flushes),
            flushed_bytes: get(&io.flushed_bytes),
            writes: get(&io.writes),
            rides: get(&io.rides),
            reorders: get(&io.reorders),
        }
    }

    /// The mount's counters as one JSON object: `hits`, `misses`, `evictions`,
    /// `cached_pages` (local cache), `fetches`, `fetched_pages`, `fetch_seconds` (page store
    /// reads), `fetch_buckets` (fetches per [`FETCH_BUCKETS`] bound, then slower),
    /// `background_fetches`, `joined_pages` (readahead), `flushes`, `flushed_bytes`, `writes`,
    /// `rides`, `reorders` (page store writes; see [`IoCounters`]), `dirty_bytes` (not yet
    /// flushed).
    pub fn stats_json(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.cache.stats;
        let io = self.io_counters();
        let buckets: Vec<String> = self
            .io
            .fetch_buckets
            .iter()
            .map(|b| get(b).to_string())
            .collect();
        format!(
            "{{\"hits\":{},\"misses\":{},\"evictions\":{},\"cached_pages\":{},\
             \"fetches\":{},\"fetched_pages\":{},\"fetch_seconds\":{:.6},\"fetch_buckets\":[{}],\
             \"background_fetches\":{},\"joined_pages\":{},\
             \"flushes\":{},\"flushed_bytes\":{},\"writes\":{},\"rides\":{},\"reorders\":{},\
             \"dirty_bytes\":{},\"prewarm\":{}}}",
            get(&c.hits),
            get(&c.misses),
            get(&c.evictions),
            self.cache.len(),
            io.fetches,
            io.fetched_pages,
            get(&self.io.fetch_nanos) as f64 / 1e9,
            buckets.join(","),
            io.background_fetches,
            io.joined_pages,
            io.flushes,
            io.flushed_bytes,
            io.writes,
            io.rides,
            io.reorders,
            self.dirty_bytes(),
            self.prewarm_progress()
                .map_or_else(|| "null".to_owned(), |p| p.to_json()),
        )
    }

    /// Dirty page bytes now.
    pub fn dirty_bytes(&self) -> usize {
        lock(&self.state).page_bytes
    }
}
