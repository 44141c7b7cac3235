//! File contents: read, write and truncate over the three layers.
//!
//! A block's content is the first of: the dirty set (written, not yet flushed), the sealed
//! local cache (clean pages as the page store holds them), the pages fetched ahead of their
//! reader (see the `staged` module), a page the caller fetched ([`Fetched`]), the page store. Nothing here waits for the page store: when a block is
//! missing locally, an operation returns [`Need`] (the blocks to fetch, and for a read the
//! readahead window past them; see the `readahead` module) and the caller fetches them (see
//! the `fetch` module) and calls again, so the state lock is never held
//! across a round trip and a FUSE thread never blocks on one. A write fetches only blocks
//! it overwrites in part; whole blocks are simply replaced.
//!
//! Scratch files take the same paths but keep their blocks in [`Scratch`] instead of the
//! dirty set.
//!
//! [`Scratch`]: crate::pagefs::cache::Scratch

use std::time::SystemTime;

use bytes::Bytes;
use fuser::Errno;

use super::PageFs;
use super::fetch::{Fetched, Need};
use super::kernel_warm::Reader;
use super::readahead::{self, Advice};
use super::state::{Node, State, lock};
use crate::pagefs::cache::LocalError;
use crate::pagefs::layout::{BLOCK_SIZE, blocks_for};

const BS: u64 = BLOCK_SIZE as u64;

/// A block's content, as far as the local layers know it.
enum Local {
    Known(Bytes),
    Missing,
}

/// A block of zeros: a hole, or past the end of a file.
pub(super) fn zeros() -> Bytes {
    Bytes::from_static(&[0u8; BLOCK_SIZE])
}

fn local_error(e: &LocalError) -> Errno {
    tracing::error!(error = %e, "local cache block unreadable: failing the read with EIO");
    Errno::EIO
}

impl PageFs {
    /// The local content of each block of `blocks` (dirty set, then cache, then `fetched`),
    /// or the ones missing. Blocks at or past the end of the file read as zeros.
    fn gather(
        &self,
        st: &State,
        ino: u64,
        blocks: impl Iterator<Item = u64>,
        fetched: &Fetched,
    ) -> Result<(Vec<Bytes>, Vec<u64>), Errno> {
        let node = st.node(ino)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for b in blocks {
            let local = if b * BS >= node.rec.size {
                Local::Known(zeros())
            } else if node.scratch {
                Local::Known(
                    self.scratch
                        .get(ino, b)
                        .map_err(|e| local_error(&e))?
                        .unwrap_or_else(zeros),
                )
            } else if let Some(d) = st.pages.get(&(ino, b)) {
                Local::Known(d.data.clone().unwrap_or_else(zeros))
            } else if let Some(p) = self.cache.get(ino, b).map_err(|e| local_error(&e))? {
                Local::Known(self.open_stored(ino, b, &p)?)
            } else if let Some(p) = st.staged.get(ino, b) {
                Local::Known(self.open_stored(ino, b, p)?)
            } else if let Some(p) = fetched.page(st, ino, b) {
                Local::Known(p.clone())
            } else {
                Local::Missing
            };
            match local {
                Local::Known(p) => found.push(p),
                Local::Missing => {
                    missing.push(b);
                    found.push(Bytes::new());
                }
            }
        }
        Ok((found, missing))
    }

