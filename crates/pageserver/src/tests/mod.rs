//! Storage-layer tests against a real store in a temporary directory: the contract
//! (this file) and history, layers and crashes ([`history`]).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use lakebed_pageserver_api::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_READ_KEYS, MAX_VALUE_BYTES,
};
use lakebed_pageserver_api::{Generation, Seq, TimelineId};

use crate::store::{ScanResult, Store, StoreError, TimelineInfo};

mod history;

fn tl(id: &str) -> TimelineId {
    id.parse().unwrap()
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Writes `puts` and `deletes` (as strings) and returns the seq.
fn write(store: &Store, id: &str, generation: u32, puts: &[(&str, &str)], deletes: &[&str]) -> u64 {
    try_write(store, id, generation, puts, deletes).unwrap().0
}

fn try_write(
    store: &Store,
    id: &str,
    generation: u32,
    puts: &[(&str, &str)],
    deletes: &[&str],
) -> Result<Seq, StoreError> {
    let puts: Vec<(&[u8], &[u8])> = puts
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let deletes: Vec<&[u8]> = deletes.iter().map(|k| k.as_bytes()).collect();
    store.write(&tl(id), Generation(generation), &puts, &deletes)
}

/// Reads `keys` at `at`, values as strings.
fn read(store: &Store, id: &str, keys: &[&str], at: Option<u64>) -> Vec<Option<String>> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let (_, values) = store.read(&tl(id), &keys, at.map(Seq)).unwrap();
    values
        .into_iter()
        .map(|v| v.map(|v| String::from_utf8(v.to_vec()).unwrap()))
        .collect()
}

/// Every visible (key, value) at `at`, as strings.
fn scan_all(store: &Store, id: &str, at: Option<u64>) -> Vec<(String, String)> {
    let r = store
        .scan(&tl(id), b"", None, at.map(Seq), 1000, usize::MAX)
        .unwrap();
    assert!(!r.more);
    strings(&r)
}

fn strings(r: &ScanResult) -> Vec<(String, String)> {
    r.entries
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn reads_at_older_seqs_see_older_values_and_tombstones() {
    let (_dir, store) = open();
    let info = store.create_timeline(&tl("main"), None).unwrap();
    assert_eq!(info.last_seq, Seq(0));
    assert_eq!(info.generation, Generation(0));

    assert_eq!(
        write(&store, "main", 0, &[("a", "a1"), ("b", "b1")], &[]),
        1
    );
    assert_eq!(write(&store, "main", 0, &[("a", "a2")], &["b"]), 2);
    assert_eq!(write(&store, "main", 0, &[("c", "c3")], &[]), 3);

    let keys = ["a", "b", "c", "zz"];
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        read(&store, "main", &keys, Some(0)),
        vec![None, None, None, None]
    );
    assert_eq!(
        read(&store, "main", &keys, Some(1)),
        vec![s("a1"), s("b1"), None, None]
    );
    assert_eq!(
        read(&store, "main", &keys, Some(2)),
        vec![s("a2"), None, None, None]
    );
    assert_eq!(
        read(&store, "main", &keys, Some(3)),
        vec![s("a2"), None, s("c3"), None]
    );
    assert_eq!(
        read(&store, "main", &keys, None),
        vec![s("a2"), None, s("c3"), None]
    );
    let (seq, _) = store.read(&tl("main"), &[b"a"], None).unwrap();
    assert_eq!(seq, Seq(3));

    assert_eq!(
        scan_all(&store, "main", Some(1)),
        pairs(&[("a", "a1"), ("b", "b1")])
    );
    assert_eq!(scan_all(&store, "main", Some(2)), pairs(&[("a", "a2")]));
    assert_eq!(
        scan_all(&store, "main", None),
        pairs(&[("a", "a2"), ("c", "c3")])
    );

    // A deleted key can be written again.
    assert_eq!(write(&store, "main", 0, &[("b", "b4")], &[]), 4);
    assert_eq!(read(&store, "main", &["b"], None), vec![s("b4")]);
    assert_eq!(read(&store, "main", &["b"], Some(3)), vec![None]);

    match store.read(&tl("main"), &[b"a"], Some(Seq(5))).unwrap_err() {
        StoreError::SeqBeyondLast { asked, last, .. } => {
            assert_eq!((asked, last), (Seq(5), Seq(4)));
        }
        other => panic!("expected SeqBeyondLast, got {other:?}"),
    }
}

