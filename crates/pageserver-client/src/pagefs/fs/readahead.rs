//! Readahead: which blocks past a read to fetch with it, and when to fetch the next run
//! before a reader gets there.
//!
//! Modelled on Linux's readahead (`mm/readahead.c`): reads of a file are matched to
//! *streams*. A read that starts where a stream stopped (or a little before, as reads the
//! kernel sends in parallel may arrive out of order) and goes past it is sequential; so is
//! the first read of a file at block 0. A read that matches no stream starts a new one,
//! which is random until the next read continues it.
//!
//! - **On a miss** (the read needs a block neither held locally nor on the way), a sequential stream
//!   fetches its *window* past the read in the same page store call, and the window doubles,
//!   from [`INITIAL_WINDOW`] up to the mount's maximum ([`MAX_WINDOW`], or less with a small
//!   cache). A random read fetches only what it asked for.
//! - **On a hit** (or a wait for a block on the way), once a sequential reader is within half a window of the end of what was
//!   fetched ahead, the next window is fetched in the background (only when a prefetcher
//!   runs; see the `prefetch` module), so the page store's answer is on the way while the
//!   reader consumes the current one.
//!
//! Pure bookkeeping: which of these blocks are already held or on the way is decided by the
//! fetch, under the state lock.

use std::collections::HashMap;
use std::ops::Range;

/// Window of a stream's first readahead: 128 KiB.
pub(super) const INITIAL_WINDOW: u64 = 16;

/// Most blocks one readahead fetches: 4 MiB. A mount with a small cache uses less (see
/// [`max_window`]).
pub(super) const MAX_WINDOW: u64 = 512;

/// Streams tracked per file (several backends may scan one table at once); the least
/// recently used is forgotten first.
const STREAMS_PER_FILE: usize = 4;

/// The largest window for a cache of `cache_pages` pages: a quarter of it, so that pages
/// fetched ahead are not evicted before they are read (at least one block).
pub(super) fn max_window(cache_pages: usize) -> u64 {
    (cache_pages as u64 / 4).clamp(1, MAX_WINDOW)
}

/// One run of reads of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// The block after the furthest one read.
    next: u64,
    /// The block after the furthest one asked for ahead.
    ahead: u64,
    /// Blocks fetched per readahead now; 0 while the stream is not (yet) sequential.
    window: u64,
    /// When it was last used, to forget the oldest.
    used: u64,
}

impl Stream {
    /// Whether a read starting at `first` belongs to this stream: no later than what was
    /// read or fetched ahead, and not more than a window before where it stopped.
    fn matches(&self, first: u64) -> bool {
        first <= self.ahead.max(self.next) && first + self.window.max(1) >= self.next
    }
}

/// What to fetch besides a read's own missing blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Advice {
    /// Fetch these with the read's misses, in the same call (empty unless the read missed).
    pub(super) sync: Range<u64>,
    /// Fetch these in the background now (empty unless the read hit).
    pub(super) background: Range<u64>,
}

/// The read streams of every file.
#[derive(Debug, Default)]
pub(super) struct Readahead {
    files: HashMap<u64, Vec<Stream>>,
    clock: u64,
}

/// One read, as [`Readahead::on_read`] sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Read {
    /// The file.
    pub(super) ino: u64,
    /// First block read.
    pub(super) first: u64,
    /// The block after the last one read.
    pub(super) end: u64,
    /// Blocks in the file: nothing at or past it is fetched ahead.
    pub(super) blocks: u64,
    /// Whether some block read is neither held locally nor on the way.
    pub(super) missed: bool,
}

fn grow(window: u64, max: u64) -> u64 {
    if window == 0 {
        INITIAL_WINDOW.min(max)
    } else {
        (window * 2).min(max)
    }
}

impl Readahead {
    /// Notes `read` and says what to fetch ahead of it: windows of at most `max` blocks; a
    /// background fetch only if `background` (a prefetcher runs).
    pub(super) fn on_read(&mut self, read: Read, max: u64, background: bool) -> Advice {
        let Read {
            ino,
            first,
            end,
            blocks,
            missed,
        } = read;
        self.clock += 1;
        let used = self.clock;
        let streams = self.files.entry(ino).or_default();
        let s = match streams.iter().position(|s| s.matches(first)) {
            Some(i) => &mut streams[i],
            None => {
                if streams.len() >= STREAMS_PER_FILE
                    && let Some(oldest) = (0..streams.len()).min_by_key(|&i| streams[i].used)
                {
                    streams.swap_remove(oldest);
                }
                // From block 0 a file is usually read through: sequential from the start.
                let next = if first == 0 { 0 } else { end };
                streams.push(Stream {
                    next,
                    ahead: next,
                    window: 0,
                    used,
                });
                let last = streams.len() - 1;
                &mut streams[last]
            }
        };
        s.used = used;
        if end <= s.next {
            // Within what the stream already read (a re-read): nothing changes.
            return Advice::default();
        }
        s.next = end;
        let mut advice = Advice::default();
        if missed {
            let w = grow(s.window, max);
            advice.sync = end..(end + w).min(blocks).max(end);
            s.window = w;
            s.ahead = s.ahead.max(advice.sync.end);
        } else if background && s.window > 0 && s.ahead < blocks {
            let lead = s.ahead.saturating_sub(end);
            if lead < s.window / 2 {
                let w = grow(s.window, max);
                let from = s.ahead.max(end);
                advice.background = from..(from + w).min(blocks);
                s.window = w;
                s.ahead = advice.background.end;
            }
        }
        advice
    }