    /// Reads up to `size` bytes at `offset` for a client, or says which blocks must be
    /// fetched first. See [`PageFs::read_for`].
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` (a local block does not verify).
    pub fn read(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        fetched: &Fetched,
    ) -> Result<Result<Vec<u8>, Need>, Errno> {
        self.read_for(Reader::Client, ino, offset, size, fetched)
    }

    /// Reads up to `size` bytes at `offset`, or says which blocks must be fetched first.
    /// A client's read is listed in the heat list and may start readahead; prewarm's
    /// (filling the kernel's page cache) does neither.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` (a local block does not verify).
    pub fn read_for(
        &self,
        reader: Reader,
        ino: u64,
        offset: u64,
        size: u32,
        fetched: &Fetched,
    ) -> Result<Result<Vec<u8>, Need>, Errno> {
        let client = reader == Reader::Client;
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let scratch = node.scratch;
        // The WAL is read at start and in recovery, at a new place each boot: not listed.
        let listed = client && !scratch && !st.is_wal(ino);
        let size_now = node.rec.size;
        let end = (offset + u64::from(size)).min(size_now);
        if offset >= end {
            return Ok(Ok(Vec::new()));
        }
        let first = offset / BS;
        let last = end.div_ceil(BS);
        let (pages, missing) = self.gather(&st, ino, first..last, fetched)?;
        // Readahead is decided at a read's first try (the retry after a fetch has pages).
        let advice = if client && fetched.starts.is_empty() && !scratch {
            let read = readahead::Read {
                ino,
                first,
                end: last,
                blocks: size_now.div_ceil(BS),
                // Blocks on the way are waited for, not missed: the stream goes on.
                missed: missing
                    .iter()
                    .any(|b| !st.fetching.contains_key(&(ino, *b))),
            };
            let max = readahead::max_window(self.cache.capacity());
            st.readahead.on_read(read, max, self.prefetch.running())
        } else {
            Advice::default()
        };
        if !missing.is_empty() {
            return Ok(Err(Need {
                blocks: missing,
                ahead: advice.sync,
            }));
        }
        if listed {
            let blocks = size_now.div_ceil(BS);
            st.heat.touch(ino, first..last.min(blocks));
        }
        drop(st);
        if !advice.background.is_empty() {
            self.prefetch.push(ino, advice.background);
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for (i, page) in pages.iter().enumerate() {
            let block_start = (first + i as u64) * BS;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start).min(BS)) as usize;
            let page = if page.len() < BLOCK_SIZE {
                let mut p = page.to_vec();
                p.resize(BLOCK_SIZE, 0);
                Bytes::from(p)
            } else {
                page.clone()
            };
            out.extend_from_slice(&page[from..to]);
        }
        Ok(Ok(out))
    }

    /// Writes `data` at `offset`, or says which blocks must be fetched first (those only
    /// partly overwritten).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` (fenced, or local I/O failed), `EFBIG`.
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        fetched: &Fetched,
    ) -> Result<Result<u32, Need>, Errno> {
        self.check_writable()?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        if data.is_empty() {
            return Ok(Ok(0));
        }
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let first = offset / BS;
        let last = (end - 1) / BS;
        // Blocks only partly covered need their current content.
        let mut partial = [first, last]
            .into_iter()
            .filter(|&b| offset > b * BS || end < (b + 1) * BS)
            .collect::<Vec<_>>();
        partial.dedup();
        let (bases, missing) = self.gather(&st, ino, partial.iter().copied(), fetched)?;
        if !missing.is_empty() {
            return Ok(Err(Need {
                blocks: missing,
                ..Need::default()
            }));
        }
        let scratch = node.scratch;
        // A page Postgres writes back was in its buffers: hot, even if pagefs never saw it
        // read. Not the WAL's (see `read`).
        let listed = !scratch && !st.is_wal(ino);
        let base_of = |b: u64| {
            partial
                .iter()
                .position(|&p| p == b)
                .map(|i| bases[i].clone())
        };
        for b in first..=last {
            let block_start = b * BS;
            let from = offset.max(block_start);
            let to = end.min(block_start + BS);
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let page = match base_of(b) {
                Some(base) => {
                    let mut p = base.to_vec();
                    p.resize(BLOCK_SIZE, 0);
                    p[(from - block_start) as usize..(to - block_start) as usize]
                        .copy_from_slice(src);
                    Bytes::from(p)
                }
                None => Bytes::copy_from_slice(src),
            };
            if scratch {
                self.scratch.put(ino, b, &page).map_err(|e| {
                    tracing::error!(error = %e, "scratch write failed");
                    Errno::EIO
                })?;
            } else {
                self.cache.remove(ino, b);
                st.put_page(ino, b, Some(page));
                st.note_change(ino, b);
            }
        }
        if listed {
            st.heat.touch(ino, first..last + 1);
        }
        let now = SystemTime::now();
        let n = st.node_mut(ino)?;
        n.rec.size = n.rec.size.max(end);
        n.rec.mtime = now;
        n.rec.ctime = now;
        st.mark_inode(ino);
        if st.page_bytes >= self.options.dirty_flush_bytes {
            self.flush_wanted.notify_one();
        }
        Ok(Ok(data.len() as u32))
    }

    /// Sets the size of file `ino`. Shrinking drops the blocks past the end and zeroes the
    /// tail of the new last block (which may need it fetched first).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` when fenced.
    pub fn truncate(
        &self,
        ino: u64,
        size: u64,
        fetched: &Fetched,
    ) -> Result<Result<Node, Need>, Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let old = node.rec.size;
        let scratch = node.scratch;
        if size < old {
            let keep = blocks_for(size);
            // The new last block keeps [0, size % BS); the rest must read as zeros later.
            if !size.is_multiple_of(BS) {
                let b = size / BS;
                let (bases, missing) = self.gather(&st, ino, std::iter::once(b), fetched)?;
                if !missing.is_empty() {
                    return Ok(Err(Need {
                        blocks: missing,
                        ..Need::default()
                    }));
                }
                let mut p = bases[0].to_vec();
                p.resize(BLOCK_SIZE, 0);
                p[(size % BS) as usize..].fill(0);
                if scratch {
                    self.scratch.put(ino, b, &p).map_err(|_| Errno::EIO)?;
                } else {
                    self.cache.remove(ino, b);
                    st.put_page(ino, b, Some(Bytes::from(p)));
                    st.note_change(ino, b);
                }
            }
            if scratch {
                self.scratch.truncate(ino, keep);
            } else {
                self.cache.remove_from(ino, keep);
                for b in keep..blocks_for(old) {
                    st.put_page(ino, b, None);
                    st.note_change(ino, b);
                }
            }
        }
        let now = SystemTime::now();
        let n = st.node_mut(ino)?;
        n.rec.size = size;
        n.rec.mtime = now;
        n.rec.ctime = now;
        let n = n.clone();
        st.mark_inode(ino);
        Ok(Ok(n))
    }
}
