//! [`LocalKms`] with real key files.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use lakebed_keys::{EncryptionContext, KeyState, KmsError, KmsProvider, LocalKms, WrappedDek};

fn ctx() -> EncryptionContext {
    EncryptionContext::for_tenant("acme", "pages")
}

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[track_caller]
fn expect_key_file_error(result: Result<LocalKms, KmsError>, path: &std::path::Path) -> String {
    match result {
        Err(KmsError::LocalKeyFile { path: p, reason }) => {
            assert_eq!(p, path);
            let message = KmsError::LocalKeyFile {
                path: p,
                reason: reason.clone(),
            }
            .to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        }
        other => panic!("expected LocalKeyFile, got {other:?}"),
    }
}

#[tokio::test]
async fn creates_a_0600_key_file_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/master.key");
    let kms = LocalKms::open(&path).unwrap();
    assert_eq!(kms.name(), "local");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let master = fs::read(&path).unwrap();
    assert_eq!(master.len(), 32);
    assert_ne!(master, vec![0u8; 32]);
    // No temporary file left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    let (dek, wrapped) = kms.generate_data_key("local", &ctx()).await.unwrap();
    assert_eq!(wrapped.key_id, "local");
    assert_eq!(wrapped.ciphertext.len(), 61);
    assert_eq!(wrapped.ciphertext[0], 1, "format version");
    assert!(!wrapped.ciphertext.windows(32).any(|w| w == dek.as_bytes()));
    assert_eq!(
        kms.decrypt(&wrapped, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );

    // Reopening uses the same master key (the file is not replaced).
    let reopened = LocalKms::open(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), master);
    assert_eq!(
        reopened.decrypt(&wrapped, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );

    // The alias works as well; re-encrypting gives a new wrapping of the same DEK.
    let (_, by_alias) = kms.generate_data_key("alias/local", &ctx()).await.unwrap();
    assert_eq!(by_alias.key_id, "local");
    let moved = kms
        .re_encrypt(&wrapped, &ctx(), "alias/local")
        .await
        .unwrap();
    assert_ne!(moved.ciphertext, wrapped.ciphertext, "fresh nonce");
    assert_eq!(
        kms.decrypt(&moved, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );

    let info = kms.describe_key("alias/local").await.unwrap();
    assert_eq!(
        (info.key_id.as_str(), info.state, info.rotation_enabled),
        ("local", KeyState::Enabled, Some(false))
    );
    assert!(matches!(
        kms.rotate_key_material("local").await.unwrap_err(),
        KmsError::Unsupported(_)
    ));
    match kms
        .generate_data_key("alias/other", &ctx())
        .await
        .unwrap_err()
    {
        KmsError::NotFound { key_id } => assert_eq!(key_id, "alias/other"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_context_tampering_and_other_master_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(dir.path().join("a.key")).unwrap();
    let (_, wrapped) = kms.generate_data_key("local", &ctx()).await.unwrap();

    for wrong in [
        EncryptionContext::for_tenant("globex", "pages"),
        EncryptionContext::for_tenant("acme", "scratch"),
        EncryptionContext::new(),
    ] {
        let err = kms.decrypt(&wrapped, &wrong).await.unwrap_err();
        assert!(
            matches!(err, KmsError::InvalidCiphertext),
            "context {wrong:?}: got {err:?}"
        );
    }
    for i in [0, 5, 20, 60] {
        let mut bad = wrapped.clone();
        bad.ciphertext[i] ^= 0x80;
        let err = kms.decrypt(&bad, &ctx()).await.unwrap_err();
        assert!(
            matches!(err, KmsError::InvalidCiphertext),
            "byte {i}: got {err:?}"
        );
    }
    let mut short = wrapped.clone();
    short.ciphertext.truncate(60);
    assert!(matches!(
        kms.decrypt(&short, &ctx()).await.unwrap_err(),
        KmsError::InvalidCiphertext
    ));
    let renamed = WrappedDek {
        key_id: "alias/other".into(),
        ..wrapped.clone()
    };
    assert!(matches!(
        kms.decrypt(&renamed, &ctx()).await.unwrap_err(),
        KmsError::NotFound { .. }
    ));

    let other = LocalKms::open(dir.path().join("b.key")).unwrap();
    assert!(matches!(
        other.decrypt(&wrapped, &ctx()).await.unwrap_err(),
        KmsError::InvalidCiphertext
    ));
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    drop(LocalKms::open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let message = expect_key_file_error(LocalKms::open(&path), &path);
    assert!(message.contains("mode 0644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let message = expect_key_file_error(LocalKms::open(&path), &path);
    assert!(message.contains("mode 0640"), "{message}");

    // 0400 is fine: stricter than 0600.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    LocalKms::open(&path).unwrap();
}

#[test]
fn key_file_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    drop(LocalKms::open(&path).unwrap());
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..16]).unwrap();
    let message = expect_key_file_error(LocalKms::open(&path), &path);
    assert!(
        message.contains("size is 16 bytes, expected 32"),
        "{message}"
    );

    fs::write(&path, b"").unwrap();
    let message = expect_key_file_error(LocalKms::open(&path), &path);
    assert!(message.contains("size is 0 bytes"), "{message}");
    // The refused file is left alone, not replaced by a new key.
    assert_eq!(fs::read(&path).unwrap(), b"");

    let dir_path = dir.path().join("a-directory");
    fs::create_dir(&dir_path).unwrap();
    let message = expect_key_file_error(LocalKms::open(&dir_path), &dir_path);
    assert!(message.contains("not a regular file"), "{message}");
}

#[test]
fn concurrent_opens_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                LocalKms::open(&path).unwrap();
                fs::read(&path).unwrap()
            })
        })
        .collect();
    let keys: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(keys.iter().all(|k| k == &keys[0] && k.len() == 32));
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary files left behind"
    );
}
