//! Background work: flushing frozen memtables into layer files, and compaction, which is
//! also garbage collection.
//!
//! **Flush.** Each frozen memtable becomes one layer per timeline (versions the retention
//! window no longer needs are left out already), the directory is fsynced, the layers join
//! their timelines and the manifest moves replay past the memtable's log segments, which
//! are then deleted. A crash before the manifest leaves layer files nothing refers to: they
//! are deleted at the next open, and the log replays the memtable again.
//!
//! **Compaction.** Layers of a timeline are merged into one, keeping what a read at or
//! above the horizon, or at a branch point, can return ([`super::retention`]). The new
//! file is in place (and in the manifest) before the old ones are deleted, so a crash at any
//! point loses nothing, and what it leaves behind is collected at the next open. It is
//! upkeep, so it gives way on a nearly full disk: it stops (removing its output) rather than
//! take the room that writes and flushes need, and tries again later.
//!
//! Two kinds ([`Scope`]). Collection (every `gc_interval`, and on demand) merges *all* of a
//! timeline's layers: only then can the oldest versions go. After a flush, a timeline
//! whose newest layers piled up merges *those* only, chosen size-tiered ([`tiered_run`]):
//! the newest layer and each older one no bigger than those taken so far. Layers then grow
//! like the digits of a binary counter, so a byte is rewritten about log2(timeline /
//! memtable) times over its life, where merging all layers each time rewrote the whole
//! timeline every few flushes (most of the page store's disk writes and CPU under a steady
//! write load).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lakebed_pageserver_api::{Seq, TimelineId};

use super::commit::duplicate;
use super::error::StoreError;
use super::layer::{KeyVersions, Layer, LayerWriter};
use super::retention::retain;
use super::wal::{segment_path, segments, sync_dir};
use super::{GcReport, GcTimeline, Inner, lock};

