//! The storage layer: timelines of versioned key-value pairs in one redb file.
//!
//! Two tables:
//!
//! - `timelines`: timeline id → its metadata (generation, last seq, optional parent), in a
//!   small versioned binary encoding ([`Meta`]).
//! - `data`: `(timeline id, key, seq)` → `Some(value)` for a put, `None` for a tombstone.
//!   redb orders tuple keys element by element (strings and byte strings lexicographically,
//!   `u64` numerically), so every version of one key of one timeline is contiguous and
//!   ordered by seq: the value visible at seq `S` is the last entry of the range
//!   `(t, key, 0) ..= (t, key, S)`, one B-tree descent.
//!
//! A branch stores only its parent and branch point; reads fall through to the parent at
//! `min(read seq, branch point)` for keys the branch has not written (recursively), so
//! creating one copies nothing. Branch seqs continue from the branch point, so a branch's
//! history below the branch point is its parent's.
//!
//! Every mutation is one redb write transaction committed with [`Durability::Immediate`]
//! (fsync before `commit` returns), so it is all or nothing and durable when the call returns.
//! redb runs one write transaction at a time, which is what makes fencing and seq assignment
//! race-free; readers see consistent snapshots (MVCC) and never block writers.
//!
//! All methods block on disk I/O: call them from a blocking thread.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use lakebed_pageserver_api::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_READ_KEYS, MAX_RESPONSE_BYTES,
    MAX_VALUE_BYTES,
};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// The file, inside the data directory, that holds everything.
pub const STORE_FILE: &str = "pageserver.redb";

/// Timeline id → encoded [`Meta`].
const TIMELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("timelines");

/// A key of [`DATA`]: `(timeline, key, seq)`.
type DataKey = (&'static str, &'static [u8], u64);

/// A value of [`DATA`]: the value, or `None` for a tombstone.
type DataValue = Option<&'static [u8]>;

/// `(timeline, key, seq)` → value, or `None` for a tombstone.
const DATA: TableDefinition<DataKey, DataValue> = TableDefinition::new("data");

/// Per key read: its value, or `None` if absent.
pub type Values = Vec<Option<Vec<u8>>>;

/// Deepest branch chain followed before the store is called corrupt (chains cannot be cyclic,
/// since a parent must exist when its branch is made and cannot be deleted while it has one).
const MAX_CHAIN: usize = 10_000;

