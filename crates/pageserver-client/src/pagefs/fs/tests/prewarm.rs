//! Prewarm: the next mount fetches what the last one read, in order, and never caches a
//! page older than a write that raced it.

use super::*;
use crate::pagefs::fs::PrewarmProgress;

/// Page store calls so far (reads of keys and scans of pages).
fn calls(store: &InProcess) -> usize {
    store.reads() + store.page_scans()
}

#[tokio::test]
async fn a_mount_prewarms_what_the_last_one_read_in_order_skipping_dropped_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let a = create_file(&m.fs, b"a", &pattern(1, 4 * BS));
    let b = create_file(&m.fs, b"b", &pattern(2, 2 * BS));
    m.fs.flush().await.unwrap();
    drop(m);

    // A compute reads b's second block, then a's first three: that is its heat list.
    let m = mount(&store, &tl).await;
    read(&m.fs, b, BS as u64, BS as u32).await;
    read(&m.fs, a, 0, 3 * BS as u32).await;
    read(&m.fs, b, BS as u64, 10).await;
    m.fs.save_heat().await.unwrap();
    drop(m);

    // The next one drops b (it saves no list of its own here).
    let m = mount(&store, &tl).await;
    m.fs.remove(ROOT_INO, b"b", false).unwrap();
    m.fs.flush().await.unwrap();
    drop(m);

    let m = mount(&store, &tl).await;
    let list = m.fs.heat_list().await.unwrap();
    assert_eq!(list.pages(), [(b, 1), (a, 0), (a, 1), (a, 2)]);
    let done = m.fs.prewarm(list, async {}, |_| {}).await;
    assert_eq!(
        done,
        PrewarmProgress {
            listed: 4,
            fetched: 3,
            skipped: 1,
            // Not mounted: nothing to read through.
            in_page_cache: 0,
            done: true,
            stopped: None,
        }
    );
    assert_eq!(m.fs.prewarm_progress(), Some(done));
    let data = pattern(1, 4 * BS);
    for block in 0..3 {
        assert_cached(&m.fs, a, block, &data[block as usize * BS..][..BS]);
    }
    assert!(
        !m.fs.cache().contains(a, 3),
        "a page nobody read is not prewarmed"
    );
    let before = calls(&store);
    assert_bytes(read(&m.fs, a, 0, 3 * BS as u32).await, &data[..3 * BS], "a");
    assert_eq!(
        calls(&store),
        before,
        "prewarmed pages are read from the cache"
    );
}

#[tokio::test]
async fn a_page_written_while_its_prewarm_is_on_the_way_keeps_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let a = create_file(&m.fs, b"a", &pattern(1, 2 * BS));
    m.fs.flush().await.unwrap();
    read(&m.fs, a, 0, 2 * BS as u32).await;
    m.fs.save_heat().await.unwrap();
    drop(m);

    let m = mount(&store, &tl).await;
    let list = m.fs.heat_list().await.unwrap();
    let mut held = store.hold_next(Call::Read);
    let prewarm = tokio::spawn({
        let fs = m.fs.clone();
        async move { fs.prewarm(list, async {}, |_| {}).await }
    });
    // The batch's read has been performed (old content on its way); the page is rewritten
    // and flushed before it lands.
    held.performed().await;
    let new = pattern(9, BS);
    write(&m.fs, a, 0, &new);
    m.fs.flush().await.unwrap();
    held.release();
    let done = prewarm.await.unwrap();
    assert_eq!((done.listed, done.done), (2, true));
    // The flush cached the new page; the prewarm's old copy did not replace it.
    assert_cached(&m.fs, a, 0, &new);
    assert_cached(&m.fs, a, 1, &pattern(1, 2 * BS)[BS..]);
    assert_bytes(
        read(&m.fs, a, 0, BS as u32).await,
        &new,
        "the rewritten page",
    );
}

#[tokio::test]
async fn heat_lists_are_sealed_under_the_tenants_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let keys = || {
        DataKeys::new(
            "acme".into(),
            vec![tl.to_string()],
            vec![(1, zeroize::Zeroizing::new([4u8; 32]))],
        )
        .unwrap()
    };
    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys())).await;
    let a = create_file(&m.fs, b"a", &pattern(1, BS));
    m.fs.flush().await.unwrap();
    read(&m.fs, a, 0, 100).await;
    m.fs.save_heat().await.unwrap();
    drop(m);
    let stored = store.get(&tl, layout::HEAT).unwrap();
    assert_eq!(DataKeys::version_of(&stored), Some(1), "sealed");
    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys())).await;
    assert_eq!(m.fs.heat_list().await.unwrap().pages(), [(a, 0)]);
}

