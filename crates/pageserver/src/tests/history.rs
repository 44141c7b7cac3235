//! History, layers and crashes: reads through layer files agree with a model, GC keeps
//! exactly what the window and branch points need and gives space back, scans cost what
//! they return, damaged files are reported, leftovers of a crash are collected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lakebed_pageserver_api::{Generation, Seq};

use super::{open, read, scan_all, tl, write};
use crate::store::{Store, StoreError, StoreOptions};

fn open_with(dir: &Path, retention: Duration) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            history_retention: retention,
            gc_interval: Duration::from_secs(3600),
            max_layers: 3,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// A model of one timeline: key -> versions (seq, value or tombstone).
type Model = BTreeMap<String, Vec<(u64, Option<String>)>>;

fn model_at(model: &Model, key: &str, seq: u64) -> Option<String> {
    model
        .get(key)?
        .iter()
        .rev()
        .find(|(s, _)| *s <= seq)
        .and_then(|(_, v)| v.clone())
}

#[test]
fn reads_through_memtables_layers_and_compaction_agree_with_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), Duration::from_secs(3600));
    store.create_timeline(&tl("t"), None).unwrap();
    let mut model = Model::new();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    let mut seq = 0;
    for round in 0..12u64 {
        // A deterministic mix of puts and deletes over overlapping keys.
        let mut puts = Vec::new();
        let mut dels = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let h = (i as u64 * 7 + round * 13) % 10;
            if h < 3 {
                puts.push((k.as_str(), format!("{k}-r{round}")));
            } else if h == 3 {
                dels.push(k.as_str());
            }
        }
        let p: Vec<(&str, &str)> = puts.iter().map(|(k, v)| (*k, v.as_str())).collect();
        seq = write(&store, "t", 0, &p, &dels);
        for (k, v) in &puts {
            model
                .entry((*k).to_owned())
                .or_default()
                .push((seq, Some(v.clone())));
        }
        for k in &dels {
            model.entry((*k).to_owned()).or_default().push((seq, None));
        }
        // Every third round goes to a layer; with max_layers 3, compaction runs too.
        if round % 3 == 2 {
            store.flush().unwrap();
        }
    }
    assert!(store.stats().layers >= 1);
    let check = |store: &Store| {
        for at in 1..=seq {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let got = read(store, "t", &refs, Some(at));
            let want: Vec<Option<String>> = keys.iter().map(|k| model_at(&model, k, at)).collect();
            assert_eq!(got, want, "read at seq {at}");
            let scanned = scan_all(store, "t", Some(at));
            let want: Vec<(String, String)> = keys
                .iter()
                .filter_map(|k| model_at(&model, k, at).map(|v| (k.clone(), v)))
                .collect();
            assert_eq!(scanned, want, "scan at seq {at}");
        }
    };
    check(&store);
    // Nothing is older than the hour-long window: GC keeps every version.
    let before = store.version_count().unwrap();
    let report = store.gc(None).unwrap();
    assert_eq!(report.timelines[0].versions_removed, 0);
    assert_eq!(store.version_count().unwrap(), before);
    check(&store);
    drop(store);
    // And the same after a reopen (manifest, layers and log replay).
    let store = open_with(dir.path(), Duration::from_secs(3600));
    check(&store);
}

