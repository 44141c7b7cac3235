//! Page fetches from the page store: one call per run of blocks, shared by every reader
//! that needs one of them, and never allowed to bring back a page older than a write.
//!
//! **One call per run.** A fetch asks for the blocks a read or write needs plus, for a
//! sequential read, the readahead window past them ([`Need::ahead`]; see the `readahead`
//! module). Blocks held locally (dirty or cached), past the end of the file, or already on
//! the way are left out, and the rest go in one page store call: a `Scan` of their key range
//! when they are consecutive (a page key is the inode, then the block, both big-endian, so
//! a file's pages sort in block order: [`layout::page_key`]), else one `Read` of their keys.
//! Every fetched page goes to the local cache, read yet or not.
//!
//! **Shared.** While a fetch is in flight each of its blocks is registered in
//! `State::fetching`. A read that needs one of them waits for that fetch and uses the page
//! it brought, instead of asking the page store again; readahead simply skips them.
//!
//! **Never older than a write.** A fetch runs without the state lock, so a write (or
//! truncate) can change a block while its old content is on the way. Using that old
//! content, or caching it, would undo the write. So a fetch is *registered* from
//! [`PageFs::fetch`] until [`PageFs::done`]: it notes the change counter (`change_seq`) when
//! it starts, and while any fetch is registered every block change is remembered with its
//! counter value (`changed`). A fetched page is then used, and cached, only if its block has
//! not changed since the fetch started. A reader waiting for another's fetch registers at
//! that fetch's start, so the same check covers it. A block is fetched only if it is
//! neither dirty nor cached when the fetch registers: from a write until its flush is in the
//! page store the block is dirty, and afterwards the page store has the new content. When
//! no fetch is registered nothing is remembered, so the bookkeeping costs nothing in the
//! common case, and it is pruned as fetches end.
//!
//! The caller's loop (the FUSE layer's `with_fetched`): try the operation; on [`Need`],
//! `fetch`, try again with the [`Fetched`] pages, then `done`; blocks that changed in
//! between are simply asked for again.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use fuser::Errno;
use tokio::sync::watch;

use super::PageFs;
use super::data::zeros;
use super::state::{State, lock};
use crate::pagefs::cache::SealedPage;
use crate::pagefs::layout::{self, blocks_for};
use crate::rpc::RpcError;

/// Most blocks one fetch asks the page store for: 8 MiB, well inside the page store's
/// limits on keys per read and entries per scan. Blocks past it are asked for again.
pub(super) const MAX_FETCH_BLOCKS: usize = 1024;

/// What a read or write needs before it can complete.
#[derive(Debug, Default)]
pub struct Need {
    /// Blocks to fetch, or to wait for when a fetch of them is in flight.
    pub blocks: Vec<u64>,
    /// Readahead: blocks to fetch in the same call, unless held locally or on the way.
    pub ahead: Range<u64>,
}

/// Pages fetched for one inode. A fetched page is used only if its block has not changed
/// since its fetch started: while a fetch is registered (from [`PageFs::fetch`] until
/// [`PageFs::done`]), every block change is remembered with its sequence number.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The registrations held: the change sequence number each fetch started at.
    pub(super) starts: Vec<u64>,
    /// Block -> content (zeros for holes) and the change sequence number its fetch
    /// started at.
    pub(super) pages: HashMap<u64, (Bytes, u64)>,
}

impl Fetched {
    /// The fetched content of block `b` of `ino`, unless the block changed since.
    pub(super) fn page(&self, st: &State, ino: u64, b: u64) -> Option<&Bytes> {
        self.pages
            .get(&b)
            .filter(|(_, start)| st.unchanged_since(ino, b, *start))
            .map(|(page, _)| page)
    }
}

/// How a fetch ended, for the readers waiting for it: each block's page as the page store
/// holds it (`None`: a hole; each reader opens the pages it needs), or the error.
type Landed = Result<Arc<HashMap<u64, Option<Bytes>>>, Errno>;

/// A fetch in flight, as the readers waiting for it see it.
#[derive(Debug)]
pub(super) struct Flight {
    /// The change sequence number it started at.
    start: u64,
    /// `None` until it lands; closed with `None` if the fetch was dropped.
    landed: watch::Receiver<Option<Landed>>,
}

/// Who a fetch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum For {
    /// A read or write waiting for it: waits for fetches in flight of the blocks it needs.
    Demand,
    /// Background readahead: fetches only what nobody holds or fetches.
    Background,
}

