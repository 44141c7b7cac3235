//! Immutable layer files: the sorted, checksummed form that versions take once they leave
//! the memtable. A layer holds the versions of one timeline over a seq range `[lo, hi]`.
//!
//! Two sections, so that what is read most costs least:
//!
//! - **newest**: one entry per key, the key's newest version in the layer, in key order. A
//!   read at the newest seq, and a scan at it, only ever touch this section: its cost is
//!   what it returns, whatever history the layer also keeps.
//! - **history**: every other version, in key order and newest seq first within a key. Only
//!   a read at a seq inside `[lo, hi)` looks here.
//!
//! ```text
//! file:   blocks (of both sections, interleaved) | newest index | history index | footer (72 bytes)
//! block:  entries (see codec) | crc32 of the entries
//! index:  per block: first key (u16 len + bytes) | first seq u64 | offset u64 | length u32
//! footer: magic "LKBLAYR1" | timeline u64 | lo u64 | hi u64 | newest count u64 |
//!         history count u64 | index offset u64 | newest index length u32 |
//!         history index length u32 | index crc32 | footer crc32
//! ```
//!
//! The indexes (a key per 64 KiB block) stay in memory; blocks are read with `pread` and
//! kept, decoded, in the store's bounded [`BlockCache`]. A block or index whose checksum
//! fails is a [`StoreError::Corrupt`] naming the file: never data. Files are written under a
//! temporary name, fsynced and renamed into place, so a crash never leaves a half layer
//! under a real name.

use std::cmp::{Ordering, Reverse};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::codec::{Entry, Reader, crc};
use super::error::StoreError;

const MAGIC: &[u8; 8] = b"LKBLAYR1";
const FOOTER_LEN: u64 = 72;
/// Blocks are cut once they pass this many bytes.
const BLOCK_BYTES: usize = 64 * 1024;

/// Decoded blocks shared by every layer of a store, bounded in bytes.
pub type BlockCache = quick_cache::sync::Cache<(u64, u64), Arc<Block>, BlockWeight>;

/// Weighs a cached block by its bytes plus per-entry overhead.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockWeight;

impl quick_cache::Weighter<(u64, u64), Arc<Block>> for BlockWeight {
    fn weight(&self, _key: &(u64, u64), block: &Arc<Block>) -> u64 {
        block.bytes as u64 + 48 * block.entries.len() as u64
    }
}

/// A new cache of at most `bytes`.
pub fn block_cache(bytes: u64) -> BlockCache {
    // Items are ~64 KiB blocks; the estimate only sizes the hash table.
    let items = (bytes / (64 * 1024)).max(16) as usize;
    BlockCache::with_weighter(items, bytes.max(1), BlockWeight)
}

/// One decoded block.
#[derive(Debug)]
pub struct Block {
    entries: Vec<Entry>,
    bytes: usize,
}

/// Which section of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// One entry per key, its newest version in the layer.
    Newest,
    /// The other versions, newest first within a key.
    History,
}

#[derive(Debug, Clone)]
struct IndexEntry {
    first_key: Bytes,
    first_seq: u64,
    offset: u64,
    len: u32,
}

/// An open layer file.
#[derive(Debug)]
pub struct Layer {
    /// The file number, unique in the store; names the file.
    pub file_no: u64,
    /// The timeline's internal number.
    pub tid: u64,
    /// The lowest seq of any version in the layer.
    pub lo: u64,
    /// The highest seq of any version in the layer.
    pub hi: u64,
    /// Entries in the newest section (= distinct keys).
    pub newest_count: u64,
    /// Entries in the history section.
    pub history_count: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    path: PathBuf,
    file: File,
    newest: Vec<IndexEntry>,
    history: Vec<IndexEntry>,
}

/// The file name of layer `file_no`.
pub fn file_name(file_no: u64) -> String {
    format!("{file_no:016x}.layer")
}

