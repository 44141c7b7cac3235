//! pagefs on a real FUSE mount over the real page store process: durability across mounts,
//! what reaches the local disk, fencing, an unreachable page store, kill -9.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;

use lakebed_pageserver_client::{ClientOptions, PageStoreClient, TimelineId};
use lakebed_tests::{
    DEADLINE, DataDir, PageServerProcess, PagefsProcess, contains_bytes, files_under,
};
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

/// Reads `path` with O_DIRECT (`dd iflag=direct`), past the kernel's page cache, so the
/// read reaches pagefs. `Err` carries dd's message.
fn read_direct(path: &Path) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=direct", "bs=8192", "status=none"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_files_hold_only_ciphertext_and_a_flipped_byte_is_eio() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    timeline(&server, "t1").await;
    let fs = PagefsProcess::start(dir.path(), "a", &server.url(), "t1", &[]).await;
    let m = fs.mountpoint.clone();
    let marker = b"MARKER-7f3a9c-plaintext";
    let page: Vec<u8> = marker.iter().copied().cycle().take(8192 * 4).collect();
    std::fs::write(m.join("data"), &page).unwrap();
    std::fs::File::open(m.join("data"))
        .unwrap()
        .sync_all()
        .unwrap();
    // A scratch file: local only.
    std::fs::create_dir(m.join("pg_stat_tmp")).unwrap();
    std::fs::write(m.join("postmaster.opts"), &page[..100]).unwrap();
    // Reads that reach pagefs: served by its cache.
    assert!(read_direct(&m.join("data")).unwrap() == page);
    assert_eq!(
        std::fs::read(m.join("postmaster.opts")).unwrap(),
        &page[..100]
    );

    let local: Vec<_> = files_under(&fs.local_dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let cache = local
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|n| n == "cache"))
        .expect("a cache file");
    assert!(cache.1.iter().any(|&b| b != 0), "the cache holds pages");
    assert!(local.len() >= 2, "a scratch file exists too: {local:?}");
    for (path, bytes) in &local {
        assert!(
            !contains_bytes(bytes, &marker[..12]),
            "plaintext in {}",
            path.display()
        );
    }

    // Flip one byte in every cache slot: the next read that reaches pagefs fails, with
    // EIO and a log line, and never returns wrong data.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache.0)
        .unwrap();
    let slot = 8192 + 16;
    for off in (100..cache.1.len()).step_by(slot) {
        file.write_all_at(&[cache.1[off] ^ 0x55], off as u64)
            .unwrap();
    }
    let err = read_direct(&m.join("data"))
        .map(|_| "read succeeded")
        .unwrap_err();
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        fs.log_text().contains("does not verify"),
        "{}",
        fs.log_text()
    );
    // Each bad entry is dropped as it is found, and its page fetched again from the page
    // store: reads fail with EIO until every bad block was met once, and never return
    // anything but the right bytes.
    let mut healed = false;
    for _ in 0..=4 {
        match read_direct(&m.join("data")) {
            Ok(data) => {
                assert!(data == page, "wrong data after a seal failure");
                healed = true;
                break;
            }
            Err(e) => assert!(e.contains("Input/output error"), "{e}"),
        }
    }
    assert!(healed, "the file never read back correctly");
    // Scratch files never reach the page store: a fresh mount has none.
    drop(fs);
    let b = PagefsProcess::start(dir.path(), "b", &server.url(), "t1", &[]).await;
    assert!(b.mountpoint.join("data").exists());
    assert!(!b.mountpoint.join("postmaster.opts").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_generation_fences_the_older_mount() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    timeline(&server, "t1").await;
    let old = PagefsProcess::start(dir.path(), "old", &server.url(), "t1", &[]).await;
    std::fs::write(old.mountpoint.join("f"), b"first").unwrap();
    std::fs::File::open(old.mountpoint.join("f"))
        .unwrap()
        .sync_all()
        .unwrap();

    let new = PagefsProcess::start(dir.path(), "new", &server.url(), "t1", &[]).await;
    assert!(new.generation > old.generation);
    assert_eq!(std::fs::read(new.mountpoint.join("f")).unwrap(), b"first");

    // The old compute's write lands in its memory, but its fsync is refused, and from then
    // on so is every change.
    std::fs::write(old.mountpoint.join("f"), b"stale").unwrap();
    let err = std::fs::File::open(old.mountpoint.join("f"))
        .unwrap()
        .sync_all()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::write(old.mountpoint.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(old.log_text().contains("fenced"), "{}", old.log_text());
    drop(old);
    drop(new);

    // The timeline has only what the newer generation saw.
    let check = PagefsProcess::start(dir.path(), "check", &server.url(), "t1", &[]).await;
    assert_eq!(std::fs::read(check.mountpoint.join("f")).unwrap(), b"first");
    assert!(!check.mountpoint.join("g").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_waits_out_a_page_store_outage_and_fails_with_eio_past_the_timeout() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let addr = server.addr.to_string();
    timeline(&server, "t1").await;
    let url = server.url();
    let fs = PagefsProcess::start(dir.path(), "a", &url, "t1", &["--io-timeout", "30s"]).await;
    let m = fs.mountpoint.clone();

    // Down for 2 s while an fsync waits: the fsync completes once it is back.
    server.stop(Signal::SIGKILL).await;
    std::fs::write(m.join("during-outage"), b"kept").unwrap();
    let path = m.join("during-outage");
    let fsync = std::thread::spawn(move || std::fs::File::open(path).unwrap().sync_all());
    // The outage itself is the fault under test: its length is the point, not a wait.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !fsync.is_finished(),
        "fsync returned while the page store was down"
    );
    let server = PageServerProcess::start(dir.path(), &addr, &[]).await;
    fsync.join().unwrap().unwrap();
    drop(fs);

    // With a short timeout, the fsync gives up with EIO; the data stays dirty and is flushed
    // once the page store is back.
    let fs = PagefsProcess::start(dir.path(), "b", &url, "t1", &["--io-timeout", "1s"]).await;
    let m = fs.mountpoint.clone();
    assert_eq!(std::fs::read(m.join("during-outage")).unwrap(), b"kept");
    server.stop(Signal::SIGKILL).await;
    std::fs::write(m.join("later"), b"also kept").unwrap();
    let err = std::fs::File::open(m.join("later"))
        .unwrap()
        .sync_all()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let _server = PageServerProcess::start(dir.path(), &addr, &[]).await;
    std::fs::File::open(m.join("later"))
        .unwrap()
        .sync_all()
        .unwrap();
    drop(fs);
    let c = PagefsProcess::start(dir.path(), "c", &url, "t1", &[]).await;
    assert_eq!(
        std::fs::read(c.mountpoint.join("later")).unwrap(),
        b"also kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_pagefs_keeps_everything_fsynced() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    timeline(&server, "t1").await;
    let mut fs = PagefsProcess::start(dir.path(), "a", &server.url(), "t1", &[]).await;
    let m = fs.mountpoint.clone();
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let name = format!("f{i}");
        let mut f = std::fs::File::create(m.join(&name)).unwrap();
        std::io::Write::write_all(&mut f, name.repeat(1000).as_bytes()).unwrap();
        if i % 2 == 0 {
            f.sync_all().unwrap();
            acknowledged.push(name);
        }
    }
    fsync_dir(&m);
    fs.stop(Signal::SIGKILL).await;
    // Its local files outlive it but are sealed under a key that died with it.
    let c = PagefsProcess::start(dir.path(), "c", &server.url(), "t1", &[]).await;
    for name in &acknowledged {
        assert_eq!(
            std::fs::read(c.mountpoint.join(name)).unwrap(),
            name.repeat(1000).as_bytes()
        );
    }
}

/// The lines the compute manager writes to a keyed pagefs: tenant, lineage, DEK versions.
fn keys_text(tenant: &str, lineage: &str, deks: &[(u32, u8)]) -> String {
    use base64::Engine;
    let mut text = format!("tenant {tenant}\nlineage {lineage}\n");
    for (version, byte) in deks {
        let b64 = base64::engine::general_purpose::STANDARD.encode([*byte; 32]);
        text.push_str(&format!("dek {version} {b64}\n"));
    }
    text.push_str("end\n");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_dek_the_page_store_holds_only_ciphertext_and_other_keys_cannot_mount() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    timeline(&server, "t1").await;
    let keys = keys_text("acme", "t1", &[(1, 0x11)]);
    let mut fs = PagefsProcess::start_with_keys(dir.path(), "a", &server.url(), "t1", &keys)
        .await
        .unwrap();
    let marker = b"SECRET-9d1e-customer-row";
    let content: Vec<u8> = marker.iter().copied().cycle().take(3 * 8192).collect();
    std::fs::create_dir(fs.mountpoint.join("customer_table_dir")).unwrap();
    std::fs::write(fs.mountpoint.join("customer_table_dir/rows"), &content).unwrap();
    std::fs::File::open(fs.mountpoint.join("customer_table_dir/rows"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert!(fs.stop(Signal::SIGTERM).await.success());

    // Nothing of it in the page store's files: not the rows, not the file names.
    for path in files_under(&dir.path().join("pageserver")) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in [&marker[..12], b"customer_table_dir"] {
            assert!(
                !contains_bytes(&bytes, needle),
                "{needle:?} in {}",
                path.display()
            );
        }
    }
    // With the DEK: everything is there. A newer DEK version reads the old one's pages.
    let keys2 = keys_text("acme", "t1", &[(1, 0x11), (2, 0x22)]);
    let b = PagefsProcess::start_with_keys(dir.path(), "b", &server.url(), "t1", &keys2)
        .await
        .unwrap();
    assert!(std::fs::read(b.mountpoint.join("customer_table_dir/rows")).unwrap() == content);
    drop(b);
    // Another tenant's key, or the same key claimed by another tenant: refused at mount.
    // (Both versions: mount b may have re-sealed some values under version 2 already.)
    for wrong in [
        keys_text("acme", "t1", &[(1, 0x33), (2, 0x44)]),
        keys_text("other", "t1", &[(1, 0x11), (2, 0x22)]),
    ] {
        let err = PagefsProcess::start_with_keys(dir.path(), "c", &server.url(), "t1", &wrong)
            .await
            .map(|_| "mounted")
            .unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }
}
