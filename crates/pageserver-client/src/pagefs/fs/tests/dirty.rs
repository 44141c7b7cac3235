//! The dirty set: what a flush sends, what it leaves dirty, and reads afterwards.

use super::*;

#[tokio::test]
async fn a_flush_sends_the_page_and_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let data = pattern(1, BS);
    let ino = create_file(&m.fs, b"f", &data);
    assert_eq!(m.fs.dirty_bytes(), BS);
    assert_stored_page(&store, &tl, ino, 0, None);

    m.fs.flush().await.unwrap();
    assert_eq!(m.fs.dirty_bytes(), 0);
    assert_stored_page(&store, &tl, ino, 0, Some(&data));
    assert_eq!(stored_inode(&store, &tl, ino).unwrap().size, BS as u64);
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"f"), Some(ino));
    let io = m.fs.io_counters();
    assert_eq!((io.flushes, io.flushed_bytes, io.writes), (1, 8192, 1));
    let stats = m.fs.stats_json();
    assert!(
        stats.contains("\"flushes\":1,\"flushed_bytes\":8192,\"writes\":1,")
            && stats.ends_with("\"dirty_bytes\":0,\"prewarm\":null}"),
        "{stats}"
    );

    // Nothing dirty: no write at all.
    let writes = store.writes();
    m.fs.flush().await.unwrap();
    assert_eq!(store.writes(), writes);
}

#[tokio::test]
async fn a_page_rewritten_during_a_flush_stays_dirty_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let old = pattern(1, BS);
    let new = pattern(2, BS);
    let ino = create_file(&m.fs, b"f", &old);

    // The flush's write lands with `old`; before its answer comes back, block 0 is
    // rewritten.
    let mut held = store.hold_next(Call::Write);
    let flush = tokio::spawn({
        let fs = m.fs.clone();
        async move { fs.flush().await }
    });
    held.performed().await;
    write(&m.fs, ino, 0, &new);
    held.release();
    flush.await.unwrap().unwrap();

    assert_stored_page(&store, &tl, ino, 0, Some(&old));
    assert_eq!(m.fs.dirty_bytes(), BS, "the newer version is still dirty");
    assert_bytes(
        read(&m.fs, ino, 0, BS as u32).await,
        &new,
        "read before the next flush",
    );

    m.fs.flush().await.unwrap();
    assert_eq!(m.fs.dirty_bytes(), 0);
    assert_stored_page(&store, &tl, ino, 0, Some(&new));
    assert_bytes(read(&m.fs, ino, 0, BS as u32).await, &new, "read after it");
}

#[tokio::test]
async fn a_read_after_a_flush_is_served_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    // Three whole blocks and a partial fourth, then a patch across the first boundary.
    let mut data = pattern(3, 3 * BS + 100);
    let ino = create_file(&m.fs, b"f", &data);
    m.fs.flush().await.unwrap();
    let patch = pattern(4, 300);
    write(&m.fs, ino, BS as u64 - 150, &patch);
    data[BS - 150..BS + 150].copy_from_slice(&patch);
    m.fs.flush().await.unwrap();
    assert_eq!(m.fs.dirty_bytes(), 0);

    // From the local cache: the flush kept what it sent, so no page store read.
    let size = data.len() as u32;
    assert_bytes(
        read(&m.fs, ino, 0, size).await,
        &data,
        "read from the cache",
    );
    assert_eq!((store.reads(), m.fs.io_counters().fetches), (0, 0));
    // Past the end: short.
    let tail = read(&m.fs, ino, 3 * BS as u64, BS as u32).await;
    assert_bytes(tail, &data[3 * BS..], "read of the last block");

    // Evicted: fetched from the page store, same bytes.
    for b in 0..4 {
        m.fs.cache().remove(ino, b);
    }
    assert_bytes(read(&m.fs, ino, 0, size).await, &data, "read fetched");
    // All four in one call: a scan of their keys.
    let io = m.fs.io_counters();
    assert_eq!((io.fetches, io.fetched_pages), (1, 4));
    assert_eq!((store.reads(), store.page_scans()), (0, 1));

    // And by the next compute, from the namespace and pages in the page store alone.
    let next = mount(&store, &tl).await;
    assert!(next.generation > m.generation);
    let (found, node) = next.fs.lookup(ROOT_INO, b"f").unwrap();
    assert_eq!((found, node.rec.size), (ino, data.len() as u64));
    assert_bytes(
        read(&next.fs, ino, 0, size).await,
        &data,
        "read by the next mount",
    );
}