#[test]
fn keys_that_are_prefixes_of_each_other_stay_apart() {
    let (_dir, store) = open();
    store.create_timeline(&tl("t"), None).unwrap();
    // Binary keys: "a", "a\0", "a\0\0", "ab" must not shadow or interleave with each other.
    let keys: [&[u8]; 4] = [b"a", b"a\0", b"a\0\0", b"ab"];
    for (i, k) in keys.iter().enumerate() {
        let value = vec![i as u8; 3];
        store
            .write(&tl("t"), Generation(0), &[(*k, value.as_slice())], &[])
            .unwrap();
    }
    // Overwrite "a" last, with a seq higher than the others.
    store
        .write(&tl("t"), Generation(0), &[(&b"a"[..], &b"new"[..])], &[])
        .unwrap();
    let (_, values) = store.read(&tl("t"), &keys, None).unwrap();
    assert_eq!(
        values,
        [&b"new"[..], &[1; 3], &[2; 3], &[3; 3]]
            .map(|v| Some(Bytes::copy_from_slice(v)))
            .to_vec()
    );
    let r = store
        .scan(&tl("t"), b"a", Some(b"ab"), None, 100, usize::MAX)
        .unwrap();
    let got: Vec<&[u8]> = r.entries.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(got, vec![&b"a"[..], b"a\0", b"a\0\0"]);
    // At seq 1 only "a" existed, with its first value.
    let r = store
        .scan(&tl("t"), b"", None, Some(Seq(1)), 100, usize::MAX)
        .unwrap();
    assert_eq!(
        r.entries,
        vec![(Bytes::from_static(b"a"), Bytes::from_static(&[0; 3]))]
    );
}

#[test]
fn scan_bounds_limits_and_continuation() {
    let (_dir, store) = open();
    store.create_timeline(&tl("t"), None).unwrap();
    let owned: Vec<(String, String)> = (0..25)
        .map(|i| (format!("k{i:02}"), format!("v{i}")))
        .collect();
    let puts: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    write(&store, "t", 0, &puts, &[]);
    // Another timeline's keys must never show up.
    store.create_timeline(&tl("t2"), None).unwrap();
    write(&store, "t2", 0, &[("k05", "other")], &[]);

    let r = store
        .scan(&tl("t"), b"k10", Some(b"k13"), None, 100, usize::MAX)
        .unwrap();
    assert_eq!(
        strings(&r),
        pairs(&[("k10", "v10"), ("k11", "v11"), ("k12", "v12")])
    );
    assert!(!r.more);

    // Pages of 10, continuing after the last key.
    let mut start = Vec::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = store
            .scan(&tl("t"), &start, None, None, 10, usize::MAX)
            .unwrap();
        pages += 1;
        seen.extend(strings(&r));
        if !r.more {
            break;
        }
        start = r.entries.last().unwrap().0.to_vec();
        start.push(0);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, owned);

    // A byte budget stops early but always returns at least one entry.
    let r = store.scan(&tl("t"), b"", None, None, 100, 1).unwrap();
    assert_eq!(strings(&r), pairs(&[("k00", "v0")]));
    assert!(r.more);

    // Empty and inverted ranges.
    let r = store
        .scan(&tl("t"), b"k20", Some(b"k10"), None, 100, usize::MAX)
        .unwrap();
    assert!(r.entries.is_empty() && !r.more);
    let r = store
        .scan(&tl("t"), b"z", None, None, 100, usize::MAX)
        .unwrap();
    assert!(r.entries.is_empty() && !r.more);
}

