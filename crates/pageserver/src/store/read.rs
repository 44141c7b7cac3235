//! Reads and scans: take a snapshot of where a timeline's versions are (memtables, layers,
//! ancestors), then look there without holding the store's lock.
//!
//! A snapshot lists, in priority order, each link of the branch chain (the timeline, then
//! its ancestors at their branch points) with the seq it is read at and its layers, plus the
//! memtables. The first place that has a version at or below the link's seq decides the key.
//! A scan merges one cursor per place, in key order; each cursor reads only the newest
//! section of a layer (history only where the layer straddles the seq read), so its cost is
//! the keys it passes, not their versions.

use std::ops::Bound;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use lakebed_pageserver_api::limits::{MAX_READ_KEYS, MAX_RESPONSE_BYTES};
use lakebed_pageserver_api::{Seq, TimelineId};

use super::error::StoreError;
use super::layer::{Layer, Section, SectionIter};
use super::memtable::Memtable;
use super::validate::check_key;
use super::{Inner, MAX_CHAIN, ScanResult, State, Values};

/// One link of a branch chain.
struct Link {
    tid: u64,
    upto: u64,
    layers: Vec<Arc<Layer>>,
}

/// Where to look for a timeline's versions at one seq.
struct Snapshot {
    seq: u64,
    links: Vec<Link>,
    /// Active first, then frozen newest first.
    memtables: Vec<Arc<RwLock<Memtable>>>,
}

fn snapshot(inner: &Inner, id: &TimelineId, at: Option<Seq>) -> Result<Snapshot, StoreError> {
    let st = inner.read_state();
    let t = st.timeline(id)?;
    let seq = match at {
        None => t.last_seq,
        Some(Seq(s)) if s > t.last_seq => {
            return Err(StoreError::SeqBeyondLast {
                timeline: id.clone(),
                asked: Seq(s),
                last: Seq(t.last_seq),
            });
        }
        Some(Seq(s)) => {
            let horizon = st.effective_horizon(t, inner.options.history_retention)?;
            if s < horizon {
                return Err(StoreError::BelowHorizon {
                    timeline: id.clone(),
                    asked: Seq(s),
                    horizon: Seq(horizon),
                });
            }
            s
        }
    };
    let links = chain(&st, t.tid, seq)?;
    let memtables = std::iter::once(st.active.clone())
        .chain(st.frozen.iter().rev().cloned())
        .collect();
    Ok(Snapshot {
        seq,
        links,
        memtables,
    })
}

fn chain(st: &State, tid: u64, seq: u64) -> Result<Vec<Link>, StoreError> {
    let mut links = Vec::new();
    let mut next = Some((tid, seq));
    while let Some((tid, upto)) = next {
        if links.len() > MAX_CHAIN {
            return Err(StoreError::corrupt(
                super::manifest::FILE,
                format!("branch chain of timeline number {tid} is longer than {MAX_CHAIN}"),
            ));
        }
        let t = st.by_tid(tid)?;
        links.push(Link {
            tid,
            upto,
            layers: t.layers.iter().filter(|l| l.lo <= upto).cloned().collect(),
        });
        next = t.parent.map(|(p, b)| (p, upto.min(b)));
    }
    Ok(links)
}

/// Entries one read or scan looked at, added to the store's count (and to
/// `lakebed_pagestore_entries_visited_total`) when it ends, however it ends.
struct Visits<'a> {
    inner: &'a Inner,
    n: u64,
}

impl Drop for Visits<'_> {
    fn drop(&mut self) {
        self.inner.note_visited(self.n);
    }
}

impl Snapshot {
    /// The value of `key`: the first place, in priority order, with a version at or below
    /// its link's seq decides.
    fn get(
        &self,
        inner: &Inner,
        key: &[u8],
        visits: &mut Visits<'_>,
    ) -> Result<Option<Bytes>, StoreError> {
        for link in &self.links {
            for m in &self.memtables {
                let found = m
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(link.tid, key, link.upto);
                if let Some(v) = found {
                    return Ok(v);
                }
            }
            for layer in &link.layers {
                visits.n += 1;
                if let Some(e) = layer.get(key, link.upto, &inner.cache)? {
                    return Ok(e.value);
                }
            }
        }
        Ok(None)
    }
}

/// See [`super::Store::read`].
pub fn read<K: AsRef<[u8]>>(
    inner: &Inner,
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
    let snap = snapshot(inner, id, at)?;
    let mut visits = Visits { inner, n: 0 };
    let mut total = 0usize;
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let value = snap.get(inner, key.as_ref(), &mut visits)?;
        total += value.as_ref().map_or(0, Bytes::len);
        if total > MAX_RESPONSE_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "the values read add up to more than {MAX_RESPONSE_BYTES} bytes \
                 (MAX_RESPONSE_BYTES): read fewer keys at a time"
            )));
        }
        values.push(value);
    }
    Ok((Seq(snap.seq), values))
}

