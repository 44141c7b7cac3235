//! Pages fetched ahead of their reader, held in memory as the page store sent them.
//!
//! A page a sequential reader will want next (the readahead window past a read, and the
//! windows the prefetcher fetches) is read once, most of the time: Postgres scans a table
//! and the kernel's page cache keeps what it read. Putting such a page in the local cache
//! cost a seal under the per-boot key, a write to the cache file, and at the read a read of
//! that file and two opens; a cold sequential scan spent most of pagefs's CPU there. So
//! pages fetched ahead are staged here instead, still sealed under the tenant's DEK as the
//! page store holds them, and opened once, when a read takes them. Pages a reader waited
//! for go to the local cache as before.
//!
//! Staged pages are bounded ([`Staged::new`]): the oldest is dropped first, and a page
//! dropped before it was read is fetched again when it is. A page is staged only if its
//! block did not change since its fetch started, and any change of a block drops its staged
//! page (see `State::note_change`), so a staged page is never older than a write.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::prefetch;
use super::readahead;

/// How many pages to stage for a cache of `cache_pages`: as many as the windows the
/// prefetcher may have in flight, and as many again for the windows being read.
pub(super) fn bound(cache_pages: usize) -> usize {
    let window = readahead::max_window(cache_pages) as usize;
    2 * prefetch::PARALLEL * window
}

/// Pages fetched ahead, by `(ino, block)`, oldest first.
#[derive(Debug, Default)]
pub(super) struct Staged {
    pages: HashMap<(u64, u64), Bytes>,
    /// Insertion order; may name pages since taken or dropped (skipped when popped).
    order: VecDeque<(u64, u64)>,
    /// Most pages held.
    cap: usize,
}

impl Staged {
    /// Holds at most `cap` pages.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Stages `stored` (the page as the page store holds it) for block `b` of `ino`,
    /// dropping the oldest pages past the bound.
    pub(super) fn put(&mut self, ino: u64, b: u64, stored: Bytes) {
        if self.cap == 0 {
            return;
        }
        if self.pages.insert((ino, b), stored).is_none() {
            self.order.push_back((ino, b));
        }
        while self.pages.len() > self.cap {
            match self.order.pop_front() {
                Some(k) => {
                    self.pages.remove(&k);
                }
                None => break,
            }
        }
        // Stale names (pages taken or dropped) are trimmed once they outnumber the pages.
        if self.order.len() > 2 * self.cap {
            let pages = &self.pages;
            self.order.retain(|k| pages.contains_key(k));
        }
    }

    /// The staged page of block `b` of `ino`, as the page store holds it.
    pub(super) fn get(&self, ino: u64, b: u64) -> Option<&Bytes> {
        self.pages.get(&(ino, b))
    }

    /// Whether block `b` of `ino` is staged.
    pub(super) fn contains(&self, ino: u64, b: u64) -> bool {
        self.pages.contains_key(&(ino, b))
    }

    /// Drops the staged page of block `b` of `ino` (it was read, or it changed).
    pub(super) fn remove(&mut self, ino: u64, b: u64) {
        if !self.pages.is_empty() {
            self.pages.remove(&(ino, b));
        }
    }

    /// Drops every staged page of `ino` (the file is gone).
    pub(super) fn forget(&mut self, ino: u64) {
        self.pages.retain(|(i, _), _| *i != ino);
    }

    /// Pages staged now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u8) -> Bytes {
        Bytes::from(vec![n; 4])
    }

    #[test]
    fn the_oldest_page_goes_first_past_the_bound() {
        let mut s = Staged::new(2);
        s.put(1, 0, page(0));
        s.put(1, 1, page(1));
        s.put(1, 2, page(2));
        assert_eq!(s.len(), 2);
        assert!(!s.contains(1, 0));
        assert_eq!(s.get(1, 1), Some(&page(1)));
        assert_eq!(s.get(1, 2), Some(&page(2)));
    }

    #[test]
    fn a_removed_page_leaves_room_and_its_stale_name_is_skipped() {
        let mut s = Staged::new(2);
        s.put(1, 0, page(0));
        s.put(1, 1, page(1));
        s.remove(1, 0);
        s.put(1, 2, page(2));
        // Block 0's name is popped first but names nothing; block 1 stays.
        s.put(1, 3, page(3));
        assert_eq!(s.len(), 2);
        assert!(!s.contains(1, 1));
        assert!(s.contains(1, 2) && s.contains(1, 3));
    }

    #[test]
    fn forgetting_a_file_drops_only_its_pages_and_a_zero_bound_stages_nothing() {
        let mut s = Staged::new(8);
        s.put(1, 0, page(0));
        s.put(2, 0, page(1));
        s.forget(1);
        assert!(!s.contains(1, 0));
        assert!(s.contains(2, 0));
        let mut none = Staged::new(0);
        none.put(1, 0, page(0));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn names_of_taken_pages_do_not_pile_up() {
        let mut s = Staged::new(4);
        for b in 0..100 {
            s.put(1, b, page(0));
            s.remove(1, b);
        }
        assert!(s.order.len() <= 8, "{} names kept", s.order.len());
    }
}
