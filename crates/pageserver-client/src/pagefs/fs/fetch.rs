//! Page fetches from the page store, and why a fetched page may arrive too late to use.
//!
//! A fetch runs without the state lock, so a write (or truncate) can change a block while
//! its old content is on the way. Using that old content, or caching it, would undo the
//! write. So a fetch is *registered* from [`PageFs::fetch`] until [`PageFs::done`]: it
//! notes the change counter (`change_seq`) when it starts, and while any fetch is
//! registered every block change is remembered with its counter value (`changed`). A
//! fetched page is then used, and cached, only if its block has not changed since the
//! fetch started. When no fetch is registered nothing is remembered, so the bookkeeping
//! costs nothing in the common case, and it is pruned as fetches end.
//!
//! The caller's loop (the FUSE layer's `with_fetched`): try the operation; on [`Need`],
//! `fetch`, try again with the [`Fetched`] pages, then `done`; blocks that changed in
//! between are simply asked for again.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use fuser::Errno;

use super::PageFs;
use super::data::zeros;
use super::state::{State, lock};
use crate::pagefs::layout;

/// What a read or write needs before it can complete.
#[derive(Debug)]
pub struct Need {
    /// Blocks to fetch from the page store.
    pub blocks: Vec<u64>,
}

/// Pages fetched for one inode. A fetched page is used only if its block has not changed
/// since the fetch started: while a fetch is registered (from [`PageFs::fetch`] until
/// [`PageFs::done`]), every block change is remembered with its sequence number.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The change sequence number when the fetch started; `None`: nothing fetched.
    pub(super) start: Option<u64>,
    /// Block -> content (zeros for holes).
    pub(super) pages: HashMap<u64, Bytes>,
}

impl State {
    /// Records that block `b` of `ino` changed, for fetches in flight.
    pub(super) fn note_change(&mut self, ino: u64, b: u64) {
        self.change_seq += 1;
        if !self.inflight.is_empty() {
            self.changed.insert((ino, b), self.change_seq);
        }
    }

    /// Whether a page fetched from `start` on is still what block `b` holds.
    pub(super) fn unchanged_since(&self, ino: u64, b: u64, start: u64) -> bool {
        self.changed.get(&(ino, b)).is_none_or(|&c| c <= start)
    }

    /// Registers a fetch starting now; returns its start.
    fn register_fetch(&mut self) -> u64 {
        let start = self.change_seq;
        *self.inflight.entry(start).or_default() += 1;
        start
    }

    /// Ends the registration of a fetch that started at `start`, and forgets the changes
    /// no registered fetch can be older than.
    fn unregister_fetch(&mut self, start: u64) {
        if let Some(n) = self.inflight.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(&start);
            }
        }
        match self.inflight.keys().next().copied() {
            None => self.changed.clear(),
            Some(oldest) => self.changed.retain(|_, c| *c > oldest),
        }
    }
}

impl PageFs {
    /// Fetches `need.blocks` of `ino` from the page store (holes as zeros) and caches them
    /// unless the file changed meanwhile. The fetch stays registered until [`Self::done`]
    /// (unless this fails).
    ///
    /// # Errors
    ///
    /// `EIO` when the page store did not answer within the client's timeout, or a page
    /// does not open under the tenant's key.
    #[tracing::instrument(name = "pagefs_fetch", skip_all, fields(ino, pages = need.blocks.len()))]
    pub async fn fetch(&self, ino: u64, need: Need) -> Result<Fetched, Errno> {
        let start = lock(&self.state).register_fetch();
        let fetched = self.fetch_registered(ino, need, start).await;
        if fetched.is_err() {
            self.done(Fetched {
                start: Some(start),
                pages: HashMap::new(),
            });
        }
        fetched
    }

    /// Ends a fetch's registration; call it once its pages were used.
    pub fn done(&self, fetched: Fetched) {
        let Some(start) = fetched.start else {
            return;
        };
        lock(&self.state).unregister_fetch(start);
    }

    async fn fetch_registered(&self, ino: u64, need: Need, start: u64) -> Result<Fetched, Errno> {
        let keys = need
            .blocks
            .iter()
            .map(|&b| layout::page_key(ino, b))
            .collect();
        let started = Instant::now();
        let result = self.store.read(&self.timeline, keys, None).await;
        self.io
            .record_fetch(need.blocks.len() as u64, started.elapsed());
        let read = result.map_err(|e| {
            tracing::error!(error = %e, ino, blocks = need.blocks.len(), "page fetch failed");
            Errno::EIO
        })?;
        let stored: Vec<(u64, Option<Bytes>)> =
            need.blocks.iter().copied().zip(read.values).collect();
        let mut pages = HashMap::with_capacity(stored.len());
        for (b, v) in &stored {
            let page = match v {
                Some(v) => self.open_stored(ino, *b, v)?,
                None => zeros(),
            };
            pages.insert(*b, page);
        }
        let st = lock(&self.state);
        // Cached as the page store holds them: sealed under the DEK, and then again under
        // the per-boot key by the cache. Holes, and blocks changed meanwhile, are not.
        for (b, v) in &stored {
            if let Some(v) = v
                && st.unchanged_since(ino, *b, start)
                && !st.pages.contains_key(&(ino, *b))
                && let Err(e) = self.cache.insert(ino, *b, v)
            {
                tracing::warn!(error = %e, "local cache write failed");
            }
        }
        Ok(Fetched {
            start: Some(start),
            pages,
        })
    }
}
