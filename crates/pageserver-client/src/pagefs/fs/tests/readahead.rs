//! Range reads: how many page store calls reading a cold file costs, readers sharing a
//! fetch in flight, and a range fetch racing writes inside its range.

use super::*;
use crate::pagefs::fs::prefetcher;

/// A cache big enough for every test file here (8,176 pages; readahead windows of up to
/// 512 blocks).
const CACHE_BYTES: u64 = 64 << 20;

/// A file `f` of `blocks` blocks written and flushed by one compute, and the next compute's
/// mount (with a cold cache), the file's ino and its content.
async fn cold_file(store: &InProcess, tl: &TimelineId, blocks: usize) -> (Mount, u64, Vec<u8>) {
    let data = pattern(9, blocks * BS);
    {
        let first = mount(store, tl).await;
        create_file(&first.fs, b"f", &data);
        first.fs.flush().await.unwrap();
    }
    let m = mount_with_cache(store, tl, CACHE_BYTES).await;
    let (ino, _) = m.fs.lookup(ROOT_INO, b"f").unwrap();
    (m, ino, data)
}

/// Block `b` of `data`.
fn block(data: &[u8], b: u64) -> &[u8] {
    &data[b as usize * BS..(b as usize + 1) * BS]
}

#[tokio::test]
async fn a_sequential_read_of_a_cold_file_fetches_growing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 256).await;
    let (reads, scans) = (store.reads(), store.page_scans());

    // As Postgres reads a table: one block at a time.
    for b in 0..256 {
        let got = read(&m.fs, ino, b * BS as u64, BS as u32).await;
        assert_bytes(got, block(&data, b), &format!("block {b}"));
    }
    // Misses at blocks 0, 17, 50, 115 and 244 fetch the block and a window of 16, 32, 64,
    // 128, then the rest of the file: 5 calls instead of 256, each block fetched once.
    let io = m.fs.io_counters();
    assert_eq!((io.fetches, io.fetched_pages, io.joined_pages), (5, 256, 0));
    // Each run is consecutive: a scan of its key range, no per-key read.
    assert_eq!((store.page_scans() - scans, store.reads() - reads), (5, 0));
    // The blocks the reads waited for went to the local cache; those fetched ahead of
    // them were read from memory, never written to the cache.
    assert_eq!(m.fs.cache().len(), 5);
    assert_eq!(staged_pages(&m.fs), 251);

    // Read again: all held locally.
    for b in (0..256).step_by(37) {
        let got = read(&m.fs, ino, b * BS as u64, BS as u32).await;
        assert_bytes(got, block(&data, b), &format!("block {b} again"));
    }
    assert_eq!(m.fs.io_counters().fetches, 5);
}

#[tokio::test]
async fn reads_of_128_kib_as_the_kernel_sends_them_cost_four_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 256).await;

    let chunk = 16 * BS;
    for (i, want) in data.chunks(chunk).enumerate() {
        let got = read(&m.fs, ino, (i * chunk) as u64, chunk as u32).await;
        assert_bytes(got, want, &format!("chunk {i}"));
    }
    // Misses at blocks 0, 32, 80 and 160, each fetching its 16 blocks and a window of 16,
    // 32, 64, then the rest of the file.
    let io = m.fs.io_counters();
    assert_eq!((io.fetches, io.fetched_pages), (4, 256));
}

#[tokio::test]
async fn random_reads_fetch_only_the_block_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 256).await;
    let reads = store.reads();

    // Not block 0: a read there starts a sequential stream, as at the start of a scan.
    let blocks = [200, 13, 77, 150, 31, 255, 100];
    for b in blocks {
        let got = read(&m.fs, ino, b * BS as u64, BS as u32).await;
        assert_bytes(got, block(&data, b), &format!("block {b}"));
    }
    let io = m.fs.io_counters();
    assert_eq!((io.fetches, io.fetched_pages), (7, 7));
    assert_eq!(store.reads() - reads, 7);
    assert_eq!(m.fs.cache().len(), 7);
}

#[tokio::test]
async fn a_reader_of_a_block_on_the_way_waits_for_that_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 17).await;
    let scans = store.page_scans();

    // Reader A's miss on block 0 fetches the whole file; its answer is held.
    let mut held = store.hold_next(Call::Scan);
    let a = tokio::spawn({
        let fs = m.fs.clone();
        async move { read(&fs, ino, 0, BS as u32).await }
    });
    held.performed().await;
    // Reader B wants block 3, on the way: it waits for A's fetch (one poll gets it there).
    let b = read(&m.fs, ino, 3 * BS as u64, BS as u32);
    tokio::pin!(b);
    tokio::select! {
        biased;
        _ = &mut b => panic!("block 3 was read before the fetch bringing it landed"),
        () = std::future::ready(()) => {}
    }
    held.release();
    assert_bytes(a.await.unwrap(), block(&data, 0), "A's block");
    assert_bytes(b.await, block(&data, 3), "B's block");

    let io = m.fs.io_counters();
    assert_eq!((io.fetches, io.fetched_pages, io.joined_pages), (1, 17, 1));
    assert_eq!(store.page_scans() - scans, 1);
}

