//! An `fsync` while another flush's write is in flight: sent alongside it, not after, and
//! still never acknowledging anything that is not durable.

use std::future::Future;

use fuser::Errno;

use super::*;

/// Polls `f` once and panics if that completes it: `what` says why it must not yet.
async fn still_pending<F: Future + Unpin>(f: &mut F, what: &str) {
    tokio::select! {
        biased;
        _ = f => panic!("{what}"),
        () = std::future::ready(()) => {}
    }
}

/// A mount with files `f` and `g`, one block each, flushed.
async fn two_files(store: &InProcess, tl: &TimelineId) -> (Mount, u64, u64) {
    let m = mount(store, tl).await;
    let f = create_file(&m.fs, b"f", &pattern(1, BS));
    let g = create_file(&m.fs, b"g", &pattern(2, BS));
    m.fs.flush().await.unwrap();
    (m, f, g)
}

/// Starts a flush of everything dirty now, as the background flusher does.
fn background_flush(m: &Mount) -> tokio::task::JoinHandle<Result<(), Errno>> {
    let fs = m.fs.clone();
    tokio::spawn(async move { fs.flush().await })
}

#[tokio::test]
async fn an_fsync_during_a_flush_sends_its_changes_at_once_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, f, g) = two_files(&store, &tl).await;
    let writes = store.writes();

    // A background flush of f's block 0 is in flight (landed, not answered yet).
    write(&m.fs, f, 0, &pattern(3, BS));
    let mut flight = store.hold_next(Call::Write);
    let background = background_flush(&m);
    flight.performed().await;
    // Then g is written, f rewritten and extended, and fsync called.
    let (g0, f0, f1) = (pattern(4, BS), pattern(5, BS), pattern(6, BS));
    write(&m.fs, g, 0, &g0);
    write(&m.fs, f, 0, &f0);
    write(&m.fs, f, BS as u64, &f1);
    let mut ride = store.hold_next(Call::Write);
    let fsync = m.fs.flush();
    tokio::pin!(fsync);
    // Its write reaches the page store while the flight is still unanswered...
    tokio::select! {
        _ = &mut fsync => panic!("fsync returned while its write was held"),
        () = ride.performed() => {}
    }
    assert_eq!(store.writes() - writes, 2);
    assert_stored_page(&store, &tl, g, 0, Some(&g0));
    assert_stored_page(&store, &tl, f, 1, Some(&f1));
    // ...and, answered, the fsync still waits for the flight: it covers that too.
    ride.release();
    still_pending(&mut fsync, "fsync returned before the flush in flight").await;
    flight.release();
    fsync.await.unwrap();
    background.await.unwrap().unwrap();

    // Landed in order (the ride after the flight): nothing sent again.
    let io = m.fs.io_counters();
    assert_eq!((io.rides, io.reorders), (1, 0));
    assert_eq!(store.writes() - writes, 2);
    assert_stored_page(&store, &tl, f, 0, Some(&f0));
    assert_eq!(stored_inode(&store, &tl, f).unwrap().size, 2 * BS as u64);
    assert_eq!(m.fs.dirty_bytes(), 0);
}

