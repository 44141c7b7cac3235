//! Prewarm: the pages the previous compute read, fetched back at mount before Postgres
//! asks for them.
//!
//! At unmount pagefs writes its heat list (see the `heat` module) to the timeline under
//! [`layout::HEAT`], sealed under the tenant's DEK like any value. At the next mount,
//! [`PageFs::prewarm`] fetches the listed pages into the local cache in the background, in
//! two parts:
//!
//! - **The startup part** (what the last boot touched before its compute accepted
//!   clients: Postgres's start, the manager's checks) at once, before the mount is live,
//!   in small batches that grow, so those pages are cached by the time Postgres reads them.
//! - **The rest**, what was hot after that, only once this compute accepts clients (so it
//!   never competes with the start), the part the cache has room for sorted by key, in
//!   batches each followed by a pause as long as the batch took: at most half of the page
//!   store's and pagefs's time, so the first queries are not starved by it.
//!
//! Once the mount is live, each paced batch is also read through the mount, so the kernel's
//! page cache holds it and Postgres's reads of it never reach pagefs (see the `kernel_warm`
//! module).
//!
//! A read that gets ahead of the prewarm fetches its page itself, as without one.
//!
//! **One call per batch**, across files: a `Read` of the batch's page keys. A page is
//! fetched only if its file still exists and reaches it (a dropped table's pages are
//! skipped), and it is neither dirty, nor cached, nor on its way. The fetch is registered
//! like any other (see the `fetch` module), so a page written while the batch is on its way
//! is not cached with its old content. A prewarm stops when the cache is full: the list is
//! hottest first, and going on would evict what it fetched.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

use super::PageFs;
use super::fetch::{MAX_FETCH_BLOCKS, Registered};
use super::heat::{self, List};
use super::state::lock;
use crate::pagefs::data_key::ValueKind;
use crate::pagefs::layout;
use crate::rpc::RpcError;

/// Pages in the first batch; each next batch doubles, up to [`MAX_FETCH_BLOCKS`].
const FIRST_BATCH: usize = 64;

/// A heat list read at mount, for [`PageFs::prewarm`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeatList(List);

impl HeatList {
    /// The listed pages, `(inode, block)`, in order.
    pub fn pages(&self) -> &[(u64, u64)] {
        &self.0.pages
    }

    /// How many of them make the startup part (fetched before the compute is active).
    pub fn startup(&self) -> usize {
        self.0.startup
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.0.pages.is_empty()
    }
}

/// Progress of a prewarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrewarmProgress {
    /// Pages on the list.
    pub listed: u64,
    /// Pages fetched into the cache.
    pub fetched: u64,
    /// Pages left out: gone, past the end of their file, or already local.
    pub skipped: u64,
    /// Of `fetched`, those then read into the kernel's page cache (the part fetched once
    /// the compute accepts clients; see the `kernel_warm` module).
    pub in_page_cache: u64,
    /// Whether the prewarm ended: the list gone through, or stopped short (`stopped`).
    pub done: bool,
    /// Why it ended before the end of the list: `"cache full"` (the cache holds no more),
    /// `"page store error"` (a batch failed; reads fetch for themselves).
    pub stopped: Option<&'static str>,
}

impl PrewarmProgress {
    /// As JSON: `{"listed":N,"fetched":N,"skipped":N,"in_page_cache":N,"done":BOOL,
    /// "stopped":null|"..."}`.
    pub fn to_json(&self) -> String {
        let stopped = self
            .stopped
            .map_or_else(|| "null".to_owned(), |s| format!("\"{s}\""));
        format!(
            "{{\"listed\":{},\"fetched\":{},\"skipped\":{},\"in_page_cache\":{},\"done\":{},\"stopped\":{stopped}}}",
            self.listed, self.fetched, self.skipped, self.in_page_cache, self.done
        )
    }
}

/// The latest progress, for the stats, and the list this mount started from.
#[derive(Debug, Default)]
pub(super) struct Prewarming {
    progress: Mutex<Option<PrewarmProgress>>,
    previous: Mutex<List>,
}

impl Prewarming {
    pub(super) fn get(&self) -> Option<PrewarmProgress> {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, p: PrewarmProgress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    fn previous(&self, list: &List) {
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = list.clone();
    }
}

impl PageFs {
    /// The heat list the previous compute of this timeline left, or an empty one (none
    /// left, or one that does not open or decode, which is logged).
    ///
    /// # Errors
    ///
    /// The page store's error.
    pub async fn heat_list(&self) -> Result<HeatList, RpcError> {
        let list = self.read_heat_list().await?;
        self.prewarming.previous(&list);
        Ok(HeatList(list))
    }

    async fn read_heat_list(&self) -> Result<List, RpcError> {
        let read = self
            .store
            .read(&self.timeline, vec![Bytes::from_static(layout::HEAT)], None)
            .await?;
        let Some(Some(stored)) = read.values.into_iter().next() else {
            return Ok(List::default());
        };
        let plain = match &self.keys {
            None => Ok(stored),
            Some(k) => k.open(ValueKind::Heat, &stored).map_err(|e| e.to_string()),
        };
        match plain.map(|p| heat::decode(&p)) {
            Ok(Some(list)) => Ok(list),
            Ok(None) => {
                tracing::warn!("the heat list does not decode; no prewarm");
                Ok(List::default())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the heat list does not open; no prewarm");
                Ok(List::default())
            }
        }
    }

