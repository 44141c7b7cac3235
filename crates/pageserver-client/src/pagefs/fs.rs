//! The filesystem's state and operations, apart from the FUSE plumbing.
//!
//! **Where things live.** The whole namespace (inodes and directory entries; a data
//! directory has a few thousand) is loaded from the page store at mount and kept in memory.
//! File contents are read through three layers: the dirty set (written, not yet in the page
//! store), the sealed local cache (clean pages), and the page store.
//!
//! **Durability.** Every change (a page, an inode's attributes, a directory entry) goes into
//! the dirty set first. [`PageFs::flush`] sends the dirty set to the page store: pages first
//! (in batches), then every namespace change in one atomic batch, then the deletes of files'
//! pages that nothing links anymore. Because pages are keyed by inode numbers that are never
//! reused, writing a page before the record that makes it reachable is harmless, and a crash
//! between batches leaves either the old namespace or the new one, never half a rename. A
//! flush runs in the background every [`Options::flush_interval`] or when the dirty set
//! passes [`Options::dirty_flush_bytes`], and `fsync` of any file or directory runs one and
//! returns only after it: so an `fsync` covers every change made before it, which is stronger
//! than POSIX asks and is what Postgres's `fsync` of WAL, data files and directories relies on.
//!
//! **Fencing.** pagefs writes with the generation it acquired at mount. Once the page store
//! says a newer generation exists, pagefs is fenced: every later change and `fsync` fails
//! with `EIO`, and nothing reaches the timeline.
//!
//! **Scratch files** (`postmaster.pid`, `postmaster.opts`, `pg_stat_tmp/*`, `pgsql_tmp`
//! directories) stay on the compute, sealed like the cache, and never reach the page store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::Errno;
use lakebed_pageserver_api::{Generation, TimelineId};
use tokio::sync::Notify;

use super::cache::{Cache, LocalError, Scratch};
use super::data_key::{DataKeys, ValueKind};
use super::layout::{self, BLOCK_SIZE, InodeRecord, Kind, ROOT_INO, blocks_for};
use crate::rpc::{PageStoreClient, RpcError, WriteBatch};

const BS: u64 = BLOCK_SIZE as u64;

/// Blocks fetched ahead of a sequential read: 512 KiB.
const READAHEAD_BLOCKS: u64 = 64;

/// Most keys in one page batch of a flush.
const PAGE_BATCH_KEYS: usize = 2048;
/// Most keys in one namespace or delete batch (the page store's cap is 65,536).
const META_BATCH_KEYS: usize = 60_000;

/// Tuning of one mount.
#[derive(Debug, Clone)]
pub struct Options {
    /// Owner of every file (the compute's OS user).
    pub uid: u32,
    /// Group of every file.
    pub gid: u32,
    /// How often dirty data is sent to the page store in the background. Default 200 ms.
    pub flush_interval: Duration,
    /// Dirty bytes that start a background flush at once. Default 32 MiB.
    pub dirty_flush_bytes: usize,
    /// Dirty bytes past which writes wait for a flush. Default 256 MiB.
    pub dirty_max_bytes: usize,
}

impl Options {
    /// Defaults for files owned by `uid:gid`.
    pub fn new(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            flush_interval: Duration::from_millis(200),
            dirty_flush_bytes: 32 << 20,
            dirty_max_bytes: 256 << 20,
        }
    }
}

/// One inode in memory.
#[derive(Debug, Clone)]
pub struct Node {
    /// Persistent attributes.
    pub rec: InodeRecord,
    /// Local only: never sent to the page store.
    pub scratch: bool,
    /// For directories: children are scratch.
    scratch_children: bool,
    /// For directories: the parent (the root is its own).
    parent: u64,
    /// For directories: entries by name.
    children: BTreeMap<Vec<u8>, u64>,
    /// Open file handles.
    opens: u32,
    /// Still has a directory entry.
    linked: bool,
}

