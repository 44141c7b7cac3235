//! The compute's local disk: a bounded cache of clean pages and the scratch files, every block
//! sealed under the per-boot key ([`super::seal`]).
//!
//! Both are files of fixed-size slots, each slot one sealed block: the block's bytes
//! ([`BLOCK_SIZE`]; in the cache, the page as the page store holds it, which under a tenant
//! DEK is [`BLOCK_SIZE`] plus that seal's overhead) encrypted, then the GCM tag. The nonce counter of each slot is kept in memory only, so the
//! files hold nothing but ciphertext and tags.
//!
//! - [`Cache`]: one file of `capacity` slots; an index maps `(ino, block)` to a slot; eviction
//!   by the clock algorithm (a referenced bit per slot, cleared as the hand passes). Only clean
//!   pages (as the page store has them) live here, so an evicted page can always be fetched
//!   again.
//! - [`Scratch`]: one sparse file per scratch file (`postmaster.pid`, `pg_stat_tmp/*`,
//!   `pgsql_tmp/*`), slot = block. Never evicted: this is the only copy.
//!
//! Slot I/O happens under the structure's lock, so a reader never sees a slot half rewritten
//! for another block; sealing and opening happen outside it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::layout::BLOCK_SIZE;
use super::seal::{Aad, BootKey, Domain, SealError, TAG_LEN};

/// Bytes of one scratch slot on disk.
pub const SLOT_SIZE: usize = BLOCK_SIZE + TAG_LEN;