/// The file number a layer file name stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".layer")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Layer {
    /// Opens and checks layer `file_no` in `dir`: footer and index checksums; blocks are
    /// checked as they are read.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`]; [`StoreError::Corrupt`] for a truncated file or a checksum that
    /// fails.
    pub fn open(dir: &Path, file_no: u64) -> Result<Layer, StoreError> {
        let path = dir.join(file_name(file_no));
        let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let bytes = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let corrupt = |why: &str| StoreError::corrupt(&path, why);
        if bytes < FOOTER_LEN {
            return Err(corrupt("shorter than a layer footer (truncated)"));
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, bytes - FOOTER_LEN)
            .map_err(|e| StoreError::io(&path, e))?;
        let (body, sum) = footer.split_at(FOOTER_LEN as usize - 4);
        if &footer[..8] != MAGIC {
            return Err(corrupt("no layer footer (truncated or not a layer file)"));
        }
        if crc(body).to_le_bytes() != sum {
            return Err(corrupt("footer checksum mismatch"));
        }
        let mut r = Reader::new(Bytes::copy_from_slice(&body[8..]));
        let bad = || corrupt("footer does not decode");
        let tid = r.u64().ok_or_else(bad)?;
        let lo = r.u64().ok_or_else(bad)?;
        let hi = r.u64().ok_or_else(bad)?;
        let newest_count = r.u64().ok_or_else(bad)?;
        let history_count = r.u64().ok_or_else(bad)?;
        let index_off = r.u64().ok_or_else(bad)?;
        let newest_len = u64::from(r.u32().ok_or_else(bad)?);
        let history_len = u64::from(r.u32().ok_or_else(bad)?);
        let index_crc = r.u32().ok_or_else(bad)?;
        let index_end = index_off
            .checked_add(newest_len + history_len)
            .filter(|&end| end == bytes - FOOTER_LEN)
            .ok_or_else(|| corrupt("index out of bounds"))?;
        let mut index = vec![0u8; (index_end - index_off) as usize];
        file.read_exact_at(&mut index, index_off)
            .map_err(|e| StoreError::io(&path, e))?;
        if crc(&index) != index_crc {
            return Err(corrupt("index checksum mismatch"));
        }
        let index = Bytes::from(index);
        let newest = parse_index(index.slice(..newest_len as usize), index_off)
            .ok_or_else(|| corrupt("newest index does not decode"))?;
        let history = parse_index(index.slice(newest_len as usize..), index_off)
            .ok_or_else(|| corrupt("history index does not decode"))?;
        Ok(Layer {
            file_no,
            tid,
            lo,
            hi,
            newest_count,
            history_count,
            bytes,
            path,
            file,
            newest,
            history,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn index(&self, section: Section) -> &[IndexEntry] {
        match section {
            Section::Newest => &self.newest,
            Section::History => &self.history,
        }
    }

    /// Block `i` of `section`, from `cache` when given (and put there if `keep`), else from
    /// the file.
    fn block(
        &self,
        section: Section,
        i: usize,
        cache: Option<&BlockCache>,
        keep: bool,
    ) -> Result<Arc<Block>, StoreError> {
        let Some(ie) = self.index(section).get(i) else {
            return Err(StoreError::corrupt(&self.path, "block index out of range"));
        };
        let key = (self.file_no, ie.offset);
        if let Some(cache) = cache
            && let Some(block) = cache.get(&key)
        {
            return Ok(block);
        }
        let mut buf = read_uninit_at(&self.file, ie.len as usize, ie.offset)
            .map_err(|e| StoreError::io(&self.path, e))?;
        let corrupt = || {
            StoreError::corrupt(
                &self.path,
                format!("block at offset {} fails its checksum", ie.offset),
            )
        };
        if buf.len() < 4 {
            return Err(corrupt());
        }
        let sum_at = buf.len() - 4;
        if crc(&buf[..sum_at]).to_le_bytes()[..] != buf[sum_at..] {
            return Err(corrupt());
        }
        buf.truncate(sum_at);
        let bytes = buf.len();
        let mut r = Reader::new(Bytes::from(buf));
        let mut entries = Vec::new();
        while !r.is_empty() {
            entries.push(r.entry().ok_or_else(corrupt)?);
        }
        let block = Arc::new(Block { entries, bytes });
        if let Some(cache) = cache.filter(|_| keep) {
            cache.insert(key, block.clone());
        }
        Ok(block)
    }

    /// The newest version of `key` at or below seq `upto` in this layer, if it has one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::Corrupt`].
    pub fn get(
        &self,
        key: &[u8],
        upto: u64,
        cache: &BlockCache,
    ) -> Result<Option<Entry>, StoreError> {
        if self.lo > upto {
            return Ok(None);
        }
        match self.get_newest(key, cache)? {
            Some(e) if e.seq <= upto => Ok(Some(e)),
            Some(_) => self.get_history(key, upto, cache),
            None => Ok(None),
        }
    }

    fn get_newest(&self, key: &[u8], cache: &BlockCache) -> Result<Option<Entry>, StoreError> {
        let i = self.newest.partition_point(|ie| &ie.first_key[..] <= key);
        if i == 0 {
            return Ok(None);
        }
        let block = self.block(Section::Newest, i - 1, Some(cache), true)?;
        Ok(block
            .entries
            .binary_search_by(|e| e.key[..].cmp(key))
            .ok()
            .map(|at| block.entries[at].clone()))
    }

    fn get_history(
        &self,
        key: &[u8],
        upto: u64,
        cache: &BlockCache,
    ) -> Result<Option<Entry>, StoreError> {
        let target = (key, Reverse(upto));
        let start = self
            .history
            .partition_point(|ie| (&ie.first_key[..], Reverse(ie.first_seq)) <= target)
            .saturating_sub(1);
        for i in start..self.history.len() {
            let block = self.block(Section::History, i, Some(cache), true)?;
            for e in &block.entries {
                match e.key[..].cmp(key) {
                    Ordering::Less => {}
                    Ordering::Greater => return Ok(None),
                    Ordering::Equal if e.seq <= upto => return Ok(Some(e.clone())),
                    Ordering::Equal => {}
                }
            }
        }
        Ok(None)
    }

    /// Entries of `section` from the first key at or after `start`, in order. With
    /// `cache`, blocks go through it; compaction passes `None` so that one pass over a whole
    /// layer does not evict what readers use.
    pub fn iter(
        self: &Arc<Self>,
        section: Section,
        start: &[u8],
        cache: Option<Arc<BlockCache>>,
    ) -> SectionIter {
        let index = self.index(section);
        let block = index
            .partition_point(|ie| &ie.first_key[..] <= start)
            .saturating_sub(1);
        SectionIter {
            layer: self.clone(),
            section,
            cache,
            block_no: block,
            first_block: block,
            block: None,
            pos: 0,
            start: Bytes::copy_from_slice(start),
        }
    }
}

/// `len` bytes of `file` at `offset`, read into memory that was not zeroed first. A zeroed
/// block buffer (`vec![0; len]`) is a `calloc`, which jemalloc serves from a recycled
/// extent by purging it, so the read then faulted in and cleared every 4 KiB page again: on
/// a cold sequential scan that was a third of the page store's time.
fn read_uninit_at(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

/// Iterates one section of a layer; see [`Layer::iter`].
pub struct SectionIter {
    layer: Arc<Layer>,
    section: Section,
    cache: Option<Arc<BlockCache>>,
    block_no: usize,
    /// The block the iteration started in, the only one it puts in the cache.
    first_block: usize,
    block: Option<Arc<Block>>,
    pos: usize,
    start: Bytes,
}

impl SectionIter {
    /// The next entry, or `None` at the end.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::Corrupt`].
    pub fn next_entry(&mut self) -> Result<Option<Entry>, StoreError> {
        loop {
            if self.block.is_none() {
                if self.block_no >= self.layer.index(self.section).len() {
                    return Ok(None);
                }
                // Only the block a scan starts in is kept in the cache: the blocks past it
                // are read once by a long scan (a cold sequential read of a table, a
                // compaction), which would otherwise evict the blocks point reads want,
                // and keep the page store allocating fresh memory for blocks it throws away.
                let first = self.block_no == self.first_block;
                self.block = Some(self.layer.block(
                    self.section,
                    self.block_no,
                    self.cache.as_deref(),
                    first,
                )?);
                self.pos = 0;
            }
            let Some(block) = &self.block else {
                continue;
            };
            match block.entries.get(self.pos) {
                Some(e) => {
                    self.pos += 1;
                    if e.key[..] < self.start[..] {
                        continue;
                    }
                    return Ok(Some(e.clone()));
                }
                None => {
                    self.block = None;
                    self.block_no += 1;
                }
            }
        }
    }
}

fn parse_index(buf: Bytes, limit: u64) -> Option<Vec<IndexEntry>> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let first_key = r.key()?;
        let first_seq = r.u64()?;
        let offset = r.u64()?;
        let len = r.u32()?;
        if offset.checked_add(u64::from(len))? > limit || len < 4 {
            return None;
        }
        out.push(IndexEntry {
            first_key,
            first_seq,
            offset,
            len,
        });
    }
    Some(out)
}

/// One section being built: the block being filled, and the index of the blocks cut so far.
/// Both sections' blocks go to the one file as they are cut, interleaved: a block's place
/// is in its index entry, so readers never need a section to be contiguous, and the writer
/// needs no second file to copy behind the first.
struct SectionBuilder {
    index: Vec<IndexEntry>,
    block: Vec<u8>,
    first: Option<(Bytes, u64)>,
    count: u64,
}

impl SectionBuilder {
    fn new() -> Self {
        Self {
            index: Vec::new(),
            block: Vec::with_capacity(BLOCK_BYTES + 16 * 1024),
            first: None,
            count: 0,
        }
    }

    /// Adds an entry; returns whether the block is full (time to [`SectionBuilder::cut`]).
    fn push(&mut self, e: &Entry) -> bool {
        if self.first.is_none() {
            // A copy: the entry's key is a slice of its source (an input layer's block, a
            // write request), and the index, kept until the layer is finished, would hold
            // that whole buffer alive for every block written, as much memory as the output.
            self.first = Some((Bytes::copy_from_slice(&e.key), e.seq));
        }
        e.encode(&mut self.block);
        self.count += 1;
        self.block.len() >= BLOCK_BYTES
    }

    /// Writes the block being filled, if any, to `out` at offset `*len`.
    fn cut(&mut self, out: &mut BufWriter<File>, len: &mut u64) -> std::io::Result<()> {
        let Some((first_key, first_seq)) = self.first.take() else {
            return Ok(());
        };
        let sum = crc(&self.block);
        self.block.put_u32_le(sum);
        out.write_all(&self.block)?;
        self.index.push(IndexEntry {
            first_key,
            first_seq,
            offset: *len,
            len: self.block.len() as u32,
        });
        *len += self.block.len() as u64;
        self.block.clear();
        Ok(())
    }
}

/// Writes a new layer file: entries of the newest section in key order, history entries in
/// (key, newest seq first) order, interleaved as they come; then [`LayerWriter::finish`].
///
/// Its temporary file is removed when it is dropped, finished or not: a flush or
/// compaction that fails half-way (a full disk) gives back what it wrote at once, rather
/// than holding that space until the next open.
pub struct LayerWriter {
    dir: PathBuf,
    file_no: u64,
    tid: u64,
    tmp: PathBuf,
    out: BufWriter<File>,
    /// Bytes written to `out` so far.
    len: u64,
    newest: SectionBuilder,
    history: SectionBuilder,
    lo: u64,
    hi: u64,
    /// With [`LayerWriter::keep_free`]: bytes of free space to leave, and the output size at
    /// the last check.
    keep_free: Option<(u64, u64)>,
    _cleanup: TmpFile,
}

/// A temporary file removed on drop (once renamed into place it is simply not found).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %self.0.display(), error = %e, "cannot remove a temporary layer file");
            }
        }
    }
}

