//! The heat list: which pages this compute read, in the order it first read them.
//!
//! Every read of a file's pages (not of scratch files) notes them here, once each, up to a
//! cap; so does every write (a page Postgres writes back was in its buffers, where its
//! reads never reach pagefs). The WAL is left out: it is read at a new place each boot. At unmount the list is written to the timeline (see the `prewarm` module), and the
//! next compute fetches those pages back before they are asked for: first the ones this
//! boot read first (Postgres's start and its first sessions' catalog lookups), then the
//! rest of what was hot. Pages, never their contents: a page number list, sealed like any
//! value.
//!
//! The pages touched before the compute accepted clients (Postgres's start, the manager's
//! checks) are the list's *startup* part: the next mount fetches them at once, the rest
//! only once its compute accepts clients (see the `prewarm` module).
//!
//! **Encoding** (`FORMAT`, the varint length of the startup part, then per page the zigzag
//! varint of its inode's difference from the previous page's, then that of its block's):
//! consecutive blocks of one file cost two bytes a page, so the largest list fits in one
//! page store value.

use std::collections::HashSet;
use std::ops::Range;

use lakebed_pageserver_api::limits::MAX_VALUE_BYTES;

/// The encoding's version byte.
const FORMAT: u8 = 2;

/// Most pages a list holds: 1 GiB of pages.
pub(super) const MAX_PAGES: usize = 1 << 17;

/// Room left in a page store value for the list once sealed (header, tag, slack).
const MAX_BYTES: usize = MAX_VALUE_BYTES - 4096;

/// Pages first read this boot, in order, each once, at most `cap`.
#[derive(Debug, Default)]
pub(super) struct Heat {
    order: Vec<(u64, u64)>,
    seen: HashSet<(u64, u64)>,
    cap: usize,
    /// How many of `order` were touched before the compute accepted clients; `None` until
    /// it did.
    startup: Option<usize>,
}

/// A heat list as stored: the pages in order, and how many of them make the startup part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct List {
    pub(super) pages: Vec<(u64, u64)>,
    pub(super) startup: usize,
}

impl Heat {
    /// An empty list of at most `cap` pages (and never more than [`MAX_PAGES`]).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.min(MAX_PAGES),
            ..Self::default()
        }
    }

    /// Marks the end of the startup part: the compute accepts clients.
    pub(super) fn started(&mut self) {
        self.startup.get_or_insert(self.order.len());
    }

    /// Notes that `blocks` of `ino` were read.
    pub(super) fn touch(&mut self, ino: u64, blocks: Range<u64>) {
        for b in blocks {
            if self.order.len() >= self.cap {
                return;
            }
            if self.seen.insert((ino, b)) {
                self.order.push((ino, b));
            }
        }
    }

    /// The list to leave for the next boot, encoded (see the module docs): this boot's
    /// reads, then the pages of `previous` (the list this boot started from) it did not
    /// read, up to the cap. So a short boot (a crash, a `select 1`) does not make the next
    /// one forget what was hot; pages drop off the end as newer reads push them out.
    ///
    /// The startup part is this boot's, or (for a boot that never got that far) the
    /// previous list's.
    pub(super) fn encode_after(&self, previous: &List) -> Vec<u8> {
        let room = self.cap.saturating_sub(self.order.len());
        let older = previous
            .pages
            .iter()
            .filter(|p| !self.seen.contains(p))
            .take(room)
            .copied();
        let pages: Vec<(u64, u64)> = self.order.iter().copied().chain(older).collect();
        let startup = self
            .startup
            .unwrap_or(previous.startup.max(self.order.len()));
        encode(&List { pages, startup })
    }
}

/// Encodes `list` (see the module docs), as many pages as fit in [`MAX_BYTES`].
pub(super) fn encode(list: &List) -> Vec<u8> {
    let mut out = vec![FORMAT];
    varint(&mut out, list.startup.min(list.pages.len()) as u64);
    let (mut ino, mut block) = (0u64, 0u64);
    for &(i, b) in &list.pages {
        if out.len() + 20 > MAX_BYTES {
            break;
        }
        varint(&mut out, zigzag(i.wrapping_sub(ino)));
        varint(&mut out, zigzag(b.wrapping_sub(block)));
        (ino, block) = (i, b);
    }
    out
}