/// Runs the flusher until shutdown: waits for frozen memtables and flushes them, retrying
/// after failures (a full disk) every second.
pub fn run_flusher(inner: &Arc<Inner>) {
    loop {
        {
            let (m, cv) = &inner.flush_signal;
            let mut g = lock(m);
            while inner.read_state().frozen.is_empty() && !inner.shutdown.load(Ordering::SeqCst) {
                g = cv
                    .wait_timeout(g, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = flush_frozen(inner) {
            tracing::error!(error = %e, "flushing the memtable to a layer failed; retrying in 1s");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Runs collection every `gc_interval` until shutdown. An interval too long to add to the
/// clock means never (the config refuses more than 100 years; this is for other callers).
pub fn run_gc(inner: &Arc<Inner>) {
    let interval = inner.options.gc_interval;
    let mut next = Instant::now().checked_add(interval);
    loop {
        {
            let (m, cv) = &inner.flush_signal;
            let mut g = lock(m);
            while next.is_none_or(|n| Instant::now() < n) && !inner.shutdown.load(Ordering::SeqCst)
            {
                let left = next
                    .map_or(Duration::MAX, |n| {
                        n.saturating_duration_since(Instant::now())
                    })
                    .min(Duration::from_secs(1));
                g = cv
                    .wait_timeout(g, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        match gc(inner, None, baseline(inner)) {
            Ok(report) => {
                let removed: u64 = report.timelines.iter().map(|t| t.versions_removed).sum();
                if removed > 0 {
                    tracing::info!(
                        versions_removed = removed,
                        bytes_before = report.bytes_before,
                        bytes_after = report.bytes_after,
                        "history collected"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "history collection failed; will retry"),
        }
        next = Instant::now().checked_add(interval);
    }
}

fn next_file_no(inner: &Inner) -> u64 {
    let mut st = inner.write_state();
    let n = st.next_file;
    st.next_file += 1;
    n
}

/// Flushes every frozen memtable, oldest first. Notes how it went in
/// [`Inner::flush_failure`]: while flushes fail, writes that would grow the backlog past its
/// limit are refused with the same error (see `commit`).
///
/// # Errors
///
/// [`StoreError::DiskFull`], [`StoreError::Io`]: the memtable stays frozen (and in the log)
/// for the next try.
pub fn flush_frozen(inner: &Inner) -> Result<(), StoreError> {
    let _one = lock(&inner.flush_lock);
    let result = flush_all(inner);
    *lock(&inner.flush_failure) = result.as_ref().err().map(duplicate);
    // Writers held for room go on, or are answered with the error.
    inner.wake_flusher();
    result
}

fn flush_all(inner: &Inner) -> Result<(), StoreError> {
    loop {
        let Some(frozen) = inner.read_state().frozen.first().cloned() else {
            return Ok(());
        };
        let retention = inner.options.history_retention;
        let mut made: Vec<Layer> = Vec::new();
        let mut removed: Vec<(u64, u64)> = Vec::new();
        let result = (|| -> Result<(), StoreError> {
            let m = frozen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut tids: Vec<u64> = m.timelines().collect();
            tids.sort_unstable();
            for tid in tids {
                let (horizon, points) = {
                    let st = inner.read_state();
                    let Some(t) = st.timelines.get(&tid) else {
                        continue; // deleted since
                    };
                    (st.own_horizon(t, retention), st.branch_points(tid))
                };
                let mut w = LayerWriter::create(&inner.layers_dir, next_file_no(inner), tid)?;
                let mut dropped = 0u64;
                for mut versions in m.key_versions(tid) {
                    dropped += retain(&mut versions, horizon, &points, false) as u64;
                    w.push_key(&versions)?;
                }
                removed.push((tid, dropped));
                if let Some(layer) = w.finish()? {
                    made.push(layer);
                }
            }
            sync_dir(&inner.layers_dir)
        })();
        if let Err(e) = result {
            for l in &made {
                let _ = std::fs::remove_file(l.path());
            }
            return Err(e);
        }
        let end_segment = frozen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .end_segment;
        {
            let mut st = inner.write_state();
            for (tid, dropped) in removed {
                if let Some(t) = st.timelines.get_mut(&tid) {
                    t.removed += dropped;
                }
            }
            for layer in made {
                match st.timelines.get_mut(&layer.tid) {
                    Some(t) => {
                        t.layers.push(Arc::new(layer));
                        t.sort_layers();
                    }
                    None => {
                        let _ = std::fs::remove_file(layer.path());
                    }
                }
            }
            st.frozen.retain(|f| !Arc::ptr_eq(f, &frozen));
            if let Some(s) = end_segment {
                st.wal_start = st.wal_start.max(s);
            }
        }
        inner.save_manifest()?;
        inner.wake_flusher(); // writers waiting for room
        // The log up to the new start is in layers now.
        let start = inner.read_state().wal_start;
        for s in segments(&inner.wal_dir)?.into_iter().filter(|&s| s < start) {
            let path = segment_path(&inner.wal_dir, s);
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        // Merge timelines whose newest layers piled up.
        let crowded: Vec<u64> = {
            let st = inner.read_state();
            st.timelines
                .values()
                .filter(|t| tiered_run(&t.layers, inner.options.max_layers).is_some())
                .map(|t| t.tid)
                .collect()
        };
        // Merging is upkeep: if it cannot run now (no room), the flush still succeeded.
        for tid in crowded {
            if let Err(e) = compact(inner, tid, Scope::Crowded) {
                tracing::warn!(error = %e, "merging a timeline's layers failed; will retry");
            }
        }
    }
}

/// Where a collection started from: the store's size and each timeline's count of versions
/// collected so far. Taken before the memtable flush that [`super::Store::gc`] does first,
/// so that its report covers the flush too.
pub struct Baseline {
    bytes: u64,
    removed: HashMap<u64, u64>,
}

/// The store as it is now, for [`gc`]'s report.
pub fn baseline(inner: &Inner) -> Baseline {
    Baseline {
        bytes: inner.disk_bytes(),
        removed: inner
            .read_state()
            .timelines
            .values()
            .map(|t| (t.tid, t.removed))
            .collect(),
    }
}

/// Collects history of timeline `id`, or of all timelines, and reports what was collected
/// since `baseline`.
///
/// # Errors
///
/// [`StoreError::NotFound`], [`StoreError::DiskFull`], [`StoreError::Io`],
/// [`StoreError::Corrupt`].
pub fn gc(
    inner: &Inner,
    id: Option<&TimelineId>,
    baseline: Baseline,
) -> Result<GcReport, StoreError> {
    let tids: Vec<u64> = {
        let st = inner.read_state();
        match id {
            Some(id) => vec![st.tid(id)?],
            None => {
                let mut v: Vec<u64> = st.timelines.keys().copied().collect();
                v.sort_unstable();
                v
            }
        }
    };
    let mut timelines = Vec::new();
    for tid in tids {
        if let Some(mut t) = compact(inner, tid, Scope::All)? {
            let st = inner.read_state();
            if let Some(now) = st.timelines.get(&tid) {
                let before = baseline.removed.get(&tid).copied().unwrap_or(0);
                t.versions_removed = now.removed.saturating_sub(before);
            }
            timelines.push(t);
        }
    }
    Ok(GcReport {
        timelines,
        bytes_before: baseline.bytes,
        bytes_after: inner.disk_bytes(),
    })
}

/// Which layers of a timeline a merge takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every layer: collection, which only a merge down to the oldest layer can do fully.
    All,
    /// The newest layers that [`tiered_run`] picks, if it picks any.
    Crowded,
}

/// A merge after a flush takes the newest layers once this many are alike in size.
const TIER_RUN: usize = 4;

/// How many of `layers` (newest first) a merge after a flush takes, if one is due: the
/// newest layer, then each older one while it is no bigger than those taken so far, once
/// that run is [`TIER_RUN`] layers long. Steady flushes then keep at most about
/// `TIER_RUN + log2(timeline / memtable)` layers; should a timeline still pass
/// `max_layers` (reads look at every layer), all of them are merged.
fn tiered_run(layers: &[Arc<Layer>], max_layers: usize) -> Option<usize> {
    tiered_run_of(layers.iter().map(|l| l.bytes), max_layers)
}

/// [`tiered_run`] over the layers' sizes in bytes, newest first.
fn tiered_run_of(sizes: impl IntoIterator<Item = u64>, max_layers: usize) -> Option<usize> {
    let mut sizes = sizes.into_iter();
    let mut taken = sizes.next()?;
    let (mut n, mut count) = (1, 1);
    let mut open = true;
    for bytes in sizes {
        count += 1;
        if open && bytes <= taken {
            taken += bytes;
            n += 1;
        } else {
            open = false;
        }
    }
    if n >= TIER_RUN {
        Some(n)
    } else if count > max_layers && count >= 2 {
        Some(count)
    } else {
        None
    }
}

/// Merges layers of timeline `tid` into one (all of them, or those [`tiered_run`] picks),
/// collecting what the horizon allows. Returns what it did, `None` if the timeline is gone.
fn compact(inner: &Inner, tid: u64, scope: Scope) -> Result<Option<GcTimeline>, StoreError> {
    let _one = lock(&inner.compaction_lock);
    let retention = inner.options.history_retention;
    let (id, inputs, horizon, points, root) = {
        let st = inner.read_state();
        let Some(t) = st.timelines.get(&tid) else {
            return Ok(None);
        };
        let take = match scope {
            Scope::All => t.layers.len(),
            Scope::Crowded => match tiered_run(&t.layers, inner.options.max_layers) {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        // Only a merge down to the oldest layer may drop a tombstone of a root timeline:
        // an older layer left out could still hold a version it hides.
        let to_oldest = take == t.layers.len();
        (
            t.id.clone(),
            t.layers[..take].to_vec(),
            st.own_horizon(t, retention),
            st.branch_points(tid),
            t.parent.is_none() && to_oldest,
        )
    };
    let worth_it = inputs.len() > 1
        || inputs
            .first()
            .is_some_and(|l| l.history_count > 0 && l.lo < horizon);
    let mut removed = 0u64;
    let mut output = None;
    if worth_it {
        let mut cursors: Vec<KeyVersions> = inputs.iter().map(KeyVersions::new).collect();
        let mut heads = Vec::with_capacity(cursors.len());
        for c in &mut cursors {
            heads.push(c.next_key()?);
        }
        let mut w = LayerWriter::create(&inner.layers_dir, next_file_no(inner), tid)?
            .keep_free(inner.options.room_for_writes());
        loop {
            let Some(key) = heads.iter().flatten().map(|v| v[0].key.clone()).min() else {
                break;
            };
            // Layers are newest first and their seq ranges do not overlap: concatenating
            // keeps the versions newest first.
            let mut versions = Vec::new();
            for (head, cursor) in heads.iter_mut().zip(&mut cursors) {
                if head.as_ref().is_some_and(|v| v[0].key == key) {
                    if let Some(v) = head.take() {
                        versions.extend(v);
                    }
                    *head = cursor.next_key()?;
                }
            }
            removed += retain(&mut versions, horizon, &points, root) as u64;
            w.push_key(&versions)?;
        }
        output = w.finish()?;
        sync_dir(&inner.layers_dir)?;
    }
    {
        let mut st = inner.write_state();
        let Some(t) = st.timelines.get_mut(&tid) else {
            if let Some(l) = &output {
                let _ = std::fs::remove_file(l.path());
            }
            return Ok(None);
        };
        if worth_it {
            t.layers
                .retain(|l| !inputs.iter().any(|i| i.file_no == l.file_no));
            if let Some(l) = output {
                t.layers.push(Arc::new(l));
            }
            t.sort_layers();
        }
        t.gc_horizon = t.gc_horizon.max(horizon);
        t.removed += removed;
        // Commit times below the horizon but the newest one are of no more use.
        let keep_from = t
            .commit_times
            .partition_point(|&(seq, _)| seq <= horizon)
            .saturating_sub(1);
        t.commit_times.drain(..keep_from);
    }
    if worth_it {
        // The inputs go once a manifest without them is durable: this one, or if it cannot
        // be written (a full disk), the next that can.
        lock(&inner.garbage).extend(inputs.iter().map(|l| l.path().to_owned()));
    }
    inner.save_manifest()?;
    Ok(Some(GcTimeline {
        timeline: id,
        horizon: Seq(horizon),
        versions_removed: removed,
    }))
}

#[cfg(test)]
mod tests {
    use super::tiered_run_of;

    #[test]
    fn a_merge_after_a_flush_takes_the_newest_layers_alike_in_size() {
        // Not due: too few alike, and no more layers than allowed.
        assert_eq!(tiered_run_of([], 8), None);
        assert_eq!(tiered_run_of([10, 10, 10], 8), None);
        assert_eq!(tiered_run_of([10, 10, 10, 100, 200], 8), None);
        assert_eq!(tiered_run_of([10], 0), None);
        // Four alike: those four, not the bigger layers under them.
        assert_eq!(tiered_run_of([10, 10, 10, 10, 100, 200], 8), Some(4));
        // Each older layer joins while it is no bigger than those taken so far: 10+10+20
        // then 40 (<= 40), then 80 (<= 80); 1000 stops it.
        assert_eq!(tiered_run_of([10, 10, 20, 40, 80, 1000], 8), Some(5));
        // Sizes that double: no run, but past max_layers all are merged.
        let doubling = [1, 2, 4, 8, 16, 32, 64, 128, 256];
        assert_eq!(tiered_run_of(doubling, 16), None);
        assert_eq!(tiered_run_of(doubling, 8), Some(9));
    }

    /// Flushes of one size, merged as they come: every layer is rewritten about log2 times,
    /// not once per merge, and the count stays small.
    #[test]
    fn steady_flushes_rewrite_each_byte_a_logarithmic_number_of_times() {
        let mut layers: Vec<u64> = Vec::new(); // newest first
        let (mut flushed, mut rewritten) = (0u64, 0u64);
        let mut most = 0;
        for _ in 0..1024 {
            layers.insert(0, 1);
            flushed += 1;
            if let Some(n) = tiered_run_of(layers.iter().copied(), 32) {
                let merged: u64 = layers.drain(..n).sum();
                rewritten += merged;
                layers.insert(0, merged);
            }
            most = most.max(layers.len());
        }
        // At most TIER_RUN - 1 new ones over log2(1024 / TIER_RUN) + 1 merged ones.
        assert!(most <= 3 + 9, "{most} layers at once");
        // Merging all layers every ninth flush (as before) rewrites about 1024 * 1024 / 18,
        // over 58,000 units; tiered, each unit about log2(1024 / TIER_RUN) + 1 = 9 times.
        assert!(
            rewritten <= 9 * flushed,
            "{rewritten} units rewritten for {flushed} flushed"
        );
    }
}
