//! Fencing: once a newer generation holds the timeline, the old mount changes nothing.

use std::time::Duration;

use fuser::Errno;

use super::*;
use crate::pagefs::fs::flusher;

#[tokio::test]
async fn a_newer_generation_fences_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let fs = &m.fs;
    let before = pattern(1, BS);
    let ino = create_file(fs, b"f", &before);
    fs.flush().await.unwrap();
    let seq = store.last_seq(&tl);

    // More changes, then another compute acquires the timeline before they are flushed.
    write(fs, ino, 0, &pattern(2, BS));
    write(fs, ino, BS as u64, &pattern(3, BS));
    let g = create_file(fs, b"g", b"gone");
    assert!(store.acquire(&tl) > m.generation);

    assert_eq!(fs.flush().await, Err(Errno::EIO));
    // From now on every change and flush fails, without asking the page store.
    let writes = store.writes();
    let fetched = Fetched::default();
    assert_eq!(fs.write(ino, 0, b"x", &fetched).unwrap_err(), Errno::EIO);
    assert_eq!(fs.truncate(ino, 0, &fetched).unwrap_err(), Errno::EIO);
    assert_eq!(fs.set_meta(ino, Some(0o644), None).unwrap_err(), Errno::EIO);
    assert_eq!(
        fs.create(ROOT_INO, b"h", Kind::File, 0o600).unwrap_err(),
        Errno::EIO
    );
    assert_eq!(fs.remove(ROOT_INO, b"f", false).unwrap_err(), Errno::EIO);
    assert_eq!(
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"f2", false)
            .unwrap_err(),
        Errno::EIO
    );
    assert_eq!(fs.flush().await, Err(Errno::EIO));
    assert_eq!(store.writes(), writes);

    // Nothing of the old mount's later changes reached the timeline.
    assert_eq!(store.last_seq(&tl), seq);
    assert_stored_page(&store, &tl, ino, 0, Some(&before));
    assert_stored_page(&store, &tl, ino, 1, None);
    assert_eq!(stored_inode(&store, &tl, ino).unwrap().size, BS as u64);
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"g"), None);
    assert_eq!(stored_inode(&store, &tl, g), None);

    // The background flusher gives up rather than retrying forever.
    tokio::time::timeout(Duration::from_secs(5), flusher(m.fs.clone()))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_generation_never_acquired_is_fenced_too() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let current = store.acquire(&tl);
    let m = mount_as(&store, &tl, Generation(current.0 + 1)).await;
    create_file(&m.fs, b"f", b"never");
    assert_eq!(m.fs.flush().await, Err(Errno::EIO));
    assert_eq!(
        m.fs.create(ROOT_INO, b"g", Kind::File, 0o600).unwrap_err(),
        Errno::EIO
    );
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"f"), None);
    assert_eq!(stored_inode(&store, &tl, ROOT_INO), None);
}