#[test]
fn branch_sees_parent_at_branch_point_and_is_isolated() {
    let (_dir, store) = open();
    store.create_timeline(&tl("template"), None).unwrap();
    // Enough data that a copy would show in the file size.
    let big = "x".repeat(8192);
    let owned: Vec<String> = (0..200).map(|i| format!("p/1/{i}")).collect();
    let puts: Vec<(&str, &str)> = owned.iter().map(|k| (k.as_str(), big.as_str())).collect();
    assert_eq!(write(&store, "template", 0, &puts, &[]), 1);
    assert_eq!(
        write(&store, "template", 0, &[("k1", "v1"), ("k2", "v2")], &[]),
        2
    );

    let versions = store.version_count().unwrap();
    let size = store.stats().disk_bytes;
    let info = store
        .create_timeline(&tl("child"), Some((&tl("template"), None)))
        .unwrap();
    assert_eq!(
        info,
        TimelineInfo {
            generation: Generation(0),
            last_seq: Seq(2),
            parent: Some((tl("template"), Seq(2))),
        }
    );
    // Nothing copied: not one stored version more, and the file barely grew (a 1.6 MB copy
    // would show).
    assert_eq!(store.version_count().unwrap(), versions);
    let grown = store.stats().disk_bytes.saturating_sub(size);
    assert!(grown < 256 * 1024, "the store grew by {grown} bytes");

    // Parent writes after the branch point are not seen by the child.
    assert_eq!(
        write(&store, "template", 0, &[("k1", "v1-parent")], &["k2"]),
        3
    );
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        read(&store, "child", &["k1", "k2"], None),
        vec![s("v1"), s("v2")]
    );
    assert_eq!(
        read(&store, "child", &["p/1/7"], None),
        vec![Some(big.clone())]
    );

    // Child writes continue the seq from the branch point and don't reach the parent.
    assert_eq!(
        write(
            &store,
            "child",
            0,
            &[("k2", "v2-child"), ("k3", "v3")],
            &["k1"]
        ),
        3
    );
    assert_eq!(
        read(&store, "child", &["k1", "k2", "k3"], None),
        vec![None, s("v2-child"), s("v3")]
    );
    assert_eq!(
        read(&store, "template", &["k1", "k2", "k3"], None),
        vec![s("v1-parent"), None, None]
    );
    // The child's history below the branch point is the parent's.
    assert_eq!(
        read(&store, "child", &["k1", "k2"], Some(1)),
        vec![None, None]
    );
    assert_eq!(
        read(&store, "child", &["k1", "k2"], Some(2)),
        vec![s("v1"), s("v2")]
    );

    // Scans merge the child's own keys over the parent's, tombstones hiding parent keys.
    let r = store
        .scan(&tl("child"), b"k", Some(b"l"), None, 100, usize::MAX)
        .unwrap();
    assert_eq!(strings(&r), pairs(&[("k2", "v2-child"), ("k3", "v3")]));
    let r = store
        .scan(&tl("template"), b"k", Some(b"l"), None, 100, usize::MAX)
        .unwrap();
    assert_eq!(strings(&r), pairs(&[("k1", "v1-parent")]));
    let r = store
        .scan(&tl("child"), b"", None, None, 10_000, usize::MAX)
        .unwrap();
    assert_eq!(r.entries.len(), 202);

    // A branch at an explicit older seq, and a branch of a branch.
    store
        .create_timeline(&tl("old"), Some((&tl("template"), Some(Seq(1)))))
        .unwrap();
    assert_eq!(
        read(&store, "old", &["k1", "p/1/0"], None),
        vec![None, Some(big)]
    );
    store
        .create_timeline(&tl("grandchild"), Some((&tl("child"), None)))
        .unwrap();
    write(&store, "child", 0, &[("k3", "v3-later")], &[]);
    assert_eq!(
        read(&store, "grandchild", &["k1", "k2", "k3"], None),
        vec![None, s("v2-child"), s("v3")]
    );
    let r = store
        .scan(&tl("grandchild"), b"k", Some(b"l"), None, 100, usize::MAX)
        .unwrap();
    assert_eq!(strings(&r), pairs(&[("k2", "v2-child"), ("k3", "v3")]));
}