/// Decodes a list [`encode`] made; `None` if it is not one (another format, cut short).
pub(super) fn decode(bytes: &[u8]) -> Option<List> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let startup = usize::try_from(read_varint(&mut rest)?).ok()?;
    let (mut ino, mut block) = (0u64, 0u64);
    let mut pages = Vec::new();
    while !rest.is_empty() {
        let di = unzigzag(read_varint(&mut rest)?);
        let db = unzigzag(read_varint(&mut rest)?);
        (ino, block) = (ino.wrapping_add(di), block.wrapping_add(db));
        pages.push((ino, block));
        if pages.len() > MAX_PAGES {
            return None;
        }
    }
    let startup = startup.min(pages.len());
    Some(List { pages, startup })
}

fn zigzag(delta: u64) -> u64 {
    let d = delta as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    ((z >> 1) as i64 ^ -((z & 1) as i64)) as u64
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        *rest = tail;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn list(pages: Vec<(u64, u64)>, startup: usize) -> List {
        List { pages, startup }
    }

    #[test]
    fn a_list_keeps_first_reads_in_order_once_each_up_to_its_cap() {
        let mut heat = Heat::new(5);
        heat.touch(7, 0..2);
        heat.touch(3, 4..5);
        heat.started();
        heat.touch(7, 1..3);
        heat.touch(9, 0..10);
        assert_eq!(heat.order, [(7, 0), (7, 1), (3, 4), (7, 2), (9, 0)]);
        let stored = decode(&heat.encode_after(&List::default())).unwrap();
        assert_eq!(
            stored.startup, 3,
            "touched before the compute accepted clients"
        );
    }

    #[test]
    fn the_list_left_behind_keeps_older_pages_after_this_boots_reads() {
        let mut heat = Heat::new(4);
        heat.touch(7, 1..3);
        let previous = list(vec![(7, 0), (7, 1), (8, 5), (8, 6), (8, 7)], 3);
        // A boot that never accepted clients keeps the previous startup part.
        assert_eq!(
            decode(&heat.encode_after(&previous)),
            Some(list(vec![(7, 1), (7, 2), (7, 0), (8, 5)], 3))
        );
        heat.started();
        assert_eq!(decode(&heat.encode_after(&previous)).unwrap().startup, 2);
        assert_eq!(
            decode(&Heat::new(4).encode_after(&List::default())),
            Some(List::default())
        );
    }

    #[test]
    fn lists_round_trip_and_runs_cost_two_bytes_a_page() {
        let big = 1u64 << 40 | 17;
        let pages = vec![
            (big, 0),
            (big, 1),
            (big, 2),
            (5, 900),
            (big + 3, 0),
            (u64::MAX, 1),
        ];
        let l = list(pages, 2);
        assert_eq!(decode(&encode(&l)), Some(l));
        let run = list((0..1000).map(|b| (big, b)).collect(), 0);
        let bytes = encode(&run);
        assert!(bytes.len() <= 2 + 2 * 1000 + 8, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes), Some(run));
    }

    #[test]
    fn the_largest_list_fits_in_one_value_and_garbage_is_refused() {
        // Scattered pages of many files: the worst case the encoding meets.
        let pages: Vec<(u64, u64)> = (0..MAX_PAGES as u64)
            .map(|n| ((n % 1000) << 32 | 1, n * 7919 % 100_000))
            .collect();
        let bytes = encode(&list(pages.clone(), MAX_PAGES));
        assert!(bytes.len() <= MAX_BYTES);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.pages[..], pages[..back.pages.len()]);
        assert_eq!(back.startup, back.pages.len(), "cut to what was kept");
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[1, 0, 0, 0]), None, "another format");
        assert_eq!(decode(&[FORMAT, 0, 0x80]), None, "a varint cut short");
    }
}