    /// Fetches the pages of `list` (a heat list) into the local cache: its startup part at
    /// once, in growing batches; the rest once `active` resolves (the compute accepts
    /// clients), in paced batches (see the module docs). Reports the progress after each
    /// batch to `report` and in the stats. Never fails: a batch the page store refuses ends
    /// the prewarm (reads fetch for themselves).
    pub async fn prewarm(
        &self,
        list: HeatList,
        active: impl Future<Output = ()>,
        report: impl Fn(PrewarmProgress),
    ) -> PrewarmProgress {
        let List { pages, startup } = list.0;
        let mut progress = PrewarmProgress {
            listed: pages.len() as u64,
            ..PrewarmProgress::default()
        };
        let (first, rest) = pages.split_at(startup.min(pages.len()));
        // The prewarm stops when the cache is full, so the hottest pages that fit are what
        // comes in, whatever their order; neighbouring blocks in one batch make it cheaper
        // (the page store reads them together, the kernel pass in 1 MiB runs, not a FUSE
        // read per block). So those are sorted.
        let rest = {
            let mut rest = rest.to_vec();
            let fits = self.cache.capacity().saturating_sub(self.cache.len());
            let n = fits.min(rest.len());
            rest[..n].sort_unstable();
            rest
        };
        let mut size = FIRST_BATCH;
        let mut todo = first;
        let mut active = Some(active);
        let mut paced = false;
        loop {
            if todo.is_empty() {
                let Some(active) = active.take().filter(|_| !rest.is_empty()) else {
                    break;
                };
                active.await;
                (todo, paced, size) = (&rest, true, MAX_FETCH_BLOCKS);
                continue;
            }
            // Never more than the cache has room for: it would evict what the batch brought.
            let room = self.cache.capacity().saturating_sub(self.cache.len());
            if room == 0 {
                progress.stopped = Some("cache full");
                break;
            }
            let (batch, tail) = todo.split_at(size.min(todo.len()).min(room));
            todo = tail;
            size = (size * 2).min(MAX_FETCH_BLOCKS);
            let started = Instant::now();
            match self.prewarm_batch(batch, paced).await {
                Ok(fetched) => {
                    progress.fetched += fetched.len() as u64;
                    progress.skipped += (batch.len() - fetched.len()) as u64;
                    if paced {
                        progress.in_page_cache += self.warm_kernel(&fetched).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prewarm stopped; reads fetch their own pages");
                    progress.stopped = Some("page store error");
                    break;
                }
            }
            self.prewarming.set(progress);
            report(progress);
            if paced {
                tokio::time::sleep(started.elapsed()).await;
            }
        }
        progress.done = true;
        self.prewarming.set(progress);
        report(progress);
        progress
    }

    /// Marks the end of this boot's startup part (see the `heat` module): the compute
    /// accepts clients.
    pub fn compute_active(&self) {
        lock(&self.state).heat.started();
    }

    /// Fetches the pages of `batch` that are still wanted in one page store call, and caches
    /// those not written meanwhile. Returns the pages it fetched (holes left out).
    /// `sorted`: ask for the keys in key order, which the page store reads fastest.
    async fn prewarm_batch(
        &self,
        batch: &[(u64, u64)],
        sorted: bool,
    ) -> Result<Vec<(u64, u64)>, RpcError> {
        let (own, registered) = {
            let mut st = lock(&self.state);
            let mut own: Vec<(u64, u64)> = batch
                .iter()
                .copied()
                .filter(|&(ino, b)| {
                    st.stored_block(ino, b)
                        && !st.pages.contains_key(&(ino, b))
                        && !st.fetching.contains_key(&(ino, b))
                        && !self.cache.contains(ino, b)
                })
                .collect();
            if own.is_empty() {
                return Ok(Vec::new());
            }
            if sorted {
                own.sort_unstable();
            }
            let registered = Registered::new(&self.state, &mut st);
            (own, registered)
        };
        let started = Instant::now();
        let keys = own.iter().map(|&(i, b)| layout::page_key(i, b)).collect();
        let read = self.store.read(&self.timeline, keys, None).await?;
        self.io
            .record_fetch(own.len() as u64, started.elapsed(), true);
        // Sealed for the cache outside the state lock; holes are not cached.
        let sealed: Vec<_> = own
            .iter()
            .zip(read.values)
            .filter_map(|(&(ino, b), v)| Some(((ino, b), self.cache.seal(ino, b, &v?))))
            .collect();
        let fetched = sealed.iter().map(|&(page, _)| page).collect();
        let st = lock(&self.state);
        for ((ino, _), page) in sealed {
            self.cache_fetched(&st, ino, registered.start(), vec![page]);
        }
        drop(st);
        drop(registered);
        Ok(fetched)
    }

    /// Writes the heat list for the next compute to the timeline: this boot's reads, then
    /// the rest of the list it started from (see the `heat` module). Nothing when there is
    /// nothing to list, or once fenced.
    ///
    /// # Errors
    ///
    /// The page store's error.
    pub async fn save_heat(&self) -> Result<(), RpcError> {
        let encoded = {
            let previous = self
                .prewarming
                .previous
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let st = lock(&self.state);
            // Pages of files gone (or cut shorter) since are not carried forward.
            let alive = List {
                pages: previous
                    .pages
                    .iter()
                    .copied()
                    .filter(|&(ino, b)| st.stored_block(ino, b))
                    .collect(),
                startup: previous.startup,
            };
            st.heat.encode_after(&alive)
        };
        if encoded.len() <= 1 || self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let value = self.seal(ValueKind::Heat, Bytes::from(encoded));
        let mut batch = crate::pagefs::store::Batch::default();
        batch.push(Bytes::from_static(layout::HEAT), Some(value));
        self.store
            .write(&self.timeline, self.generation, batch)
            .await
            .map(|_| ())
    }

    /// The progress of this mount's prewarm, once it started.
    pub fn prewarm_progress(&self) -> Option<PrewarmProgress> {
        self.prewarming.get()
    }
}
