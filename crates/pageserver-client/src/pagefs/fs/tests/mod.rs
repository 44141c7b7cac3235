//! The filesystem over the real storage engine, in-process: no FUSE, no root, no server.
//!
//! [`InProcess`] puts `lakebed_pageserver::Store` behind the [`PageStore`] seam, counts the
//! calls, and can hold the next reads, writes or scans until the test releases them (the
//! answer, or the call itself before the store performs it): that is how a test puts a
//! write in the middle of a flush or a fetch, or lets two writes land out of order. The
//! tests drive [`PageFs`] the way the FUSE layer does (`read`/`write` with [`Fetched`],
//! `fetch`, `done`, `flush`), and check the page store's contents directly.

#![allow(clippy::unwrap_used)]

mod commit;
mod dirty;
mod fencing;
mod fetch_race;
mod prewarm;
mod readahead;
mod reseal;
mod ride;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lakebed_pageserver::{Store, StoreError};
use lakebed_pageserver_api::limits::{MAX_RESPONSE_BYTES, MAX_SCAN_ENTRIES};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::{Fetched, Options, PageFs};
use crate::pagefs::cache::{Cache, Scratch};
use crate::pagefs::data_key::{DataKeys, SEAL_OVERHEAD};
use crate::pagefs::layout::{self, BLOCK_SIZE, InodeRecord, Kind, ROOT_INO};
use crate::pagefs::seal::BootKey;
use crate::pagefs::store::{Batch, BoxFuture, PageStore};
use crate::rpc::{ReadResult, RpcError, ScanPage};

const BS: usize = BLOCK_SIZE;

/// A call whose answer a test can hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    Write,
    Scan,
}

/// The store side of a held call: tells the test when the call reached the store (and was
/// performed, unless held before that), waits for the release before answering (or, held
/// before, before performing it).
struct Hold {
    call: Call,
    before: bool,
    performed: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

impl Hold {
    /// Tells the test and waits for its release.
    async fn wait(self) {
        let _ = self.performed.send(());
        let _ = self.release.await;
    }
}

/// The test side of a held call.
struct Held {
    performed: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl Held {
    /// Waits until the call has been performed on the store (its answer is not given yet);
    /// for a call held before it is performed ([`InProcess::hold_next_unperformed`]), until
    /// it reached the store.
    async fn performed(&mut self) {
        (&mut self.performed).await.unwrap();
    }

    /// Lets the call answer.
    fn release(self) {
        self.release.send(()).unwrap();
    }
}

struct Inner {
    store: Store,
    reads: AtomicUsize,
    page_scans: AtomicUsize,
    writes: AtomicUsize,
    /// Holds in the order they were asked for; a call takes the first for its kind.
    holds: Mutex<Vec<Hold>>,
}

/// The storage engine in-process, as a [`PageStore`].
#[derive(Clone)]
struct InProcess(Arc<Inner>);

impl InProcess {
    /// A store in `dir` with an empty timeline `t1`.
    fn new(dir: &Path) -> (Self, TimelineId) {
        let store = Store::open(dir).unwrap();
        let tl: TimelineId = "t1".parse().unwrap();
        store.create_timeline(&tl, None).unwrap();
        let inner = Inner {
            store,
            reads: AtomicUsize::new(0),
            page_scans: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            holds: Mutex::new(Vec::new()),
        };
        (Self(Arc::new(inner)), tl)
    }

    /// Page store reads so far.
    fn reads(&self) -> usize {
        self.0.reads.load(Ordering::SeqCst)
    }

    /// Page store scans of page keys so far (fetches; not the namespace scans of a mount).
    fn page_scans(&self) -> usize {
        self.0.page_scans.load(Ordering::SeqCst)
    }

    /// Page store writes so far (refused ones too).
    fn writes(&self) -> usize {
        self.0.writes.load(Ordering::SeqCst)
    }

    /// Holds the answer of the next `call` (after those already held) until
    /// [`Held::release`].
    fn hold_next(&self, call: Call) -> Held {
        self.hold(call, false)
    }

    /// Holds the next `call` (after those already held) before the store performs it, until
    /// [`Held::release`]: as a write still on its way to the page store.
    fn hold_next_unperformed(&self, call: Call) -> Held {
        self.hold(call, true)
    }

    fn hold(&self, call: Call, before: bool) -> Held {
        let (performed_tx, performed) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.0.holds.lock().unwrap().push(Hold {
            call,
            before,
            performed: performed_tx,
            release: release_rx,
        });
        Held { performed, release }
    }

    fn take_hold(&self, call: Call) -> Option<Hold> {
        let mut holds = self.0.holds.lock().unwrap();
        let i = holds.iter().position(|h| h.call == call)?;
        Some(holds.remove(i))
    }

    /// The value of `key` at the timeline's newest seq, read from the store directly.
    fn get(&self, tl: &TimelineId, key: &[u8]) -> Option<Vec<u8>> {
        let (_, mut values) = self.0.store.read(tl, &[key], None).unwrap();
        values.pop().unwrap().map(|v| v.to_vec())
    }

