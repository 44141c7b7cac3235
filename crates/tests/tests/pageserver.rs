//! End-to-end tests of the page store: the real `lakebed pageserver` process on a free
//! loopback port, driven over real gRPC by `lakebed-pageserver-client` (and, where a test must
//! send what the typed client refuses to, by the raw generated stub).
//!
//! The process is started by the harness's [`PageServerProcess`]. Run `cargo build -p lakebed`
//! first (scripts/test does).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use lakebed_pageserver_api::proto;
use lakebed_pageserver_api::proto::page_store_client::PageStoreClient as RawClient;
use lakebed_pageserver_client::limits::{MAX_BATCH_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use lakebed_pageserver_client::{
    ClientTls, Generation, PageStoreClient, RpcError, Seq, TimelineId, WriteBatch,
};
use lakebed_tests::{DEADLINE, DataDir, PageServerProcess, client_options, files_under};
use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::time::timeout;

fn tl(id: &str) -> TimelineId {
    id.parse().unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Values of `keys` at `at`, as strings.
async fn read(
    c: &PageStoreClient,
    id: &str,
    keys: &[&str],
    at: Option<u64>,
) -> Vec<Option<String>> {
    let keys = keys.iter().map(|k| b(k)).collect();
    c.read(&tl(id), keys, at.map(Seq))
        .await
        .unwrap()
        .values
        .into_iter()
        .map(|v| v.map(|v| String::from_utf8(v.to_vec()).unwrap()))
        .collect()
}

/// Every (key, value) visible at `at`, as strings.
async fn scan(c: &PageStoreClient, id: &str, at: Option<u64>) -> Vec<(String, String)> {
    let (_, entries) = c.scan_all(&tl(id), b"", None, at.map(Seq)).await.unwrap();
    entries
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn some(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn write_read_scan_at_seqs() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    let t = tl("main");
    assert_eq!(c.create_timeline(&t, None).await.unwrap(), Seq(0));
    let g = c.acquire(&t).await.unwrap();
    assert_eq!(g, Generation(1));

    let s1 = c
        .write(
            &t,
            g,
            WriteBatch::new()
                .put(b("p/1/0"), b("a1"))
                .put(b("p/1/1"), b("b1")),
        )
        .await
        .unwrap();
    let s2 = c
        .write(
            &t,
            g,
            WriteBatch::new()
                .put(b("p/1/0"), b("a2"))
                .delete(b("p/1/1")),
        )
        .await
        .unwrap();
    let s3 = c
        .write(&t, g, WriteBatch::new().put(b("n/base"), b("dir")))
        .await
        .unwrap();
    assert_eq!((s1, s2, s3), (Seq(1), Seq(2), Seq(3)));

    let keys = ["p/1/0", "p/1/1", "n/base"];
    assert_eq!(
        read(&c, "main", &keys, Some(1)).await,
        vec![some("a1"), some("b1"), None]
    );
    assert_eq!(
        read(&c, "main", &keys, Some(2)).await,
        vec![some("a2"), None, None]
    );
    assert_eq!(
        read(&c, "main", &keys, None).await,
        vec![some("a2"), None, some("dir")]
    );
    assert_eq!(
        scan(&c, "main", Some(1)).await,
        pairs(&[("p/1/0", "a1"), ("p/1/1", "b1")])
    );
    assert_eq!(
        scan(&c, "main", None).await,
        pairs(&[("n/base", "dir"), ("p/1/0", "a2")])
    );
    // A bounded scan with a small limit pages.
    let page = c
        .scan(&t, b"p/", Some(&b"p0"[..]), Some(Seq(1)), 1)
        .await
        .unwrap();
    assert_eq!(page.entries, vec![(b("p/1/0"), b("a1"))]);
    assert!(page.more);
    assert_eq!(page.seq, Seq(1));

    // 8 KiB binary pages round-trip exactly.
    let page_bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    c.write(&t, g, WriteBatch::new().put(b("p/2/0"), page_bytes.clone()))
        .await
        .unwrap();
    let got = c.read(&t, vec![b("p/2/0")], None).await.unwrap();
    assert_eq!(got.values, vec![Some(Bytes::from(page_bytes))]);

    let info = c.describe_timeline(&t).await.unwrap();
    assert_eq!(
        (info.generation, info.last_seq, info.parent),
        (g, Seq(4), None)
    );
}

#[tokio::test]
async fn branch_is_copy_on_write() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    let template = tl("template");
    c.create_timeline(&template, None).await.unwrap();
    let g = c.acquire(&template).await.unwrap();
    // 2 MiB of pages: a copy would be plain in the file size.
    let mut batch = WriteBatch::new();
    for i in 0..256 {
        batch = batch.put(b(&format!("p/1/{i}")), vec![i as u8; 8192]);
    }
    c.write(&template, g, batch.put(b("k"), b("template-v1")))
        .await
        .unwrap();

    // The store is a directory of log segments and layer files: measure all of it.
    let store = dir.path().join("pageserver");
    let before = dir_bytes(&store);
    let child = tl("ep-1");
    assert_eq!(
        c.create_timeline(&child, Some((&template, None)))
            .await
            .unwrap(),
        Seq(1)
    );
    let grown = dir_bytes(&store).saturating_sub(before);
    assert!(
        grown < 256 * 1024,
        "creating a branch grew the store by {grown} bytes"
    );
    let info = c.describe_timeline(&child).await.unwrap();
    assert_eq!(info.parent, Some((template.clone(), Seq(1))));
    assert_eq!(info.last_seq, Seq(1));

    // The parent moves on; the child keeps seeing the branch point.
    c.write(
        &template,
        g,
        WriteBatch::new().put(b("k"), b("template-v2")),
    )
    .await
    .unwrap();
    assert_eq!(
        read(&c, "ep-1", &["k"], None).await,
        vec![some("template-v1")]
    );
    let page = c.read(&child, vec![b("p/1/200")], None).await.unwrap();
    assert_eq!(page.values, vec![Some(Bytes::from(vec![200u8; 8192]))]);

    // The child's own writes don't reach the parent.
    let cg = c.acquire(&child).await.unwrap();
    let seq = c
        .write(
            &child,
            cg,
            WriteBatch::new().put(b("k"), b("child")).delete(b("p/1/0")),
        )
        .await
        .unwrap();
    assert_eq!(seq, Seq(2));
    assert_eq!(
        read(&c, "ep-1", &["k", "p/1/0"], None).await,
        vec![some("child"), None]
    );
    assert_eq!(
        read(&c, "template", &["k"], None).await,
        vec![some("template-v2")]
    );
    let parent_page = c.read(&template, vec![b("p/1/0")], None).await.unwrap();
    assert_eq!(parent_page.values, vec![Some(Bytes::from(vec![0u8; 8192]))]);
    let (_, child_keys) = c.scan_all(&child, b"", None, None).await.unwrap();
    assert_eq!(child_keys.len(), 256, "255 inherited pages and k");

    // The parent can't be deleted under its branch; the branch can.
    match c.delete_timeline(&template).await.unwrap_err() {
        RpcError::FailedPrecondition { message } => {
            assert_eq!(
                message,
                "timeline template has branches (ep-1): delete them first"
            );
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    c.delete_timeline(&child).await.unwrap();
    assert!(matches!(
        c.describe_timeline(&child).await.unwrap_err(),
        RpcError::NotFound { .. }
    ));
    assert_eq!(
        read(&c, "template", &["k"], None).await,
        vec![some("template-v2")]
    );
}

#[tokio::test]
async fn stale_generation_cannot_change_the_timeline() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    // Two computes, each with its own connection.
    let first = server.client().await;
    let second = server.client().await;
    let t = tl("ep");
    first.create_timeline(&t, None).await.unwrap();
    let g1 = first.acquire(&t).await.unwrap();
    first
        .write(&t, g1, WriteBatch::new().put(b("page"), b("first")))
        .await
        .unwrap();

    let g2 = second.acquire(&t).await.unwrap();
    assert_eq!(g2, Generation(2));
    let err = first
        .write(
            &t,
            g1,
            WriteBatch::new()
                .put(b("page"), b("late"))
                .put(b("new"), b("x")),
        )
        .await
        .unwrap_err();
    match &err {
        RpcError::StaleGeneration {
            timeline,
            sent,
            current,
        } => {
            assert_eq!(timeline, "ep");
            assert_eq!((*sent, *current), (Generation(1), Generation(2)));
        }
        other => panic!("expected StaleGeneration, got {other:?}"),
    }
    assert_eq!(err.to_string(), "timeline ep: stale generation 1 < 2");
    // Refused at once, not retried.
    assert_eq!(first.retries(), 0);
    assert_eq!(
        read(&first, "ep", &["page", "new"], None).await,
        vec![some("first"), None]
    );
    assert_eq!(first.describe_timeline(&t).await.unwrap().last_seq, Seq(1));

    second
        .write(&t, g2, WriteBatch::new().put(b("page"), b("second")))
        .await
        .unwrap();
    assert_eq!(
        read(&first, "ep", &["page"], None).await,
        vec![some("second")]
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let setup = server.client().await;
    let t = tl("ledger");
    setup.create_timeline(&t, None).await.unwrap();
    let g = setup.acquire(&t).await.unwrap();

    // Four writers, each writing its own numbered keys until the server dies, recording every
    // write the server acknowledged. None starts a write once the kill is under way: its
    // retries could reach another test's page store on the freed port. A write already in
    // flight then fails (or was acknowledged before the kill); before it, nothing may fail.
    let acked = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let (enough_tx, mut enough_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut o = client_options(server.url());
        o.total_timeout = Duration::from_millis(500);
        let c = PageStoreClient::connect(o).await.unwrap();
        let (t, acked, enough_tx) = (t.clone(), acked.clone(), enough_tx.clone());
        let killed = killed.clone();
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0.. {
                if killed.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("w{w}/{i:05}");
                let value = format!("value {w} {i}");
                match c
                    .write(&t, g, WriteBatch::new().put(b(&key), b(&value)))
                    .await
                {
                    Ok(seq) => done.push((key, value, seq)),
                    Err(_) if killed.load(Ordering::SeqCst) => break,
                    Err(e) => panic!("a write failed before the kill: {e}"),
                }
                if acked.fetch_add(1, Ordering::SeqCst) + 1 >= 200 {
                    let _ = enough_tx.send(true);
                }
            }
            done
        }));
    }
    timeout(DEADLINE, enough_rx.wait_for(|e| *e))
        .await
        .unwrap()
        .unwrap();
    // Kill mid-stream: writes are in flight right now.
    killed.store(true, Ordering::SeqCst);
    let status = server.stop(Signal::SIGKILL).await;
    assert_eq!(status.code(), None, "killed by a signal");
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(timeout(DEADLINE, w).await.unwrap().unwrap());
    }
    assert!(
        acknowledged.len() >= 200,
        "{} acknowledged",
        acknowledged.len()
    );

    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    let keys: Vec<Bytes> = acknowledged.iter().map(|(k, _, _)| b(k)).collect();
    let got = c.read(&t, keys, None).await.unwrap();
    for ((key, value, _), got) in acknowledged.iter().zip(&got.values) {
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "key {key} lost");
    }
    let max_seq = acknowledged.iter().map(|(_, _, s)| *s).max().unwrap();
    let info = c.describe_timeline(&t).await.unwrap();
    assert!(info.last_seq >= max_seq, "{info:?} < {max_seq}");
    assert_eq!(info.generation, g);
    // Each acknowledged write is visible exactly from its own seq on.
    let (key, value, seq) = &acknowledged[acknowledged.len() / 2];
    let at = c.read(&t, vec![b(key)], Some(*seq)).await.unwrap();
    assert_eq!(at.values[0].as_deref(), Some(value.as_bytes()));
    let before = c
        .read(&t, vec![b(key)], Some(Seq(seq.0 - 1)))
        .await
        .unwrap();
    assert_eq!(before.values[0], None);
}

