//! Customer-managed keys for Lakebed: KMS providers, data keys, and the key audit log.
//!
//! Each tenant's pages are encrypted under a data encryption key ([`Dek`], 32 bytes,
//! AES-256). The catalog stores the DEK only wrapped ([`WrappedDek`]) by the tenant's
//! customer master key (CMK), which never leaves the customer's KMS. Starting a compute
//! unwraps the DEK through a [`KmsProvider`]; when the customer disables the CMK, the
//! unwrap (and the periodic [`KmsProvider::describe_key`] check) fails with
//! [`KmsError::KeyNotUsable`], and the tenant's computes stop. Every wrap is bound to an
//! [`EncryptionContext`] (tenant and purpose), so a wrapped DEK can not be replayed for
//! another tenant.
//!
//! Providers:
//! - [`AwsKms`]: AWS KMS (`GenerateDataKey`, `Decrypt`, `ReEncrypt`, `DescribeKey`,
//!   `GetKeyRotationStatus`, `RotateKeyOnDemand`, `EnableKeyRotation`). Also talks to
//!   `moto_server`, which the tests use.
//! - [`LocalKms`]: a master key in a local file, for development only.
//!
//! Hold providers as `Arc<dyn KmsProvider>`: the trait is dyn-compatible (its methods
//! return a boxed [`KmsFuture`]).
//!
//! [`AuditLog`] records each key operation as one fsynced JSON line.
//!
//! # Why these libraries
//!
//! - `aws-sdk-kms` + `aws-config`: AWS's own SDK. It implements SigV4, the standard
//!   credential chain (env, profiles, web identity, ECS, instance metadata), endpoint
//!   overrides (`AWS_ENDPOINT_URL_KMS`), retries and timeouts, which a hand-written client
//!   would have to redo. Default features are off: the SDK's `rustls` feature brings the
//!   legacy hyper 0.14 client on `ring`; `default-https-client` uses hyper 1 and rustls
//!   with aws-lc-rs, the TLS stack the rest of the workspace already uses, so neither
//!   `ring` nor OpenSSL is linked. `sso` is off to avoid two more SDK crates.
//! - `aws-lc-rs`: AES-256-GCM and the CSPRNG for the local provider. Already in the
//!   workspace (rustls's crypto provider), FIPS-validated upstream, and its
//!   `RandomizedNonceKey` picks a fresh random nonce per seal, so no nonce handling here.
//! - `zeroize`: DEK and master-key bytes are wiped on drop ([`zeroize::Zeroizing`]).
//!   Buffers inside the AWS SDK (the HTTP response, its base64 decoding) are not under our
//!   control and are not wiped.
//! - `thiserror` for [`KmsError`] and [`AuditError`], `serde`/`serde_json` for the audit
//!   lines, `humantime` for their RFC 3339 timestamps, `tracing` for the few log events —
//!   all already workspace dependencies.
//!
//! No `async-trait`: the boxed-future signature it would generate is written out once as
//! [`KmsFuture`].

mod audit;
mod aws;
mod error;
mod local;
mod provider;
mod types;

pub use audit::{AuditError, AuditEvent, AuditLog, AuditOperation, AuditOutcome};
pub use aws::{ATTEMPT_TIMEOUT, AwsKms, CONNECT_TIMEOUT, OPERATION_TIMEOUT, default_timeouts};
pub use error::KmsError;
pub use local::{
    DEVELOPMENT_ONLY_WARNING, LOCAL_KEY_ALIAS, LOCAL_KEY_ID, LocalKms, MASTER_KEY_LEN,
};
pub use provider::{KmsFuture, KmsProvider};
pub use types::{
    CONTEXT_PURPOSE, CONTEXT_TENANT, DEK_LEN, Dek, EncryptionContext, KeyInfo, KeyState,
    RotateOutcome, WrappedDek,
};

/// Re-exported so callers can build an [`aws_config::SdkConfig`] for [`AwsKms::with_config`]
/// and call the SDK directly (e.g. tests creating keys) with the same versions.
pub use aws_config;
/// See [`aws_config`].
pub use aws_sdk_kms;