/// A merge after flushes takes the newest layers only (a big old layer is not rewritten),
/// and, not reaching the oldest layer, keeps the tombstone that hides the value in it, even
/// with a zero window that lets every other old version go.
#[test]
fn merges_after_flushes_take_the_newest_layers_and_keep_tombstones_hiding_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        history_retention: Duration::ZERO,
        gc_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), options).unwrap();
    store.create_timeline(&tl("t"), None).unwrap();
    // The big, old layer: "k" and a thousand 1 KiB values.
    let pad = "x".repeat(1024);
    let big: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("big{i:04}"), pad.clone()))
        .collect();
    let mut puts: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    puts.push(("k", "old"));
    write(&store, "t", 0, &puts, &[]);
    store.flush().unwrap();
    let old_layers = layer_files(dir.path());
    assert_eq!(old_layers.len(), 1);
    // Four small layers, the first deleting "k": the fourth flush merges those four.
    write(&store, "t", 0, &[("s0", "a")], &["k"]);
    store.flush().unwrap();
    for i in 1..4 {
        write(&store, "t", 0, &[(&format!("s{i}"), "a")], &[]);
        store.flush().unwrap();
    }
    let now = layer_files(dir.path());
    assert_eq!(now.len(), 2, "four new layers merged into one: {now:?}");
    assert!(
        now.contains(&old_layers[0]),
        "the big layer was rewritten: {now:?}"
    );
    assert_eq!(
        read(&store, "t", &["k", "s0", "big0999"], None),
        [None, Some("a".into()), Some(pad.clone())]
    );
    // A collection merges down to the oldest layer: the tombstone and the value go.
    let before = store.version_count().unwrap();
    store.gc(None).unwrap();
    assert_eq!(store.version_count().unwrap(), before - 2);
    assert_eq!(layer_files(dir.path()).len(), 1);
    assert_eq!(
        read(&store, "t", &["k", "s3"], None),
        [None, Some("a".into())]
    );
}

/// The layer files in a store's directory, sorted.
fn layer_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".layer"))
        .collect();
    names.sort();
    names
}

/// A store left idle flushes its newest writes to a layer by itself: the memtable's memory
/// is given back, and the writes read the same from the layer and after a reopen.
#[test]
fn an_idle_store_flushes_its_memtable_to_a_layer() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        idle_flush: Duration::from_millis(50),
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), options.clone()).unwrap();
    store.create_timeline(&tl("t"), None).unwrap();
    write(&store, "t", 0, &[("k", "v")], &[]);
    // Awaited, not slept for: the flush is seen in the store's figures.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stats().memtable_bytes > 0 || store.stats().layers == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", store.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().layers, 1);
    assert_eq!(read(&store, "t", &["k"], None), [Some("v".to_owned())]);
    drop(store);
    let store = Store::open_with(dir.path(), options).unwrap();
    assert_eq!(read(&store, "t", &["k"], None), [Some("v".to_owned())]);
}

#[test]
fn gc_keeps_the_newest_and_branch_points_and_refuses_reads_below_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), Duration::ZERO);
    store.create_timeline(&tl("p"), None).unwrap();
    for i in 1..=3 {
        write(
            &store,
            "p",
            0,
            &[("k", &format!("v{i}")), ("gone", "x")],
            &[],
        );
    }
    // A branch at seq 3, then the parent moves on and deletes a key.
    store
        .create_timeline(&tl("child"), Some((&tl("p"), None)))
        .unwrap();
    write(&store, "p", 0, &[("k", "v4")], &["gone"]);
    write(&store, "p", 0, &[("k", "v5")], &[]);
    assert_eq!(store.version_count().unwrap(), 9);
    // With a zero window, the flush to a layer collects already: kept are k@5 and gone@4
    // (the newest), k@3 and gone@3 (the branch point).
    store.flush().unwrap();
    assert_eq!(store.version_count().unwrap(), 4);
    let report = store.gc(Some(&tl("p"))).unwrap();
    assert_eq!(report.timelines.len(), 1);
    assert_eq!(report.timelines[0].horizon, Seq(5));
    assert_eq!(report.timelines[0].versions_removed, 0);
    assert_eq!(store.version_count().unwrap(), 4);
    assert_eq!(
        read(&store, "p", &["k", "gone"], None),
        vec![Some("v5".to_owned()), None]
    );
    assert_eq!(
        read(&store, "child", &["k", "gone"], None),
        vec![Some("v3".to_owned()), Some("x".to_owned())]
    );
    // Below the horizon: a clear error naming it, for reads, scans and branches.
    let e = store.read(&tl("p"), &[b"k"], Some(Seq(4))).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::BelowHorizon {
                horizon: Seq(5),
                asked: Seq(4),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "timeline p: seq 4 is below the GC horizon 5 (history is kept for \
         pageserver.history_retention)"
    );
    assert!(matches!(
        store
            .scan(&tl("p"), b"", None, Some(Seq(2)), 10, usize::MAX)
            .unwrap_err(),
        StoreError::BelowHorizon { .. }
    ));
    assert!(matches!(
        store
            .create_timeline(&tl("old"), Some((&tl("p"), Some(Seq(2)))))
            .unwrap_err(),
        StoreError::BelowHorizon { .. }
    ));
    assert_eq!(store.gc_horizon(&tl("p")).unwrap(), Seq(5));

    // Once the branch is gone, its point is collected too; then the deleted key entirely.
    store.delete_timeline(&tl("child")).unwrap();
    store.gc(None).unwrap();
    assert_eq!(
        read(&store, "p", &["k", "gone"], None),
        vec![Some("v5".to_owned()), None]
    );
    assert_eq!(store.version_count().unwrap(), 1);
    drop(store);
    let store = open_with(dir.path(), Duration::ZERO);
    assert_eq!(store.version_count().unwrap(), 1);
    assert_eq!(read(&store, "p", &["k"], None), vec![Some("v5".to_owned())]);
}

