//! The storage layer: timelines of versioned key-value pairs, kept in a log, a memtable and
//! immutable layer files, the shape of Neon's pageserver (and of an LSM tree).
//!
//! - **Commit** ([`commit`]): one thread owns the log. Writes and acquires from every
//!   caller queue up; each round takes all that are waiting, checks their generations,
//!   gives them seqs, appends them to the log with one `fdatasync`, and only then makes
//!   them visible and answers them all: group commit, one device flush for many computes.
//! - **Memtable** ([`memtable`]): what the log holds since the last flush, in memory by
//!   timeline and key. Past its budget, or after `idle_flush` without a write, it is frozen
//!   and a new one takes over.
//! - **Layers** ([`layer`]): the flusher writes each frozen memtable as one sorted layer file
//!   per timeline, then the log segments it covered are deleted. A layer keeps each key's
//!   newest version apart from its older ones, so reads and scans at the newest seq never
//!   walk history.
//! - **Compaction and GC** ([`compact`]): merge layers of a timeline into one, dropping what
//!   neither the retention window (`pageserver.history_retention`, mapped onto seqs by
//!   commit times, see [`retention`]) nor a branch point needs. Old files are deleted, so
//!   space goes back to the file system. After flushes, the newest layers alike in size
//!   (size-tiered, so each byte is rewritten a logarithmic number of times); every
//!   `gc_interval` and on demand ([`Store::gc`]), all of them.
//! - **Manifest** ([`manifest`]): timelines, generations, branch points, layer files and
//!   where replay starts, rewritten atomically. At open: manifest, then layers (checked),
//!   then log replay; files nothing refers to (a crash mid-flush or mid-compaction) are
//!   deleted.
//! - **A full disk**: a write that finds no room is refused with [`StoreError::DiskFull`]
//!   and changes nothing; so is every write while the flusher cannot write its backlog out
//!   (rather than holding writers until there is room). A flush or compaction that fails
//!   half-way removes what it wrote at once, and [`reserve`] keeps room for the manifest, so
//!   deleting a timeline and collecting works on a full disk, and writes go on by themselves
//!   once there is room again.
//!
//! A branch stores only its parent and branch point; reads fall through to the parent at
//! `min(read seq, branch point)` for keys the branch has not written, so creating one copies
//! nothing. Every timeline has an internal number; log records and layers use it, so the
//! leftovers of a deleted timeline never mix with a new one of the same id.
//!
//! The public methods block on disk I/O: call them from a blocking thread.

mod codec;
mod commit;
mod compact;
mod error;
mod layer;
mod manifest;
mod memtable;
mod read;
pub(crate) mod reserve;
mod retention;
mod validate;
mod wal;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
pub use lakebed_pageserver_api::{GcReport, GcTimeline};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};

pub use error::StoreError;

use commit::Op;
use layer::{BlockCache, Layer};
use memtable::Memtable;

/// Per key read: its value, or `None` if absent.
pub type Values = Vec<Option<Bytes>>;

/// Deepest branch chain followed before the store is called corrupt.
const MAX_CHAIN: usize = 10_000;

/// The file that says a directory holds a page store of the first format (one redb file).
pub const LEGACY_STORE_FILE: &str = "pageserver.redb";

/// How a store keeps history and uses memory.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How far back reads at an older seq, and branches at an older point, must work.
    /// `pageserver.history_retention`; default 24 h.
    pub history_retention: Duration,
    /// How often history is collected in the background. `pageserver.gc_interval`; default
    /// 10 min.
    pub gc_interval: Duration,
    /// Memory for caches, in bytes (`pageserver.cache_mib`, default 256 MiB): three quarters
    /// for decoded layer blocks, a quarter (at most 64 MiB) for the memtable before it is
    /// frozen.
    pub cache_bytes: u64,
    /// After this long without a write, the newest writes (the active memtable) are
    /// flushed to a layer file, giving back their memory. Default 30 s.
    pub idle_flush: Duration,
    /// A timeline's layers are all merged once it has more than this many (merges after
    /// flushes keep far fewer; see `compact`). Default 32.
    pub max_layers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            history_retention: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(600),
            cache_bytes: 256 << 20,
            max_layers: 32,
            idle_flush: Duration::from_secs(30),
        }
    }
}

