//! [`AwsKms`] against `moto_server`.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use lakebed_keys::aws_sdk_kms::Client;
use lakebed_keys::{
    AwsKms, EncryptionContext, KeyState, KmsError, KmsProvider, RotateOutcome, WrappedDek,
};

use crate::moto::{Moto, sdk_config_for};

/// Creates a symmetric encryption key (what the customer does in their account); returns
/// `(key id, ARN)`.
async fn create_key(admin: &Client) -> (String, String) {
    let out = admin
        .create_key()
        .description("lakebed-keys test")
        .send()
        .await
        .unwrap();
    let meta = out.key_metadata.unwrap();
    (meta.key_id().to_owned(), meta.arn().unwrap().to_owned())
}

fn ctx() -> EncryptionContext {
    EncryptionContext::for_tenant("acme", "pages")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn assert_not_usable(err: KmsError, arn: &str, expected: KeyState) {
    match err {
        KmsError::KeyNotUsable { key_id, state } => {
            assert_eq!(key_id, arn);
            assert_eq!(state, expected);
        }
        other => panic!("expected KeyNotUsable({expected}), got {other:?}"),
    }
}

#[tokio::test]
async fn generate_then_decrypt_gives_the_same_dek() {
    let moto = Moto::start();
    let (id, arn) = create_key(&moto.admin()).await;
    let kms = moto.provider();
    assert_eq!(kms.name(), "aws-kms");

    let (dek, wrapped) = kms.generate_data_key(&id, &ctx()).await.unwrap();
    assert_eq!(wrapped.key_id, arn, "the wrapped DEK names the CMK by ARN");
    assert!(
        !contains(&wrapped.ciphertext, dek.as_bytes()),
        "the wrapped bytes contain the DEK"
    );
    assert_ne!(dek.as_bytes(), &[0u8; 32]);

    let again = kms.decrypt(&wrapped, &ctx()).await.unwrap();
    assert_eq!(again.as_bytes(), dek.as_bytes());

    let (other, other_wrapped) = kms.generate_data_key(&id, &ctx()).await.unwrap();
    assert_ne!(
        other.as_bytes(),
        dek.as_bytes(),
        "each call makes a fresh DEK"
    );
    assert_ne!(other_wrapped.ciphertext, wrapped.ciphertext);
}

#[tokio::test]
async fn wrong_encryption_context_is_refused() {
    let moto = Moto::start();
    let (id, _) = create_key(&moto.admin()).await;
    let kms = moto.provider();
    let (_, wrapped) = kms.generate_data_key(&id, &ctx()).await.unwrap();

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
    // Corrupt bytes are refused the same way.
    let mut corrupt = wrapped.clone();
    let last = corrupt.ciphertext.len() - 1;
    corrupt.ciphertext[last] ^= 1;
    let err = kms.decrypt(&corrupt, &ctx()).await.unwrap_err();
    assert!(matches!(err, KmsError::InvalidCiphertext), "got {err:?}");
}

#[tokio::test]
async fn re_encrypt_moves_the_dek_to_a_second_key() {
    let moto = Moto::start();
    let admin = moto.admin();
    let (id1, arn1) = create_key(&admin).await;
    let (id2, arn2) = create_key(&admin).await;
    let kms = moto.provider();

    let (dek, old) = kms.generate_data_key(&id1, &ctx()).await.unwrap();
    let err = kms
        .re_encrypt(
            &old,
            &EncryptionContext::for_tenant("globex", "pages"),
            &id2,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::InvalidCiphertext), "got {err:?}");

    let new = kms.re_encrypt(&old, &ctx(), &id2).await.unwrap();
    assert_eq!(new.key_id, arn2);
    assert_ne!(new.ciphertext, old.ciphertext);
    assert!(!contains(&new.ciphertext, dek.as_bytes()));
    assert_eq!(
        kms.decrypt(&new, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );

    // The customer disables the old key: the moved DEK still unwraps, the old wrapping not.
    admin.disable_key().key_id(&id1).send().await.unwrap();
    assert_eq!(
        kms.decrypt(&new, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );
    assert_not_usable(
        kms.decrypt(&old, &ctx()).await.unwrap_err(),
        &arn1,
        KeyState::Disabled,
    );
    assert_not_usable(
        kms.re_encrypt(&old, &ctx(), &id2).await.unwrap_err(),
        &arn1,
        KeyState::Disabled,
    );
    // Nor can anything be moved onto a disabled key.
    assert_not_usable(
        kms.re_encrypt(&new, &ctx(), &id1).await.unwrap_err(),
        &arn1,
        KeyState::Disabled,
    );
}

#[tokio::test]
async fn disabled_key_is_refused_until_enabled_and_deletion_is_pending() {
    let moto = Moto::start();
    let admin = moto.admin();
    let (id, arn) = create_key(&admin).await;
    let kms = moto.provider();
    let (dek, wrapped) = kms.generate_data_key(&id, &ctx()).await.unwrap();

    let info = kms.describe_key(&id).await.unwrap();
    assert_eq!(info.key_id, arn);
    assert_eq!(info.state, KeyState::Enabled);
    assert_eq!(info.rotation_enabled, Some(false));

    admin.disable_key().key_id(&id).send().await.unwrap();
    assert_eq!(
        kms.describe_key(&id).await.unwrap().state,
        KeyState::Disabled
    );
    let err = kms.generate_data_key(&id, &ctx()).await.unwrap_err();
    assert!(err.is_revocation() && !err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!("KMS key {arn} is not usable: its state is Disabled")
    );
    assert_not_usable(err, &arn, KeyState::Disabled);
    assert_not_usable(
        kms.decrypt(&wrapped, &ctx()).await.unwrap_err(),
        &arn,
        KeyState::Disabled,
    );
    assert_not_usable(
        kms.rotate_key_material(&id).await.unwrap_err(),
        &arn,
        KeyState::Disabled,
    );

    admin.enable_key().key_id(&id).send().await.unwrap();
    assert_eq!(
        kms.describe_key(&id).await.unwrap().state,
        KeyState::Enabled
    );
    assert_eq!(
        kms.decrypt(&wrapped, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );
    kms.generate_data_key(&id, &ctx()).await.unwrap();

    admin
        .schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(
        kms.describe_key(&id).await.unwrap().state,
        KeyState::PendingDeletion
    );
    assert_not_usable(
        kms.decrypt(&wrapped, &ctx()).await.unwrap_err(),
        &arn,
        KeyState::PendingDeletion,
    );
    assert_not_usable(
        kms.generate_data_key(&id, &ctx()).await.unwrap_err(),
        &arn,
        KeyState::PendingDeletion,
    );
}

#[tokio::test]
async fn alias_works_as_key_id() {
    let moto = Moto::start();
    let admin = moto.admin();
    let (id, arn) = create_key(&admin).await;
    admin
        .create_alias()
        .alias_name("alias/lakebed-acme")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    let kms = moto.provider();

    let info = kms.describe_key("alias/lakebed-acme").await.unwrap();
    assert_eq!(
        info.key_id, arn,
        "describe through an alias gives the key's ARN"
    );
    assert_eq!(info.state, KeyState::Enabled);

    let (dek, wrapped) = kms
        .generate_data_key("alias/lakebed-acme", &ctx())
        .await
        .unwrap();
    assert_eq!(
        wrapped.key_id, arn,
        "the wrapped DEK names the key, not the alias"
    );
    assert_eq!(
        kms.decrypt(&wrapped, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );
    // The alias also works as a destination, and by its ARN.
    let alias_arn = arn.replace(&format!("key/{id}"), "alias/lakebed-acme");
    let moved = kms.re_encrypt(&wrapped, &ctx(), &alias_arn).await.unwrap();
    assert_eq!(moved.key_id, arn);
    assert_eq!(
        kms.decrypt(&moved, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );
}

#[tokio::test]
async fn unknown_keys_are_not_found() {
    let moto = Moto::start();
    let kms = moto.provider();
    let missing = "11111111-2222-3333-4444-555555555555";
    match kms.describe_key(missing).await.unwrap_err() {
        KmsError::NotFound { key_id } => assert_eq!(key_id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match kms
        .generate_data_key("alias/nothing-here", &ctx())
        .await
        .unwrap_err()
    {
        KmsError::NotFound { key_id } => assert_eq!(key_id, "alias/nothing-here"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let stale = WrappedDek {
        ciphertext: vec![1; 64],
        key_id: missing.to_owned(),
    };
    assert!(matches!(
        kms.decrypt(&stale, &ctx()).await.unwrap_err(),
        KmsError::NotFound { .. }
    ));
}

#[tokio::test]
async fn rotate_key_material_rotates_on_demand_on_moto() {
    let moto = Moto::start();
    let admin = moto.admin();
    let (id, _) = create_key(&admin).await;
    let kms = moto.provider();
    let (dek, wrapped) = kms.generate_data_key(&id, &ctx()).await.unwrap();

    // moto 5.2.1 implements RotateKeyOnDemand (it records the rotation; it does not make
    // new key material).
    assert_eq!(
        kms.rotate_key_material(&id).await.unwrap(),
        RotateOutcome::RotatedOnDemand
    );
    let rotations = admin.list_key_rotations().key_id(&id).send().await.unwrap();
    let rotations = rotations.rotations.unwrap_or_default();
    assert_eq!(rotations.len(), 1);
    assert_eq!(
        rotations[0].rotation_type().map(|t| t.as_str()),
        Some("ON_DEMAND")
    );
    // DEKs wrapped before the rotation still unwrap.
    assert_eq!(
        kms.decrypt(&wrapped, &ctx()).await.unwrap().as_bytes(),
        dek.as_bytes()
    );
}

/// A KMS that accepts connections and never answers fails the call within the operation
/// timeout, as `Unavailable`, instead of hanging a wake.
#[tokio::test]
async fn silent_kms_times_out_as_unavailable() {
    // The kernel completes connections into the listen backlog; nobody ever reads them.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let kms = AwsKms::with_config(&sdk_config_for(&format!(
        "http://{}",
        silent.local_addr().unwrap()
    )));
    let started = Instant::now();
    let err = kms.describe_key("alias/anything").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, KmsError::Unavailable(_)) && err.is_retryable(),
        "got {err:?}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "gave up after {took:?}, before any timeout"
    );
    assert!(
        took < lakebed_keys::OPERATION_TIMEOUT + Duration::from_secs(2),
        "took {took:?}"
    );
}

/// Nothing listening: fails fast as `Unavailable`.
#[tokio::test]
async fn refused_connection_is_unavailable() {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kms = AwsKms::with_config(&sdk_config_for(&format!("http://127.0.0.1:{port}")));
    let err = kms
        .decrypt(
            &WrappedDek {
                ciphertext: vec![1; 8],
                key_id: "alias/x".into(),
            },
            &ctx(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Unavailable(_)), "got {err:?}");
}

/// `AwsKms::from_env` reads the standard AWS variables (credentials, `AWS_REGION`,
/// `AWS_ENDPOINT_URL_KMS`), the configured override wins over them, and a missing region
/// is an error at construction. Runs [`from_env_child`] in a child process of this test
/// binary, since tests in this process share one environment and run in parallel.
#[tokio::test]
async fn from_env_reads_the_standard_environment() {
    let moto = Moto::start();
    let (id, arn) = create_key(&moto.admin()).await;
    for (mode, region) in [("from_env", Some("us-east-1")), ("no_region", None)] {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "aws::from_env_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LAKEBED_KEYS_CHILD", mode)
        .env("LAKEBED_KEYS_CHILD_KEY", &id)
        .env("LAKEBED_KEYS_CHILD_ARN", &arn)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL_KMS", moto.endpoint())
        .env("AWS_CONFIG_FILE", "/nonexistent/lakebed-keys-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/lakebed-keys-test/credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_SESSION_TOKEN");
        match region {
            Some(r) => cmd.env("AWS_REGION", r),
            None => cmd.env_remove("AWS_REGION"),
        };
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child {mode} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The child half of [`from_env_reads_the_standard_environment`]; does nothing unless
/// `LAKEBED_KEYS_CHILD` is set.
#[tokio::test]
async fn from_env_child() {
    let Ok(mode) = std::env::var("LAKEBED_KEYS_CHILD") else {
        return;
    };
    match mode.as_str() {
        "from_env" => {
            let id = std::env::var("LAKEBED_KEYS_CHILD_KEY").unwrap();
            let arn = std::env::var("LAKEBED_KEYS_CHILD_ARN").unwrap();
            let kms = AwsKms::from_env(None).await.unwrap();
            let info = kms.describe_key(&id).await.unwrap();
            assert_eq!((info.key_id, info.state), (arn, KeyState::Enabled));
            // The override wins over AWS_ENDPOINT_URL_KMS: nothing listens on port 1.
            let kms = AwsKms::from_env(Some("http://127.0.0.1:1".into()))
                .await
                .unwrap();
            let err = kms.describe_key(&id).await.unwrap_err();
            assert!(matches!(err, KmsError::Unavailable(_)), "got {err:?}");
        }
        "no_region" => match AwsKms::from_env(None).await {
            Err(KmsError::Other(m)) => assert!(m.contains("no AWS region"), "{m}"),
            other => panic!("expected a missing-region error, got {other:?}"),
        },
        other => panic!("unknown child mode {other}"),
    }
}