    /// The timeline's newest seq.
    fn last_seq(&self, tl: &TimelineId) -> Seq {
        self.0.store.read(tl, &[b"-"], None).unwrap().0
    }

    /// Another compute takes the timeline.
    fn acquire(&self, tl: &TimelineId) -> Generation {
        self.0.store.acquire(tl).unwrap()
    }
}

/// What the gRPC service would answer for `e`.
fn rpc_error(e: StoreError) -> RpcError {
    let message = e.to_string();
    match e {
        StoreError::StaleGeneration {
            timeline,
            sent,
            current,
        } => RpcError::StaleGeneration {
            timeline: timeline.to_string(),
            sent,
            current,
        },
        StoreError::NotAcquired {
            timeline,
            sent,
            current,
        } => RpcError::GenerationNotAcquired {
            timeline: timeline.to_string(),
            sent,
            current,
        },
        // Not told apart by pagefs; the message says what it was.
        _ => RpcError::Server {
            code: tonic::Code::Internal,
            message,
        },
    }
}

impl InProcess {
    /// Performs `call` with `perform` and answers, holding it (before or after performing)
    /// if the test asked to.
    async fn answer<T>(&self, call: Call, perform: impl FnOnce() -> T) -> T {
        match self.take_hold(call) {
            Some(hold) if hold.before => {
                hold.wait().await;
                perform()
            }
            Some(hold) => {
                let result = perform();
                hold.wait().await;
                result
            }
            None => perform(),
        }
    }
}

impl PageStore for InProcess {
    fn read<'a>(
        &'a self,
        timeline: &'a TimelineId,
        keys: Vec<Bytes>,
        at: Option<Seq>,
    ) -> BoxFuture<'a, Result<ReadResult, RpcError>> {
        Box::pin(async move {
            self.0.reads.fetch_add(1, Ordering::SeqCst);
            self.answer(Call::Read, || {
                self.0
                    .store
                    .read(timeline, &keys, at)
                    .map(|(seq, values)| ReadResult { seq, values })
                    .map_err(rpc_error)
            })
            .await
        })
    }

    fn write<'a>(
        &'a self,
        timeline: &'a TimelineId,
        generation: Generation,
        batch: Batch,
    ) -> BoxFuture<'a, Result<Seq, RpcError>> {
        Box::pin(async move {
            self.0.writes.fetch_add(1, Ordering::SeqCst);
            self.answer(Call::Write, || {
                self.0
                    .store
                    .write(timeline, generation, &batch.puts, &batch.deletes)
                    .map_err(rpc_error)
            })
            .await
        })
    }

    fn scan<'a>(
        &'a self,
        timeline: &'a TimelineId,
        start: &'a [u8],
        end: Option<&'a [u8]>,
        at: Option<Seq>,
        limit: u32,
    ) -> BoxFuture<'a, Result<ScanPage, RpcError>> {
        Box::pin(async move {
            if layout::parse_page_key(start).is_some() {
                self.0.page_scans.fetch_add(1, Ordering::SeqCst);
            }
            let limit = if limit == 0 { MAX_SCAN_ENTRIES } else { limit };
            self.answer(Call::Scan, || {
                self.0
                    .store
                    .scan(timeline, start, end, at, limit as usize, MAX_RESPONSE_BYTES)
                    .map(|r| ScanPage {
                        entries: r.entries,
                        more: r.more,
                        seq: r.seq,
                    })
                    .map_err(rpc_error)
            })
            .await
        })
    }
}

/// One mount of the test timeline, with its local directory.
struct Mount {
    fs: Arc<PageFs>,
    generation: Generation,
    _local: TempDir,
}

/// Acquires the timeline and mounts it, as `pagefs::serve` does (without FUSE).
async fn mount(store: &InProcess, tl: &TimelineId) -> Mount {
    let generation = store.acquire(tl);
    mount_as(store, tl, generation).await
}

/// Mounts the timeline writing with `generation`, acquired or not.
async fn mount_as(store: &InProcess, tl: &TimelineId, generation: Generation) -> Mount {
    mount_with(store, tl, generation, None).await
}

/// Mounts the timeline writing with `generation`, sealing under `keys` if given.
async fn mount_with(
    store: &InProcess,
    tl: &TimelineId,
    generation: Generation,
    keys: Option<DataKeys>,
) -> Mount {
    mount_cached(store, tl, generation, keys, 1 << 20).await
}

/// Acquires the timeline and mounts it with a cache of `cache_bytes`.
async fn mount_with_cache(store: &InProcess, tl: &TimelineId, cache_bytes: u64) -> Mount {
    mount_cached(store, tl, store.acquire(tl), None, cache_bytes).await
}