impl StoreOptions {
    fn memtable_bytes(&self) -> usize {
        usize::try_from(self.cache_bytes / 4)
            .unwrap_or(usize::MAX)
            .clamp(1 << 20, 64 << 20)
    }

    /// Free space a compaction leaves for writes: two memtables (the log taking one while
    /// the flusher writes the other out).
    fn room_for_writes(&self) -> u64 {
        2 * self.memtable_bytes() as u64
    }
}

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
    /// Keys in ascending byte order with their values (slices of the blocks they were
    /// read from: nothing is copied until the answer is encoded).
    pub entries: Vec<(Bytes, Bytes)>,
    /// Whether the scan stopped at its limit with more keys possibly following: continue
    /// after the last key (at the same seq).
    pub more: bool,
    /// The seq the scan was served at.
    pub seq: Seq,
}

/// Figures about a store, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of the store's files on disk.
    pub disk_bytes: u64,
    /// Layer files.
    pub layers: u64,
    /// Bytes in memtables (active and frozen).
    pub memtable_bytes: u64,
    /// Bytes in the block cache.
    pub cache_bytes: u64,
    /// Entries that scans and reads looked at since open: the work they did. A scan at the
    /// newest seq looks at each returned key once per place it is stored, never at its old
    /// versions.
    pub entries_visited: u64,
    /// Log appends (one `fdatasync` each) since open.
    pub log_syncs: u64,
    /// Write batches committed since open.
    pub writes_committed: u64,
}

/// One timeline in memory.
#[derive(Debug)]
struct Timeline {
    id: TimelineId,
    tid: u64,
    generation: u32,
    last_seq: u64,
    parent: Option<(u64, u64)>,
    /// Newest first (by `hi`); seq ranges do not overlap.
    layers: Vec<Arc<Layer>>,
    gc_horizon: u64,
    commit_times: Vec<(u64, u64)>,
    /// Versions collected since open, by flushes and compactions: what [`Store::gc`] reports
    /// as removed is how much this grew while it ran.
    removed: u64,
}

impl Timeline {
    /// Notes that `seq` was committed at `time_ms`, if the last sample is at least
    /// [`commit_sample_gap_ms`] older: at most about a thousand samples cover the retention
    /// window, so the manifest stays small however busy the timeline (the horizon they give
    /// is older than the exact one by at most one gap: a little more history is kept).
    fn note_commit(&mut self, seq: u64, time_ms: u64, retention: Duration) {
        let gap = commit_sample_gap_ms(retention);
        if self
            .commit_times
            .last()
            .is_none_or(|&(_, t)| time_ms >= t.saturating_add(gap))
        {
            self.commit_times.push((seq, time_ms));
        }
    }

    fn sort_layers(&mut self) {
        self.layers.sort_by_key(|l| std::cmp::Reverse(l.hi));
    }
}

/// Milliseconds between two commit-time samples of a timeline: a second, or a thousandth of
/// the retention window if that is longer.
fn commit_sample_gap_ms(retention: Duration) -> u64 {
    u64::try_from(retention.as_millis() / 1000)
        .unwrap_or(u64::MAX)
        .max(1000)
}

/// Everything the store knows in memory.
#[derive(Debug)]
struct State {
    timelines: HashMap<u64, Timeline>,
    ids: HashMap<TimelineId, u64>,
    active: Arc<RwLock<Memtable>>,
    /// Oldest first.
    frozen: Vec<Arc<RwLock<Memtable>>>,
    next_tid: u64,
    next_file: u64,
    wal_start: u64,
}

