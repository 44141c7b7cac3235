//! What history is kept: the horizon a timeline's retention window maps to, and which
//! versions of a key survive collection.
//!
//! A read at seq `s` needs, per key, the newest version at or below `s`. For every `s` at or
//! above the horizon `H` that is every version above `H` plus the newest at or below `H`;
//! for a branch point `B` below `H` (a branch reads its parent at `B`), the newest at or
//! below `B`. Everything else can go. In a root timeline a tombstone with nothing older
//! under it says the same as no version at all, so a full compaction drops it too; in a
//! branch it hides the parent's version and stays.

use std::time::Duration;

use super::codec::Entry;

/// The horizon of a timeline whose commits happened at `commit_times` (`(seq, unix ms)`,
/// ascending), with `last_seq` its newest seq: the newest seq known to have been committed
/// at least `retention` before `now_ms`. With a zero retention, `last_seq`. Conservative:
/// between two samples it picks the older.
pub fn horizon(
    commit_times: &[(u64, u64)],
    last_seq: u64,
    retention: Duration,
    now_ms: u64,
) -> u64 {
    if retention.is_zero() {
        return last_seq;
    }
    let cutoff = now_ms.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    let i = commit_times.partition_point(|&(_, t)| t <= cutoff);
    match i {
        0 => 0,
        i => commit_times[i - 1].0.min(last_seq),
    }
}

/// Keeps, of one key's `versions` (newest first), those a read at or above `horizon`, or at
/// one of `points` (branch points), can return; with `drop_bottom_tombstones`, also drops
/// tombstones with nothing older kept under them. Returns how many were dropped.
pub fn retain(
    versions: &mut Vec<Entry>,
    horizon: u64,
    points: &[u64],
    drop_bottom_tombstones: bool,
) -> usize {
    let before = versions.len();
    let mut keep: Vec<bool> = versions.iter().map(|v| v.seq > horizon).collect();
    for &p in std::iter::once(&horizon).chain(points.iter().filter(|&&p| p < horizon)) {
        if let Some(i) = versions.iter().position(|v| v.seq <= p) {
            keep[i] = true;
        }
    }
    let mut i = 0;
    versions.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    if drop_bottom_tombstones {
        while versions.last().is_some_and(|v| v.value.is_none()) {
            versions.pop();
        }
    }
    before - versions.len()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn v(seq: u64, value: Option<&str>) -> Entry {
        Entry {
            key: Bytes::from_static(b"k"),
            seq,
            value: value.map(|s| Bytes::copy_from_slice(s.as_bytes())),
        }
    }

    fn seqs(vs: &[Entry]) -> Vec<u64> {
        vs.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_window_the_newest_below_it_and_branch_points() {
        let all = || {
            vec![
                v(20, Some("a")),
                v(15, Some("b")),
                v(9, Some("c")),
                v(7, None),
                v(5, Some("d")),
                v(2, Some("e")),
            ]
        };
        let mut vs = all();
        assert_eq!(retain(&mut vs, 10, &[], false), 3);
        assert_eq!(seqs(&vs), [20, 15, 9]);
        let mut vs = all();
        retain(&mut vs, 10, &[6, 3, 12], false);
        assert_eq!(seqs(&vs), [20, 15, 9, 5, 2]);
        // Branch point 8 needs the tombstone at 7; it is not the bottom one, so it stays.
        let mut vs = all();
        retain(&mut vs, 10, &[8, 3], true);
        assert_eq!(seqs(&vs), [20, 15, 9, 7, 2]);
        // A horizon above everything keeps only the newest.
        let mut vs = all();
        retain(&mut vs, 100, &[], true);
        assert_eq!(seqs(&vs), [20]);
        // A deleted key disappears entirely from a root, stays in a branch.
        let mut vs = vec![v(30, None), v(20, Some("a"))];
        retain(&mut vs, 40, &[], true);
        assert!(vs.is_empty());
        let mut vs = vec![v(30, None), v(20, Some("a"))];
        retain(&mut vs, 40, &[], false);
        assert_eq!(seqs(&vs), [30]);
    }

    #[test]
    fn horizon_follows_commit_times() {
        let times = [(0, 1_000), (10, 2_000), (20, 3_000), (30, 10_000)];
        let h = |retention_ms: u64, now: u64| {
            horizon(&times, 35, Duration::from_millis(retention_ms), now)
        };
        assert_eq!(h(0, 10_000), 35);
        assert_eq!(h(5_000, 10_000), 20);
        assert_eq!(h(5_000, 2_500), 0);
        assert_eq!(h(1_000, 20_000), 30);
        assert_eq!(h(9_000, 11_000), 10);
    }
}