impl State {
    /// Records that block `b` of `ino` changed, for fetches in flight.
    pub(super) fn note_change(&mut self, ino: u64, b: u64) {
        self.change_seq += 1;
        self.staged.remove(ino, b);
        if !self.inflight.is_empty() {
            self.changed.insert((ino, b), self.change_seq);
        }
    }

    /// Whether a page fetched from `start` on is still what block `b` holds.
    pub(super) fn unchanged_since(&self, ino: u64, b: u64, start: u64) -> bool {
        self.changed.get(&(ino, b)).is_none_or(|&c| c <= start)
    }

    /// Registers a fetch (or a wait for one) that started at `start`.
    pub(super) fn register(&mut self, start: u64) {
        *self.inflight.entry(start).or_default() += 1;
    }

    /// Ends a registration at `start`, and forgets the changes no registered fetch can be
    /// older than.
    fn unregister(&mut self, start: u64) {
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

    /// Drops the `fetching` entries of `flight`'s blocks.
    fn unfetch(&mut self, ino: u64, blocks: &[u64], flight: &Arc<Flight>) {
        for &b in blocks {
            if self
                .fetching
                .get(&(ino, b))
                .is_some_and(|f| Arc::ptr_eq(f, flight))
            {
                self.fetching.remove(&(ino, b));
            }
        }
    }
}

/// Stages pages fetched ahead from `start` on, as the page store holds them: those of
/// blocks unchanged since, not dirty, not cached, and still in the file.
fn stage_fetched(st: &mut State, ino: u64, start: u64, pages: impl Iterator<Item = (u64, Bytes)>) {
    let Ok(node) = st.node(ino) else {
        return;
    };
    let blocks = blocks_for(node.rec.size);
    for (b, stored) in pages {
        if b < blocks && st.unchanged_since(ino, b, start) && !st.pages.contains_key(&(ino, b)) {
            st.staged.put(ino, b, stored);
        }
    }
}

/// Registrations taken by a fetch; ended on drop (a failed or cancelled fetch) unless
/// handed to the [`Fetched`] it returns.
pub(super) struct Registered<'a> {
    state: &'a Mutex<State>,
    starts: Vec<u64>,
}

impl<'a> Registered<'a> {
    /// Registers a fetch starting now (`st` is `state`, locked), ended on drop.
    pub(super) fn new(state: &'a Mutex<State>, st: &mut State) -> Self {
        let start = st.change_seq;
        st.register(start);
        Self {
            state,
            starts: vec![start],
        }
    }

    /// The change sequence number the (first) registration started at.
    pub(super) fn start(&self) -> u64 {
        self.starts.first().copied().unwrap_or_default()
    }

    fn keep(mut self) -> Vec<u64> {
        std::mem::take(&mut self.starts)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if !self.starts.is_empty() {
            let mut st = lock(self.state);
            for s in self.starts.drain(..) {
                st.unregister(s);
            }
        }
    }
}

/// This fetch's own blocks while in flight. Dropped before landing (cancelled), it
/// unregisters them, and the readers waiting for it see the channel close.
struct Own<'a> {
    state: &'a Mutex<State>,
    ino: u64,
    blocks: Vec<u64>,
    flight: Arc<Flight>,
    tx: watch::Sender<Option<Landed>>,
    landed: bool,
}

impl Drop for Own<'_> {
    fn drop(&mut self) {
        if !self.landed {
            lock(self.state).unfetch(self.ino, &self.blocks, &self.flight);
        }
    }
}

/// What a fetch does, decided under the state lock.
struct Plan<'a> {
    own: Option<Own<'a>>,
    /// Fetches in flight to wait for, with the blocks wanted from each.
    joins: Vec<(Arc<Flight>, Vec<u64>)>,
}