/// What went wrong in a store operation. Every variant but [`StoreError::Storage`],
/// [`StoreError::Corrupt`] and [`StoreError::Open`] is the caller's doing and changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The timeline does not exist.
    #[error("timeline {0} does not exist")]
    NotFound(TimelineId),
    /// The parent named for a new branch does not exist.
    #[error("parent timeline {0} does not exist")]
    ParentNotFound(TimelineId),
    /// A timeline with this id exists already.
    #[error("timeline {0} already exists")]
    AlreadyExists(TimelineId),
    /// The write carried a generation older than the timeline's: a newer compute has acquired
    /// the timeline.
    #[error("timeline {timeline}: stale generation {sent} < {current}")]
    StaleGeneration {
        /// The timeline written to.
        timeline: TimelineId,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// The write carried a generation newer than the timeline's: nobody acquired it.
    #[error("timeline {timeline}: generation {sent} was never acquired (current is {current})")]
    NotAcquired {
        /// The timeline written to.
        timeline: TimelineId,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// A read or branch asked for a seq the timeline has not reached.
    #[error("timeline {timeline}: seq {asked} is beyond its last seq {last}")]
    SeqBeyondLast {
        /// The timeline.
        timeline: TimelineId,
        /// The seq asked for.
        asked: Seq,
        /// The timeline's last seq.
        last: Seq,
    },
    /// Deleting a timeline that branches depend on.
    #[error("timeline {timeline} has branches ({children}): delete them first")]
    HasBranches {
        /// The timeline.
        timeline: TimelineId,
        /// The branches' ids, comma-separated.
        children: String,
    },
    /// Generation or seq would pass its type's maximum.
    #[error("timeline {timeline}: {what} is exhausted")]
    Exhausted {
        /// The timeline.
        timeline: TimelineId,
        /// `"generation"` or `"seq"`.
        what: &'static str,
    },
    /// A limit was exceeded or the request is malformed; the message names the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The data directory or store file could not be created or opened.
    #[error("cannot open the page store at {path}: {reason}")]
    Open {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// redb failed (I/O error, full disk, ...).
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// Stored data does not decode.
    #[error("corrupt page store: {0}")]
    Corrupt(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A timeline's state, as [`Store::describe`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineInfo {
    /// The current generation (for a new root 0, for a new branch its parent's, until the
    /// first [`Store::acquire`]).
    pub generation: Generation,
    /// The seq of the newest committed batch (for a branch with no writes yet: its branch
    /// point).
    pub last_seq: Seq,
    /// For a branch: the parent and the parent's seq it was branched at.
    pub parent: Option<(TimelineId, Seq)>,
}

/// What [`Store::scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Keys in ascending byte order with their values.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the scan stopped at its limit with more keys possibly following: continue
    /// after the last key (at the same seq).
    pub more: bool,
    /// The seq the scan was served at.
    pub seq: Seq,
}

/// Stored timeline metadata. Encoding (big-endian): version `1` (1 byte), generation (4),
/// last seq (8), has-parent flag (1); with a parent: branch seq (8), then the parent's id
/// (UTF-8, the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    generation: u32,
    last_seq: u64,
    parent: Option<(String, u64)>,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + 64);
        out.push(1);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        match &self.parent {
            None => out.push(0),
            Some((id, seq)) => {
                out.push(1);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(id.as_bytes());
            }
        }
        out
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<Meta, StoreError> {
        let bad = || StoreError::Corrupt(format!("metadata of timeline {id} does not decode"));
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if version != 1 {
            return Err(StoreError::Corrupt(format!(
                "metadata of timeline {id} has unknown version {version}"
            )));
        }
        let (generation, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let (last_seq, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let (&flag, rest) = rest.split_first().ok_or_else(bad)?;
        let parent = match flag {
            0 if rest.is_empty() => None,
            1 => {
                let (seq, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
                let parent = std::str::from_utf8(rest).map_err(|_| bad())?;
                Some((parent.to_owned(), u64::from_be_bytes(*seq)))
            }
            _ => return Err(bad()),
        };
        Ok(Meta {
            generation: u32::from_be_bytes(*generation),
            last_seq: u64::from_be_bytes(*last_seq),
            parent,
        })
    }

    fn info(&self) -> Result<TimelineInfo, StoreError> {
        let parent = match &self.parent {
            None => None,
            Some((id, seq)) => Some((
                id.parse()
                    .map_err(|e| StoreError::Corrupt(format!("stored parent id: {e}")))?,
                Seq(*seq),
            )),
        };
        Ok(TimelineInfo {
            generation: Generation(self.generation),
            last_seq: Seq(self.last_seq),
            parent,
        })
    }
}

/// The page store's storage: one redb database file, [`STORE_FILE`], in a data directory.
/// Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the file if needed. A second
    /// process opening the same file fails (redb locks it).
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the directory or file and why.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let path = dir.join(STORE_FILE);
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let store = Store { db, path };
        // Create both tables, so read transactions never meet a missing one.
        let txn = store.begin_write()?;
        txn.open_table(TIMELINES)?;
        txn.open_table(DATA)?;
        txn.commit()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(txn)
    }

    /// Creates timeline `id`: empty (last seq 0) when `parent` is `None`, else a branch of
    /// `parent.0` at `parent.1` (default: the parent's last seq). Nothing is copied.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`], [`StoreError::ParentNotFound`],
    /// [`StoreError::SeqBeyondLast`] (branch point past the parent's last seq).
    pub fn create_timeline(
        &self,
        id: &TimelineId,
        parent: Option<(&TimelineId, Option<Seq>)>,
    ) -> Result<TimelineInfo, StoreError> {
        let txn = self.begin_write()?;
        let meta = {
            let mut timelines = txn.open_table(TIMELINES)?;
            if timelines.get(id.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists(id.clone()));
            }
            let meta = match parent {
                None => Meta {
                    generation: 0,
                    last_seq: 0,
                    parent: None,
                },
                Some((pid, seq)) => {
                    let pmeta = load_meta(&timelines, pid.as_str())?
                        .ok_or_else(|| StoreError::ParentNotFound(pid.clone()))?;
                    let at = seq.map_or(pmeta.last_seq, |s| s.0);
                    if at > pmeta.last_seq {
                        return Err(StoreError::SeqBeyondLast {
                            timeline: pid.clone(),
                            asked: Seq(at),
                            last: Seq(pmeta.last_seq),
                        });
                    }
                    // The branch starts at its parent's generation, so its own generations
                    // are all above any that wrote what it inherits: a client that derives
                    // names from its generation (pagefs's inode numbers) cannot collide.
                    Meta {
                        generation: pmeta.generation,
                        last_seq: at,
                        parent: Some((pid.to_string(), at)),
                    }
                }
            };
            timelines.insert(id.as_str(), meta.encode().as_slice())?;
            meta
        };
        txn.commit()?;
        meta.info()
    }

    /// Deletes timeline `id` and every version of every key it wrote.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::HasBranches`] while branches of it exist.
    pub fn delete_timeline(&self, id: &TimelineId) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut timelines = txn.open_table(TIMELINES)?;
            if timelines.get(id.as_str())?.is_none() {
                return Err(StoreError::NotFound(id.clone()));
            }
            let mut children = Vec::new();
            for entry in timelines.iter()? {
                let (k, v) = entry?;
                let meta = Meta::decode(k.value(), v.value())?;
                if meta.parent.is_some_and(|(p, _)| p == id.as_str()) {
                    children.push(k.value().to_owned());
                }
            }
            if !children.is_empty() {
                return Err(StoreError::HasBranches {
                    timeline: id.clone(),
                    children: children.join(", "),
                });
            }
            timelines.remove(id.as_str())?;
            let mut data = txn.open_table(DATA)?;
            let next_id = successor(id.as_str());
            data.retain_in(
                (id.as_str(), &[][..], 0u64)..(next_id.as_str(), &[][..], 0u64),
                |_, _| false,
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The state of timeline `id`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn describe(&self, id: &TimelineId) -> Result<TimelineInfo, StoreError> {
        let txn = self.db.begin_read()?;
        let timelines = txn.open_table(TIMELINES)?;
        load_meta(&timelines, id.as_str())?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?
            .info()
    }

    /// Raises timeline `id`'s generation by one and returns it. From then on writes with an
    /// older generation are refused.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::Exhausted`] at `u32::MAX`.
    pub fn acquire(&self, id: &TimelineId) -> Result<Generation, StoreError> {
        let txn = self.begin_write()?;
        let generation = {
            let mut timelines = txn.open_table(TIMELINES)?;
            let mut meta = load_meta(&timelines, id.as_str())?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            meta.generation =
                meta.generation
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Exhausted {
                        timeline: id.clone(),
                        what: "generation",
                    })?;
            timelines.insert(id.as_str(), meta.encode().as_slice())?;
            meta.generation
        };
        txn.commit()?;
        Ok(Generation(generation))
    }

    /// Applies `puts` (key, value) and `deletes` (keys) to timeline `id` as one batch under
    /// the next seq, which it returns once the batch is durable. `generation` must be the
    /// timeline's current one.
    ///
    /// # Errors
    ///
    /// Nothing is changed on any error.
    /// - [`StoreError::InvalidArgument`]: an empty key, a key over
    ///   [`MAX_KEY_BYTES`], a value over [`MAX_VALUE_BYTES`], more than [`MAX_BATCH_KEYS`]
    ///   keys or [`MAX_BATCH_BYTES`] bytes in all, or a key given twice.
    /// - [`StoreError::NotFound`].
    /// - [`StoreError::StaleGeneration`] (older) or [`StoreError::NotAcquired`] (newer).
    pub fn write<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        id: &TimelineId,
        generation: Generation,
        puts: &[(K, V)],
        deletes: &[K],
    ) -> Result<Seq, StoreError> {
        validate_batch(puts, deletes)?;
        let txn = self.begin_write()?;
        let seq = {
            let mut timelines = txn.open_table(TIMELINES)?;
            let mut meta = load_meta(&timelines, id.as_str())?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let current = Generation(meta.generation);
            if generation < current {
                return Err(StoreError::StaleGeneration {
                    timeline: id.clone(),
                    sent: generation,
                    current,
                });
            }
            if generation > current {
                return Err(StoreError::NotAcquired {
                    timeline: id.clone(),
                    sent: generation,
                    current,
                });
            }
            let seq = meta
                .last_seq
                .checked_add(1)
                .ok_or_else(|| StoreError::Exhausted {
                    timeline: id.clone(),
                    what: "seq",
                })?;
            let mut data = txn.open_table(DATA)?;
            for (key, value) in puts {
                data.insert((id.as_str(), key.as_ref(), seq), Some(value.as_ref()))?;
            }
            for key in deletes {
                data.insert((id.as_str(), key.as_ref(), seq), None)?;
            }
            meta.last_seq = seq;
            timelines.insert(id.as_str(), meta.encode().as_slice())?;
            seq
        };
        txn.commit()?;
        Ok(Seq(seq))
    }

    /// Reads `keys` from timeline `id` at seq `at` (default: its last seq). Returns the seq
    /// read at and, per key in order, its value or `None` (never written, or deleted).
    ///
    /// # Errors
    ///
    /// - [`StoreError::NotFound`]; [`StoreError::SeqBeyondLast`].
    /// - [`StoreError::InvalidArgument`]: more than [`MAX_READ_KEYS`] keys, a key over
    ///   [`MAX_KEY_BYTES`], or values adding up to more than [`MAX_RESPONSE_BYTES`].
    pub fn read<K: AsRef<[u8]>>(
        &self,
        id: &TimelineId,
        keys: &[K],
        at: Option<Seq>,
    ) -> Result<(Seq, Values), StoreError> {
        if keys.len() > MAX_READ_KEYS {
            return Err(StoreError::InvalidArgument(format!(
                "{} keys in one read: at most {MAX_READ_KEYS} (MAX_READ_KEYS)",
                keys.len()
            )));
        }
        for key in keys {
            check_key(key.as_ref())?;
        }
        let txn = self.db.begin_read()?;
        let timelines = txn.open_table(TIMELINES)?;
        let data = txn.open_table(DATA)?;
        let (seq, layers) = layers(&timelines, id, at)?;
        let mut total = 0usize;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = lookup(&data, &layers, key.as_ref())?;
            total += value.as_ref().map_or(0, Vec::len);
            if total > MAX_RESPONSE_BYTES {
                return Err(StoreError::InvalidArgument(format!(
                    "the values read add up to more than {MAX_RESPONSE_BYTES} bytes \
                     (MAX_RESPONSE_BYTES): read fewer keys at a time"
                )));
            }
            values.push(value);
        }
        Ok((seq, values))
    }

    /// Lists the keys of timeline `id` in `[start, end)` (`end` `None`: unbounded) that have
    /// a value at seq `at` (default: the last seq), in ascending byte order, with their values.
    /// Stops after `limit` entries or once the values add up to `max_bytes` (at least one
    /// entry is returned if any exists).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::SeqBeyondLast`].
    pub fn scan(
        &self,
        id: &TimelineId,
        start: &[u8],
        end: Option<&[u8]>,
        at: Option<Seq>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanResult, StoreError> {
        let txn = self.db.begin_read()?;
        let timelines = txn.open_table(TIMELINES)?;
        let data = txn.open_table(DATA)?;
        let (seq, layers) = layers(&timelines, id, at)?;
        let mut result = ScanResult {
            entries: Vec::new(),
            more: false,
            seq,
        };
        if end.is_some_and(|end| end <= start) || limit == 0 {
            return Ok(result);
        }
        // Each layer's smallest key at or after the cursor (any seq: visibility is decided
        // when the key is resolved through all layers).
        let mut next: Vec<Option<Vec<u8>>> = layers
            .iter()
            .map(|(lid, _)| next_key(&data, lid, Bound::Included(start), end))
            .collect::<Result<_, _>>()?;
        let mut bytes = 0usize;
        while let Some(key) = next.iter().flatten().min().cloned() {
            if result.entries.len() >= limit || bytes >= max_bytes {
                result.more = true;
                break;
            }
            if let Some(value) = lookup(&data, &layers, &key)? {
                bytes += value.len();
                result.entries.push((key.clone(), value));
            }
            for (slot, (lid, _)) in next.iter_mut().zip(&layers) {
                if slot.as_ref() == Some(&key) {
                    *slot = next_key(&data, lid, Bound::Excluded(&key), end)?;
                }
            }
        }
        Ok(result)
    }

    /// How many `(timeline, key, seq)` versions are stored, over all timelines. For tests
    /// and diagnostics (a branch adds none).
    ///
    /// # Errors
    ///
    /// [`StoreError::Storage`].
    pub fn version_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DATA)?.len()?)
    }
}