#[test]
fn overwritten_pages_give_their_space_back_after_gc() {
    let dir = tempfile::tempdir().unwrap();
    // Written while an hour of history is kept...
    let store = open_with(dir.path(), Duration::from_secs(3600));
    store.create_timeline(&tl("t"), None).unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("p/1/{i}")).collect();
    for round in 0..10u8 {
        let page = vec![round; 8192];
        let puts: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_bytes(), &page[..])).collect();
        store.write(&tl("t"), Generation(0), &puts, &[]).unwrap();
        store.flush().unwrap();
    }
    drop(store);
    // ...collected once the window is zero.
    let store = open_with(dir.path(), Duration::ZERO);
    // What the store keeps apart from its data: room for the manifest on a full disk.
    let reserve = crate::store::reserve::RESERVE_BYTES;
    let live = 200 * 8192u64;
    let report = store.gc(None).unwrap();
    assert_eq!(report.timelines[0].versions_removed, 9 * 200);
    assert!(
        report.bytes_before > 5 * live,
        "{} bytes before GC",
        report.bytes_before
    );
    assert!(
        report.bytes_after < 2 * live + reserve,
        "{} bytes after GC",
        report.bytes_after
    );
    assert!(report.bytes_after >= live + reserve);
    assert_eq!(store.version_count().unwrap(), 200);
    let (_, values) = store.read(&tl("t"), &[keys[7].as_bytes()], None).unwrap();
    assert_eq!(values[0].as_deref(), Some(&[9u8; 8192][..]));
    // A deleted timeline's files go at once.
    store.delete_timeline(&tl("t")).unwrap();
    let layer_files = std::fs::read_dir(dir.path().join("layers"))
        .unwrap()
        .count();
    assert_eq!(layer_files, 0);
}

#[test]
fn a_scan_at_the_newest_seq_does_not_walk_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), Duration::from_secs(3600));
    let keys: Vec<String> = (0..100).map(|i| format!("n/{i:03}")).collect();
    // Timeline "few": each key written once. Timeline "many": each key written 50 times.
    for (id, versions) in [("few", 1), ("many", 50)] {
        store.create_timeline(&tl(id), None).unwrap();
        for v in 0..versions {
            let value = format!("v{v}");
            let puts: Vec<(&str, &str)> =
                keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
            write(&store, id, 0, &puts, &[]);
        }
    }
    store.flush().unwrap(); // one layer each, history and all
    let work = |id: &str| {
        let before = store.stats().entries_visited;
        assert_eq!(scan_all(&store, id, None).len(), 100);
        store.stats().entries_visited - before
    };
    let few = work("few");
    let many = work("many");
    assert_eq!(few, many, "a scan of keys with 50 versions did more work");
    assert!(few <= 2 * 100 + 10, "{few} entries visited for 100 keys");
    assert_eq!(store.version_count().unwrap(), 100 + 5000);
}

