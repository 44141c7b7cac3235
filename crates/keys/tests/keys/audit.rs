//! [`AuditLog`]: real file, real DEKs from the local provider.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use base64::Engine as _;
use lakebed_keys::{
    AuditError, AuditEvent, AuditLog, AuditOperation, AuditOutcome, EncryptionContext, KeyState,
    KmsError, KmsProvider, LocalKms,
};
use serde_json::{Value, json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn lines_are_json_with_every_field_and_no_key_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(dir.path().join("master.key")).unwrap();
    let ctx = EncryptionContext::for_tenant("acme", "pages");
    let (dek, wrapped) = kms.generate_data_key("local", &ctx).await.unwrap();
    let unwrapped = kms.decrypt(&wrapped, &ctx).await.unwrap();

    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let refused = KmsError::KeyNotUsable {
        key_id: "arn:aws:kms:us-east-1:1:key/k".into(),
        state: KeyState::Disabled,
    };
    let events = vec![
        AuditEvent::ok("acme", &wrapped.key_id, AuditOperation::GenerateDataKey),
        AuditEvent::ok("acme", &wrapped.key_id, AuditOperation::Unwrap),
        AuditEvent::error(
            "acme",
            "arn:aws:kms:us-east-1:1:key/k",
            AuditOperation::Unwrap,
            &refused,
        ),
        AuditEvent::ok("acme", "local", AuditOperation::Rekey)
            .with_detail(json!({"pages_done": 100, "pages_total": 4096})),
        AuditEvent::ok("acme", "local", AuditOperation::RevocationSeen),
        AuditEvent::ok("acme", "local", AuditOperation::ComputeStopped),
        AuditEvent::ok("acme", "local", AuditOperation::SetCmk),
        AuditEvent::ok("acme", "local", AuditOperation::Rotate),
    ];
    for e in &events {
        log.record(e).unwrap();
    }
    drop(log);

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), events.len());
    assert!(text.ends_with('\n'));
    let ops: Vec<String> = lines
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "detail",
                    "error",
                    "key_id",
                    "operation",
                    "outcome",
                    "tenant",
                    "time"
                ]
            );
            let time = obj["time"].as_str().unwrap();
            assert!(time.ends_with('Z'), "{time}");
            humantime::parse_rfc3339(time).unwrap();
            assert_eq!(obj["tenant"], "acme");
            obj["operation"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        ops,
        [
            "generate_data_key",
            "unwrap",
            "unwrap",
            "rekey",
            "revocation_seen",
            "compute_stopped",
            "set_cmk",
            "rotate"
        ]
    );

    let failed: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(failed["outcome"], "error");
    assert_eq!(
        failed["error"],
        "KMS key arn:aws:kms:us-east-1:1:key/k is not usable: its state is Disabled"
    );
    assert_eq!(failed["detail"], Value::Null);
    let ok: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (ok["outcome"].clone(), ok["error"].clone()),
        (json!("ok"), Value::Null)
    );
    let rekey: Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(
        rekey["detail"],
        json!({"pages_done": 100, "pages_total": 4096})
    );

    assert_eq!(AuditLog::read_all(&path).unwrap(), events);

    // No form of the DEK appears anywhere in the file.
    assert_eq!(unwrapped.as_bytes(), dek.as_bytes());
    let b = dek.as_bytes();
    for form in [
        hex(b),
        hex(b).to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
    ] {
        assert!(
            !text.contains(&form),
            "DEK found in the audit log as {form}"
        );
    }
    assert!(
        !fs::read(&path).unwrap().windows(32).any(|w| w == b),
        "raw DEK bytes in the audit log"
    );
}

#[test]
fn concurrent_records_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let e = AuditEvent::ok(&format!("tenant-{t}"), "local", AuditOperation::Rekey)
                        .with_detail(json!({"i": i, "pad": "x".repeat(500)}));
                    log.record(&e).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A second handle appends after the first's lines.
    AuditLog::open(&path)
        .unwrap()
        .record(&AuditEvent::ok("last", "local", AuditOperation::SetCmk))
        .unwrap();

    let events = AuditLog::read_all(&path).unwrap();
    assert_eq!(events.len(), 201);
    for t in 0..8 {
        let mine: Vec<i64> = events
            .iter()
            .filter(|e| e.tenant == format!("tenant-{t}"))
            .map(|e| e.detail.as_ref().unwrap()["i"].as_i64().unwrap())
            .collect();
        assert_eq!(
            mine,
            (0..25).collect::<Vec<i64>>(),
            "tenant-{t}'s records out of order or missing"
        );
    }
    assert_eq!(events[200].tenant, "last");
    assert_eq!(events[200].outcome, AuditOutcome::Ok);
}

#[test]
fn a_corrupt_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditLog::open(&path)
        .unwrap()
        .record(&AuditEvent::ok("acme", "local", AuditOperation::Unwrap))
        .unwrap();
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("{\"time\": \"trunc");
    fs::write(&path, text).unwrap();
    match AuditLog::read_all(&path).unwrap_err() {
        AuditError::Parse { line, path: p, .. } => {
            assert_eq!(line, 2);
            assert_eq!(p, path);
        }
        other => panic!("expected Parse, got {other:?}"),
    }
}