#[test]
fn stale_generation_is_refused_and_changes_nothing() {
    let (_dir, store) = open();
    let t = tl("ep");
    store.create_timeline(&t, None).unwrap();
    let first = store.acquire(&t).unwrap();
    assert_eq!(first, Generation(1));
    assert_eq!(write(&store, "ep", 1, &[("page", "from-first")], &[]), 1);

    let second = store.acquire(&t).unwrap();
    assert_eq!(second, Generation(2));
    match try_write(&store, "ep", 1, &[("page", "late")], &["other"]).unwrap_err() {
        err @ StoreError::StaleGeneration { .. } => {
            assert_eq!(err.to_string(), "timeline ep: stale generation 1 < 2");
        }
        other => panic!("expected StaleGeneration, got {other:?}"),
    }
    assert_eq!(
        read(&store, "ep", &["page"], None),
        vec![Some("from-first".to_owned())]
    );
    assert_eq!(store.describe(&t).unwrap().last_seq, Seq(1));

    // A generation nobody acquired is refused too.
    assert!(matches!(
        try_write(&store, "ep", 3, &[("page", "future")], &[]).unwrap_err(),
        StoreError::NotAcquired {
            sent: Generation(3),
            current: Generation(2),
            ..
        }
    ));
    assert_eq!(write(&store, "ep", 2, &[("page", "from-second")], &[]), 2);
    assert_eq!(
        read(&store, "ep", &["page"], None),
        vec![Some("from-second".to_owned())]
    );
    assert_eq!(store.describe(&t).unwrap().generation, Generation(2));
}