#[tokio::test]
async fn written_pages_are_listed_and_the_wal_read_or_written_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let (wal, _) =
        m.fs.create(ROOT_INO, b"pg_wal", Kind::Directory, 0o700)
            .unwrap();
    let (segment, _) =
        m.fs.create(wal, b"000000010000000000000001", Kind::File, 0o600)
            .unwrap();
    write(&m.fs, segment, 0, &pattern(3, 2 * BS));
    let table = create_file(&m.fs, b"16384", &pattern(4, 2 * BS));
    m.fs.flush().await.unwrap();
    read(&m.fs, segment, 0, BS as u32).await;
    m.fs.save_heat().await.unwrap();
    drop(m);
    let m = mount(&store, &tl).await;
    assert_eq!(
        m.fs.heat_list().await.unwrap().pages(),
        [(table, 0), (table, 1)]
    );
}

/// What a boot touched before its compute accepted clients is fetched at once by the next
/// mount; the rest waits until that compute accepts clients.
#[tokio::test]
async fn the_rest_of_a_prewarm_waits_until_the_compute_accepts_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let start = create_file(&m.fs, b"start", &pattern(1, 2 * BS));
    let later = create_file(&m.fs, b"later", &pattern(2, 3 * BS));
    m.fs.flush().await.unwrap();
    drop(m);
    let m = mount(&store, &tl).await;
    read(&m.fs, start, 0, 2 * BS as u32).await;
    m.fs.compute_active();
    read(&m.fs, later, 0, 3 * BS as u32).await;
    m.fs.save_heat().await.unwrap();
    drop(m);

    let m = mount(&store, &tl).await;
    let list = m.fs.heat_list().await.unwrap();
    assert_eq!((list.pages().len(), list.startup()), (5, 2));
    let (active_tx, active) = tokio::sync::oneshot::channel::<()>();
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let prewarm = tokio::spawn({
        let fs = m.fs.clone();
        async move {
            let active = async move {
                let _ = active.await;
            };
            fs.prewarm(list, active, move |p| {
                let _ = progress_tx.send(p);
            })
            .await
        }
    });
    let first = progress.recv().await.unwrap();
    assert_eq!((first.fetched, first.done), (2, false));
    assert!(m.fs.cache().contains(start, 1));
    assert!(
        !m.fs.cache().contains(later, 0),
        "fetched before the compute is active"
    );
    active_tx.send(()).unwrap();
    let done = prewarm.await.unwrap();
    assert_eq!((done.fetched, done.done), (5, true));
    assert_cached(&m.fs, later, 2, &pattern(2, 3 * BS)[2 * BS..]);
}

#[tokio::test]
async fn a_prewarm_stops_at_a_full_cache_and_a_list_drops_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let big = create_file(&m.fs, b"big", &pattern(1, 40 * BS));
    let small = create_file(&m.fs, b"small", &pattern(2, 2 * BS));
    m.fs.flush().await.unwrap();
    m.fs.save_heat().await.unwrap();
    drop(m);

    // A 16-page cache: the prewarm stops when it is full, and says so.
    let m = mount_with_cache(&store, &tl, 16 * (BS as u64 + 16)).await;
    let list = m.fs.heat_list().await.unwrap();
    assert_eq!(list.pages().len(), 42);
    let done = m.fs.prewarm(list, async {}, |_| {}).await;
    assert_eq!((done.done, done.stopped), (true, Some("cache full")));
    assert!(done.fetched <= 16, "{done:?}");
    // This mount deletes `big`: the list it leaves does not carry big's pages forward.
    m.fs.remove(ROOT_INO, b"big", false).unwrap();
    m.fs.flush().await.unwrap();
    m.fs.save_heat().await.unwrap();
    drop(m);
    let m = mount(&store, &tl).await;
    let list = m.fs.heat_list().await.unwrap();
    assert!(list.pages().iter().all(|&(ino, _)| ino != big), "{list:?}");
    assert!(list.pages().contains(&(small, 1)), "{list:?}");
}