#[test]
fn damaged_files_are_reported_with_their_path_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_with(dir.path(), Duration::from_secs(3600));
        store.create_timeline(&tl("t"), None).unwrap();
        write(&store, "t", 0, &[("k", &"v".repeat(1000))], &[]);
        store.flush().unwrap();
    }
    let layer = std::fs::read_dir(dir.path().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let good = std::fs::read(&layer).unwrap();
    // A flipped byte in the data block: open works (footer and index are fine), the read
    // fails with the file's path.
    let mut bad = good.clone();
    bad[20] ^= 0xff;
    std::fs::write(&layer, &bad).unwrap();
    {
        let store = open_with(dir.path(), Duration::from_secs(3600));
        let e = store.read(&tl("t"), &[b"k"], None).unwrap_err();
        assert!(
            matches!(e, StoreError::Corrupt { ref path, .. } if *path == layer),
            "{e:?}"
        );
        assert!(e.to_string().contains("fails its checksum"), "{e}");
    }
    // A truncated layer: the store refuses to open, naming it.
    std::fs::write(&layer, &good[..good.len() - 10]).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { ref path, .. } if *path == layer),
        "{e:?}"
    );
    // A damaged manifest too.
    std::fs::write(&layer, &good).unwrap();
    let manifest = dir.path().join("MANIFEST");
    let mut m = std::fs::read(&manifest).unwrap();
    let last = m.len() - 2;
    m[last] ^= 0x01;
    std::fs::write(&manifest, &m).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { ref path, .. } if *path == manifest),
        "{e:?}"
    );
}

#[test]
fn leftovers_of_a_crash_are_collected_and_a_torn_log_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_with(dir.path(), Duration::from_secs(3600));
        store.create_timeline(&tl("t"), None).unwrap();
        write(&store, "t", 0, &[("a", "1")], &[]);
        store.flush().unwrap();
        write(&store, "t", 0, &[("b", "2")], &[]);
    }
    // What a flush or compaction that died before its manifest leaves: a layer nobody
    // refers to, and a temporary file.
    let layers = dir.path().join("layers");
    std::fs::write(layers.join("00000000000000ff.layer"), b"orphan").unwrap();
    std::fs::write(layers.join("0000000000000100.layer.tmp"), b"half").unwrap();
    // A record cut short at the end of the log (the process died while appending it).
    let wal = dir.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut data = std::fs::read(last).unwrap();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9]);
    std::fs::write(last, &data).unwrap();

    let store = open_with(dir.path(), Duration::from_secs(3600));
    assert!(!layers.join("00000000000000ff.layer").exists());
    assert!(!layers.join("0000000000000100.layer.tmp").exists());
    assert_eq!(
        scan_all(&store, "t", None),
        vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(store.describe(&tl("t")).unwrap().last_seq, Seq(2));
    // Writing goes on after the torn tail.
    assert_eq!(write(&store, "t", 0, &[("c", "3")], &[]), 3);
}

#[test]
fn concurrent_writers_share_log_flushes() {
    let (_dir, store) = open();
    let store = std::sync::Arc::new(store);
    for i in 0..8 {
        store.create_timeline(&tl(&format!("t{i}")), None).unwrap();
    }
    let before = store.stats();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..40 {
                    write(&store, &format!("t{i}"), 0, &[("k", &format!("{n}"))], &[]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = store.stats();
    let writes = after.writes_committed - before.writes_committed;
    let syncs = after.log_syncs - before.log_syncs;
    assert_eq!(writes, 320);
    assert!(
        syncs < writes,
        "{syncs} log flushes for {writes} writes: no group commit"
    );
    for i in 0..8 {
        assert_eq!(
            read(&store, &format!("t{i}"), &["k"], None),
            vec![Some("39".to_owned())]
        );
    }
}