#[test]
fn reopen_keeps_every_committed_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.create_timeline(&tl("t"), None).unwrap();
        store.acquire(&tl("t")).unwrap();
        for i in 0..20 {
            let k = format!("k{i}");
            write(&store, "t", 1, &[(&k, "v")], &[]);
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let info = store.describe(&tl("t")).unwrap();
    assert_eq!((info.generation, info.last_seq), (Generation(1), Seq(20)));
    assert_eq!(scan_all(&store, "t", None).len(), 20);
    // A second open of the same file is refused while the first holds it.
    assert!(matches!(
        Store::open(dir.path()).unwrap_err(),
        StoreError::Open { .. }
    ));
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let (_dir, store) = open();
    let t = tl("t");
    store.create_timeline(&t, None).unwrap();
    write(&store, "t", 0, &[("keep", "v")], &[]);
    let versions = store.version_count().unwrap();

    let invalid = |e: StoreError| match e {
        StoreError::InvalidArgument(m) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let m = invalid(
        store
            .write(&t, Generation(0), &[(&long_key[..], &b"v"[..])], &[])
            .unwrap_err(),
    );
    assert_eq!(m, "a key of 1025 bytes: at most 1024 (MAX_KEY_BYTES)");
    let m = invalid(
        store
            .write::<&[u8], &[u8]>(&t, Generation(0), &[], &[&long_key[..]])
            .unwrap_err(),
    );
    assert!(m.contains("MAX_KEY_BYTES"), "{m}");
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    let m = invalid(
        store
            .write(&t, Generation(0), &[(&b"k"[..], &big[..])], &[])
            .unwrap_err(),
    );
    assert_eq!(
        m,
        "the value of key \"k\" is 1048577 bytes: at most 1048576 (MAX_VALUE_BYTES)"
    );
    // 65 values of 1 MiB: each within its limit, the batch not.
    let mib = vec![1u8; MAX_VALUE_BYTES];
    let keys: Vec<String> = (0..=MAX_BATCH_BYTES / MAX_VALUE_BYTES)
        .map(|i| format!("k{i}"))
        .collect();
    let puts: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_bytes(), &mib[..])).collect();
    let m = invalid(store.write(&t, Generation(0), &puts, &[]).unwrap_err());
    assert!(m.ends_with("at most 67108864 (MAX_BATCH_BYTES)"), "{m}");
    let many: Vec<String> = (0..=MAX_BATCH_KEYS).map(|i| format!("k{i}")).collect();
    let dels: Vec<&[u8]> = many.iter().map(|k| k.as_bytes()).collect();
    let m = invalid(
        store
            .write::<&[u8], &[u8]>(&t, Generation(0), &[], &dels)
            .unwrap_err(),
    );
    assert_eq!(m, "65537 keys in one write: at most 65536 (MAX_BATCH_KEYS)");
    let m = invalid(try_write(&store, "t", 0, &[("dup", "1")], &["dup"]).unwrap_err());
    assert_eq!(m, "key \"dup\" appears more than once in one write");
    let m = invalid(try_write(&store, "t", 0, &[("", "1")], &[]).unwrap_err());
    assert_eq!(m, "a key must not be empty");
    let too_many: Vec<&[u8]> = vec![b"k"; MAX_READ_KEYS + 1];
    let m = invalid(store.read(&t, &too_many, None).unwrap_err());
    assert!(m.contains("MAX_READ_KEYS"), "{m}");

    assert!(matches!(
        try_write(&store, "nope", 0, &[("k", "v")], &[]).unwrap_err(),
        StoreError::NotFound(id) if id == tl("nope")
    ));
    assert!(matches!(
        store.acquire(&tl("nope")).unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store.describe(&tl("nope")).unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store.read(&tl("nope"), &[b"k"], None).unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store.delete_timeline(&tl("nope")).unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(
        store.create_timeline(&t, None).unwrap_err().to_string(),
        "timeline t already exists"
    );
    assert_eq!(
        store
            .create_timeline(&tl("b"), Some((&tl("nope"), None)))
            .unwrap_err()
            .to_string(),
        "parent timeline nope does not exist"
    );
    assert_eq!(
        store
            .create_timeline(&tl("b"), Some((&t, Some(Seq(9)))))
            .unwrap_err()
            .to_string(),
        "timeline t: seq 9 is beyond its last seq 1"
    );
    assert!(matches!(
        store.describe(&tl("b")).unwrap_err(),
        StoreError::NotFound(_)
    ));

    // Nothing above changed the timeline.
    assert_eq!(store.version_count().unwrap(), versions);
    let info = store.describe(&t).unwrap();
    assert_eq!((info.generation, info.last_seq), (Generation(0), Seq(1)));
    assert_eq!(scan_all(&store, "t", None), pairs(&[("keep", "v")]));
}

#[test]
fn delete_removes_only_that_timeline_and_waits_for_branches() {
    let (_dir, store) = open();
    // Ids that are prefixes of each other: deleting "a" must not touch "a-b" or "ab".
    for id in ["a", "a-b", "ab"] {
        store.create_timeline(&tl(id), None).unwrap();
        write(&store, id, 0, &[("k", id)], &[]);
    }
    store
        .create_timeline(&tl("a-child"), Some((&tl("a"), None)))
        .unwrap();
    match store.delete_timeline(&tl("a")).unwrap_err() {
        err @ StoreError::HasBranches { .. } => assert_eq!(
            err.to_string(),
            "timeline a has branches (a-child): delete them first"
        ),
        other => panic!("expected HasBranches, got {other:?}"),
    }
    assert_eq!(
        read(&store, "a-child", &["k"], None),
        vec![Some("a".to_owned())]
    );
    store.delete_timeline(&tl("a-child")).unwrap();
    store.delete_timeline(&tl("a")).unwrap();
    assert_eq!(store.version_count().unwrap(), 2);
    assert!(matches!(
        store.describe(&tl("a")).unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(
        read(&store, "a-b", &["k"], None),
        vec![Some("a-b".to_owned())]
    );
    assert_eq!(
        read(&store, "ab", &["k"], None),
        vec![Some("ab".to_owned())]
    );
    // The id can be used again, from scratch.
    store.create_timeline(&tl("a"), None).unwrap();
    assert_eq!(read(&store, "a", &["k"], None), vec![None]);
    assert_eq!(store.describe(&tl("a")).unwrap().last_seq, Seq(0));
}