/// A version found at a cursor's key: `None` no version at or below the seq read here,
/// `Some(None)` a tombstone.
type Found = Option<Option<Bytes>>;

/// One place a scan reads, as a cursor in key order.
enum Cursor {
    Memtable {
        memtable: Arc<RwLock<Memtable>>,
        tid: u64,
        upto: u64,
        buffer: std::vec::IntoIter<(Bytes, Found)>,
        more: bool,
        last: Option<Bytes>,
    },
    Layer {
        layer: Arc<Layer>,
        upto: u64,
        iter: SectionIter,
    },
}

/// Keys a memtable cursor takes from its memtable per lock.
const MEMTABLE_CHUNK: usize = 256;

impl Cursor {
    /// The next key and what this place has for it, `None` at the end.
    fn next(
        &mut self,
        inner: &Inner,
        end: Option<&[u8]>,
        visits: &mut Visits<'_>,
    ) -> Result<Option<(Bytes, Found)>, StoreError> {
        visits.n += 1;
        match self {
            Cursor::Memtable {
                memtable,
                tid,
                upto,
                buffer,
                more,
                last,
            } => {
                if let Some(item) = buffer.next() {
                    *last = Some(item.0.clone());
                    return Ok(Some(item));
                }
                if !*more {
                    return Ok(None);
                }
                let Some(after) = last.clone() else {
                    return Ok(None);
                };
                let (items, has_more) = memtable
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .range(
                        *tid,
                        Bound::Excluded(&after[..]),
                        end,
                        *upto,
                        MEMTABLE_CHUNK,
                    );
                *more = has_more;
                *buffer = items.into_iter();
                let item = buffer.next();
                if let Some((k, _)) = &item {
                    *last = Some(k.clone());
                }
                Ok(item)
            }
            Cursor::Layer { layer, upto, iter } => {
                let Some(e) = iter.next_entry()? else {
                    return Ok(None);
                };
                if end.is_some_and(|end| e.key[..] >= *end) {
                    return Ok(None);
                }
                let found = if e.seq <= *upto {
                    Some(e.value)
                } else {
                    layer.get(&e.key, *upto, &inner.cache)?.map(|h| h.value)
                };
                Ok(Some((e.key, found)))
            }
        }
    }
}

/// See [`super::Store::scan`].
pub fn scan(
    inner: &Inner,
    id: &TimelineId,
    start: &[u8],
    end: Option<&[u8]>,
    at: Option<Seq>,
    limit: usize,
    max_bytes: usize,
) -> Result<ScanResult, StoreError> {
    let snap = snapshot(inner, id, at)?;
    let mut result = ScanResult {
        entries: Vec::new(),
        more: false,
        seq: Seq(snap.seq),
    };
    if end.is_some_and(|end| end <= start) || limit == 0 {
        return Ok(result);
    }
    // Cursors in priority order, each with its current key.
    let mut cursors = Vec::new();
    for link in &snap.links {
        for m in &snap.memtables {
            let (items, more) = m
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .range(
                    link.tid,
                    Bound::Included(start),
                    end,
                    link.upto,
                    MEMTABLE_CHUNK,
                );
            cursors.push(Cursor::Memtable {
                memtable: m.clone(),
                tid: link.tid,
                upto: link.upto,
                buffer: items.into_iter(),
                more,
                last: None,
            });
        }
        for layer in &link.layers {
            cursors.push(Cursor::Layer {
                layer: layer.clone(),
                upto: link.upto,
                iter: layer.iter(Section::Newest, start, Some(inner.cache.clone())),
            });
        }
    }
    let mut visits = Visits { inner, n: 0 };
    let mut heads = Vec::with_capacity(cursors.len());
    for c in &mut cursors {
        heads.push(c.next(inner, end, &mut visits)?);
    }
    let mut bytes = 0usize;
    loop {
        let Some(key) = heads.iter().flatten().map(|(k, _)| k).min().cloned() else {
            break;
        };
        if result.entries.len() >= limit || bytes >= max_bytes {
            result.more = true;
            break;
        }
        let mut answer: Found = None;
        for (head, cursor) in heads.iter_mut().zip(&mut cursors) {
            if head.as_ref().is_some_and(|(k, _)| *k == key) {
                if let Some((_, found)) = head.take()
                    && answer.is_none()
                {
                    answer = found;
                }
                *head = cursor.next(inner, end, &mut visits)?;
            }
        }
        if let Some(Some(value)) = answer {
            bytes += value.len();
            result.entries.push((key, value));
        }
    }
    Ok(result)
}