impl Node {
    fn new(rec: InodeRecord, parent: u64, scratch: bool) -> Self {
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

/// A dirty entry: its value (`None`: delete) and the version it was made at.
#[derive(Debug, Clone)]
struct DirtyPage {
    data: Option<Bytes>,
    version: u64,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    version: u64,
    pages: HashMap<(u64, u64), DirtyPage>,
    page_bytes: usize,
    inodes: HashMap<u64, u64>,
    dirents: HashMap<(u64, Vec<u8>), u64>,
    /// Unlinked files whose pages are to be deleted: (ino, blocks).
    dead: Vec<(u64, u64)>,
    /// Counts block changes (writes, truncations).
    change_seq: u64,
    /// Blocks changed while fetches were registered: (ino, block) -> change seq. Pruned as
    /// fetches finish; empty when none is registered.
    changed: HashMap<(u64, u64), u64>,
    /// Start seqs of registered fetches, with how many started there.
    inflight: BTreeMap<u64, usize>,
    /// Per file: the block after the last one read, to tell sequential reads.
    next_read: HashMap<u64, u64>,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn mark_inode(&mut self, ino: u64) {
        if self.nodes.get(&ino).is_some_and(|n| !n.scratch) {
            let v = self.bump();
            self.inodes.insert(ino, v);
        }
    }

    fn mark_dirent(&mut self, parent: u64, name: &[u8], child_scratch: bool) {
        if !child_scratch {
            let v = self.bump();
            self.dirents.insert((parent, name.to_vec()), v);
        }
    }

    fn put_page(&mut self, ino: u64, block: u64, data: Option<Bytes>) {
        let version = self.bump();
        let len = data.as_ref().map_or(0, Bytes::len);
        if let Some(old) = self.pages.insert((ino, block), DirtyPage { data, version }) {
            self.page_bytes -= old.data.as_ref().map_or(0, Bytes::len);
        }
        self.page_bytes += len;
    }

    /// Records that block `b` of `ino` changed, for fetches in flight.
    fn note_change(&mut self, ino: u64, b: u64) {
        self.change_seq += 1;
        if !self.inflight.is_empty() {
            self.changed.insert((ino, b), self.change_seq);
        }
    }

    /// Whether a page fetched from `start` on is still what block `b` holds.
    fn unchanged_since(&self, ino: u64, b: u64, start: u64) -> bool {
        self.changed.get(&(ino, b)).is_none_or(|&c| c <= start)
    }

    fn is_dirty(&self) -> bool {
        !(self.pages.is_empty()
            && self.inodes.is_empty()
            && self.dirents.is_empty()
            && self.dead.is_empty())
    }
}

/// Whether a new entry `name` in `parent` is scratch, and whether its children will be.
fn scratch_kind(parent_ino: u64, parent: &Node, name: &[u8], kind: Kind) -> (bool, bool) {
    if parent.scratch_children {
        return (true, true);
    }
    let root_scratch = parent_ino == ROOT_INO
        && matches!(name, b"postmaster.pid" | b"postmaster.opts")
        && kind == Kind::File;
    let tmp_dir = name == b"pgsql_tmp" && kind == Kind::Directory;
    (root_scratch || tmp_dir, tmp_dir)
}

/// A block's content, as far as the local layers know it.
enum Local {
    Known(Bytes),
    Missing,
}

/// What a read or write needs before it can complete.
#[derive(Debug)]
pub struct Need {
    /// Blocks to fetch from the page store.
    pub blocks: Vec<u64>,
}

/// Pages fetched for one inode. A fetched page is used only if its block has not changed
/// since the fetch started: while a fetch is registered (from [`PageFs::fetch`] until
/// [`PageFs::done`]), every block change is remembered with its sequence number.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The change sequence number when the fetch started; `None`: nothing fetched.
    start: Option<u64>,
    /// Block -> content (zeros for holes).
    pages: HashMap<u64, Bytes>,
}

/// A mounted timeline's filesystem.
pub struct PageFs {
    client: PageStoreClient,
    timeline: TimelineId,
    generation: Generation,
    options: Options,
    state: Mutex<State>,
    cache: Cache,
    scratch: Scratch,
    flush_lock: tokio::sync::Mutex<()>,
    fenced: AtomicBool,
    /// Woken when the dirty set passes `dirty_flush_bytes`.
    pub(crate) flush_wanted: Notify,
    io: IoStats,
    /// The tenant's DEKs: values are sealed before they leave; `None`: sent as they are.
    keys: Option<Arc<DataKeys>>,
}

/// Upper bounds (seconds) of the page fetch latency histogram pagefs reports.
pub const FETCH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Page store traffic since mount.
#[derive(Debug, Default)]
struct IoStats {
    fetches: AtomicU64,
    fetched_pages: AtomicU64,
    fetch_nanos: AtomicU64,
    /// Fetches by latency: one count per bound of [`FETCH_BUCKETS`] (not cumulative), the
    /// last for slower ones.
    fetch_buckets: [AtomicU64; FETCH_BUCKETS.len() + 1],
    flushes: AtomicU64,
    flushed_bytes: AtomicU64,
}

impl std::fmt::Debug for PageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFs")
            .field("timeline", &self.timeline)
            .field("generation", &self.generation)
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn local_error(e: &LocalError) -> Errno {
    tracing::error!(error = %e, "local cache block unreadable: failing the read with EIO");
    Errno::EIO
}

fn zeros() -> Bytes {
    Bytes::from_static(&[0u8; BLOCK_SIZE])
}

impl PageFs {
    /// Loads the namespace of `timeline` (at its newest seq) and returns the filesystem,
    /// writing with `generation` (which the caller acquired). An empty timeline gets a root
    /// directory with mode 0700.
    ///
    /// # Errors
    ///
    /// The page store's error; [`RpcError::Protocol`] for records that do not decode.
    pub async fn load(
        client: PageStoreClient,
        timeline: TimelineId,
        generation: Generation,
        options: Options,
        cache: Cache,
        scratch: Scratch,
        keys: Option<DataKeys>,
    ) -> Result<Self, RpcError> {
        let unsealed = |kind: ValueKind, v: &Bytes| -> Result<Bytes, RpcError> {
            match &keys {
                None => Ok(v.clone()),
                Some(k) => k.open(kind, v).map_err(|e| {
                    RpcError::Protocol(format!("a namespace record under the tenant's key: {e}"))
                }),
            }
        };
        let (start, end) = layout::inode_range();
        let (seq, records) = client.scan_all(&timeline, &start, Some(&end), None).await?;
        let (start, end) = layout::dirent_range();
        let (_, dirents) = client
            .scan_all(&timeline, &start, Some(&end), Some(seq))
            .await?;

        let mut nodes = HashMap::new();
        for (k, v) in &records {
            let rec = layout::parse_inode_key(k).map(|ino| {
                let v = unsealed(ValueKind::Inode { ino }, v);
                v.map(|v| InodeRecord::decode(&v).map(|rec| (ino, rec)))
            });
            let Some(Some((ino, rec))) = rec.transpose()? else {
                return Err(RpcError::Protocol(format!(
                    "undecodable inode record {k:?}"
                )));
            };
            nodes.insert(ino, Node::new(rec, ROOT_INO, false));
        }
        let first_ino = (u64::from(generation.0) << 32) | 1;
        // Inodes are named after the generation that made them; one from this generation or
        // a later one means the timeline was written under a generation we do not hold.
        if let Some(&ino) = nodes.keys().find(|&&ino| ino >= first_ino) {
            return Err(RpcError::Protocol(format!(
                "inode {ino:#x} is not older than generation {generation}: refusing to mount"
            )));
        }
        let mut state = State {
            next_ino: first_ino,
            ..State::default()
        };
        // An empty timeline: a root directory, to be written at the first flush.
        if let std::collections::hash_map::Entry::Vacant(root) = nodes.entry(ROOT_INO) {
            let now = SystemTime::now();
            let rec = InodeRecord {
                kind: Kind::Directory,
                mode: 0o700,
                size: 0,
                mtime: now,
                ctime: now,
            };
            root.insert(Node::new(rec, ROOT_INO, false));
            let v = state.bump();
            state.inodes.insert(ROOT_INO, v);
        }
        for (k, v) in &dirents {
            let entry = match (&keys, layout::parse_dirent_key(k)) {
                (Some(_), Some((parent, mac))) => {
                    let name_mac: [u8; 16] = mac.try_into().map_err(|_| {
                        RpcError::Protocol(format!("undecodable directory entry {k:?}"))
                    })?;
                    let v = unsealed(ValueKind::Dirent { parent, name_mac }, v)?;
                    layout::parse_sealed_dirent_value(&v)
                        .map(|(child, name)| (parent, name.to_vec(), child))
                }
                (None, _) => layout::parse_dirent(k, v),
                (Some(_), None) => None,
            };
            let Some((parent, name, child)) = entry else {
                return Err(RpcError::Protocol(format!(
                    "undecodable directory entry {k:?}"
                )));
            };
            // Entries whose inode or parent is missing are skipped: nothing reaches them.
            if !nodes.contains_key(&child) || !nodes.get(&parent).is_some_and(Node::is_dir) {
                continue;
            }
            if let Some(c) = nodes.get_mut(&child) {
                c.parent = parent;
                if parent == ROOT_INO && name == b"pg_stat_tmp" {
                    c.scratch_children = true;
                }
            }
            if let Some(p) = nodes.get_mut(&parent) {
                p.children.insert(name, child);
            }
        }
        state.nodes = nodes;
        tracing::info!(
            %timeline, %generation, %seq, inodes = state.nodes.len(),
            "namespace loaded"
        );
        Ok(Self {
            client,
            timeline,
            generation,
            options,
            state: Mutex::new(state),
            cache,
            scratch,
            flush_lock: tokio::sync::Mutex::new(()),
            fenced: AtomicBool::new(false),
            flush_wanted: Notify::new(),
            io: IoStats::default(),
            keys: keys.map(Arc::new),
        })
    }