impl LayerWriter {
    /// Starts layer `file_no` of timeline `tid` in `dir`, under a temporary name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::DiskFull`].
    pub fn create(dir: &Path, file_no: u64, tid: u64) -> Result<LayerWriter, StoreError> {
        let tmp = dir.join(format!("{}.tmp", file_name(file_no)));
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        Ok(LayerWriter {
            dir: dir.to_owned(),
            file_no,
            tid,
            out: BufWriter::with_capacity(256 * 1024, file),
            len: 0,
            newest: SectionBuilder::new(),
            history: SectionBuilder::new(),
            _cleanup: TmpFile(tmp.clone()),
            tmp,
            lo: u64::MAX,
            hi: 0,
            keep_free: None,
        })
    }

    /// Makes the writer stop, with [`StoreError::DiskFull`], once the file system has less
    /// than `bytes` free (checked every MiB written). For compaction, which can wait: its
    /// output must not take the room that writes, and flushes of what they wrote, need.
    pub fn keep_free(mut self, bytes: u64) -> Self {
        self.keep_free = Some((bytes, 0));
        self
    }

    fn check_space(&mut self) -> Result<(), StoreError> {
        let Some((min, checked_at)) = self.keep_free else {
            return Ok(());
        };
        let written = self.len;
        if written < checked_at + (1 << 20) {
            return Ok(());
        }
        self.keep_free = Some((min, written));
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|st| st.blocks_available() * st.fragment_size())
            .map_err(|e| StoreError::io(&self.dir, std::io::Error::from(e)))?;
        if free < min {
            tracing::warn!(file = %self.tmp.display(), free, keep = min,
                "stopping a compaction: the disk is nearly full and writes need the room");
            return Err(StoreError::DiskFull {
                path: self.tmp.clone(),
            });
        }
        Ok(())
    }

    /// Adds the versions of one key, newest first (the first goes to the newest section).
    /// Keys must come in ascending order.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::DiskFull`].
    pub fn push_key(&mut self, versions: &[Entry]) -> Result<(), StoreError> {
        let Some((newest, older)) = versions.split_first() else {
            return Ok(());
        };
        self.hi = self.hi.max(newest.seq);
        self.lo = self.lo.min(versions.last().map_or(newest.seq, |e| e.seq));
        if self.newest.push(newest) {
            self.newest
                .cut(&mut self.out, &mut self.len)
                .map_err(|e| StoreError::io(&self.tmp, e))?;
        }
        for e in older {
            if self.history.push(e) {
                self.history
                    .cut(&mut self.out, &mut self.len)
                    .map_err(|e| StoreError::io(&self.tmp, e))?;
            }
        }
        self.check_space()
    }

    /// Whether no key was pushed.
    pub fn is_empty(&self) -> bool {
        self.newest.count == 0
    }

    /// Finishes the file: cuts the last blocks, appends the indexes and the footer, fsyncs,
    /// renames it into place and opens it. The caller fsyncs the directory. An empty writer
    /// writes nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::DiskFull`]; the temporary file is removed.
    pub fn finish(mut self) -> Result<Option<Layer>, StoreError> {
        if self.is_empty() {
            return Ok(None);
        }
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e| StoreError::io(&p, e)
        };
        self.newest
            .cut(&mut self.out, &mut self.len)
            .map_err(io(&self.tmp))?;
        self.history
            .cut(&mut self.out, &mut self.len)
            .map_err(io(&self.tmp))?;
        let mut index = Vec::new();
        for ie in &self.newest.index {
            put_index(&mut index, ie);
        }
        let newest_len = index.len();
        for ie in &self.history.index {
            put_index(&mut index, ie);
        }
        let history_len = index.len() - newest_len;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.put_slice(MAGIC);
        footer.put_u64_le(self.tid);
        footer.put_u64_le(self.lo);
        footer.put_u64_le(self.hi);
        footer.put_u64_le(self.newest.count);
        footer.put_u64_le(self.history.count);
        footer.put_u64_le(self.len);
        footer.put_u32_le(newest_len as u32);
        footer.put_u32_le(history_len as u32);
        footer.put_u32_le(crc(&index));
        footer.put_u32_le(crc(&footer));
        self.out.write_all(&index).map_err(io(&self.tmp))?;
        self.out.write_all(&footer).map_err(io(&self.tmp))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(io(&self.tmp))?;
        let path = self.dir.join(file_name(self.file_no));
        std::fs::rename(&self.tmp, &path).map_err(io(&path))?;
        Layer::open(&self.dir, self.file_no).map(Some)
    }
}

