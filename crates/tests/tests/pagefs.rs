//! pagefs on a real FUSE mount over the real page store process: durability across mounts,
//! what reaches the local disk, fencing, an unreachable page store, kill -9.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;

use lakebed_pageserver_client::{ClientOptions, PageStoreClient, TimelineId};
use lakebed_tests::{DEADLINE, DataDir, PageServerProcess, PagefsProcess};
use nix::sys::signal::Signal;

async fn timeline(server: &PageServerProcess, id: &str) -> TimelineId {
    let mut o = ClientOptions::new(server.url());
    o.total_timeout = DEADLINE;
    let c = PageStoreClient::connect(o).await.unwrap();
    let id: TimelineId = id.parse().unwrap();
    c.create_timeline(&id, None).await.unwrap();
    id
}

fn fsync_dir(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn contents_and_namespace_survive_a_remount() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    timeline(&server, "t1").await;
    let mut a = PagefsProcess::start(dir.path(), "a", &server.url(), "t1", &[]).await;
    let m = a.mountpoint.clone();
    std::fs::create_dir(m.join("base")).unwrap();
    std::fs::create_dir(m.join("gone")).unwrap();
    let big: Vec<u8> = (0..3 * 8192 + 100).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.join("base/big"), &big).unwrap();
    std::fs::write(m.join("small"), b"hello").unwrap();
    std::fs::write(m.join("old"), b"renamed").unwrap();
    std::fs::rename(m.join("old"), m.join("base/new")).unwrap();
    std::fs::write(m.join("doomed"), b"x").unwrap();
    std::fs::remove_file(m.join("doomed")).unwrap();
    std::fs::remove_dir(m.join("gone")).unwrap();
    // Partial overwrite in the middle of block 1 and a shrink to mid-block.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("base/big"))
        .unwrap();
    f.write_all_at(b"PATCH", 8192 + 10).unwrap();
    f.set_len(2 * 8192 + 7).unwrap();
    f.set_len(2 * 8192 + 50).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&m);
    a.stop(Signal::SIGTERM).await;

    let b = PagefsProcess::start(dir.path(), "b", &server.url(), "t1", &[]).await;
    assert!(b.generation > a.generation);
    let m = b.mountpoint.clone();
    let mut want = big.clone();
    want[8192 + 10..8192 + 15].copy_from_slice(b"PATCH");
    want.truncate(2 * 8192 + 7);
    want.resize(2 * 8192 + 50, 0);
    assert_eq!(std::fs::read(m.join("base/big")).unwrap(), want);
    assert_eq!(std::fs::read(m.join("small")).unwrap(), b"hello");
    assert_eq!(std::fs::read(m.join("base/new")).unwrap(), b"renamed");
    let mut names: Vec<_> = std::fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["base", "small"]);
    let mut names: Vec<_> = std::fs::read_dir(m.join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "new"]);
}