impl State {
    fn tid(&self, id: &TimelineId) -> Result<u64, StoreError> {
        self.ids
            .get(id)
            .copied()
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn timeline(&self, id: &TimelineId) -> Result<&Timeline, StoreError> {
        let tid = self.tid(id)?;
        self.timelines
            .get(&tid)
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn info(&self, t: &Timeline) -> Result<TimelineInfo, StoreError> {
        let parent = match t.parent {
            None => None,
            Some((ptid, seq)) => Some((self.by_tid(ptid)?.id.clone(), Seq(seq))),
        };
        Ok(TimelineInfo {
            generation: Generation(t.generation),
            last_seq: Seq(t.last_seq),
            parent,
        })
    }

    fn by_tid(&self, tid: u64) -> Result<&Timeline, StoreError> {
        self.timelines.get(&tid).ok_or_else(|| StoreError::Corrupt {
            path: PathBuf::from(manifest::FILE),
            reason: format!("timeline number {tid} is referred to but missing"),
        })
    }

    /// The horizon a timeline's own history can be collected at now.
    fn own_horizon(&self, t: &Timeline, retention: Duration) -> u64 {
        retention::horizon(&t.commit_times, t.last_seq, retention, now_ms()).max(t.gc_horizon)
    }

    /// The oldest seq timeline `t` can be read or branched at: its own horizon, or for a
    /// branch not yet past its branch point, the parent's (at most the branch point).
    fn effective_horizon(&self, t: &Timeline, retention: Duration) -> Result<u64, StoreError> {
        let own = self.own_horizon(t, retention);
        match t.parent {
            Some((ptid, b)) if own < b => {
                let parent = self.by_tid(ptid)?;
                Ok(own.max(self.effective_horizon(parent, retention)?.min(b)))
            }
            _ => Ok(own),
        }
    }

    /// Branch seqs of `tid`'s children.
    fn branch_points(&self, tid: u64) -> Vec<u64> {
        let mut points: Vec<u64> = self
            .timelines
            .values()
            .filter_map(|t| t.parent.filter(|(p, _)| *p == tid).map(|(_, b)| b))
            .collect();
        points.sort_unstable_by(|a, b| b.cmp(a));
        points
    }

    fn manifest(&self) -> manifest::Manifest {
        let mut timelines: Vec<_> = self
            .timelines
            .values()
            .map(|t| manifest::TimelineRecord {
                id: t.id.to_string(),
                tid: t.tid,
                generation: t.generation,
                last_seq: t.last_seq,
                parent: t.parent,
                layers: t.layers.iter().map(|l| l.file_no).collect(),
                gc_horizon: t.gc_horizon,
                commit_times: t.commit_times.clone(),
            })
            .collect();
        timelines.sort_by_key(|t| t.tid);
        manifest::Manifest {
            next_tid: self.next_tid,
            next_file: self.next_file,
            wal_start: self.wal_start,
            timelines,
        }
    }
}

/// The shared insides of a [`Store`], used by its threads.
struct Inner {
    dir: PathBuf,
    layers_dir: PathBuf,
    wal_dir: PathBuf,
    options: StoreOptions,
    state: RwLock<State>,
    cache: Arc<BlockCache>,
    /// Serializes manifest writes, so each is built from the state after the one before.
    manifest_lock: Mutex<()>,
    /// Layer files no longer in the state whose removal waits for a manifest that no longer
    /// refers to them (a compaction whose manifest write failed, e.g. on a full disk).
    garbage: Mutex<Vec<PathBuf>>,
    /// Whether the room kept for the manifest on a full disk is there ([`reserve`]).
    reserve_present: AtomicBool,
    /// One compaction at a time.
    compaction_lock: Mutex<()>,
    /// One memtable flush at a time (the flusher's, or [`Store::flush`]'s).
    flush_lock: Mutex<()>,
    /// Wakes the flusher (frozen memtables waiting) and writers waiting for it.
    flush_signal: (Mutex<()>, Condvar),
    /// The flusher's last error while it keeps failing (a full disk); `None` once a flush
    /// succeeds.
    flush_failure: Mutex<Option<StoreError>>,
    shutdown: AtomicBool,
    entries_visited: AtomicU64,
    log_syncs: AtomicU64,
    writes_committed: AtomicU64,
    /// Held for the store's lifetime: one process per directory.
    _lock: File,
}

impl Inner {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the manifest from the current state; then removes the files waiting for it
    /// (see [`Inner::garbage`]). On a full disk it gives up the [`reserve`] for it and tries
    /// again; the reserve is made again after a later write, once there is room.
    fn save_manifest(&self) -> Result<(), StoreError> {
        let _one = lock(&self.manifest_lock);
        let garbage = std::mem::take(&mut *lock(&self.garbage));
        let m = self.read_state().manifest();
        let mut saved = manifest::store(&self.dir, &m);
        if matches!(saved, Err(StoreError::DiskFull { .. }))
            && self.reserve_present.swap(false, Ordering::SeqCst)
        {
            tracing::warn!("disk full: writing the manifest in the space kept for it");
            saved = reserve::release(&self.dir).and_then(|()| manifest::store(&self.dir, &m));
        }
        if let Err(e) = saved {
            lock(&self.garbage).extend(garbage);
            return Err(e);
        }
        for path in garbage {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a replaced layer");
            }
        }
        let room = reserve::RESERVE_BYTES + self.options.room_for_writes();
        if !self.reserve_present.load(Ordering::SeqCst)
            && reserve::free_bytes(&self.dir).is_some_and(|free| free >= room)
        {
            match reserve::make(&self.dir) {
                Ok(()) => {
                    self.reserve_present.store(true, Ordering::SeqCst);
                    tracing::info!("space for the manifest on a full disk is reserved again");
                }
                Err(e) => tracing::debug!(error = %e, "no room for the reserve yet"),
            }
        }
        Ok(())
    }

    /// Notes that reads and scans looked at `n` entries (`lakebed_pagestore_entries_visited_total`).
    fn note_visited(&self, n: u64) {
        self.entries_visited.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("lakebed_pagestore_entries_visited_total").increment(n);
    }

    fn wake_flusher(&self) {
        let _g = lock(&self.flush_signal.0);
        self.flush_signal.1.notify_all();
    }

    fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The page store's storage in a data directory: `MANIFEST`, `wal/`, `layers/`, `LOCK`,
/// `RESERVE`.
/// Cheap to share behind an `Arc`; every method takes `&self`. Dropping it stops its
/// threads (what was acknowledged is in the log already).
pub struct Store {
    inner: Arc<Inner>,
    ops: Mutex<Option<Sender<Op>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `dir` with default [`StoreOptions`]; see [`Store::open_with`].
    ///
    /// # Errors
    ///
    /// As [`Store::open_with`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens the store in `dir`, creating it if needed: checks every layer file, replays the
    /// log, deletes files nothing refers to, and starts the commit, flush and GC threads.
    ///
    /// # Errors
    ///
    /// - [`StoreError::Open`]: the directory cannot be created, another process has it open,
    ///   or it holds a page store of the first format.
    /// - [`StoreError::Corrupt`], naming the file: the manifest or a layer does not decode
    ///   or fails its checksum.
    /// - [`StoreError::Io`].
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let open_err = |path: &Path, reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        let layers_dir = dir.join("layers");
        let wal_dir = dir.join("wal");
        for d in [dir, &layers_dir, &wal_dir] {
            std::fs::create_dir_all(d).map_err(|e| open_err(d, e.to_string()))?;
        }
        if dir.join(LEGACY_STORE_FILE).exists() {
            return Err(open_err(
                &dir.join(LEGACY_STORE_FILE),
                "this directory holds a page store of the first format (one redb file); \
                 this version keeps a log and layer files: move it aside and start with an \
                 empty directory"
                    .to_owned(),
            ));
        }
        let lock_path = dir.join("LOCK");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_err(&lock_path, e.to_string()))?;
        lock_file.try_lock().map_err(|e| {
            open_err(
                &lock_path,
                format!("another process has this page store open ({e})"),
            )
        })?;

        let m = manifest::load(dir)?.unwrap_or_default();
        // A manifest (or reserve) write that died before its rename: the manifest just
        // loaded is the one in force.
        for tmp in [manifest::TMP_FILE, reserve::TMP_FILE].map(|f| dir.join(f)) {
            match std::fs::remove_file(&tmp) {
                Ok(()) => tracing::info!(file = %tmp.display(), "removing an unfinished file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&tmp, e)),
            }
        }
        let reserve_present = reserve::present(dir)
            || match reserve::make(dir) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "no room to reserve space for the manifest");
                    false
                }
            };
        let mut timelines = HashMap::new();
        let mut ids = HashMap::new();
        let mut referenced = std::collections::HashSet::new();
        for rec in m.timelines {
            let id: TimelineId = rec.id.parse().map_err(|e| {
                StoreError::corrupt(dir.join(manifest::FILE), format!("timeline id: {e}"))
            })?;
            let mut layers = Vec::new();
            for file_no in rec.layers {
                layers.push(Arc::new(Layer::open(&layers_dir, file_no)?));
                referenced.insert(file_no);
            }
            let mut t = Timeline {
                id: id.clone(),
                tid: rec.tid,
                generation: rec.generation,
                last_seq: rec.last_seq,
                parent: rec.parent,
                layers,
                gc_horizon: rec.gc_horizon,
                commit_times: rec.commit_times,
                removed: 0,
            };
            t.sort_layers();
            ids.insert(id, rec.tid);
            timelines.insert(rec.tid, t);
        }
        // Leftovers of a flush or compaction that died before its manifest: never referred to.
        for entry in std::fs::read_dir(&layers_dir).map_err(|e| StoreError::io(&layers_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&layers_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match layer::parse_file_name(&name) {
                Some(n) => !referenced.contains(&n),
                None => name.ends_with(".tmp"),
            };
            if orphan {
                tracing::info!(file = %entry.path().display(), "removing an unreferenced layer file");
                std::fs::remove_file(entry.path()).map_err(|e| StoreError::io(entry.path(), e))?;
            }
        }

        // Replay the log into a memtable.
        let mut active = Memtable::new();
        let segments = wal::segments(&wal_dir)?;
        for &segment in &segments {
            if segment < m.wal_start {
                let path = wal::segment_path(&wal_dir, segment);
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                continue;
            }
            wal::replay(&wal_dir, segment, |record| {
                match record {
                    wal::Record::Write {
                        tid,
                        seq,
                        time_ms,
                        entries,
                    } => {
                        if let Some(t) = timelines.get_mut(&tid) {
                            t.last_seq = t.last_seq.max(seq);
                            t.note_commit(seq, time_ms, options.history_retention);
                            for e in entries {
                                active.insert(tid, e.key, seq, e.value);
                            }
                        }
                    }
                    wal::Record::Acquire { tid, generation } => {
                        if let Some(t) = timelines.get_mut(&tid) {
                            t.generation = t.generation.max(generation);
                        }
                    }
                }
                Ok(())
            })?;
        }
        let next_segment = segments
            .last()
            .map_or(m.wal_start, |s| s + 1)
            .max(m.wal_start);
        let wal = wal::Wal::create(&wal_dir, next_segment)?;
        let mut frozen = Vec::new();
        if !active.is_empty() {
            // Everything replayed goes to layers; the new segment starts clean.
            active.end_segment = Some(next_segment);
            frozen.push(Arc::new(RwLock::new(active)));
        }
        let cache = Arc::new(layer::block_cache(options.cache_bytes * 3 / 4));
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            layers_dir,
            wal_dir,
            state: RwLock::new(State {
                timelines,
                ids,
                active: Arc::new(RwLock::new(Memtable::new())),
                frozen,
                next_tid: m.next_tid,
                next_file: m.next_file,
                wal_start: m.wal_start,
            }),
            cache,
            options,
            manifest_lock: Mutex::new(()),
            garbage: Mutex::new(Vec::new()),
            reserve_present: AtomicBool::new(reserve_present),
            compaction_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            flush_signal: (Mutex::new(()), Condvar::new()),
            flush_failure: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            entries_visited: AtomicU64::new(0),
            log_syncs: AtomicU64::new(0),
            writes_committed: AtomicU64::new(0),
            _lock: lock_file,
        });
        let (tx, rx) = mpsc::channel();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(|e| open_err(dir, format!("cannot start a thread: {e}")))
        };
        let threads = vec![
            spawn("pagestore-commit", {
                let inner = inner.clone();
                Box::new(move || commit::run(&inner, wal, &rx))
            })?,
            spawn("pagestore-flush", {
                let inner = inner.clone();
                Box::new(move || compact::run_flusher(&inner))
            })?,
            spawn("pagestore-gc", {
                let inner = inner.clone();
                Box::new(move || compact::run_gc(&inner))
            })?,
        ];
        Ok(Store {
            inner,
            ops: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Sends `op` to the commit thread and waits for its answer.
    fn submit<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let ops = lock(&self.ops);
            let sender = ops.as_ref().ok_or(StoreError::ShuttingDown)?;
            sender
                .send(make(reply))
                .map_err(|_| StoreError::ShuttingDown)?;
        }
        answer.recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// Creates timeline `id`: empty (last seq 0) when `parent` is `None`, else a branch of
    /// `parent.0` at `parent.1` (default: the parent's last seq). Nothing is copied.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`], [`StoreError::ParentNotFound`],
    /// [`StoreError::SeqBeyondLast`] (branch point past the parent's last seq),
    /// [`StoreError::BelowHorizon`] (branch point below the parent's GC horizon).
    pub fn create_timeline(
        &self,
        id: &TimelineId,
        parent: Option<(&TimelineId, Option<Seq>)>,
    ) -> Result<TimelineInfo, StoreError> {
        let parent = parent.map(|(p, s)| (p.clone(), s));
        self.submit(|reply| Op::Create {
            id: id.clone(),
            parent,
            reply,
        })
    }

    /// Deletes timeline `id` and every version it wrote; its files are removed at once.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::HasBranches`] while branches of it exist.
    pub fn delete_timeline(&self, id: &TimelineId) -> Result<(), StoreError> {
        self.submit(|reply| Op::Delete {
            id: id.clone(),
            reply,
        })
    }

    /// The state of timeline `id`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn describe(&self, id: &TimelineId) -> Result<TimelineInfo, StoreError> {
        let st = self.inner.read_state();
        st.info(st.timeline(id)?)
    }

    /// The oldest seq timeline `id` can be read or branched at now.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn gc_horizon(&self, id: &TimelineId) -> Result<Seq, StoreError> {
        let st = self.inner.read_state();
        let t = st.timeline(id)?;
        st.effective_horizon(t, self.inner.options.history_retention)
            .map(Seq)
    }

    /// Raises timeline `id`'s generation by one and returns it, durably. From then on
    /// writes with an older generation are refused.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::Exhausted`] at `u32::MAX`.
    pub fn acquire(&self, id: &TimelineId) -> Result<Generation, StoreError> {
        self.submit(|reply| Op::Acquire {
            id: id.clone(),
            reply,
        })
    }

    /// Applies `puts` (key, value) and `deletes` (keys) to timeline `id` as one batch under
    /// the next seq, which it returns once the batch is durable. `generation` must be the
    /// timeline's current one. Concurrent calls share one log flush.
    ///
    /// # Errors
    ///
    /// Nothing is changed on any error.
    /// - [`StoreError::InvalidArgument`]: an empty key, a key over 1 KiB, a value over
    ///   1 MiB, more than 65,536 keys or 64 MiB in all, or a key given twice.
    /// - [`StoreError::NotFound`].
    /// - [`StoreError::StaleGeneration`] (older) or [`StoreError::NotAcquired`] (newer).
    /// - [`StoreError::DiskFull`]: retry once space returns.
    pub fn write<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        id: &TimelineId,
        generation: Generation,
        puts: &[(K, V)],
        deletes: &[K],
    ) -> Result<Seq, StoreError> {
        validate::validate_batch(puts, deletes)?;
        let puts = puts
            .iter()
            .map(|(k, v)| {
                (
                    Bytes::copy_from_slice(k.as_ref()),
                    Bytes::copy_from_slice(v.as_ref()),
                )
            })
            .collect();
        let deletes = deletes
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_ref()))
            .collect();
        self.write_owned(id, generation, puts, deletes)
    }

    /// [`Store::write`] of owned buffers (no copy), already validated by the caller or not:
    /// validated here again only for its limits.
    ///
    /// # Errors
    ///
    /// As [`Store::write`].
    pub fn write_owned(
        &self,
        id: &TimelineId,
        generation: Generation,
        puts: Vec<(Bytes, Bytes)>,
        deletes: Vec<Bytes>,
    ) -> Result<Seq, StoreError> {
        validate::validate_batch(&puts, &deletes)?;
        self.submit(|reply| Op::Write {
            id: id.clone(),
            generation,
            puts,
            deletes,
            reply,
        })
    }

    /// Reads `keys` from timeline `id` at seq `at` (default: its last seq). Returns the seq
    /// read at and, per key in order, its value or `None` (never written, or deleted).
    ///
    /// # Errors
    ///
    /// - [`StoreError::NotFound`]; [`StoreError::SeqBeyondLast`];
    ///   [`StoreError::BelowHorizon`].
    /// - [`StoreError::InvalidArgument`]: more than 8192 keys, a key over 1 KiB, or values
    ///   adding up to more than 64 MiB.
    /// - [`StoreError::Corrupt`] naming a layer file whose block fails its checksum.
    pub fn read<K: AsRef<[u8]>>(
        &self,
        id: &TimelineId,
        keys: &[K],
        at: Option<Seq>,
    ) -> Result<(Seq, Values), StoreError> {
        read::read(&self.inner, id, keys, at)
    }

    /// Lists the keys of timeline `id` in `[start, end)` (`end` `None`: unbounded) that have
    /// a value at seq `at` (default: the last seq), in ascending byte order, with their values.
    /// Stops after `limit` entries or once the values add up to `max_bytes` (at least one
    /// entry is returned if any exists). Costs what it returns: old versions are not walked.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::SeqBeyondLast`]; [`StoreError::BelowHorizon`];
    /// [`StoreError::Corrupt`].
    pub fn scan(
        &self,
        id: &TimelineId,
        start: &[u8],
        end: Option<&[u8]>,
        at: Option<Seq>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ScanResult, StoreError> {
        read::scan(&self.inner, id, start, end, at, limit, max_bytes)
    }

    /// Collects history now, of timeline `id` or of every timeline: first writes the
    /// memtable to layer files (so that the log, where the newest writes are, is collected
    /// too, and the log segments go), then merges each timeline's layers into one, keeping
    /// what the retention window and branch points need, and deletes the old files. The
    /// report counts the versions dropped by both steps.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`]; [`StoreError::DiskFull`] or [`StoreError::Io`] (nothing is
    /// lost: the old files stay until the new one is in place).
    pub fn gc(&self, id: Option<&TimelineId>) -> Result<GcReport, StoreError> {
        if let Some(id) = id {
            self.inner.read_state().tid(id)?;
        }
        let baseline = compact::baseline(&self.inner);
        self.flush()?;
        compact::gc(&self.inner, id, baseline)
    }

    /// Writes everything in memtables to layer files now, and waits for it.
    ///
    /// # Errors
    ///
    /// [`StoreError::DiskFull`], [`StoreError::Io`].
    pub fn flush(&self) -> Result<(), StoreError> {
        self.submit(|reply| Op::Freeze { reply })?;
        compact::flush_frozen(&self.inner)
    }

    /// How many versions are stored, over all timelines, in memtables and layers. For tests
    /// and diagnostics (a branch adds none).
    ///
    /// # Errors
    ///
    /// None today; kept fallible for the store's contract.
    pub fn version_count(&self) -> Result<u64, StoreError> {
        let st = self.inner.read_state();
        let layers: u64 = st
            .timelines
            .values()
            .flat_map(|t| &t.layers)
            .map(|l| l.newest_count + l.history_count)
            .sum();
        let mem: u64 = std::iter::once(&st.active)
            .chain(&st.frozen)
            .map(|m| m.read().map_or(0, |m| m.version_count()))
            .sum();
        Ok(layers + mem)
    }

    /// Current figures; see [`StoreStats`].
    pub fn stats(&self) -> StoreStats {
        let inner = &self.inner;
        let (layers, memtable_bytes) = {
            let st = inner.read_state();
            let layers = st.timelines.values().map(|t| t.layers.len() as u64).sum();
            let mem = std::iter::once(&st.active)
                .chain(&st.frozen)
                .map(|m| m.read().map_or(0, |m| m.bytes() as u64))
                .sum();
            (layers, mem)
        };
        StoreStats {
            disk_bytes: inner.disk_bytes(),
            layers,
            memtable_bytes,
            cache_bytes: inner.cache.weight(),
            entries_visited: inner.entries_visited.load(Ordering::Relaxed),
            log_syncs: inner.log_syncs.load(Ordering::Relaxed),
            writes_committed: inner.writes_committed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        lock(&self.ops).take();
        self.inner.wake_flusher();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_are_sampled_about_a_thousand_times_per_retention_window() {
        assert_eq!(commit_sample_gap_ms(Duration::ZERO), 1000);
        assert_eq!(commit_sample_gap_ms(Duration::from_secs(60)), 1000);
        assert_eq!(commit_sample_gap_ms(Duration::from_secs(24 * 3600)), 86_400);
        let mut t = Timeline {
            id: "t".parse().expect("a timeline id"),
            tid: 0,
            generation: 0,
            last_seq: 0,
            parent: None,
            layers: Vec::new(),
            gc_horizon: 0,
            commit_times: Vec::new(),
            removed: 0,
        };
        // A day of commits, one a second, with a day's retention: about a thousand samples,
        // 86.4 s apart (87 s, as commits come each whole second).
        let day = Duration::from_secs(24 * 3600);
        for s in 0..86_400u64 {
            t.note_commit(s + 1, s * 1000, day);
        }
        assert_eq!(t.commit_times.len(), 994);
        assert_eq!(t.commit_times[..3], [(1, 0), (88, 87_000), (175, 174_000)]);
    }
}