/// Why a local block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Reading or writing the local file failed.
    #[error("local cache I/O: {0}")]
    Io(#[from] io::Error),
    /// The sealed block did not verify.
    #[error(transparent)]
    Seal(#[from] SealError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates a new 0600 file; refuses an existing one (a stale cache must never be reused).
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Seals `plain`, zero-padded to `len` bytes.
fn seal_block(key: &BootKey, aad: Aad, plain: &[u8], len: usize) -> (u64, Vec<u8>) {
    let mut buf = Vec::with_capacity(len + TAG_LEN);
    buf.extend_from_slice(plain);
    buf.resize(len, 0);
    let counter = key.seal(aad, &mut buf);
    (counter, buf)
}

fn open_slot(key: &BootKey, aad: Aad, counter: u64, mut raw: Vec<u8>) -> Result<Bytes, SealError> {
    let len = key.open(aad, counter, &mut raw)?.len();
    raw.truncate(len);
    Ok(Bytes::from(raw))
}

/// Counters of the cache since mount.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups that found the page.
    pub hits: AtomicU64,
    /// Lookups that did not.
    pub misses: AtomicU64,
    /// Pages evicted to make room.
    pub evictions: AtomicU64,
}

/// A page sealed under the per-boot key for its cache slot, not yet cached
/// ([`Cache::seal`]). Holds ciphertext only.
pub struct SealedPage {
    ino: u64,
    block: u64,
    counter: u64,
    sealed: Vec<u8>,
}

impl SealedPage {
    /// The block it is for.
    pub fn block(&self) -> u64 {
        self.block
    }
}

impl std::fmt::Debug for SealedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedPage")
            .field("ino", &self.ino)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

struct CacheInner {
    /// `(ino, block)` -> (slot, nonce counter).
    index: HashMap<(u64, u64), (usize, u64)>,
    /// Per slot: the block it holds and its referenced bit.
    slots: Vec<Option<((u64, u64), bool)>>,
    /// Slots freed by removals.
    free: Vec<usize>,
    hand: usize,
}

/// The bounded cache of clean pages.
pub struct Cache {
    key: Arc<BootKey>,
    file: File,
    path: PathBuf,
    capacity: usize,
    /// Bytes of one cached page (as the page store holds it).
    payload: usize,
    inner: Mutex<CacheInner>,
    /// Hit, miss and eviction counts.
    pub stats: CacheStats,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Cache {
    /// Creates the cache file at `path` (which must not exist) for pages of `payload` bytes,
    /// with room for `bytes / (payload + 16)` of them (at least 16).
    ///
    /// # Errors
    ///
    /// The file exists or cannot be created.
    pub fn create(path: &Path, bytes: u64, payload: usize, key: Arc<BootKey>) -> io::Result<Self> {
        let capacity = usize::try_from(bytes / (payload + TAG_LEN) as u64)
            .unwrap_or(usize::MAX)
            .max(16);
        let file = create_private(path)?;
        Ok(Self {
            key,
            file,
            path: path.to_owned(),
            capacity,
            payload,
            inner: Mutex::new(CacheInner {
                index: HashMap::new(),
                slots: Vec::new(),
                free: Vec::new(),
                hand: 0,
            }),
            stats: CacheStats::default(),
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The page `(ino, block)` if cached.
    ///
    /// # Errors
    ///
    /// [`LocalError`]: the slot could not be read or did not verify (the entry is dropped, so
    /// the next read fetches the page again).
    pub fn get(&self, ino: u64, block: u64) -> Result<Option<Bytes>, LocalError> {
        let aad = Aad {
            domain: Domain::Cache,
            ino,
            block,
        };
        let (counter, raw) = {
            let mut inner = lock(&self.inner);
            let Some(&(slot, counter)) = inner.index.get(&(ino, block)) else {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            if let Some(Some((_, referenced))) = inner.slots.get_mut(slot) {
                *referenced = true;
            }
            let slot_size = self.payload + TAG_LEN;
            let mut raw = vec![0u8; slot_size];
            self.file
                .read_exact_at(&mut raw, (slot * slot_size) as u64)?;
            (counter, raw)
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        match open_slot(&self.key, aad, counter, raw) {
            Ok(page) => Ok(Some(page)),
            Err(e) => {
                self.remove(ino, block);
                Err(e.into())
            }
        }
    }

    /// Caches `page` (at most the payload size; shorter is zero-padded) as `(ino, block)`,
    /// replacing any older copy and evicting another page if full.
    ///
    /// # Errors
    ///
    /// Writing the slot failed; the page is then not cached.
    pub fn insert(&self, ino: u64, block: u64, page: &[u8]) -> io::Result<()> {
        self.insert_sealed(self.seal(ino, block, page))
    }

    /// `page` sealed for the slot of `(ino, block)`, to [`Self::insert_sealed`] later: the
    /// sealing (the costly part) can then happen outside the caller's locks.
    pub fn seal(&self, ino: u64, block: u64, page: &[u8]) -> SealedPage {
        let aad = Aad {
            domain: Domain::Cache,
            ino,
            block,
        };
        let (counter, sealed) = seal_block(&self.key, aad, page, self.payload);
        SealedPage {
            ino,
            block,
            counter,
            sealed,
        }
    }

    /// Caches a page sealed by [`Self::seal`], as [`Self::insert`] does.
    ///
    /// # Errors
    ///
    /// Writing the slot failed; the page is then not cached.
    pub fn insert_sealed(&self, page: SealedPage) -> io::Result<()> {
        let SealedPage {
            ino,
            block,
            counter,
            sealed,
        } = page;
        let mut inner = lock(&self.inner);
        let slot = match inner.index.get(&(ino, block)) {
            Some(&(slot, _)) => slot,
            None => self.take_slot(&mut inner),
        };
        // Unindex first: if the write fails the slot holds nothing readable.
        inner.index.remove(&(ino, block));
        if let Err(e) = self
            .file
            .write_all_at(&sealed, (slot * (self.payload + TAG_LEN)) as u64)
        {
            inner.slots[slot] = None;
            inner.free.push(slot);
            return Err(e);
        }
        inner.slots[slot] = Some(((ino, block), true));
        inner.index.insert((ino, block), (slot, counter));
        Ok(())
    }

    /// A slot to fill: a free one, a new one while under capacity, else the clock's victim.
    fn take_slot(&self, inner: &mut CacheInner) -> usize {
        if let Some(slot) = inner.free.pop() {
            return slot;
        }
        if inner.slots.len() < self.capacity {
            inner.slots.push(None);
            return inner.slots.len() - 1;
        }
        loop {
            let hand = inner.hand;
            inner.hand = (hand + 1) % inner.slots.len();
            match &mut inner.slots[hand] {
                Some((_, referenced)) if *referenced => *referenced = false,
                Some((key, _)) => {
                    let key = *key;
                    inner.index.remove(&key);
                    inner.slots[hand] = None;
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    return hand;
                }
                None => return hand,
            }
        }
    }

    /// Whether `(ino, block)` is cached (without touching its referenced bit).
    pub fn contains(&self, ino: u64, block: u64) -> bool {
        lock(&self.inner).index.contains_key(&(ino, block))
    }

    /// Drops `(ino, block)` if cached.
    pub fn remove(&self, ino: u64, block: u64) {
        let mut inner = lock(&self.inner);
        if let Some((slot, _)) = inner.index.remove(&(ino, block)) {
            inner.slots[slot] = None;
            inner.free.push(slot);
        }
    }

    /// Drops every cached block of `ino` from `from_block` on (0: the whole file).
    pub fn remove_from(&self, ino: u64, from_block: u64) {
        let mut inner = lock(&self.inner);
        let CacheInner {
            index, slots, free, ..
        } = &mut *inner;
        index.retain(|&(i, b), &mut (slot, _)| {
            if i == ino && b >= from_block {
                slots[slot] = None;
                free.push(slot);
                false
            } else {
                true
            }
        });
    }

    /// Pages the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages cached now.
    pub fn len(&self) -> usize {
        lock(&self.inner).index.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct ScratchFile {
    file: File,
    /// block -> nonce counter of its current seal.
    blocks: HashMap<u64, u64>,
}

/// Scratch files: local only, sealed, never evicted. One sparse file per inode in `dir`.
pub struct Scratch {
    key: Arc<BootKey>,
    dir: PathBuf,
    files: Mutex<HashMap<u64, ScratchFile>>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").field("dir", &self.dir).finish()
    }
}

impl Scratch {
    /// Scratch files will live in `dir` (which must exist).
    pub fn new(dir: &Path, key: Arc<BootKey>) -> Self {
        Self {
            key,
            dir: dir.to_owned(),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Block `block` of scratch inode `ino`; `None` for a hole.
    ///
    /// # Errors
    ///
    /// [`LocalError`]: unreadable or not verifying.
    pub fn get(&self, ino: u64, block: u64) -> Result<Option<Bytes>, LocalError> {
        let (counter, raw) = {
            let files = lock(&self.files);
            let Some(f) = files.get(&ino) else {
                return Ok(None);
            };
            let Some(&counter) = f.blocks.get(&block) else {
                return Ok(None);
            };
            let mut raw = vec![0u8; SLOT_SIZE];
            f.file.read_exact_at(&mut raw, block * SLOT_SIZE as u64)?;
            (counter, raw)
        };
        let aad = Aad {
            domain: Domain::Scratch,
            ino,
            block,
        };
        Ok(Some(open_slot(&self.key, aad, counter, raw)?))
    }

    /// Writes block `block` of scratch inode `ino` (creating its file).
    ///
    /// # Errors
    ///
    /// The local file could not be created or written.
    pub fn put(&self, ino: u64, block: u64, page: &[u8]) -> io::Result<()> {
        let aad = Aad {
            domain: Domain::Scratch,
            ino,
            block,
        };
        let (counter, sealed) = seal_block(&self.key, aad, page, BLOCK_SIZE);
        let mut files = lock(&self.files);
        let f = match files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(ScratchFile {
                file: create_private(&self.dir.join(format!("{ino:016x}")))?,
                blocks: HashMap::new(),
            }),
        };
        f.blocks.remove(&block);
        f.file.write_all_at(&sealed, block * SLOT_SIZE as u64)?;
        f.blocks.insert(block, counter);
        Ok(())
    }

    /// Drops blocks of `ino` from `from_block` on; at 0 the file is deleted.
    pub fn truncate(&self, ino: u64, from_block: u64) {
        let mut files = lock(&self.files);
        if from_block == 0 {
            if files.remove(&ino).is_some() {
                let _ = std::fs::remove_file(self.dir.join(format!("{ino:016x}")));
            }
        } else if let Some(f) = files.get_mut(&ino) {
            f.blocks.retain(|&b, _| b < from_block);
            let _ = f.file.set_len(from_block * SLOT_SIZE as u64);
        }
    }
}
