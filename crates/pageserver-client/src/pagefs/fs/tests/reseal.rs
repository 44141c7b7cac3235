//! Re-sealing after a rekey must never put back a value older than what a flush wrote.

use zeroize::Zeroizing;

use super::*;
use crate::pagefs::data_key::ValueKind;

/// The tenant's DEK versions `1..=newest`.
fn keys(tl: &TimelineId, newest: u32) -> DataKeys {
    let versions = (1..=newest)
        .map(|v| (v, Zeroizing::new([v as u8; 32])))
        .collect();
    DataKeys::new("acme".into(), vec![tl.to_string()], versions).unwrap()
}

#[tokio::test]
async fn a_reseal_does_not_undo_a_flush_that_raced_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let old = pattern(1, BS);
    let new = pattern(2, BS);
    // Written under DEK version 1.
    let first = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 1))).await;
    let ino = create_file(&first.fs, b"f", &old);
    first.fs.flush().await.unwrap();
    drop(first);

    // After a rekey: the next compute re-seals under version 2 while Postgres rewrites the
    // page. The re-seal's scan sees the old page; the rewrite is flushed before the re-seal
    // writes its chunk.
    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 2))).await;
    let mut held = store.hold_next(Call::Scan);
    let reseal = tokio::spawn({
        let fs = m.fs.clone();
        async move { fs.reseal(|_| {}).await }
    });
    held.performed().await;
    write(&m.fs, ino, 0, &new);
    let flush = tokio::spawn({
        let fs = m.fs.clone();
        async move { fs.flush().await }
    });
    // Time for the flush to finish if nothing holds it back.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    held.release();
    let progress = reseal.await.unwrap().unwrap();
    flush.await.unwrap().unwrap();
    assert!(progress.done);

    let stored = store.get(&tl, &layout::page_key(ino, 0)).unwrap();
    let plain = keys(&tl, 2)
        .open(ValueKind::Page { ino, block: 0 }, &stored)
        .unwrap();
    assert_bytes(plain, &new, "the page after the re-seal");
    assert_eq!(DataKeys::version_of(&stored), Some(2));
    // Everything else is under version 2 now too.
    let (_, entries) = m.fs.store.scan_all(&tl, b"", None, None).await.unwrap();
    assert!(
        entries
            .iter()
            .all(|(_, v)| DataKeys::version_of(v) == Some(2))
    );
}

/// A walk reads the whole timeline, so it runs only when a value can be under an older DEK
/// version: not with one version, and not again once a walk under the current version
/// finished (its mark says so), until the next rekey.
#[tokio::test]
async fn a_reseal_walks_the_timeline_once_per_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let nothing = super::super::ResealProgress {
        scanned: 0,
        resealed: 0,
        done: true,
    };
    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 1))).await;
    let ino = create_file(&m.fs, b"f", &pattern(1, 3 * BS));
    m.fs.flush().await.unwrap();
    read(&m.fs, ino, 0, 10).await;
    m.fs.save_heat().await.unwrap();
    let walked = m.fs.reseal(|_| {}).await.unwrap();
    assert_eq!(walked, nothing, "one DEK version");
    drop(m);

    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 2))).await;
    let walked = m.fs.reseal(|_| {}).await.unwrap();
    // Three pages, the file's record, the root's record, the entry and the heat list.
    assert_eq!((walked.resealed, walked.done), (7, true), "{walked:?}");
    drop(m);

    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 2))).await;
    assert_eq!(m.fs.reseal(|_| {}).await.unwrap(), nothing, "marked done");
    drop(m);

    // The mark names version 2: after the next rekey the walk runs again, and leaves
    // nothing (the mark included) under an older version.
    let m = mount_with(&store, &tl, store.acquire(&tl), Some(keys(&tl, 3))).await;
    let walked = m.fs.reseal(|_| {}).await.unwrap();
    assert_eq!((walked.resealed, walked.done), (8, true), "{walked:?}");
    let (_, entries) = m.fs.store.scan_all(&tl, b"", None, None).await.unwrap();
    assert!(
        entries
            .iter()
            .all(|(_, v)| DataKeys::version_of(v) == Some(3))
    );
}
