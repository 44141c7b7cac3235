//! Customer-managed keys end to end: `lakebed up` with the AWS KMS provider against a real
//! `moto_server`, a real compute on pagefs, real clients. The default tenant's CMK is made in
//! moto; the test plays the customer (rotates, moves to a new CMK, disables and enables keys)
//! and checks what Lakebed does: data readable throughout, nothing in the clear in the page
//! store, wakes refused with 57P03 naming the key state, running computes stopped within
//! the check interval, and an audit log that tells the story.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lakebed_keys::AuditLog;
use lakebed_tests::moto::Moto;
use lakebed_tests::stack::Stack;
use lakebed_tests::{DEADLINE, contains_bytes, files_under};
use tokio::time::timeout;

/// A new CMK in the customer's account: `(key id, ARN)`.
async fn new_key(admin: &lakebed_keys::aws_sdk_kms::Client) -> (String, String) {
    let out = admin.create_key().send().await.unwrap();
    let meta = out.key_metadata.unwrap();
    (meta.key_id().to_owned(), meta.arn().unwrap().to_owned())
}

async fn count(stack: &Stack) -> i64 {
    stack
        .client()
        .await
        .query_one("SELECT count(*) FROM secrets", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_rotates_moves_revokes_and_restores_the_key() {
    let moto = Moto::start();
    let admin = moto.admin();
    let (id1, k1) = new_key(&admin).await;
    let (id2, k2) = new_key(&admin).await;
    let endpoint = moto.endpoint();
    let stack = Stack::start_with(&[
        ("LAKEBED_KEYS__PROVIDER", "aws-kms"),
        ("LAKEBED_KEYS__AWS_ENDPOINT_URL", endpoint.as_str()),
        ("LAKEBED_KEYS__DEFAULT_KMS_KEY_ID", k1.as_str()),
        ("LAKEBED_KEYS__CHECK_INTERVAL", "1s"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ])
    .await;

    // Rows with a marker, through the proxy; then a suspend flushes everything.
    let marker = "CUSTOMER-SECRET-5b7c1e";
    stack
        .client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE secrets (n int, s text);
             INSERT INTO secrets SELECT g, '{marker}' FROM generate_series(1, 2000) g;"
        ))
        .await
        .unwrap();
    stack.suspend("main").await;
    let page_store = stack.dir.path().join("pageserver");
    let mut scanned = 0;
    for file in files_under(&page_store) {
        let bytes = std::fs::read(file).unwrap();
        scanned += bytes.len();
        assert!(
            !contains_bytes(&bytes, marker.as_bytes()),
            "plaintext row in the page store"
        );
    }
    assert!(
        scanned > 1 << 20,
        "the page store holds the data: {scanned} bytes"
    );

    let show = |args: &'static [&'static str]| {
        let stack = &stack;
        async move { serde_json::from_str::<serde_json::Value>(&stack.cli(args).await).unwrap() }
    };
    let keys = show(&["keys", "show", "default", "--json"]).await;
    assert_eq!(keys["provider"], "aws-kms");
    assert_eq!(keys["key"]["state"], "Enabled");
    assert_eq!(keys["deks"][0]["version"], 1);
    assert_eq!(keys["deks"][0]["wrapped_by"], k1.as_str());

    // Rotate: no page rewritten (the page store sees no write while the compute is
    // suspended), no downtime, data readable.
    let writes = || async {
        let text = reqwest::get(format!("{}/metrics", stack.up.api_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("lakebed_pagestore_requests_total{") && l.contains("rpc=\"write\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = writes().await;
    let out = stack.cli(&["keys", "rotate", "default"]).await;
    assert!(out.contains("re-wrapped"), "{out}");
    assert_eq!(
        writes().await,
        before,
        "no page store write during the rotation"
    );
    assert!(before > 0.0, "the write counter is there");
    assert_eq!(count(&stack).await, 2000);

    // Move to K2, then disable K1: still readable, wakes work.
    stack
        .cli(&["keys", "set-cmk", "default", "--kms-key-id", &k2])
        .await;
    admin.disable_key().key_id(&id1).send().await.unwrap();
    stack.suspend("main").await;
    assert_eq!(count(&stack).await, 2000);
    let keys = show(&["keys", "show", "default", "--json"]).await;
    assert_eq!(keys["deks"][0]["wrapped_by"], k2.as_str());

    // Disable K2 while the compute runs: it is stopped within the check interval...
    admin.disable_key().key_id(&id2).send().await.unwrap();
    timeout(DEADLINE, async {
        loop {
            let (state, _) = stack.state_and_boots("main").await;
            if state == "suspended" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the compute is stopped after its key was disabled");
    assert!(
        !stack.dir.path().join("endpoints/main/local").exists(),
        "its cache is gone"
    );
    // ...and a new connection is refused with 57P03, naming the key's state.
    let err = stack
        .watched(&stack.config("postgres"))
        .await
        .map(|_| "connected")
        .unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("Disabled"), "{}", db.message());

    // Enabled again: wakes work and every row is there.
    admin.enable_key().key_id(&id2).send().await.unwrap();
    assert_eq!(count(&stack).await, 2000);

    // Rekey: a new DEK version; after the next wake new writes use it and reads are right.
    let out = stack.cli(&["keys", "rekey", "default"]).await;
    assert!(out.contains("DEK version 2"), "{out}");
    stack.suspend("main").await;
    stack
        .client()
        .await
        .batch_execute("INSERT INTO secrets SELECT g, 'after rekey' FROM generate_series(1, 10) g")
        .await
        .unwrap();
    assert_eq!(count(&stack).await, 2010);
    // The compute re-seals the older pages in the background; `keys show` reports it.
    let reseal = timeout(DEADLINE, async {
        loop {
            let keys = show(&["keys", "show", "default", "--json"]).await;
            if let Some(r) = keys["reseal"].as_array().and_then(|r| r.first())
                && r["done"] == true
            {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the re-seal finishes");
    assert_eq!(reseal["endpoint"], "main");
    assert!(reseal["resealed"].as_u64().unwrap() > 100, "{reseal}");
    // Every value of the timeline is now under DEK version 2 (header bytes 1..5).
    let log = stack.up.log_text();
    let addr = log
        .split("page store ready addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let client = lakebed_pageserver_client::PageStoreClient::connect(
        lakebed_pageserver_client::ClientOptions::new(format!("http://{addr}")),
    )
    .await
    .unwrap();
    let timeline = stack.show("main").await["timeline"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, entries) = client
        .scan_all(&timeline.parse().unwrap(), b"", None, None)
        .await
        .unwrap();
    let sealed: Vec<_> = entries
        .iter()
        .filter(|(k, _)| !k.starts_with(b"t/"))
        .collect();
    assert!(sealed.len() > 100);
    for (key, value) in sealed {
        assert_eq!(
            &value[1..5],
            &2u32.to_be_bytes(),
            "{key:?} is not under DEK version 2"
        );
    }
    assert_eq!(count(&stack).await, 2010);

    // The audit log tells the story, without key material.
    let log = AuditLog::read_all(stack.dir.path().join("keys/audit.log")).unwrap();
    let ops: Vec<String> = log
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["operation"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for op in [
        "generate_data_key",
        "unwrap",
        "rotate",
        "set_cmk",
        "revocation_seen",
        "compute_stopped",
        "rekey",
    ] {
        assert!(ops.iter().any(|o| o == op), "no {op} in {ops:?}");
    }
    let stopped = log
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .find(|e| e["operation"] == "compute_stopped")
        .unwrap();
    // The re-seal's completion is audited too (the monitor hands it over within a poll).
    let resealed = timeout(DEADLINE, async {
        loop {
            let log = AuditLog::read_all(stack.dir.path().join("keys/audit.log")).unwrap();
            if let Some(e) = log
                .iter()
                .map(|e| serde_json::to_value(e).unwrap())
                .find(|e| e["operation"] == "rekey" && e["detail"]["reseal"] == "done")
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the re-seal is audited");
    assert_eq!(resealed["detail"]["endpoint"], "main");
    assert_eq!(resealed["detail"]["resealed"], reseal["resealed"]);
    assert_eq!(stopped["tenant"], "default");
    assert_eq!(stopped["key_id"], k2.as_str());

    // And /metrics counts the key operations by outcome.
    let metrics = reqwest::get(format!("{}/metrics", stack.up.api_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("lakebed_kms_operations_total{")
                && l.contains("operation=\"compute_stopped\"")
                && l.contains("outcome=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no compute_stopped count in:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
}
