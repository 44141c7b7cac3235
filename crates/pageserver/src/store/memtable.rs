//! The memtable: versions written since the last flush, in memory, per timeline, in key
//! order. The log holds the same versions durably; a memtable is rebuilt from it at start.
//!
//! The active memtable takes every committed write. Once it passes its budget it is
//! frozen (it takes no more writes), a new one starts with a new log segment, and the
//! flusher turns the frozen one into layer files. Readers hold memtables by `Arc`, so a
//! freeze or flush in the middle of a scan hides nothing from it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;

use super::codec::Entry;

/// One key's versions, oldest first.
type Versions = Vec<(u64, Option<Bytes>)>;

/// One key of a [`Memtable::range`] answer: `None` when it has no version old enough,
/// `Some(None)` when that version is a tombstone.
pub type RangeItem = (Bytes, Option<Option<Bytes>>);

/// Versions in memory; see the module doc.
#[derive(Debug, Default)]
pub struct Memtable {
    timelines: HashMap<u64, BTreeMap<Bytes, Versions>>,
    bytes: usize,
    /// The log segment that starts after this memtable's last record: once this memtable is
    /// in layer files, replay starts there. Set when it is frozen.
    pub end_segment: Option<u64>,
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of keys and values held (plus a small per-version overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.timelines.is_empty()
    }

    /// Adds a version of `key` on timeline `tid` at `seq` (seqs only grow per timeline).
    pub fn insert(&mut self, tid: u64, key: Bytes, seq: u64, value: Option<Bytes>) {
        self.bytes += key.len() + value.as_ref().map_or(0, Bytes::len) + 32;
        self.timelines
            .entry(tid)
            .or_default()
            .entry(key)
            .or_default()
            .push((seq, value));
    }

    /// Drops everything of timeline `tid` (it was deleted).
    pub fn remove_timeline(&mut self, tid: u64) {
        if let Some(keys) = self.timelines.remove(&tid) {
            for (k, versions) in keys {
                for (_, v) in versions {
                    self.bytes -= k.len() + v.as_ref().map_or(0, Bytes::len) + 32;
                }
            }
        }
    }

    /// The newest version of `key` on `tid` at or below `upto`: `Some(None)` for a tombstone,
    /// `None` if this memtable has no such version.
    pub fn get(&self, tid: u64, key: &[u8], upto: u64) -> Option<Option<Bytes>> {
        let versions = self.timelines.get(&tid)?.get(key)?;
        versions
            .iter()
            .rev()
            .find(|(seq, _)| *seq <= upto)
            .map(|(_, v)| v.clone())
    }

    /// Up to `n` keys of `tid` from `start` (inclusive) below `end`, each with its newest
    /// version at or below `upto` (`None`: no version that old; `Some(None)`: a tombstone).
    /// The second value says whether keys may follow the last one returned.
    pub fn range(
        &self,
        tid: u64,
        start: Bound<&[u8]>,
        end: Option<&[u8]>,
        upto: u64,
        n: usize,
    ) -> (Vec<RangeItem>, bool) {
        let Some(keys) = self.timelines.get(&tid) else {
            return (Vec::new(), false);
        };
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for (k, versions) in keys.range::<[u8], _>((start, hi)) {
            if out.len() == n {
                return (out, true);
            }
            let v = versions
                .iter()
                .rev()
                .find(|(seq, _)| *seq <= upto)
                .map(|(_, v)| v.clone());
            out.push((k.clone(), v));
        }
        (out, false)
    }

    /// Timelines with versions here.
    pub fn timelines(&self) -> impl Iterator<Item = u64> + '_ {
        self.timelines.keys().copied()
    }

    /// Every key of `tid` in order with its versions, newest first, as entries.
    pub fn key_versions(&self, tid: u64) -> impl Iterator<Item = Vec<Entry>> + '_ {
        self.timelines.get(&tid).into_iter().flat_map(|keys| {
            keys.iter().map(|(k, versions)| {
                versions
                    .iter()
                    .rev()
                    .map(|(seq, v)| Entry {
                        key: k.clone(),
                        seq: *seq,
                        value: v.clone(),
                    })
                    .collect()
            })
        })
    }

    /// Versions held, over all timelines.
    pub fn version_count(&self) -> u64 {
        self.timelines
            .values()
            .flat_map(|keys| keys.values())
            .map(|v| v.len() as u64)
            .sum()
    }
}