    /// The mount's counters as one JSON object: `hits`, `misses`, `evictions`,
    /// `cached_pages` (local cache), `fetches`, `fetched_pages`, `fetch_seconds` (page store
    /// reads), `fetch_buckets` (fetches per [`FETCH_BUCKETS`] bound, then slower),
    /// `flushes`, `flushed_bytes` (page store writes), `dirty_bytes` (not yet flushed).
    pub fn stats_json(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.cache.stats;
        let buckets: Vec<String> = self
            .io
            .fetch_buckets
            .iter()
            .map(|b| get(b).to_string())
            .collect();
        format!(
            "{{\"hits\":{},\"misses\":{},\"evictions\":{},\"cached_pages\":{},\
             \"fetches\":{},\"fetched_pages\":{},\"fetch_seconds\":{:.6},\"fetch_buckets\":[{}],\
             \"flushes\":{},\"flushed_bytes\":{},\"dirty_bytes\":{}}}",
            get(&c.hits),
            get(&c.misses),
            get(&c.evictions),
            self.cache.len(),
            get(&self.io.fetches),
            get(&self.io.fetched_pages),
            get(&self.io.fetch_nanos) as f64 / 1e9,
            buckets.join(","),
            get(&self.io.flushes),
            get(&self.io.flushed_bytes),
            self.dirty_bytes(),
        )
    }

    /// The mount's options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The local cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A copy of inode `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`.
    pub fn getattr(&self, ino: u64) -> Result<Node, Errno> {
        lock(&self.state).node(ino).cloned()
    }

    /// The child `name` of `parent`, as `(ino, node)`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `ENOTDIR`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Node), Errno> {
        let st = lock(&self.state);
        let p = st.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let ino = match name {
            b"." => parent,
            b".." => p.parent,
            _ => *p.children.get(name).ok_or(Errno::ENOENT)?,
        };
        Ok((ino, st.node(ino)?.clone()))
    }

