//! The commit path: how many page store writes a flush costs.

use super::*;

/// `pg_wal` and a segment file in it, new: their inode numbers.
fn wal_segment(fs: &PageFs) -> (u64, u64) {
    let (wal, _) = fs
        .create(ROOT_INO, b"pg_wal", Kind::Directory, 0o700)
        .unwrap();
    let (seg, _) = fs.create(wal, b"000001", Kind::File, 0o600).unwrap();
    (wal, seg)
}

#[tokio::test]
async fn a_flush_of_pages_and_namespace_changes_is_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let fs = &m.fs;

    // As Postgres does before an fsync of WAL: a new directory and a new file in it, its
    // pages written.
    let (wal, seg) = wal_segment(fs);
    let data = pattern(1, 3 * BS);
    write(fs, seg, 0, &data);
    let writes = store.writes();
    fs.flush().await.unwrap();
    assert_eq!(store.writes() - writes, 1);
    for b in 0..3 {
        let want = &data[b as usize * BS..(b as usize + 1) * BS];
        assert_stored_page(&store, &tl, seg, b, Some(want));
    }
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"pg_wal"), Some(wal));
    assert_eq!(stored_dirent(&store, &tl, wal, b"000001"), Some(seg));
    assert_eq!(stored_inode(&store, &tl, seg).unwrap().size, 3 * BS as u64);
    assert_eq!(
        stored_inode(&store, &tl, wal).unwrap().kind,
        Kind::Directory
    );
    assert!(stored_inode(&store, &tl, ROOT_INO).is_some());

    // Extending the file and renaming another over a deleted one: pages, records, entries
    // and the dead file's page deletes, still one write.
    let (old, _) = fs.create(ROOT_INO, b"old", Kind::File, 0o600).unwrap();
    write(fs, old, 0, &pattern(3, 2 * BS));
    fs.release(old);
    fs.flush().await.unwrap();
    assert_stored_page(&store, &tl, old, 1, Some(&pattern(3, 2 * BS)[BS..]));
    write(fs, seg, 3 * BS as u64, &pattern(2, BS));
    let tmp = create_file(fs, b"tmp", &pattern(4, BS));
    fs.release(tmp);
    fs.rename(ROOT_INO, b"tmp", ROOT_INO, b"old", false)
        .unwrap();
    let writes = store.writes();
    fs.flush().await.unwrap();
    assert_eq!(store.writes() - writes, 1);
    assert_stored_page(&store, &tl, seg, 3, Some(&pattern(2, BS)));
    assert_eq!(stored_inode(&store, &tl, seg).unwrap().size, 4 * BS as u64);
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"old"), Some(tmp));
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"tmp"), None);
    assert_eq!(stored_inode(&store, &tl, old), None);
    assert_stored_page(&store, &tl, old, 0, None);
    assert_stored_page(&store, &tl, old, 1, None);
    assert_stored_page(&store, &tl, tmp, 0, Some(&pattern(4, BS)));
    assert_eq!(m.fs.dirty_bytes(), 0);
}

#[tokio::test]
async fn a_flush_too_big_for_one_write_sends_pages_then_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let fs = &m.fs;
    // A sparse file of 70,000 blocks (no page written): deleting it deletes more keys than
    // one write may hold.
    let (big, _) = fs.create(ROOT_INO, b"big", Kind::File, 0o600).unwrap();
    fs.truncate(big, 70_000 * BS as u64, &Fetched::default())
        .unwrap()
        .unwrap();
    fs.release(big);
    fs.flush().await.unwrap();

    fs.remove(ROOT_INO, b"big", false).unwrap();
    let small = create_file(fs, b"small", &pattern(5, BS));
    let writes = store.writes();
    fs.flush().await.unwrap();
    // The page; then the namespace with the first deletes; then the rest of the deletes.
    assert_eq!(store.writes() - writes, 3);
    assert_stored_page(&store, &tl, small, 0, Some(&pattern(5, BS)));
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"small"), Some(small));
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"big"), None);
    assert_eq!(stored_inode(&store, &tl, big), None);
}

#[tokio::test]
async fn flushed_wal_pages_are_not_cached_and_other_pages_are() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let m = mount(&store, &tl).await;
    let fs = &m.fs;
    let (_, seg) = wal_segment(fs);
    write(fs, seg, 0, &pattern(1, 2 * BS));
    let table = create_file(fs, b"16384", &pattern(2, 2 * BS));
    fs.flush().await.unwrap();

    // Only a later boot's recovery reads the WAL back, and it fetches it.
    assert!(!fs.cache().contains(seg, 0) && !fs.cache().contains(seg, 1));
    assert_cached(fs, table, 1, &pattern(2, 2 * BS)[BS..]);
    // Read again, the WAL comes from the page store as it was written.
    let got = read(fs, seg, BS as u64, BS as u32).await;
    assert_bytes(got, &pattern(1, 2 * BS)[BS..], "WAL block 1");
}