#[tokio::test]
async fn client_waits_for_a_restarted_server_and_gives_up_after_its_timeout() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let addr = server.addr;
    let c = server.client().await;
    let t = tl("main");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    server.stop(Signal::SIGKILL).await;

    // A write issued while the server is down keeps retrying...
    let call = {
        let (c, t) = (c.clone(), t.clone());
        tokio::spawn(async move {
            c.write(
                &t,
                g,
                WriteBatch::new().put(b("k"), b("written while down")),
            )
            .await
        })
    };
    timeout(DEADLINE, async {
        while c.retries() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client retries while the server is down");
    assert!(!call.is_finished());

    // ...and succeeds once the server is back on the same port.
    let server = PageServerProcess::start(dir.path(), &addr.to_string(), &[]).await;
    assert_eq!(server.addr, addr);
    let seq = timeout(DEADLINE, call).await.unwrap().unwrap().unwrap();
    assert_eq!(seq, Seq(1));
    assert_eq!(
        read(&c, "main", &["k"], None).await,
        vec![some("written while down")]
    );

    // With the server gone for good, a call fails with Unavailable after its budget.
    server.stop(Signal::SIGTERM).await;
    let mut o = client_options(format!("http://{addr}"));
    o.total_timeout = Duration::from_millis(500);
    let short = PageStoreClient::new(o).unwrap();
    match short.describe_timeline(&t).await.unwrap_err() {
        RpcError::Unavailable { attempts, last, .. } => {
            assert!(attempts > 1, "{attempts} attempts");
            assert!(!last.is_empty());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(short.retries() > 0);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = DataDir::new();
    let server = PageServerProcess::start(dir.path(), "127.0.0.1:0", &[]).await;
    let c = server.client().await;
    let t = tl("t");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    c.write(&t, g, WriteBatch::new().put(b("keep"), b("v")))
        .await
        .unwrap();

    let invalid = |e: RpcError| match e {
        RpcError::InvalidArgument { message } => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let m = invalid(
        c.write(
            &t,
            g,
            WriteBatch::new().put(b("k"), vec![0u8; MAX_VALUE_BYTES + 1]),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        m,
        "the value of key \"k\" is 1048577 bytes: at most 1048576 (MAX_VALUE_BYTES)"
    );
    let m = invalid(
        c.write(
            &t,
            g,
            WriteBatch::new().put(vec![b'k'; MAX_KEY_BYTES + 1], b("v")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(m, "a key of 1025 bytes: at most 1024 (MAX_KEY_BYTES)");
    let m = invalid(
        c.write(&t, g, WriteBatch::new().put(b(""), b("v")))
            .await
            .unwrap_err(),
    );
    assert_eq!(m, "a key must not be empty");
    let m = invalid(
        c.write(&t, g, WriteBatch::new().put(b("d"), b("v")).delete(b("d")))
            .await
            .unwrap_err(),
    );
    assert_eq!(m, "key \"d\" appears more than once in one write");
    let m = invalid(
        c.read(&t, vec![b("keep")], Some(Seq(99)))
            .await
            .unwrap_err(),
    );
    assert_eq!(m, "timeline t: seq 99 is beyond its last seq 1");
    let m = invalid(c.scan(&t, b"", None, None, 10_001).await.unwrap_err());
    assert_eq!(m, "scan limit 10001: at most 10000 (MAX_SCAN_ENTRIES)");

    // A batch over 64 MiB: refused by the client before sending...
    let mib = Bytes::from(vec![7u8; MAX_VALUE_BYTES]);
    let mut batch = WriteBatch::new();
    let mut raw_puts = Vec::new();
    for i in 0..=MAX_BATCH_BYTES / MAX_VALUE_BYTES {
        batch = batch.put(b(&format!("big/{i}")), mib.clone());
        raw_puts.push(proto::Put {
            key: b(&format!("big/{i}")),
            value: mib.clone(),
        });
    }
    let m = invalid(c.write(&t, g, batch).await.unwrap_err());
    assert!(m.ends_with("at most 67108864 (MAX_BATCH_BYTES)"), "{m}");
    // ...and by the server when sent anyway (raw stub), as are malformed timeline ids.
    let mut raw = RawClient::new(
        tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .max_encoding_message_size(usize::MAX);
    let status = raw
        .write(proto::WriteRequest {
            id: "t".into(),
            generation: g.0,
            puts: raw_puts,
            deletes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().ends_with("(MAX_BATCH_BYTES)"),
        "{status:?}"
    );
    for (id, want) in [
        (
            "Main",
            "timeline id \"Main\": only lowercase letters, digits and '-' are allowed (found 'M')",
        ),
        ("", "timeline id \"\": must be 1 to 63 characters"),
        ("-x", "timeline id \"-x\": must not start or end with '-'"),
    ] {
        let status = raw
            .create_timeline(proto::CreateTimelineRequest {
                id: id.into(),
                parent: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), want);
    }
    let status = raw
        .read(proto::ReadRequest {
            id: "../etc".into(),
            keys: vec![b("k")],
            at_seq: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Unknown timelines, duplicate creates, bad parents.
    match c
        .write(&tl("nope"), g, WriteBatch::new().put(b("k"), b("v")))
        .await
        .unwrap_err()
    {
        RpcError::NotFound { message } => assert_eq!(message, "timeline nope does not exist"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        c.acquire(&tl("nope")).await.unwrap_err(),
        RpcError::NotFound { .. }
    ));
    assert!(matches!(
        c.read(&tl("nope"), vec![b("k")], None).await.unwrap_err(),
        RpcError::NotFound { .. }
    ));
    match c.create_timeline(&t, None).await.unwrap_err() {
        RpcError::AlreadyExists { message } => assert_eq!(message, "timeline t already exists"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    match c
        .create_timeline(&tl("b"), Some((&tl("nope"), None)))
        .await
        .unwrap_err()
    {
        RpcError::NotFound { message } => {
            assert_eq!(message, "parent timeline nope does not exist")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let m = invalid(
        c.create_timeline(&tl("b"), Some((&t, Some(Seq(5)))))
            .await
            .unwrap_err(),
    );
    assert_eq!(m, "timeline t: seq 5 is beyond its last seq 1");
    match c
        .write(&t, Generation(7), WriteBatch::new().put(b("k"), b("v")))
        .await
        .unwrap_err()
    {
        RpcError::GenerationNotAcquired { sent, current, .. } => {
            assert_eq!((sent, current), (Generation(7), g));
        }
        other => panic!("expected GenerationNotAcquired, got {other:?}"),
    }

    // None of it was retried, and none of it changed anything.
    assert_eq!(c.retries(), 0);
    let info = c.describe_timeline(&t).await.unwrap();
    assert_eq!((info.generation, info.last_seq), (g, Seq(1)));
    assert_eq!(scan(&c, "t", None).await, pairs(&[("keep", "v")]));
    assert!(matches!(
        c.describe_timeline(&tl("b")).await.unwrap_err(),
        RpcError::NotFound { .. }
    ));
}

#[tokio::test]
async fn tls_when_configured() {
    let dir = DataDir::new();
    // A CA and a server certificate for "localhost", made here.
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test page store CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let cert_file = dir.path().join("ps.crt");
    let key_file = dir.path().join("ps.key");
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();

    let server = PageServerProcess::start(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    let mut o = client_options(format!("https://{}", server.addr));
    o.tls = Some(ClientTls {
        ca_pem: ca_cert.pem().into_bytes(),
        domain: Some("localhost".to_owned()),
        identity: None,
    });
    let c = PageStoreClient::connect(o).await.unwrap();
    let t = tl("secure");
    c.create_timeline(&t, None).await.unwrap();
    let g = c.acquire(&t).await.unwrap();
    c.write(&t, g, WriteBatch::new().put(b("k"), b("over tls")))
        .await
        .unwrap();
    assert_eq!(
        read(&c, "secure", &["k"], None).await,
        vec![some("over tls")]
    );

    // A plaintext client gets nowhere.
    let mut o = client_options(server.url());
    o.total_timeout = Duration::from_millis(500);
    let plain = PageStoreClient::new(o).unwrap();
    assert!(plain.describe_timeline(&t).await.is_err());
}

/// Bytes in the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}