    /// Entries of directory `ino` from index `offset` on, with `.` and `..` first.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `ENOTDIR`.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        let st = lock(&self.state);
        let dir = st.node(ino)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dots = [(ino, b".".to_vec()), (dir.parent, b"..".to_vec())];
        let all = dots
            .into_iter()
            .chain(dir.children.iter().map(|(n, &c)| (c, n.clone())));
        Ok(all
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .filter_map(|(i, (c, name))| {
                let kind = st.nodes.get(&c)?.rec.kind;
                Some((i as u64 + 1, c, kind, name))
            })
            .collect())
    }

    fn check_writable(&self) -> Result<(), Errno> {
        if self.fenced.load(Ordering::Relaxed) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Creates `name` in `parent` (a file, opened once, or a directory) with permission bits
    /// `mode`.
    ///
    /// # Errors
    ///
    /// `EEXIST`, `ENOENT`, `ENOTDIR`, `EIO` when fenced.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
    ) -> Result<(u64, Node), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let p = st.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if p.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let (scratch, scratch_children) = scratch_kind(parent, p, name, kind);
        let ino = st.next_ino;
        st.next_ino += 1;
        let now = SystemTime::now();
        let rec = InodeRecord {
            kind,
            mode: mode & 0o7777,
            size: 0,
            mtime: now,
            ctime: now,
        };
        let mut node = Node::new(rec, parent, scratch);
        node.scratch_children = scratch_children;
        if kind == Kind::File {
            node.opens = 1;
        }
        st.nodes.insert(ino, node.clone());
        let p = st.node_mut(parent)?;
        p.children.insert(name.to_vec(), ino);
        p.rec.mtime = now;
        p.rec.ctime = now;
        st.mark_inode(ino);
        st.mark_inode(parent);
        st.mark_dirent(parent, name, scratch);
        Ok((ino, node))
    }

    /// Counts an open of `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`.
    pub fn open(&self, ino: u64) -> Result<(), Errno> {
        lock(&self.state).node_mut(ino)?.opens += 1;
        Ok(())
    }

    /// Counts a close of `ino`; the last close of an unlinked file frees it.
    pub fn release(&self, ino: u64) {
        let mut st = lock(&self.state);
        let free = match st.nodes.get_mut(&ino) {
            Some(n) => {
                n.opens = n.opens.saturating_sub(1);
                n.opens == 0 && !n.linked
            }
            None => false,
        };
        if free {
            self.free(&mut st, ino);
        }
    }

    /// Drops an unlinked, closed inode and queues its pages' deletion.
    fn free(&self, st: &mut State, ino: u64) {
        st.next_read.remove(&ino);
        let Some(node) = st.nodes.remove(&ino) else {
            return;
        };
        if node.scratch {
            self.scratch.truncate(ino, 0);
            return;
        }
        let v = st.bump();
        st.inodes.insert(ino, v);
        if node.rec.kind == Kind::File {
            let before = st.pages.len();
            st.pages.retain(|&(i, _), _| i != ino);
            if before != st.pages.len() {
                st.page_bytes = st
                    .pages
                    .values()
                    .map(|p| p.data.as_ref().map_or(0, Bytes::len))
                    .sum();
            }
            self.cache.remove_from(ino, 0);
            st.dead.push((ino, blocks_for(node.rec.size)));
        }
    }

    /// Removes the entry `name` from `parent`: a file (`dir = false`) or an empty directory.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `ENOTDIR`, `ENOTEMPTY`, `EIO` when fenced.
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<(), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let ino = *st.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        let node = st.node(ino)?;
        match (dir, node.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let scratch = node.scratch;
        let now = SystemTime::now();
        let p = st.node_mut(parent)?;
        p.children.remove(name);
        p.rec.mtime = now;
        p.rec.ctime = now;
        st.mark_inode(parent);
        st.mark_dirent(parent, name, scratch);
        self.unlink_node(&mut st, ino);
        Ok(())
    }

    fn unlink_node(&self, st: &mut State, ino: u64) {
        let Some(n) = st.nodes.get_mut(&ino) else {
            return;
        };
        n.linked = false;
        if n.opens == 0 {
            self.free(st, ino);
        } else {
            st.mark_inode(ino);
        }
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing a file (or an empty
    /// directory) there unless `noreplace`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EEXIST` (noreplace), `EISDIR`/`ENOTDIR` (kind mismatch), `ENOTEMPTY`,
    /// `EXDEV` (between scratch and persisted places), `EINVAL` (a directory into itself),
    /// `EIO` when fenced.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        noreplace: bool,
    ) -> Result<(), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let ino = *st.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        let node = st.node(ino)?.clone();
        let np = st.node(new_parent)?;
        if !np.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let kind = node.rec.kind;
        if scratch_kind(new_parent, np, new_name, kind).0 != node.scratch {
            return Err(Errno::EXDEV);
        }
        let replaced = np.children.get(new_name).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        if let Some(r) = replaced {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let r = st.node(r)?;
            match (node.is_dir(), r.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !r.children.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        // A directory must not move under itself.
        if node.is_dir() {
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                let up = st.node(at)?.parent;
                if up == at {
                    break;
                }
                at = up;
            }
        }
        let now = SystemTime::now();
        for p in [parent, new_parent] {
            let p = st.node_mut(p)?;
            p.rec.mtime = now;
            p.rec.ctime = now;
        }
        st.node_mut(parent)?.children.remove(name);
        st.node_mut(new_parent)?
            .children
            .insert(new_name.to_vec(), ino);
        let n = st.node_mut(ino)?;
        n.parent = new_parent;
        n.rec.ctime = now;
        st.mark_inode(parent);
        st.mark_inode(new_parent);
        st.mark_inode(ino);
        st.mark_dirent(parent, name, node.scratch);
        st.mark_dirent(new_parent, new_name, node.scratch);
        if let Some(r) = replaced {
            self.unlink_node(&mut st, r);
        }
        Ok(())
    }

    /// Changes permission bits and times.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EIO` when fenced.
    pub fn set_meta(
        &self,
        ino: u64,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<Node, Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let n = st.node_mut(ino)?;
        if let Some(mode) = mode {
            n.rec.mode = mode & 0o7777;
        }
        if let Some(t) = mtime {
            n.rec.mtime = t;
        }
        n.rec.ctime = SystemTime::now();
        let n = n.clone();
        st.mark_inode(ino);
        Ok(n)
    }

    /// The local content of each block of `blocks` (dirty set, then cache, then `fetched`),
    /// or the ones missing. Blocks at or past the end of the file read as zeros.
    fn gather(
        &self,
        st: &State,
        ino: u64,
        blocks: impl Iterator<Item = u64>,
        fetched: &Fetched,
    ) -> Result<(Vec<Bytes>, Vec<u64>), Errno> {
        let node = st.node(ino)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for b in blocks {
            let local = if b * BS >= node.rec.size {
                Local::Known(zeros())
            } else if node.scratch {
                Local::Known(
                    self.scratch
                        .get(ino, b)
                        .map_err(|e| local_error(&e))?
                        .unwrap_or_else(zeros),
                )
            } else if let Some(d) = st.pages.get(&(ino, b)) {
                Local::Known(d.data.clone().unwrap_or_else(zeros))
            } else if let Some(p) = self.cache.get(ino, b).map_err(|e| local_error(&e))? {
                Local::Known(self.open_stored(ino, b, &p)?)
            } else if let Some(p) = fetched
                .pages
                .get(&b)
                .filter(|_| fetched.start.is_some_and(|s| st.unchanged_since(ino, b, s)))
            {
                Local::Known(p.clone())
            } else {
                Local::Missing
            };
            match local {
                Local::Known(p) => found.push(p),
                Local::Missing => {
                    missing.push(b);
                    found.push(Bytes::new());
                }
            }
        }
        Ok((found, missing))
    }

    /// Reads up to `size` bytes at `offset`, or says which blocks must be fetched first.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` (a local block does not verify).
    pub fn read(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        fetched: &Fetched,
    ) -> Result<Result<Vec<u8>, Need>, Errno> {
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let size_now = node.rec.size;
        let end = (offset + u64::from(size)).min(size_now);
        if offset >= end {
            return Ok(Ok(Vec::new()));
        }
        let first = offset / BS;
        let (pages, mut missing) = self.gather(&st, ino, first..end.div_ceil(BS), fetched)?;
        // A read that starts where the previous one of this file ended is sequential: fetch
        // ahead in the same call, so a scan costs one round trip per READAHEAD_BLOCKS.
        let sequential = st.next_read.insert(ino, end.div_ceil(BS)) == Some(first);
        if !missing.is_empty() {
            if sequential && let Some(&last) = missing.last() {
                let limit = (last + 1 + READAHEAD_BLOCKS).min(size_now.div_ceil(BS));
                missing.extend((last + 1..limit).filter(|b| {
                    !st.pages.contains_key(&(ino, *b)) && !self.cache.contains(ino, *b)
                }));
            }
            return Ok(Err(Need { blocks: missing }));
        }
        drop(st);
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for (i, page) in pages.iter().enumerate() {
            let block_start = (first + i as u64) * BS;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start).min(BS)) as usize;
            let page = if page.len() < BLOCK_SIZE {
                let mut p = page.to_vec();
                p.resize(BLOCK_SIZE, 0);
                Bytes::from(p)
            } else {
                page.clone()
            };
            out.extend_from_slice(&page[from..to]);
        }
        Ok(Ok(out))
    }

    /// Writes `data` at `offset`, or says which blocks must be fetched first (those only
    /// partly overwritten).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` (fenced, or local I/O failed), `EFBIG`.
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        fetched: &Fetched,
    ) -> Result<Result<u32, Need>, Errno> {
        self.check_writable()?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        if data.is_empty() {
            return Ok(Ok(0));
        }
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let first = offset / BS;
        let last = (end - 1) / BS;
        // Blocks only partly covered need their current content.
        let mut partial = [first, last]
            .into_iter()
            .filter(|&b| offset > b * BS || end < (b + 1) * BS)
            .collect::<Vec<_>>();
        partial.dedup();
        let (bases, missing) = self.gather(&st, ino, partial.iter().copied(), fetched)?;
        if !missing.is_empty() {
            return Ok(Err(Need { blocks: missing }));
        }
        let scratch = node.scratch;
        let base_of = |b: u64| {
            partial
                .iter()
                .position(|&p| p == b)
                .map(|i| bases[i].clone())
        };
        for b in first..=last {
            let block_start = b * BS;
            let from = offset.max(block_start);
            let to = end.min(block_start + BS);
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let page = match base_of(b) {
                Some(base) => {
                    let mut p = base.to_vec();
                    p.resize(BLOCK_SIZE, 0);
                    p[(from - block_start) as usize..(to - block_start) as usize]
                        .copy_from_slice(src);
                    Bytes::from(p)
                }
                None => Bytes::copy_from_slice(src),
            };
            if scratch {
                self.scratch.put(ino, b, &page).map_err(|e| {
                    tracing::error!(error = %e, "scratch write failed");
                    Errno::EIO
                })?;
            } else {
                self.cache.remove(ino, b);
                st.put_page(ino, b, Some(page));
                st.note_change(ino, b);
            }
        }
        let now = SystemTime::now();
        let n = st.node_mut(ino)?;
        n.rec.size = n.rec.size.max(end);
        n.rec.mtime = now;
        n.rec.ctime = now;
        st.mark_inode(ino);
        if st.page_bytes >= self.options.dirty_flush_bytes {
            self.flush_wanted.notify_one();
        }
        Ok(Ok(data.len() as u32))
    }

    /// Dirty page bytes now.
    pub fn dirty_bytes(&self) -> usize {
        lock(&self.state).page_bytes
    }

    /// Sets the size of file `ino`. Shrinking drops the blocks past the end and zeroes the
    /// tail of the new last block (which may need it fetched first).
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `EIO` when fenced.
    pub fn truncate(
        &self,
        ino: u64,
        size: u64,
        fetched: &Fetched,
    ) -> Result<Result<Node, Need>, Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let node = st.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let old = node.rec.size;
        let scratch = node.scratch;
        if size < old {
            let keep = blocks_for(size);
            // The new last block keeps [0, size % BS); the rest must read as zeros later.
            if !size.is_multiple_of(BS) {
                let b = size / BS;
                let (bases, missing) = self.gather(&st, ino, std::iter::once(b), fetched)?;
                if !missing.is_empty() {
                    return Ok(Err(Need { blocks: missing }));
                }
                let mut p = bases[0].to_vec();
                p.resize(BLOCK_SIZE, 0);
                p[(size % BS) as usize..].fill(0);
                if scratch {
                    self.scratch.put(ino, b, &p).map_err(|_| Errno::EIO)?;
                } else {
                    self.cache.remove(ino, b);
                    st.put_page(ino, b, Some(Bytes::from(p)));
                    st.note_change(ino, b);
                }
            }
            if scratch {
                self.scratch.truncate(ino, keep);
            } else {
                self.cache.remove_from(ino, keep);
                for b in keep..blocks_for(old) {
                    st.put_page(ino, b, None);
                    st.note_change(ino, b);
                }
            }
        }
        let now = SystemTime::now();
        let n = st.node_mut(ino)?;
        n.rec.size = size;
        n.rec.mtime = now;
        n.rec.ctime = now;
        let n = n.clone();
        st.mark_inode(ino);
        Ok(Ok(n))
    }

    /// Fetches `need.blocks` of `ino` from the page store (holes as zeros) and caches them
    /// unless the file changed meanwhile.
    ///
    /// # Errors
    ///
    /// `EIO` when the page store did not answer within the client's timeout.
    #[tracing::instrument(name = "pagefs_fetch", skip_all, fields(ino, pages = need.blocks.len()))]
    pub async fn fetch(&self, ino: u64, need: Need) -> Result<Fetched, Errno> {
        let start = {
            let mut st = lock(&self.state);
            let start = st.change_seq;
            *st.inflight.entry(start).or_default() += 1;
            start
        };
        let fetched = self.fetch_registered(ino, need, start).await;
        if fetched.is_err() {
            self.done(Fetched {
                start: Some(start),
                pages: HashMap::new(),
            });
        }
        fetched
    }

    /// Ends a fetch's registration; call it once its pages were used.
    pub fn done(&self, fetched: Fetched) {
        let Some(start) = fetched.start else {
            return;
        };
        let mut st = lock(&self.state);
        if let Some(n) = st.inflight.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                st.inflight.remove(&start);
            }
        }
        match st.inflight.keys().next().copied() {
            None => st.changed.clear(),
            Some(oldest) => st.changed.retain(|_, c| *c > oldest),
        }
    }

    async fn fetch_registered(&self, ino: u64, need: Need, start: u64) -> Result<Fetched, Errno> {
        let keys = need
            .blocks
            .iter()
            .map(|&b| layout::page_key(ino, b))
            .collect();
        let started = std::time::Instant::now();
        let result = self.client.read(&self.timeline, keys, None).await;
        self.io.fetches.fetch_add(1, Ordering::Relaxed);
        self.io
            .fetched_pages
            .fetch_add(need.blocks.len() as u64, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.io.fetch_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let bucket = FETCH_BUCKETS
            .iter()
            .position(|&b| elapsed.as_secs_f64() <= b)
            .unwrap_or(FETCH_BUCKETS.len());
        self.io.fetch_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let read = result.map_err(|e| {
            tracing::error!(error = %e, ino, blocks = need.blocks.len(), "page fetch failed");
            Errno::EIO
        })?;
        let stored: Vec<(u64, Option<Bytes>)> =
            need.blocks.iter().copied().zip(read.values).collect();
        let mut pages = HashMap::with_capacity(stored.len());
        for (b, v) in &stored {
            let page = match v {
                Some(v) => self.open_stored(ino, *b, v)?,
                None => zeros(),
            };
            pages.insert(*b, page);
        }
        let st = lock(&self.state);
        // Cached as the page store holds them: sealed under the DEK, and then again under
        // the per-boot key by the cache. Holes, and blocks changed meanwhile, are not.
        for (b, v) in &stored {
            if let Some(v) = v
                && st.unchanged_since(ino, *b, start)
                && !st.pages.contains_key(&(ino, *b))
                && let Err(e) = self.cache.insert(ino, *b, v)
            {
                tracing::warn!(error = %e, "local cache write failed");
            }
        }
        Ok(Fetched {
            start: Some(start),
            pages,
        })
    }

    /// A page as the page store holds it (sealed under the DEK, or plain), opened.
    fn open_stored(&self, ino: u64, block: u64, stored: &[u8]) -> Result<Bytes, Errno> {
        match &self.keys {
            None => Ok(Bytes::copy_from_slice(stored)),
            Some(k) => k.open(ValueKind::Page { ino, block }, stored).map_err(|e| {
                tracing::error!(ino, block, error = %e,
                    "a page does not open under the tenant's key: failing the read with EIO");
                Errno::EIO
            }),
        }
    }

    /// A namespace value as the page store will hold it.
    fn seal(&self, kind: ValueKind, plain: Bytes) -> Bytes {
        match &self.keys {
            None => plain,
            Some(k) => k.seal(kind, &plain),
        }
    }

    /// A directory entry's key and value (`None`: deleted) as the page store holds them.
    fn dirent_entry(&self, parent: u64, name: &[u8], child: Option<u64>) -> (Bytes, Option<Bytes>) {
        match &self.keys {
            None => (
                layout::dirent_key(parent, name),
                child.map(layout::dirent_value),
            ),
            Some(k) => {
                let name_mac = k.name_mac(name);
                let value = child.map(|c| {
                    k.seal(
                        ValueKind::Dirent { parent, name_mac },
                        &layout::sealed_dirent_value(c, name),
                    )
                });
                (layout::dirent_key(parent, &name_mac), value)
            }
        }
    }

    /// Sends everything dirty to the page store; returns once it is durable there.
    ///
    /// # Errors
    ///
    /// `EIO`: fenced, or the page store did not answer within the client's timeout. What
    /// was not sent stays dirty for the next flush.
    pub async fn flush(&self) -> Result<(), Errno> {
        let _one = self.flush_lock.lock().await;
        self.check_writable()?;
        let (pages, meta, dead) = {
            let mut st = lock(&self.state);
            if !st.is_dirty() {
                return Ok(());
            }
            let pages: Vec<_> = st.pages.iter().map(|(&k, d)| (k, d.clone())).collect();
            let mut meta: Vec<(Bytes, Option<Bytes>, Version)> = Vec::new();
            for (&ino, &v) in &st.inodes {
                let rec = st
                    .nodes
                    .get(&ino)
                    .filter(|n| n.linked && !n.scratch)
                    .map(|n| self.seal(ValueKind::Inode { ino }, n.rec.encode()));
                meta.push((layout::inode_key(ino), rec, Version::Inode(ino, v)));
            }
            for ((parent, name), &v) in &st.dirents {
                let child = st
                    .nodes
                    .get(parent)
                    .and_then(|p| p.children.get(name))
                    .copied();
                let (key, value) = self.dirent_entry(*parent, name, child);
                meta.push((key, value, Version::Dirent(*parent, name.clone(), v)));
            }
            (pages, meta, std::mem::take(&mut st.dead))
        };
        // Pages are sealed outside the lock; the sealed bytes are what the cache keeps.
        let stored: Vec<Option<Bytes>> = pages
            .iter()
            .map(|((ino, b), d)| {
                d.data.clone().map(|p| {
                    self.seal(
                        ValueKind::Page {
                            ino: *ino,
                            block: *b,
                        },
                        p,
                    )
                })
            })
            .collect();
        let result = self.send(&pages, &stored, &meta, &dead).await;
        let mut st = lock(&self.state);
        match result {
            Ok(()) => {
                for (((ino, b), d), stored) in pages.iter().zip(&stored) {
                    if st
                        .pages
                        .get(&(*ino, *b))
                        .is_some_and(|c| c.version == d.version)
                    {
                        st.pages.remove(&(*ino, *b));
                        st.page_bytes -= d.data.as_ref().map_or(0, Bytes::len);
                        if let Some(data) = stored
                            && let Err(e) = self.cache.insert(*ino, *b, data)
                        {
                            tracing::warn!(error = %e, "local cache write failed");
                        }
                    }
                }
                for (_, _, v) in meta {
                    match v {
                        Version::Inode(ino, v) => {
                            if st.inodes.get(&ino) == Some(&v) {
                                st.inodes.remove(&ino);
                            }
                        }
                        Version::Dirent(p, name, v) => {
                            let k = (p, name);
                            if st.dirents.get(&k) == Some(&v) {
                                st.dirents.remove(&k);
                            }
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                st.dead.extend(dead);
                if matches!(
                    e,
                    RpcError::StaleGeneration { .. } | RpcError::GenerationNotAcquired { .. }
                ) {
                    self.fenced.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, "fenced: a newer compute holds this timeline; \
                        every further change fails with EIO");
                } else {
                    tracing::error!(error = %e, "flush to the page store failed");
                }
                Err(Errno::EIO)
            }
        }
    }

    #[tracing::instrument(name = "pagefs_flush", skip_all, fields(pages = pages.len(), records = meta.len()))]
    async fn send(
        &self,
        pages: &[((u64, u64), DirtyPage)],
        stored: &[Option<Bytes>],
        meta: &[(Bytes, Option<Bytes>, Version)],
        dead: &[(u64, u64)],
    ) -> Result<(), RpcError> {
        let started = std::time::Instant::now();
        for (chunk, values) in pages
            .chunks(PAGE_BATCH_KEYS)
            .zip(stored.chunks(PAGE_BATCH_KEYS))
        {
            let mut batch = WriteBatch::new();
            for (((ino, b), _), value) in chunk.iter().zip(values) {
                let key = layout::page_key(*ino, *b);
                batch = match value {
                    Some(data) => batch.put(key, data.clone()),
                    None => batch.delete(key),
                };
            }
            self.client
                .write(&self.timeline, self.generation, batch)
                .await?;
        }
        for chunk in meta.chunks(META_BATCH_KEYS) {
            let mut batch = WriteBatch::new();
            for (key, value, _) in chunk {
                batch = match value {
                    Some(v) => batch.put(key.clone(), v.clone()),
                    None => batch.delete(key.clone()),
                };
            }
            self.client
                .write(&self.timeline, self.generation, batch)
                .await?;
        }
        let dead_keys: Vec<Bytes> = dead
            .iter()
            .flat_map(|&(ino, blocks)| (0..blocks).map(move |b| layout::page_key(ino, b)))
            .collect();
        for chunk in dead_keys.chunks(META_BATCH_KEYS) {
            let batch = chunk
                .iter()
                .fold(WriteBatch::new(), |b, k| b.delete(k.clone()));
            self.client
                .write(&self.timeline, self.generation, batch)
                .await?;
        }
        let bytes: usize = pages
            .iter()
            .map(|(_, d)| d.data.as_ref().map_or(0, Bytes::len))
            .sum();
        self.io.flushes.fetch_add(1, Ordering::Relaxed);
        self.io
            .flushed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        tracing::debug!(
            pages = pages.len(),
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
        Ok(())
    }
}

/// Which dirty entry a namespace key came from, and its version.
#[derive(Debug)]
enum Version {
    Inode(u64, u64),
    Dirent(u64, Vec<u8>, u64),
}

/// Runs background flushes until `fs` is dropped elsewhere (the task holds a clone).
pub async fn flusher(fs: Arc<PageFs>) {
    let mut failures = 0u32;
    loop {
        let wait = fs.options.flush_interval * 2u32.pow(failures.min(5));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = fs.flush_wanted.notified() => {}
        }
        match fs.flush().await {
            Ok(()) => failures = 0,
            Err(_) if fs.fenced.load(Ordering::Relaxed) => return,
            Err(_) => failures += 1,
        }
    }
}

/// Progress of a re-seal: values looked at and values re-sealed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealProgress {
    /// Values scanned (all of the timeline's pages and namespace records).
    pub scanned: u64,
    /// Values found under an older DEK version and written again under the newest.
    pub resealed: u64,
    /// Whether the whole timeline was scanned.
    pub done: bool,
}

/// Entries per scan page of a re-seal.
const RESEAL_CHUNK: u32 = 512;

impl PageFs {
    /// Re-seals, under the newest DEK version, every value of the timeline sealed under an
    /// older one (after `lakebed keys rekey`), in the background of a running compute.
    /// `report` gets the progress after each chunk.
    ///
    /// Safe against the compute's own writes: each chunk is written while holding the
    /// flush lock, and keys with unflushed changes are skipped (their flush seals them
    /// anew); no one else writes the timeline (fencing). Resumable: a value already under
    /// the newest version is left alone, so a re-seal cut short (suspend, crash) simply
    /// starts over at the next wake and skips what was done.
    ///
    /// # Errors
    ///
    /// The page store's error; fencing.
    pub async fn reseal(
        &self,
        report: impl Fn(ResealProgress),
    ) -> Result<ResealProgress, RpcError> {
        let mut progress = ResealProgress::default();
        let Some(keys) = self.keys.clone() else {
            progress.done = true;
            return Ok(progress);
        };
        let current = keys.current_version();
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = self
                .client
                .scan(&self.timeline, &start, None, None, RESEAL_CHUNK)
                .await?;
            progress.scanned += page.entries.len() as u64;
            let last = page.entries.last().map(|(k, _)| k.clone());
            {
                let _one = self.flush_lock.lock().await;
                if self.fenced.load(Ordering::Relaxed) {
                    return Err(RpcError::FailedPrecondition {
                        message: "fenced".into(),
                    });
                }
                let batch = {
                    let st = lock(&self.state);
                    let mut batch = WriteBatch::new();
                    let mut n = 0;
                    for (key, value) in &page.entries {
                        let Some(version) = DataKeys::version_of(value) else {
                            continue;
                        };
                        let Some((kind, dirty)) = value_kind(key, &keys, &st) else {
                            continue;
                        };
                        if version >= current || dirty {
                            continue;
                        }
                        match keys.open(kind, value) {
                            Ok(plain) => {
                                batch = batch.put(key.clone(), keys.seal(kind, &plain));
                                n += 1;
                            }
                            Err(e) => {
                                tracing::warn!(?key, error = %e, "re-seal: a value does not open; left as it is")
                            }
                        }
                    }
                    progress.resealed += n;
                    (n > 0).then_some(batch)
                };
                if let Some(batch) = batch {
                    self.client
                        .write(&self.timeline, self.generation, batch)
                        .await?;
                }
            }
            report(progress);
            match last {
                Some(k) if page.more => {
                    start = k.to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        progress.done = true;
        report(progress);
        Ok(progress)
    }
}

/// What a stored key holds, for its seal's binding, and whether it has unflushed changes.
fn value_kind(key: &[u8], keys: &DataKeys, st: &State) -> Option<(ValueKind, bool)> {
    if let Some(ino) = layout::parse_inode_key(key) {
        return Some((ValueKind::Inode { ino }, st.inodes.contains_key(&ino)));
    }
    if let Some((parent, mac)) = layout::parse_dirent_key(key) {
        let name_mac: [u8; 16] = mac.try_into().ok()?;
        // Entries are tracked by name; any pending entry change of the directory counts.
        let dirty = st
            .dirents
            .keys()
            .any(|(p, name)| *p == parent && keys.name_mac(name) == name_mac);
        return Some((ValueKind::Dirent { parent, name_mac }, dirty));
    }
    let (ino, block) = layout::parse_page_key(key)?;
    Some((
        ValueKind::Page { ino, block },
        st.pages.contains_key(&(ino, block)),
    ))
}