/// `id` followed by NUL: the smallest string greater than `id`. Every tuple whose first
/// element is `id` sorts before `(successor(id), [], 0)`; every tuple with a greater first
/// element sorts at or after it.
fn successor(id: &str) -> String {
    format!("{id}\0")
}

fn load_meta(
    timelines: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Meta>, StoreError> {
    match timelines.get(id)? {
        None => Ok(None),
        Some(v) => Meta::decode(id, v.value()).map(Some),
    }
}

/// The seq to read timeline `id` at, and the layers to read: `(timeline, highest visible
/// seq)`, the timeline itself first, then its ancestors.
fn layers(
    timelines: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &TimelineId,
    at: Option<Seq>,
) -> Result<(Seq, Vec<(String, u64)>), StoreError> {
    let meta =
        load_meta(timelines, id.as_str())?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
    let at = match at {
        None => meta.last_seq,
        Some(Seq(s)) if s > meta.last_seq => {
            return Err(StoreError::SeqBeyondLast {
                timeline: id.clone(),
                asked: Seq(s),
                last: Seq(meta.last_seq),
            });
        }
        Some(Seq(s)) => s,
    };
    let mut layers = vec![(id.to_string(), at)];
    let mut upto = at;
    let mut parent = meta.parent;
    while let Some((pid, branch_seq)) = parent {
        if layers.len() > MAX_CHAIN {
            return Err(StoreError::Corrupt(format!(
                "timeline {id}: branch chain longer than {MAX_CHAIN}"
            )));
        }
        upto = upto.min(branch_seq);
        let pmeta = load_meta(timelines, &pid)?.ok_or_else(|| {
            StoreError::Corrupt(format!("timeline {id}: ancestor {pid} is missing"))
        })?;
        parent = pmeta.parent;
        layers.push((pid, upto));
    }
    Ok((Seq(at), layers))
}

/// The value of `key` through `layers`: the newest version at or below each layer's seq, in
/// the first layer that has one; a tombstone or no version at all is `None`.
fn lookup(
    data: &impl ReadableTable<DataKey, DataValue>,
    layers: &[(String, u64)],
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    for (lid, upto) in layers {
        let mut versions = data.range((lid.as_str(), key, 0u64)..=(lid.as_str(), key, *upto))?;
        if let Some(entry) = versions.next_back() {
            let (_, value) = entry?;
            return Ok(value.value().map(<[u8]>::to_vec));
        }
    }
    Ok(None)
}

/// The smallest key of timeline `lid` after `lower` and below `end`, at any seq.
fn next_key(
    data: &impl ReadableTable<DataKey, DataValue>,
    lid: &str,
    lower: Bound<&[u8]>,
    end: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let next_id = successor(lid);
    let lo = match lower {
        Bound::Included(k) => Bound::Included((lid, k, 0u64)),
        Bound::Excluded(k) => Bound::Excluded((lid, k, u64::MAX)),
        Bound::Unbounded => Bound::Included((lid, &[][..], 0u64)),
    };
    let hi = match end {
        Some(e) => Bound::Excluded((lid, e, 0u64)),
        None => Bound::Excluded((next_id.as_str(), &[][..], 0u64)),
    };
    let mut range = data.range((lo, hi))?;
    match range.next() {
        None => Ok(None),
        Some(entry) => {
            let (k, _) = entry?;
            Ok(Some(k.value().1.to_vec()))
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument(
            "a key must not be empty".to_owned(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "a key of {} bytes: at most {MAX_KEY_BYTES} (MAX_KEY_BYTES)",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a write batch against the limits, before any transaction starts.
fn validate_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    puts: &[(K, V)],
    deletes: &[K],
) -> Result<(), StoreError> {
    let count = puts.len() + deletes.len();
    if count > MAX_BATCH_KEYS {
        return Err(StoreError::InvalidArgument(format!(
            "{count} keys in one write: at most {MAX_BATCH_KEYS} (MAX_BATCH_KEYS)"
        )));
    }
    let mut total = 0usize;
    let mut seen = HashSet::with_capacity(count);
    let keys = puts.iter().map(|(k, _)| k).chain(deletes);
    for key in keys {
        let key = key.as_ref();
        check_key(key)?;
        total += key.len();
        if !seen.insert(key) {
            return Err(StoreError::InvalidArgument(format!(
                "key {} appears more than once in one write",
                show_key(key)
            )));
        }
    }
    for (key, value) in puts {
        let len = value.as_ref().len();
        if len > MAX_VALUE_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "the value of key {} is {len} bytes: at most {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)",
                show_key(key.as_ref())
            )));
        }
        total += len;
    }
    if total > MAX_BATCH_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "a write of {total} bytes: at most {MAX_BATCH_BYTES} (MAX_BATCH_BYTES)"
        )));
    }
    Ok(())
}

/// A key for an error message: escaped, and cut after 64 bytes.
fn show_key(key: &[u8]) -> String {
    let shown: String = key
        .iter()
        .take(64)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if key.len() > 64 {
        format!("\"{shown}\"... ({} bytes)", key.len())
    } else {
        format!("\"{shown}\"")
    }
}