/// Mounts the timeline writing with `generation`, sealing under `keys` if given, with a
/// cache of `cache_bytes`.
async fn mount_cached(
    store: &InProcess,
    tl: &TimelineId,
    generation: Generation,
    keys: Option<DataKeys>,
    cache_bytes: u64,
) -> Mount {
    let local = tempfile::tempdir().unwrap();
    let key = Arc::new(BootKey::generate().unwrap());
    let scratch_dir = local.path().join("scratch");
    std::fs::create_dir(&scratch_dir).unwrap();
    let payload = BS + if keys.is_some() { SEAL_OVERHEAD } else { 0 };
    let cache = Cache::create(
        &local.path().join("cache"),
        cache_bytes,
        payload,
        key.clone(),
    )
    .unwrap();
    let scratch = Scratch::new(&scratch_dir, key);
    let fs = PageFs::load(
        store.clone(),
        tl.clone(),
        generation,
        Options::new(1000, 1000),
        cache,
        scratch,
        keys,
    )
    .await
    .unwrap();
    Mount {
        fs: Arc::new(fs),
        generation,
        _local: local,
    }
}

/// `len` bytes of a pattern that differs with `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

/// Creates the file `name` in the root and writes `data` at 0; returns its ino. The file
/// stays open (as after `creat`).
fn create_file(fs: &PageFs, name: &[u8], data: &[u8]) -> u64 {
    let (ino, _) = fs.create(ROOT_INO, name, Kind::File, 0o600).unwrap();
    write(fs, ino, 0, data);
    ino
}

/// Writes `data` at `offset`, which must not need a fetch.
fn write(fs: &PageFs, ino: u64, offset: u64, data: &[u8]) {
    let n = fs
        .write(ino, offset, data, &Fetched::default())
        .unwrap()
        .unwrap();
    assert_eq!(n as usize, data.len());
}

/// Reads `size` bytes at `offset`, fetching as the FUSE layer does.
async fn read(fs: &PageFs, ino: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut need = match fs.read(ino, offset, size, &Fetched::default()).unwrap() {
        Ok(data) => return data,
        Err(need) => need,
    };
    for _ in 0..8 {
        let fetched = fs.fetch(ino, need).await.unwrap();
        let result = fs.read(ino, offset, size, &fetched).unwrap();
        fs.done(fetched);
        match result {
            Ok(data) => return data,
            Err(again) => need = again,
        }
    }
    panic!("read of {ino} kept needing fetches");
}

/// The inode record of `ino` in the store.
fn stored_inode(store: &InProcess, tl: &TimelineId, ino: u64) -> Option<InodeRecord> {
    store
        .get(tl, &layout::inode_key(ino))
        .map(|v| InodeRecord::decode(&v).unwrap())
}

/// The child `name` of `parent` in the store.
fn stored_dirent(store: &InProcess, tl: &TimelineId, parent: u64, name: &[u8]) -> Option<u64> {
    store
        .get(tl, &layout::dirent_key(parent, name))
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
}

/// Panics, without printing kilobytes, unless `got` is `want`.
#[track_caller]
fn assert_bytes(got: impl AsRef<[u8]>, want: impl AsRef<[u8]>, what: &str) {
    let (got, want) = (got.as_ref(), want.as_ref());
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes where {} were expected, first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// Panics unless block `block` of `ino` in the store is `want` (`None`: absent).
#[track_caller]
fn assert_stored_page(
    store: &InProcess,
    tl: &TimelineId,
    ino: u64,
    block: u64,
    want: Option<&[u8]>,
) {
    let what = format!("page {block} of inode {ino:#x} in the page store");
    match (store.get(tl, &layout::page_key(ino, block)), want) {
        (Some(got), Some(want)) => assert_bytes(got, want, &what),
        (None, None) => {}
        (got, want) => panic!(
            "{what}: {} where {} was expected",
            if got.is_some() { "present" } else { "absent" },
            if want.is_some() { "a page" } else { "nothing" },
        ),
    }
}

/// Panics unless block `block` of `ino` is staged (fetched ahead, see the `staged` module)
/// with `want` as its content.
#[track_caller]
fn assert_staged(fs: &PageFs, ino: u64, block: u64, want: &[u8]) {
    let stored = super::state::lock(&fs.state)
        .staged
        .get(ino, block)
        .cloned();
    let stored = stored.unwrap_or_else(|| panic!("block {block} of inode {ino:#x} is not staged"));
    let got = fs.open_stored(ino, block, &stored).unwrap();
    assert_bytes(got, want, "the staged page");
}

/// Pages staged (fetched ahead of their reader) now.
fn staged_pages(fs: &PageFs) -> usize {
    super::state::lock(&fs.state).staged.len()
}

/// Panics unless the local cache holds `want` for block `block` of `ino`.
#[track_caller]
fn assert_cached(fs: &PageFs, ino: u64, block: u64, want: &[u8]) {
    let got = fs.cache().get(ino, block).unwrap();
    let got = got.unwrap_or_else(|| panic!("block {block} of inode {ino:#x} is not cached"));
    assert_bytes(got, want, "the cached page");
}