#[tokio::test]
async fn a_ride_that_lands_before_its_flight_sends_the_keys_both_carry_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, f, _) = two_files(&store, &tl).await;
    let writes = store.writes();

    // The flight (f's block 0 = v1) is still on its way to the page store...
    let v1 = pattern(3, BS);
    write(&m.fs, f, 0, &v1);
    let mut flight = store.hold_next_unperformed(Call::Write);
    let background = background_flush(&m);
    flight.performed().await;
    // ...when f is rewritten (v2) and extended, and fsync'd: the ride lands first.
    let (v2, f1) = (pattern(4, BS), pattern(5, BS));
    write(&m.fs, f, 0, &v2);
    write(&m.fs, f, BS as u64, &f1);
    let fsync = m.fs.flush();
    tokio::pin!(fsync);
    still_pending(&mut fsync, "fsync returned before the flush in flight").await;
    assert_stored_page(&store, &tl, f, 0, Some(&v2));
    assert_eq!(stored_inode(&store, &tl, f).unwrap().size, 2 * BS as u64);

    // The flight lands after it, putting back v1 and the old size...
    let mut again = store.hold_next_unperformed(Call::Write);
    flight.release();
    tokio::select! {
        _ = &mut fsync => panic!("fsync returned with v1 in the page store"),
        () = again.performed() => {}
    }
    background.await.unwrap().unwrap();
    assert_stored_page(&store, &tl, f, 0, Some(&v1));
    assert_eq!(stored_inode(&store, &tl, f).unwrap().size, BS as u64);
    // ...so the ride sends what both carry again before the fsync returns.
    again.release();
    fsync.await.unwrap();
    assert_stored_page(&store, &tl, f, 0, Some(&v2));
    assert_stored_page(&store, &tl, f, 1, Some(&f1));
    assert_eq!(stored_inode(&store, &tl, f).unwrap().size, 2 * BS as u64);
    let io = m.fs.io_counters();
    assert_eq!((io.rides, io.reorders), (1, 1));
    assert_eq!(store.writes() - writes, 3);
    assert_eq!(m.fs.dirty_bytes(), 0);
    assert_bytes(
        read(&m.fs, f, 0, 2 * BS as u32).await,
        [v2, f1].concat(),
        "f",
    );
}

#[tokio::test]
async fn an_fsync_with_nothing_new_waits_for_the_flight_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, f, _) = two_files(&store, &tl).await;
    let writes = store.writes();

    write(&m.fs, f, 0, &pattern(3, BS));
    let mut flight = store.hold_next(Call::Write);
    let background = background_flush(&m);
    flight.performed().await;
    let fsync = m.fs.flush();
    tokio::pin!(fsync);
    still_pending(&mut fsync, "fsync returned before the flush in flight").await;
    flight.release();
    fsync.await.unwrap();
    background.await.unwrap().unwrap();
    assert_eq!(store.writes() - writes, 1);
    assert_eq!(m.fs.io_counters().rides, 0);
}

#[tokio::test]
async fn a_rename_of_an_entry_in_flight_is_sent_after_the_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, _, _) = two_files(&store, &tl).await;
    let writes = store.writes();

    // The flight creates `a`; then `a` is renamed to `b`, which deletes the entry `a`.
    let a = create_file(&m.fs, b"a", &pattern(3, BS));
    let mut flight = store.hold_next(Call::Write);
    let background = background_flush(&m);
    flight.performed().await;
    m.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", false).unwrap();
    let fsync = m.fs.flush();
    tokio::pin!(fsync);
    // Sent alongside, a rename landing first could end with both names: it waits.
    still_pending(&mut fsync, "fsync returned before the flush in flight").await;
    assert_eq!(store.writes() - writes, 1);
    flight.release();
    fsync.await.unwrap();
    background.await.unwrap().unwrap();

    assert_eq!(store.writes() - writes, 2);
    assert_eq!(m.fs.io_counters().rides, 0);
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"a"), None);
    assert_eq!(stored_dirent(&store, &tl, ROOT_INO, b"b"), Some(a));
}

#[tokio::test]
async fn a_ride_of_a_fenced_mount_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, f, g) = two_files(&store, &tl).await;
    let seq = store.last_seq(&tl);

    write(&m.fs, f, 0, &pattern(3, BS));
    let mut flight = store.hold_next_unperformed(Call::Write);
    let background = background_flush(&m);
    flight.performed().await;
    // Another compute takes the timeline; the ride's write is refused, and so is the flight.
    assert!(store.acquire(&tl) > m.generation);
    write(&m.fs, g, 0, &pattern(4, BS));
    let fsync = m.fs.flush();
    tokio::pin!(fsync);
    still_pending(&mut fsync, "fsync returned before the flush in flight").await;
    flight.release();
    assert_eq!(fsync.await, Err(Errno::EIO));
    assert_eq!(background.await.unwrap(), Err(Errno::EIO));

    assert_eq!(store.last_seq(&tl), seq);
    assert_stored_page(&store, &tl, f, 0, Some(&pattern(1, BS)));
    assert_stored_page(&store, &tl, g, 0, Some(&pattern(2, BS)));
    assert_eq!(m.fs.flush().await, Err(Errno::EIO));
}
