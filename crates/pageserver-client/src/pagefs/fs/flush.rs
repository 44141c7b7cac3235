//! The commit path: sending the dirty set to the page store.
//!
//! A flush copies the dirty set under the state lock, seals the pages outside it, sends
//! them, and then drops from the dirty set only the entries whose version is still the one
//! it sent (see the `state` module): whatever changed meanwhile goes out with the next one.
//!
//! **One write when it fits.** Postgres `fsync`s its WAL after nearly every commit, and a
//! commit that creates or extends a file dirties its pages, its inode record and maybe a
//! directory entry together. So a flush that fits in one write batch (at most
//! [`MAX_BATCH_KEYS`] keys and [`MAX_BATCH_BYTES`] bytes of keys and values) is one atomic
//! write: pages, namespace records, and the deletes of pages of files nothing links
//! anymore. An `fsync` then costs one page store round trip, and a crash leaves the
//! timeline wholly before or wholly after the flush.
//!
//! **Split when it does not.** A bigger flush (over 64 MiB of pages, which takes a burst
//! of writes faster than the background flushes, or the deletes of a large file's pages)
//! is sent in the old order: pages first, in batches of [`PAGE_BATCH_KEYS`], then the
//! namespace changes, then the deletes (sharing batches, namespace first). Pages are keyed
//! by inode numbers that are never reused, so a page written before the record that makes
//! it reachable is harmless, and a crash between batches leaves either the old namespace or
//! the new one, never half a rename (as long as one flush's namespace changes fit in one
//! batch, which takes over 65,000 of them to break). Deletes go last, after the records
//! that stop referencing those pages.
//!
//! **An `fsync` during a flush** in flight does not wait for that write before sending its
//! own changes: it rides along (see the `ride` module), and pays one round trip, not the
//! rest of one plus another.
//!
//! **Fencing** is noticed here: a write refused for a stale (or never acquired)
//! generation marks the mount fenced, and from then on every change and flush fails with
//! `EIO` (see [`PageFs::flush`]). The page store applies nothing of a refused write, and
//! with the one-write path nothing of the refused flush either.
//!
//! A key may appear only once in a write. Page keys, inode keys and directory entry keys
//! have different prefixes, and each dirty map holds a key once; the one possible overlap,
//! a dirty page of a file whose pages are being deleted, is resolved by sending the delete
//! only (freeing a file drops its dirty pages, so this should not happen, but a batch the
//! page store refuses as malformed would stall every later flush).
//!
//! [`MAX_BATCH_KEYS`]: lakebed_pageserver_api::limits::MAX_BATCH_KEYS
//! [`MAX_BATCH_BYTES`]: lakebed_pageserver_api::limits::MAX_BATCH_BYTES

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use fuser::Errno;
use lakebed_pageserver_api::Seq;
use lakebed_pageserver_api::limits::{MAX_BATCH_BYTES, MAX_BATCH_KEYS};

use super::PageFs;
use super::ride::FlushFlight;
use super::state::{DirtyPage, lock};
use crate::pagefs::data_key::ValueKind;
use crate::pagefs::layout;
use crate::pagefs::store::Batch;
use crate::rpc::RpcError;

/// Most keys in one page batch of a flush too big for one write: 16 MiB of pages.
const PAGE_BATCH_KEYS: usize = 2048;

/// A key and its new value (`None`: delete), as one entry of a write.
pub(super) type Entry = (Bytes, Option<Bytes>);

/// Which dirty entry a namespace key came from, and its version.
#[derive(Debug)]
pub(super) enum Version {
    Inode(u64, u64),
    Dirent(u64, Vec<u8>, u64),
}

/// A flush's copy of the dirty set.
pub(super) struct Taken {
    /// Dirty pages: `(ino, block)` and the entry as copied (with its version).
    pub(super) pages: Vec<((u64, u64), DirtyPage)>,
    /// Namespace changes: key, value as the page store will hold it (`None`: delete), and
    /// the dirty entry it came from.
    pub(super) meta: Vec<(Bytes, Option<Bytes>, Version)>,
    /// Unlinked files whose pages are to be deleted: `(ino, blocks)`.
    pub(super) dead: Vec<(u64, u64)>,
}

/// A copy of the dirty set ready to send.
pub(super) struct Prepared {
    pub(super) taken: Taken,
    /// Each page as the page store will hold it (sealed), in the order of `taken.pages`.
    stored: Vec<Option<Bytes>>,
    /// Bytes of page content, for the counters.
    bytes: usize,
    /// The writes to send, in order.
    pub(super) batches: Vec<Batch>,
}

