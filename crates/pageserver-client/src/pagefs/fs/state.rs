//! What a mount holds in memory: the namespace and the dirty set.
//!
//! Everything lives in one [`State`] under one mutex, held only for memory work (never
//! across a page store call), so an operation sees the namespace and the dirty set agree.
//!
//! The dirty set is three maps, one per kind of key (pages, inode records, directory
//! entries), plus the files whose pages are to be deleted. Each dirty entry carries the
//! version it was made at, from one counter ([`State::bump`]): a flush takes a copy, sends
//! it, and afterwards drops only the entries whose version is still the one it sent, so an
//! entry changed while the flush was in flight stays dirty for the next one. Inode records
//! and directory entries are kept by name only; their values are read from the namespace
//! when a flush takes its copy, so the newest always goes out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fuser::Errno;

use super::fetch::Flight;
use super::heat::Heat;
use super::readahead::Readahead;
use super::staged::Staged;
use crate::pagefs::layout::{InodeRecord, Kind, ROOT_INO};

/// One inode in memory.
#[derive(Debug, Clone)]
pub struct Node {
    /// Persistent attributes.
    pub rec: InodeRecord,
    /// Local only: never sent to the page store.
    pub scratch: bool,
    /// For directories: children are scratch.
    pub(super) scratch_children: bool,
    /// For directories: the parent (the root is its own).
    pub(super) parent: u64,
    /// For directories: entries by name.
    pub(super) children: BTreeMap<Vec<u8>, u64>,
    /// Open file handles.
    pub(super) opens: u32,
    /// Still has a directory entry.
    pub(super) linked: bool,
}

impl Node {
    pub(super) fn new(rec: InodeRecord, parent: u64, scratch: bool) -> Self {
        Self {
            rec,
            scratch,
            scratch_children: scratch,
            parent,
            children: BTreeMap::new(),
            opens: 0,
            linked: true,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.rec.kind == Kind::Directory
    }
}

/// One directory entry as readdir returns it: `(next offset, ino, kind, name)`.
pub type DirEntry = (u64, u64, Kind, Vec<u8>);

/// A dirty page: its content (`None`: delete, a block truncated away) and the version it
/// was made at.
#[derive(Debug, Clone)]
pub(super) struct DirtyPage {
    pub(super) data: Option<Bytes>,
    pub(super) version: u64,
}

/// The namespace, the dirty set and the fetch bookkeeping of one mount.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) nodes: HashMap<u64, Node>,
    /// The next inode number to hand out (`generation << 32 | n`).
    pub(super) next_ino: u64,
    /// The last version handed out to a dirty entry.
    pub(super) version: u64,
    /// Dirty pages by `(ino, block)`.
    pub(super) pages: HashMap<(u64, u64), DirtyPage>,
    /// Bytes of content in `pages`.
    pub(super) page_bytes: usize,
    /// Dirty inode records: ino -> version.
    pub(super) inodes: HashMap<u64, u64>,
    /// Dirty directory entries: (parent, name) -> version.
    pub(super) dirents: HashMap<(u64, Vec<u8>), u64>,
    /// Unlinked files whose pages are to be deleted: (ino, blocks).
    pub(super) dead: Vec<(u64, u64)>,
    /// Counts block changes (writes, truncations); see the `fetch` module.
    pub(super) change_seq: u64,
    /// Blocks changed while fetches were registered: (ino, block) -> change seq. Pruned as
    /// fetches finish; empty when none is registered.
    pub(super) changed: HashMap<(u64, u64), u64>,
    /// Start seqs of registered fetches, with how many started there.
    pub(super) inflight: BTreeMap<u64, usize>,
    /// Blocks being fetched: (ino, block) -> the fetch, for readers to wait for.
    pub(super) fetching: HashMap<(u64, u64), Arc<Flight>>,
    /// Per file: its read streams, to tell sequential reads and size readahead.
    pub(super) readahead: Readahead,
    /// Pages fetched ahead of their reader, not yet read; see the `staged` module.
    pub(super) staged: Staged,
    /// The pages read (or written back) this boot, in order, for the next boot's prewarm.
    pub(super) heat: Heat,
    /// The inode of `pg_wal`, whose files' writes are not listed in `heat`.
    pub(super) wal_dir: Option<u64>,
}

/// Locks the state. A panic on another thread while it held the lock does not take every
/// later request down with it (poisoning is ignored).
pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// A new version for a dirty entry.
    pub(super) fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Whether block `b` of `ino` is a page the page store may hold: `ino` is a file that
    /// still exists, is not scratch, and reaches that block.
    pub(super) fn stored_block(&self, ino: u64, b: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| {
            !n.is_dir() && !n.scratch && b < crate::pagefs::layout::blocks_for(n.rec.size)
        })
    }

    /// Whether `ino` is a file of `pg_wal`.
    pub(super) fn is_wal(&self, ino: u64) -> bool {
        self.wal_dir
            .is_some_and(|wal| self.nodes.get(&ino).is_some_and(|n| n.parent == wal))
    }

    pub(super) fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Marks inode `ino`'s record dirty (unless it is scratch).
    pub(super) fn mark_inode(&mut self, ino: u64) {
        if self.nodes.get(&ino).is_some_and(|n| !n.scratch) {
            let v = self.bump();
            self.inodes.insert(ino, v);
        }
    }

    /// Marks the entry `name` of `parent` dirty (unless its child is scratch).
    pub(super) fn mark_dirent(&mut self, parent: u64, name: &[u8], child_scratch: bool) {
        if !child_scratch {
            let v = self.bump();
            self.dirents.insert((parent, name.to_vec()), v);
        }
    }

    /// Puts block `block` of `ino` in the dirty set (`None`: to be deleted).
    pub(super) fn put_page(&mut self, ino: u64, block: u64, data: Option<Bytes>) {
        let version = self.bump();
        let len = data.as_ref().map_or(0, Bytes::len);
        if let Some(old) = self.pages.insert((ino, block), DirtyPage { data, version }) {
            self.page_bytes -= old.data.as_ref().map_or(0, Bytes::len);
        }
        self.page_bytes += len;
    }

    /// Whether anything waits for a flush.
    pub(super) fn is_dirty(&self) -> bool {
        !(self.pages.is_empty()
            && self.inodes.is_empty()
            && self.dirents.is_empty()
            && self.dead.is_empty())
    }
}

/// Whether a new entry `name` in `parent` is scratch, and whether its children will be.
pub(super) fn scratch_kind(
    parent_ino: u64,
    parent: &Node,
    name: &[u8],
    kind: Kind,
) -> (bool, bool) {
    if parent.scratch_children {
        return (true, true);
    }
    let root_scratch = parent_ino == ROOT_INO
        && matches!(name, b"postmaster.pid" | b"postmaster.opts")
        && kind == Kind::File;
    let tmp_dir = name == b"pgsql_tmp" && kind == Kind::Directory;
    (root_scratch || tmp_dir, tmp_dir)
}