impl PageFs {
    /// Fetches what `need` asks for of `ino` from the page store (holes as zeros), or waits
    /// for a fetch of it already in flight, and caches what it fetched unless the file
    /// changed meanwhile. The fetch stays registered until [`Self::done`] (unless this
    /// fails). A block held locally by now is not fetched: the caller finds it there.
    ///
    /// # Errors
    ///
    /// `EIO` when the page store did not answer within the client's timeout, or a page
    /// does not open under the tenant's key (also when the fetch waited for failed so).
    #[tracing::instrument(
        name = "pagefs_fetch",
        skip_all,
        fields(ino, pages = need.blocks.len(), ahead = need.ahead.end.saturating_sub(need.ahead.start))
    )]
    pub async fn fetch(&self, ino: u64, need: Need) -> Result<Fetched, Errno> {
        self.fetch_for(ino, need, For::Demand).await
    }

    /// Ends a fetch's registration; call it once its pages were used.
    pub fn done(&self, fetched: Fetched) {
        if fetched.starts.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        for s in fetched.starts {
            st.unregister(s);
        }
    }

    /// [`Self::fetch`], for a reader or for background readahead.
    pub(super) async fn fetch_for(&self, ino: u64, need: Need, who: For) -> Result<Fetched, Errno> {
        let mut registered = Registered {
            state: &self.state,
            starts: Vec::new(),
        };
        let Plan { own, joins } = self.plan(ino, &need, who, &mut registered);
        let mut demanded = match who {
            For::Demand => need.blocks.clone(),
            For::Background => Vec::new(),
        };
        demanded.sort_unstable();
        let demanded = &demanded[..];
        let own_pages = async move {
            match own {
                Some(own) => self.fetch_own(own, demanded).await.map(Some),
                None => Ok(None),
            }
        };
        let joined = async {
            let mut pages = HashMap::new();
            for (flight, blocks) in &joins {
                let mut rx = flight.landed.clone();
                let landed = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|l| l.clone());
                match landed {
                    Some(Ok(got)) => {
                        for b in blocks {
                            let page = match got.get(b) {
                                Some(Some(stored)) => self.open_stored(ino, *b, stored)?,
                                Some(None) => zeros(),
                                None => continue,
                            };
                            pages.insert(*b, (page, flight.start));
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    // Dropped before landing: the caller asks for these blocks again.
                    None => {}
                }
            }
            Ok(pages)
        };
        let (own_pages, joined) = tokio::join!(own_pages, joined);
        let (own_pages, mut pages) = (own_pages?, joined?);
        self.io.record_joined(pages.len() as u64);
        if let Some((start, own_pages)) = own_pages {
            pages.extend(own_pages.into_iter().map(|(b, p)| (b, (p, start))));
        }
        Ok(Fetched {
            starts: registered.keep(),
            pages,
        })
    }

    /// Sorts the blocks of `need` into this fetch's own, those to wait for, and those to
    /// leave out, and registers the fetch (under the state lock, so that a write after this
    /// is seen as a change).
    fn plan<'a>(
        &'a self,
        ino: u64,
        need: &Need,
        who: For,
        registered: &mut Registered<'a>,
    ) -> Plan<'a> {
        let mut st = lock(&self.state);
        // A file gone meanwhile has nothing to fetch; the caller's retry says ENOENT.
        let blocks = st.node(ino).map_or(0, |n| blocks_for(n.rec.size));
        let mut own = Vec::new();
        let mut joins: Vec<(Arc<Flight>, Vec<u64>)> = Vec::new();
        let demanded = need.blocks.iter().map(|&b| (b, who == For::Demand));
        let ahead = need.ahead.clone().map(|b| (b, false));
        for (b, wait) in demanded.chain(ahead) {
            if b >= blocks
                || st.pages.contains_key(&(ino, b))
                || self.cache.contains(ino, b)
                || st.staged.contains(ino, b)
            {
                continue;
            }
            match st.fetching.get(&(ino, b)) {
                Some(f) if wait => match joins.iter_mut().find(|(j, _)| Arc::ptr_eq(j, f)) {
                    Some((_, bs)) => bs.push(b),
                    None => joins.push((f.clone(), vec![b])),
                },
                Some(_) => {}
                None => own.push(b),
            }
        }
        for (f, _) in &joins {
            st.register(f.start);
            registered.starts.push(f.start);
        }
        own.sort_unstable();
        own.dedup();
        own.truncate(MAX_FETCH_BLOCKS);
        if own.is_empty() {
            return Plan { own: None, joins };
        }
        let start = st.change_seq;
        st.register(start);
        registered.starts.push(start);
        let (tx, landed) = watch::channel(None);
        let flight = Arc::new(Flight { start, landed });
        for &b in &own {
            st.fetching.insert((ino, b), flight.clone());
        }
        Plan {
            own: Some(Own {
                state: &self.state,
                ino,
                blocks: own,
                flight,
                tx,
                landed: false,
            }),
            joins,
        }
    }

    /// Fetches `own`'s blocks in one page store call and tells the readers waiting. The
    /// `demanded` blocks (sorted; a reader waits for them) are opened and go to the local
    /// cache; the others, fetched ahead, are staged (see the `staged` module). Returns the
    /// fetch's start and the demanded pages, opened (zeros for holes).
    async fn fetch_own(
        &self,
        mut own: Own<'_>,
        demanded: &[u64],
    ) -> Result<(u64, HashMap<u64, Bytes>), Errno> {
        let ino = own.ino;
        let started = Instant::now();
        let result = self.call(ino, &own.blocks).await;
        self.io.record_fetch(
            own.blocks.len() as u64,
            started.elapsed(),
            demanded.is_empty(),
        );
        let opened = result
            .map_err(|e| {
                tracing::error!(error = %e, ino, blocks = own.blocks.len(), "page fetch failed");
                Errno::EIO
            })
            .and_then(|stored| {
                // Opened and sealed for the cache here, outside the state lock.
                let mut pages = HashMap::new();
                let mut sealed = Vec::new();
                for (b, v) in &stored {
                    if demanded.binary_search(b).is_err() {
                        continue;
                    }
                    let page = match v {
                        Some(v) => {
                            sealed.push(self.cache.seal(ino, *b, v));
                            self.open_stored(ino, *b, v)?
                        }
                        None => zeros(),
                    };
                    pages.insert(*b, page);
                }
                let stored: HashMap<u64, Option<Bytes>> = stored.into_iter().collect();
                Ok((sealed, pages, Arc::new(stored)))
            });
        let (landed, pages): (Landed, _) = {
            let mut st = lock(&self.state);
            st.unfetch(ino, &own.blocks, &own.flight);
            own.landed = true;
            match opened {
                Ok((sealed, pages, stored)) => {
                    let start = own.flight.start;
                    self.cache_fetched(&st, ino, start, sealed);
                    let ahead = stored.iter().filter_map(|(b, v)| {
                        let v = v.as_ref()?;
                        demanded.binary_search(b).is_err().then(|| (*b, v.clone()))
                    });
                    stage_fetched(&mut st, ino, start, ahead);
                    (Ok(stored), Ok(pages))
                }
                Err(e) => (Err(e), Err(e)),
            }
        };
        // Nobody waiting is fine.
        let _ = own.tx.send(Some(landed));
        pages.map(|pages| (own.flight.start, pages))
    }

    /// Caches pages fetched from `start` on, as the page store holds them (sealed under the
    /// DEK) sealed again for the cache: those of blocks unchanged since, not dirty, and still
    /// in the file. Holes are not cached.
    pub(super) fn cache_fetched(&self, st: &State, ino: u64, start: u64, sealed: Vec<SealedPage>) {
        let Ok(node) = st.node(ino) else {
            return;
        };
        let blocks = blocks_for(node.rec.size);
        for page in sealed {
            let b = page.block();
            if b < blocks
                && st.unchanged_since(ino, b, start)
                && !st.pages.contains_key(&(ino, b))
                && let Err(e) = self.cache.insert_sealed(page)
            {
                tracing::warn!(error = %e, "local cache write failed");
            }
        }
    }

    /// One page store call for `blocks` of `ino` (sorted, distinct, not empty): a scan of
    /// their key range when they are consecutive, else a read of their keys. Returns the
    /// stored value of each block answered for (`None`: a hole); a scan cut short leaves
    /// out the blocks past its last key.
    async fn call(&self, ino: u64, blocks: &[u64]) -> Result<Vec<(u64, Option<Bytes>)>, RpcError> {
        let (Some(&first), Some(&last)) = (blocks.first(), blocks.last()) else {
            return Ok(Vec::new());
        };
        if blocks.len() == 1 || last - first + 1 != blocks.len() as u64 {
            let keys = blocks.iter().map(|&b| layout::page_key(ino, b)).collect();
            let read = self.store.read(&self.timeline, keys, None).await?;
            return Ok(blocks.iter().copied().zip(read.values).collect());
        }
        let (start, end) = (
            layout::page_key(ino, first),
            layout::page_key(ino, last + 1),
        );
        let limit = u32::try_from(blocks.len()).unwrap_or(u32::MAX);
        let page = self
            .store
            .scan(&self.timeline, &start, Some(&end), None, limit)
            .await?;
        let mut found = HashMap::with_capacity(page.entries.len());
        for (k, v) in page.entries {
            match layout::parse_page_key(&k) {
                Some((i, b)) if i == ino && (first..=last).contains(&b) => {
                    found.insert(b, v);
                }
                _ => {
                    tracing::warn!(key = ?k, "page store scan answered a key outside the range asked")
                }
            }
        }
        // Cut short: only the blocks up to the last one answered are known.
        let known_end = if page.more {
            found.keys().max().map_or(first, |b| b + 1)
        } else {
            last + 1
        };
        Ok((first..known_end).map(|b| (b, found.remove(&b))).collect())
    }
}