impl PageFs {
    /// Sends everything dirty to the page store; returns once it is durable there. One
    /// write when it fits in one batch, else several (see the module docs). Called while
    /// another flush's single write is in flight, it sends its own changes at once,
    /// alongside, and returns once both are durable (see the `ride` module).
    ///
    /// # Errors
    ///
    /// `EIO`: fenced, or the page store did not answer within the client's timeout. What
    /// was not sent stays dirty for the next flush.
    pub async fn flush(&self) -> Result<(), Errno> {
        if let Some(result) = self.ride().await {
            return result;
        }
        let _one = self.flush_lock.lock().await;
        // A ride along the previous flush ends before this one copies the dirty set.
        let no_rider = self.rider_lock.lock().await;
        self.check_writable()?;
        let Some(taken) = self.take_dirty(None) else {
            return Ok(());
        };
        let prepared = self.prepare(taken);
        // A single write can be ridden along: say what it carries.
        let flight = (prepared.batches.len() == 1).then(|| self.publish(&prepared));
        drop(no_rider);
        let result = self.send(prepared.batches.clone()).await;
        let landed = result.as_ref().ok().copied();
        let outcome = self.finish(prepared, result.map(drop));
        if let Some(flight) = flight {
            flight.land(landed);
        }
        outcome
    }

    /// Seals the pages of `taken` (outside the state lock; the sealed bytes are what the
    /// cache keeps) and plans its writes.
    pub(super) fn prepare(&self, taken: Taken) -> Prepared {
        let stored: Vec<Option<Bytes>> = taken
            .pages
            .iter()
            .map(|&((ino, block), ref d)| {
                d.data
                    .clone()
                    .map(|p| self.seal(ValueKind::Page { ino, block }, p))
            })
            .collect();
        let bytes: usize = taken
            .pages
            .iter()
            .map(|(_, d)| d.data.as_ref().map_or(0, Bytes::len))
            .sum();
        let (page_entries, namespace) = entries(&taken.pages, &stored, &taken.meta, &taken.dead);
        let batches = plan(page_entries, namespace, MAX_BATCH_KEYS, MAX_BATCH_BYTES);
        Prepared {
            taken,
            stored,
            bytes,
            batches,
        }
    }

    /// Ends a flush: on success drops from the dirty set the entries whose version is
    /// still the one sent (and caches the pages sent); on failure keeps everything dirty,
    /// and marks the mount fenced if the page store named a newer generation.
    ///
    /// # Errors
    ///
    /// `EIO` when `result` is an error.
    pub(super) fn finish(
        &self,
        prepared: Prepared,
        result: Result<(), RpcError>,
    ) -> Result<(), Errno> {
        let Prepared {
            taken: Taken { pages, meta, dead },
            stored,
            bytes,
            batches,
        } = prepared;
        let mut st = lock(&self.state);
        match result {
            Ok(()) => {
                for (((ino, b), d), stored) in pages.iter().zip(&stored) {
                    if st
                        .pages
                        .get(&(*ino, *b))
                        .is_some_and(|c| c.version == d.version)
                    {
                        st.pages.remove(&(*ino, *b));
                        st.page_bytes -= d.data.as_ref().map_or(0, Bytes::len);
                        // WAL is written once and read only by a later boot's recovery, which
                        // fetches it: caching each commit's WAL page cost a seal and a cache
                        // write per fsync.
                        if !st.is_wal(*ino)
                            && let Some(data) = stored
                            && let Err(e) = self.cache.insert(*ino, *b, data)
                        {
                            tracing::warn!(error = %e, "local cache write failed");
                        }
                    }
                }
                for (_, _, v) in &meta {
                    match v {
                        Version::Inode(ino, v) => {
                            if st.inodes.get(ino) == Some(v) {
                                st.inodes.remove(ino);
                            }
                        }
                        Version::Dirent(p, name, v) => {
                            let k = (*p, name.clone());
                            if st.dirents.get(&k) == Some(v) {
                                st.dirents.remove(&k);
                            }
                        }
                    }
                }
                self.io.record_flush(bytes);
                tracing::debug!(
                    pages = pages.len(),
                    records = meta.len(),
                    bytes,
                    writes = batches.len(),
                    "flushed"
                );
                Ok(())
            }
            Err(e) => {
                st.dead.extend(dead);
                if matches!(
                    e,
                    RpcError::StaleGeneration { .. } | RpcError::GenerationNotAcquired { .. }
                ) {
                    self.fenced.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, "fenced: a newer compute holds this timeline; \
                        every further change fails with EIO");
                } else {
                    tracing::error!(error = %e, "flush to the page store failed");
                }
                Err(Errno::EIO)
            }
        }
    }

    /// Copies the dirty set (namespace values sealed as the page store will hold them) and
    /// takes the dead list; leaves out the entries `beyond` carries at the same version.
    /// `None` when nothing is left.
    pub(super) fn take_dirty(&self, beyond: Option<&FlushFlight>) -> Option<Taken> {
        let mut st = lock(&self.state);
        if !st.is_dirty() {
            return None;
        }
        let pages: Vec<_> = st
            .pages
            .iter()
            .filter(|(k, d)| beyond.is_none_or(|f| f.pages.get(*k) != Some(&d.version)))
            .map(|(&k, d)| (k, d.clone()))
            .collect();
        let mut meta = Vec::with_capacity(st.inodes.len() + st.dirents.len());
        for (&ino, &v) in &st.inodes {
            if beyond.is_some_and(|f| f.inodes.get(&ino) == Some(&v)) {
                continue;
            }
            let rec = st
                .nodes
                .get(&ino)
                .filter(|n| n.linked && !n.scratch)
                .map(|n| self.seal(ValueKind::Inode { ino }, n.rec.encode()));
            meta.push((layout::inode_key(ino), rec, Version::Inode(ino, v)));
        }
        for ((parent, name), &v) in &st.dirents {
            if beyond.is_some_and(|f| f.dirents.get(&(*parent, name.clone())) == Some(&v)) {
                continue;
            }
            let child = st
                .nodes
                .get(parent)
                .and_then(|p| p.children.get(name))
                .copied();
            let (key, value) = self.dirent_entry(*parent, name, child);
            meta.push((key, value, Version::Dirent(*parent, name.clone(), v)));
        }
        let dead = std::mem::take(&mut st.dead);
        if pages.is_empty() && meta.is_empty() && dead.is_empty() {
            return None;
        }
        Some(Taken { pages, meta, dead })
    }

    /// Puts back what `taken` took that stays in the dirty set only by being listed: the
    /// dead files (a flush that is not sent after all).
    pub(super) fn untake(&self, taken: Taken) {
        lock(&self.state).dead.extend(taken.dead);
    }

    /// Writes `batches` in order, stopping at the first error; returns the last one's seq.
    #[tracing::instrument(name = "pagefs_flush", skip_all, fields(writes = batches.len()))]
    pub(super) async fn send(&self, batches: Vec<Batch>) -> Result<Seq, RpcError> {
        let started = Instant::now();
        let mut seq = Seq(0);
        for batch in batches {
            self.io.record_write();
            seq = self
                .store
                .write(&self.timeline, self.generation, batch)
                .await?;
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "sent");
        Ok(seq)
    }
}

