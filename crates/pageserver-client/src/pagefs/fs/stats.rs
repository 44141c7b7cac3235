//! Counters of the mount's page store traffic, reported as JSON to the process running it
//! (which turns them into the compute manager's `/metrics`).
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
    fetch_nanos: AtomicU64,
    /// Fetches by latency: one count per bound of [`FETCH_BUCKETS`] (not cumulative), the
    /// last for slower ones.
    fetch_buckets: [AtomicU64; FETCH_BUCKETS.len() + 1],
    flushes: AtomicU64,
    flushed_bytes: AtomicU64,
}

impl IoStats {
    /// Counts one page store read of `pages` pages that took `elapsed` (failed ones too).
    pub(super) fn record_fetch(&self, pages: u64, elapsed: Duration) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.fetched_pages.fetch_add(pages, Ordering::Relaxed);
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

    /// Counts one successful flush that sent `bytes` bytes of page content.
    pub(super) fn record_flush(&self, bytes: usize) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flushed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl PageFs {
    /// The mount's counters as one JSON object: `hits`, `misses`, `evictions`,
    /// `cached_pages` (local cache), `fetches`, `fetched_pages`, `fetch_seconds` (page store
    /// reads), `fetch_buckets` (fetches per [`FETCH_BUCKETS`] bound, then slower),
    /// `flushes`, `flushed_bytes` (page store writes), `dirty_bytes` (not yet flushed).
    pub fn stats_json(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.cache.stats;
        let buckets: Vec<String> = self
            .io
            .fetch_buckets
            .iter()
            .map(|b| get(b).to_string())
            .collect();
        format!(
            "{{\"hits\":{},\"misses\":{},\"evictions\":{},\"cached_pages\":{},\
             \"fetches\":{},\"fetched_pages\":{},\"fetch_seconds\":{:.6},\"fetch_buckets\":[{}],\
             \"flushes\":{},\"flushed_bytes\":{},\"dirty_bytes\":{}}}",
            get(&c.hits),
            get(&c.misses),
            get(&c.evictions),
            self.cache.len(),
            get(&self.io.fetches),
            get(&self.io.fetched_pages),
            get(&self.io.fetch_nanos) as f64 / 1e9,
            buckets.join(","),
            get(&self.io.flushes),
            get(&self.io.flushed_bytes),
            self.dirty_bytes(),
        )
    }

    /// Dirty page bytes now.
    pub fn dirty_bytes(&self) -> usize {
        lock(&self.state).page_bytes
    }
}