#[tokio::test]
async fn a_range_fetch_does_not_undo_writes_inside_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 17).await;
    let (new5, new9) = (pattern(5, BS), pattern(6, BS));

    // The miss on block 0 scans all 17 blocks as they are; before its answer arrives,
    // block 5 is rewritten and flushed, block 9 rewritten, and the file cut to 12 blocks.
    let mut held = store.hold_next(Call::Scan);
    let reader = tokio::spawn({
        let fs = m.fs.clone();
        async move { read(&fs, ino, 0, BS as u32).await }
    });
    held.performed().await;
    write(&m.fs, ino, 5 * BS as u64, &new5);
    m.fs.flush().await.unwrap();
    write(&m.fs, ino, 9 * BS as u64, &new9);
    m.fs.truncate(ino, 12 * BS as u64, &Fetched::default())
        .unwrap()
        .unwrap();
    held.release();
    assert_bytes(reader.await.unwrap(), block(&data, 0), "block 0");

    // The pages fetched ahead of untouched blocks are staged; the stale ones are not, and
    // the flushed block 5 is cached with its new content.
    assert_staged(&m.fs, ino, 7, block(&data, 7));
    assert_cached(&m.fs, ino, 5, &new5);
    let staged = |b| {
        super::super::state::lock(&m.fs.state)
            .staged
            .contains(ino, b)
    };
    assert!(
        !staged(5),
        "block 5 was rewritten while its old content was on the way"
    );
    assert!(
        !staged(9) && !m.fs.cache().contains(ino, 9),
        "block 9 is dirty"
    );
    assert!(
        !staged(13) && !m.fs.cache().contains(ino, 13),
        "block 13 is past the end"
    );
    assert_bytes(
        read(&m.fs, ino, 5 * BS as u64, BS as u32).await,
        &new5,
        "block 5",
    );
    assert_bytes(
        read(&m.fs, ino, 9 * BS as u64, BS as u32).await,
        &new9,
        "block 9",
    );
    assert!(read(&m.fs, ino, 13 * BS as u64, BS as u32).await.is_empty());

    // Flushed and evicted, block 9 comes back from the page store new.
    m.fs.flush().await.unwrap();
    m.fs.cache().remove(ino, 9);
    assert_bytes(
        read(&m.fs, ino, 9 * BS as u64, BS as u32).await,
        &new9,
        "block 9 fetched again",
    );
    assert_stored_page(&store, &tl, ino, 13, None);
}

#[tokio::test]
async fn a_write_drops_the_staged_page_it_changes_and_the_read_after_its_flush_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 64).await;
    // Two reads make the stream sequential: the second fetches a window ahead, staged.
    for b in 0..2 {
        read(&m.fs, ino, b * BS as u64, BS as u32).await;
    }
    assert_staged(&m.fs, ino, 3, block(&data, 3));
    assert_staged(&m.fs, ino, 4, block(&data, 4));

    let new3 = pattern(9, BS);
    write(&m.fs, ino, 3 * BS as u64, &new3);
    m.fs.flush().await.unwrap();
    m.fs.cache().remove(ino, 3);
    let fetches = m.fs.io_counters().fetches;
    assert_bytes(
        read(&m.fs, ino, 3 * BS as u64, BS as u32).await,
        &new3,
        "block 3",
    );
    assert_eq!(
        m.fs.io_counters().fetches,
        fetches + 1,
        "block 3 came from the page store"
    );
    // Block 4 was not written: still staged, read from memory.
    assert_bytes(
        read(&m.fs, ino, 4 * BS as u64, BS as u32).await,
        block(&data, 4),
        "block 4",
    );
    assert_eq!(m.fs.io_counters().fetches, fetches + 1);
}

#[tokio::test]
async fn background_readahead_fetches_the_next_window_while_the_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tl) = InProcess::new(dir.path());
    let (m, ino, data) = cold_file(&store, &tl, 256).await;
    let task = tokio::spawn(prefetcher(m.fs.clone()));
    let read_block = |b: u64| read(&m.fs, ino, b * BS as u64, BS as u32);

    // Block 0 misses (blocks 0..17 fetched); at block 9 the reader is within half a window
    // of the end, so blocks 17..49 are queued for the prefetcher.
    for b in 0..10 {
        assert_bytes(read_block(b).await, block(&data, b), &format!("block {b}"));
    }
    assert_eq!(m.fs.io_counters().fetches, 1);
    let mut held = store.hold_next(Call::Scan);
    held.performed().await;
    // The prefetcher's scan is in flight while the reader goes on.
    for b in 10..17 {
        assert_bytes(read_block(b).await, block(&data, b), &format!("block {b}"));
    }
    held.release();
    // Block 17 waits for the background fetch; the rest of it is in the cache.
    for b in 17..49 {
        assert_bytes(read_block(b).await, block(&data, b), &format!("block {b}"));
    }
    let io = m.fs.io_counters();
    assert_eq!(
        (
            io.fetches,
            io.background_fetches,
            io.fetched_pages,
            io.joined_pages
        ),
        (2, 1, 49, 1)
    );

    for b in 49..256 {
        assert_bytes(read_block(b).await, block(&data, b), &format!("block {b}"));
    }
    // However reads and background fetches interleave, each block is fetched once.
    let io = m.fs.io_counters();
    assert_eq!(io.fetched_pages, 256);
    assert!(io.fetches <= 8, "{io:?}");
    task.abort();
}