/// The entries of a flush: the pages, and the namespace changes followed by the deletes of
/// dead files' pages. A dirty page of a dead file is left out, and its file's delete range
/// made to cover it, so that no key appears twice.
fn entries(
    pages: &[((u64, u64), DirtyPage)],
    stored: &[Option<Bytes>],
    meta: &[(Bytes, Option<Bytes>, Version)],
    dead: &[(u64, u64)],
) -> (Vec<Entry>, Vec<Entry>) {
    // Per dead file, the blocks to delete (a file is listed once, but be sure).
    let mut dead_blocks: BTreeMap<u64, u64> = BTreeMap::new();
    for &(ino, blocks) in dead {
        let n = dead_blocks.entry(ino).or_default();
        *n = (*n).max(blocks);
    }
    let mut page_entries = Vec::with_capacity(pages.len());
    for (((ino, b), _), value) in pages.iter().zip(stored) {
        match dead_blocks.get_mut(ino) {
            Some(n) => *n = (*n).max(b + 1),
            None => page_entries.push((layout::page_key(*ino, *b), value.clone())),
        }
    }
    let deletes: usize = dead_blocks.values().map(|&n| n as usize).sum();
    let mut namespace = Vec::with_capacity(meta.len() + deletes);
    namespace.extend(meta.iter().map(|(k, v, _)| (k.clone(), v.clone())));
    for (&ino, &blocks) in &dead_blocks {
        namespace.extend((0..blocks).map(|b| (layout::page_key(ino, b), None)));
    }
    (page_entries, namespace)
}

/// Key and value bytes of an entry, as the page store counts them.
fn entry_bytes((k, v): &Entry) -> usize {
    k.len() + v.as_ref().map_or(0, Bytes::len)
}

/// Splits a flush into write batches of at most `max_keys` keys and `max_bytes` bytes: one
/// holding everything when it fits; else `pages` first (in batches of at most
/// [`PAGE_BATCH_KEYS`]), then `namespace` (namespace changes, then deletes), each batch
/// filled up to the limits. Empty when there is nothing to write.
fn plan(pages: Vec<Entry>, namespace: Vec<Entry>, max_keys: usize, max_bytes: usize) -> Vec<Batch> {
    let keys = pages.len() + namespace.len();
    let bytes: usize = pages.iter().chain(&namespace).map(entry_bytes).sum();
    if keys <= max_keys && bytes <= max_bytes {
        return chunk(pages.into_iter().chain(namespace), max_keys, max_bytes);
    }
    let mut batches = chunk(pages, PAGE_BATCH_KEYS.min(max_keys), max_bytes);
    batches.extend(chunk(namespace, max_keys, max_bytes));
    batches
}