fn put_index(out: &mut Vec<u8>, ie: &IndexEntry) {
    out.put_u16_le(ie.first_key.len() as u16);
    out.put_slice(&ie.first_key);
    out.put_u64_le(ie.first_seq);
    out.put_u64_le(ie.offset);
    out.put_u32_le(ie.len);
}

/// Walks every version of a layer, one key at a time (newest first within the key): the
/// input of compaction. Reads around the block cache.
pub struct KeyVersions {
    newest: SectionIter,
    history: SectionIter,
    pending_history: Option<Entry>,
}

impl KeyVersions {
    /// A walk over all of `layer`.
    pub fn new(layer: &Arc<Layer>) -> Self {
        Self {
            newest: layer.iter(Section::Newest, b"", None),
            history: layer.iter(Section::History, b"", None),
            pending_history: None,
        }
    }

    /// The next key's versions, newest first; `None` at the end.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::Corrupt`].
    pub fn next_key(&mut self) -> Result<Option<Vec<Entry>>, StoreError> {
        let Some(newest) = self.newest.next_entry()? else {
            return Ok(None);
        };
        let mut versions = vec![newest];
        loop {
            let next = match self.pending_history.take() {
                Some(e) => Some(e),
                None => self.history.next_entry()?,
            };
            match next {
                Some(e) if e.key == versions[0].key => versions.push(e),
                Some(e) => {
                    self.pending_history = Some(e);
                    break;
                }
                None => break,
            }
        }
        Ok(Some(versions))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Keys and values sliced from one big buffer (as they come from a write request or an
    /// input layer's block): the index a writer keeps until it finishes holds copies of its
    /// first keys, so the buffer is not kept alive by every block written (a compaction
    /// held as much memory as it wrote that way), and the layer reads back what was pushed.
    #[test]
    fn the_index_copies_first_keys_rather_than_holding_their_source_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, value_len) = (64usize, 8192usize);
        let mut raw = Vec::new();
        for i in 0..keys {
            raw.extend_from_slice(format!("key-{i:04}").as_bytes());
        }
        raw.resize(raw.len() + value_len, b'v');
        let source = Bytes::from(raw);
        let within = |b: &Bytes| {
            let start = source.as_ptr() as usize;
            (start..start + source.len()).contains(&(b.as_ptr() as usize))
        };
        let value = source.slice(keys * 8..);
        let mut w = LayerWriter::create(dir.path(), 1, 7).unwrap();
        for i in 0..keys {
            let key = source.slice(i * 8..i * 8 + 8);
            assert!(within(&key));
            w.push_key(&[Entry {
                key,
                seq: i as u64 + 1,
                value: Some(value.clone()),
            }])
            .unwrap();
        }
        // 64 values of 8 KiB: several 64 KiB blocks cut so far, none holding the source.
        assert!(w.newest.index.len() >= 4, "{} blocks", w.newest.index.len());
        for ie in &w.newest.index {
            assert!(
                !within(&ie.first_key),
                "an index key slices the source buffer"
            );
        }
        let layer = Arc::new(w.finish().unwrap().unwrap());
        let cache = block_cache(1 << 20);
        let got = layer.get(b"key-0042", u64::MAX, &cache).unwrap().unwrap();
        assert_eq!((got.seq, got.value), (43, Some(value)));
    }
}
