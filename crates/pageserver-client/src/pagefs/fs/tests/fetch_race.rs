//! A fetch racing a write to the same block must not bring the old page back.

use super::*;

/// A mount with file `f` (one block, `old`) flushed and then evicted from the cache, so
/// reading it needs a fetch.
async fn evicted_file(store: &InProcess, tl: &TimelineId, old: &[u8]) -> (Mount, u64) {
    let m = mount(store, tl).await;
    let ino = create_file(&m.fs, b"f", old);
    m.fs.flush().await.unwrap();
    m.fs.cache().remove(ino, 0);
    (m, ino)
}

#[tokio::test]
async fn a_fetch_with_no_write_meanwhile_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let old = pattern(1, BS);
    let (m, ino) = evicted_file(&store, &tl, &old).await;

    let need = m.fs.read(ino, 0, BS as u32, &Fetched::default()).unwrap();
    let need = need.unwrap_err();
    assert_eq!(need.blocks, [0]);
    let fetched = m.fs.fetch(ino, need).await.unwrap();
    // Cached, and used from the fetch itself when not in the cache.
    assert_cached(&m.fs, ino, 0, &old);
    m.fs.cache().remove(ino, 0);
    let data = m.fs.read(ino, 0, BS as u32, &fetched).unwrap().unwrap();
    assert_bytes(data, &old, "read with the fetched page");
    m.fs.done(fetched);
}

#[tokio::test]
async fn a_fetch_registered_before_a_write_does_not_install_the_old_page() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let old = pattern(1, BS);
    let new = pattern(2, BS);
    let (m, ino) = evicted_file(&store, &tl, &old).await;

    let need = m.fs.read(ino, 0, BS as u32, &Fetched::default()).unwrap();
    let need = need.unwrap_err();
    // The fetch reads `old` from the page store; before its answer arrives, block 0 is
    // overwritten and flushed (so it is neither dirty nor, after this, in need of a fetch).
    let mut held = store.hold_next(Call::Read);
    let fetch = tokio::spawn({
        let fs = m.fs.clone();
        async move { fs.fetch(ino, need).await }
    });
    held.performed().await;
    write(&m.fs, ino, 0, &new);
    m.fs.flush().await.unwrap();
    assert_stored_page(&store, &tl, ino, 0, Some(&new));
    held.release();
    let fetched = fetch.await.unwrap().unwrap();

    // The cache keeps what the flush put there, not the fetched page.
    assert_cached(&m.fs, ino, 0, &new);
    // Without the cache, the stale fetched page is refused: read and partial write ask
    // for the block again instead of using it.
    m.fs.cache().remove(ino, 0);
    let again = m.fs.read(ino, 0, BS as u32, &fetched).unwrap().unwrap_err();
    assert_eq!(again.blocks, [0]);
    let again = m.fs.write(ino, 10, b"xy", &fetched).unwrap().unwrap_err();
    assert_eq!(again.blocks, [0]);
    m.fs.done(fetched);

    assert_bytes(
        read(&m.fs, ino, 0, BS as u32).await,
        &new,
        "read after the race",
    );
    assert_cached(&m.fs, ino, 0, &new);
}