/// Packs `entries`, in order, into batches of at most `max_keys` keys and `max_bytes`
/// bytes (an entry bigger than `max_bytes` alone gets a batch of its own).
fn chunk(
    entries: impl IntoIterator<Item = Entry>,
    max_keys: usize,
    max_bytes: usize,
) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut batch = Batch::default();
    let mut bytes = 0;
    for entry in entries {
        let n = entry_bytes(&entry);
        if !batch.is_empty() && (batch.keys() >= max_keys || bytes + n > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += n;
        batch.push(entry.0, entry.1);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Runs background flushes until `fs` is fenced (the task holds a clone, so abort it to
/// stop it otherwise). After a failure it waits twice as long, up to 32 intervals.
pub async fn flusher(fs: Arc<PageFs>) {
    let mut failures = 0u32;
    loop {
        let wait = fs.options.flush_interval * 2u32.pow(failures.min(5));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = fs.flush_wanted.notified() => {}
        }
        match fs.flush().await {
            Ok(()) => failures = 0,
            Err(_) if fs.fenced.load(Ordering::Relaxed) => return,
            Err(_) => failures += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ino: u64, block: u64) -> Entry {
        (
            layout::page_key(ino, block),
            Some(Bytes::from(vec![7u8; 100])),
        )
    }

    fn record(ino: u64) -> Entry {
        (layout::inode_key(ino), Some(Bytes::from_static(b"rec")))
    }

    fn keys_of(b: &Batch) -> Vec<Bytes> {
        b.puts
            .iter()
            .map(|(k, _)| k.clone())
            .chain(b.deletes.iter().cloned())
            .collect()
    }

    #[test]
    fn a_flush_that_fits_is_one_batch() {
        let pages = vec![page(5, 0), page(5, 1)];
        let namespace = vec![record(5), (layout::page_key(9, 0), None)];
        let batches = plan(pages, namespace, 4, 1 << 20);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].puts.len(), 3);
        assert_eq!(batches[0].deletes, vec![layout::page_key(9, 0)]);
        assert!(plan(Vec::new(), Vec::new(), 4, 1 << 20).is_empty());
    }

    #[test]
    fn a_flush_too_big_sends_pages_first_and_the_namespace_last() {
        // Five keys against a limit of four: split, pages in their own batches.
        let pages = vec![page(5, 0), page(5, 1), page(5, 2)];
        let namespace = vec![record(5), (layout::page_key(9, 0), None)];
        let batches = plan(pages, namespace, 4, 1 << 20);
        let keys: Vec<Vec<Bytes>> = batches.iter().map(keys_of).collect();
        assert_eq!(
            keys,
            vec![
                vec![
                    layout::page_key(5, 0),
                    layout::page_key(5, 1),
                    layout::page_key(5, 2)
                ],
                vec![layout::inode_key(5), layout::page_key(9, 0)],
            ]
        );
        // Bytes count too: each page entry is 17 + 100 bytes, so 250 bytes fit two.
        let pages = vec![page(5, 0), page(5, 1), page(5, 2)];
        let batches = plan(pages, vec![record(5)], 100, 250);
        let sizes: Vec<usize> = batches.iter().map(Batch::keys).collect();
        assert_eq!(sizes, [2, 1, 1]);
        assert!(batches.iter().all(|b| b.bytes() <= 250));
        assert_eq!(keys_of(&batches[2]), vec![layout::inode_key(5)]);
    }

    #[test]
    fn a_dead_files_dirty_page_is_not_sent_twice() {
        let dirty = |data: Option<&'static [u8]>| DirtyPage {
            data: data.map(Bytes::from_static),
            version: 1,
        };
        let pages = vec![((5, 0), dirty(Some(b"x"))), ((7, 3), dirty(Some(b"y")))];
        let stored = vec![
            Some(Bytes::from_static(b"x")),
            Some(Bytes::from_static(b"y")),
        ];
        // File 7 is dead with 2 blocks (listed twice); its dirty block 3 widens the range.
        let (pages, namespace) = entries(&pages, &stored, &[], &[(7, 2), (7, 1)]);
        assert_eq!(
            pages,
            vec![(layout::page_key(5, 0), Some(Bytes::from_static(b"x")))]
        );
        let deleted: Vec<Bytes> = namespace.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            deleted,
            (0..4).map(|b| layout::page_key(7, b)).collect::<Vec<_>>()
        );
    }
}