    /// Forgets the streams of `ino` (freed).
    pub(super) fn forget(&mut self, ino: u64) {
        self.files.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ino: u64, first: u64, end: u64, missed: bool) -> Read {
        Read {
            ino,
            first,
            end,
            blocks: 1000,
            missed,
        }
    }

    #[test]
    fn a_sequential_reader_fetches_ever_larger_windows_up_to_the_maximum() {
        let mut ra = Readahead::default();
        // One block at a time from block 0, missing wherever nothing was fetched ahead.
        let mut syncs = Vec::new();
        for b in 0..300 {
            let missed = syncs.last().is_none_or(|r: &Range<u64>| b >= r.end);
            let advice = ra.on_read(read(7, b, b + 1, missed), 64, false);
            assert!(advice.background.is_empty());
            if missed {
                syncs.push(advice.sync);
            } else {
                assert!(advice.sync.is_empty());
            }
        }
        assert_eq!(
            syncs,
            [1..17, 18..50, 51..115, 116..180, 181..245, 246..310]
        );
    }

    #[test]
    fn random_reads_fetch_only_what_they_ask_for() {
        let mut ra = Readahead::default();
        for b in [500, 37, 900, 12, 700, 300] {
            let advice = ra.on_read(read(7, b, b + 1, true), 512, true);
            assert_eq!(advice, Advice::default(), "read of block {b}");
        }
        // A re-read of the block just read is not a sequential read either.
        ra.on_read(read(8, 40, 41, true), 512, true);
        assert_eq!(
            ra.on_read(read(8, 40, 41, true), 512, true),
            Advice::default()
        );
        // The next block after a random one starts a stream, with the initial window.
        let advice = ra.on_read(read(8, 41, 42, true), 512, true);
        assert_eq!(advice.sync, 42..42 + INITIAL_WINDOW);
    }

    #[test]
    fn the_next_window_is_fetched_in_the_background_half_a_window_ahead() {
        let mut ra = Readahead::default();
        let first = ra.on_read(read(7, 0, 1, true), 512, true);
        assert_eq!(first.sync, 1..17);
        // Hits up to half a window before the end of what was fetched: nothing more.
        for b in 1..9 {
            assert_eq!(
                ra.on_read(read(7, b, b + 1, false), 512, true),
                Advice::default()
            );
        }
        // Then the next window, twice as large, starting where the last one ended.
        let advice = ra.on_read(read(7, 9, 10, false), 512, true);
        assert_eq!(advice.background, 17..49);
        // Without a prefetcher nothing is fetched in the background.
        let mut quiet = Readahead::default();
        quiet.on_read(read(7, 0, 1, true), 512, false);
        for b in 1..17 {
            assert_eq!(
                quiet.on_read(read(7, b, b + 1, false), 512, false),
                Advice::default()
            );
        }
    }

    #[test]
    fn readahead_stops_at_the_end_of_the_file() {
        let mut ra = Readahead::default();
        let advice = ra.on_read(
            Read {
                blocks: 5,
                ..read(7, 0, 2, true)
            },
            512,
            true,
        );
        assert_eq!(advice.sync, 2..5);
        let advice = ra.on_read(
            Read {
                blocks: 5,
                ..read(9, 0, 5, true)
            },
            512,
            true,
        );
        assert!(advice.sync.is_empty());
    }

    #[test]
    fn two_scans_of_one_file_keep_their_own_windows() {
        let mut ra = Readahead::default();
        assert_eq!(ra.on_read(read(7, 0, 1, true), 512, false).sync, 1..17);
        // A second scan far away, then each continues where it was.
        ra.on_read(read(7, 600, 601, true), 512, false);
        assert_eq!(
            ra.on_read(read(7, 601, 602, true), 512, false).sync,
            602..618
        );
        assert_eq!(ra.on_read(read(7, 17, 18, true), 512, false).sync, 18..50);
        assert_eq!(
            ra.on_read(read(7, 618, 619, true), 512, false).sync,
            619..651
        );
    }

    #[test]
    fn reads_arriving_out_of_order_stay_in_their_stream() {
        let mut ra = Readahead::default();
        // Parallel 16-block reads, the third before the second.
        assert_eq!(ra.on_read(read(7, 0, 16, true), 512, false).sync, 16..32);
        assert_eq!(ra.on_read(read(7, 32, 48, true), 512, false).sync, 48..80);
        // The second is within the stream: no new stream, no reset.
        assert_eq!(
            ra.on_read(read(7, 16, 32, true), 512, false),
            Advice::default()
        );
        assert_eq!(ra.on_read(read(7, 48, 64, true), 512, false).sync, 64..128);
    }

    #[test]
    fn the_window_is_a_quarter_of_the_cache_at_most() {
        assert_eq!(max_window(127), 31);
        assert_eq!(max_window(1 << 20), MAX_WINDOW);
        assert_eq!(max_window(0), 1);
    }
}
