//! The [`KmsProvider`] trait, implemented by [`AwsKms`](crate::AwsKms) and
//! [`LocalKms`](crate::LocalKms).

use std::future::Future;
use std::pin::Pin;

use crate::{Dek, EncryptionContext, KeyInfo, KmsError, RotateOutcome, WrappedDek};

/// The future every [`KmsProvider`] method returns: boxed, `Send`, borrowing its arguments
/// for `'a`.
///
/// Boxed (rather than `async fn` in the trait) so the trait stays dyn-compatible and callers
/// can hold an `Arc<dyn KmsProvider>`; one allocation per KMS call is nothing next to a
/// network round trip. Written by hand instead of with the `async-trait` macro, which would
/// expand to the same type.
pub type KmsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KmsError>> + Send + 'a>>;

/// A key management service holding customer master keys (CMKs) that wrap and unwrap data
/// encryption keys (DEKs) — envelope encryption.
///
/// Key ids are whatever the provider accepts: for AWS KMS a key id, key ARN, alias name
/// (`alias/…`) or alias ARN; for the local provider `local` or `alias/local`.
///
/// # Cancel safety
///
/// Every method is cancel safe in the sense that dropping the future leaves no local state
/// behind. A request already sent to KMS may still complete there; all of them are
/// idempotent except [`rotate_key_material`](Self::rotate_key_material), which may then have
/// rotated once more.
pub trait KmsProvider: Send + Sync {
    /// The provider's name for logs and audit records: `"aws-kms"` or `"local"`.
    fn name(&self) -> &str;

    /// Makes a fresh 32-byte DEK and wraps it under `key_id`, bound to `ctx`.
    ///
    /// AWS: `DescribeKey` (refused unless `Enabled`), then `GenerateDataKey` with
    /// `KeySpec=AES_256`. The returned [`WrappedDek::key_id`] is the CMK's ARN.
    ///
    /// # Errors
    ///
    /// [`KmsError::KeyNotUsable`], [`KmsError::NotFound`], [`KmsError::AccessDenied`],
    /// [`KmsError::Unavailable`], [`KmsError::Other`].
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, (Dek, WrappedDek)>;

    /// Unwraps `wrapped` with the CMK named in [`WrappedDek::key_id`], checking `ctx`.
    ///
    /// AWS: `DescribeKey` (refused unless `Enabled`), then `Decrypt` with `KeyId` set, so a
    /// ciphertext from another key is refused rather than decrypted with whatever key it
    /// names.
    ///
    /// # Errors
    ///
    /// [`KmsError::InvalidCiphertext`] for a wrong context, wrong key or corrupt bytes;
    /// [`KmsError::KeyNotUsable`], [`KmsError::NotFound`], [`KmsError::AccessDenied`],
    /// [`KmsError::Unavailable`], [`KmsError::Other`].
    fn decrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Dek>;

    /// Re-wraps the DEK inside `wrapped` under `destination_key_id`, with the same `ctx`,
    /// without the plaintext DEK leaving KMS. Used to move a tenant to a new CMK.
    ///
    /// AWS: `DescribeKey` of both keys (each refused unless `Enabled`), then `ReEncrypt`
    /// with `SourceKeyId`, `SourceEncryptionContext` = `DestinationEncryptionContext` = `ctx`.
    ///
    /// # Errors
    ///
    /// As [`decrypt`](Self::decrypt), for either key.
    fn re_encrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
        destination_key_id: &'a str,
    ) -> KmsFuture<'a, WrappedDek>;

    /// Looks up a CMK's canonical id, state and rotation setting.
    ///
    /// AWS: `DescribeKey`, then `GetKeyRotationStatus` best effort (its failure gives
    /// `rotation_enabled: None`, not an error).
    ///
    /// # Errors
    ///
    /// [`KmsError::NotFound`], [`KmsError::AccessDenied`], [`KmsError::Unavailable`],
    /// [`KmsError::Other`]. A disabled key is not an error here: see [`KeyInfo::state`].
    fn describe_key<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, KeyInfo>;

    /// Gives the CMK new key material, keeping its id; DEKs wrapped earlier still unwrap.
    ///
    /// AWS: `DescribeKey` (refused unless `Enabled`), then `RotateKeyOnDemand`; if the
    /// server does not offer that operation, `EnableKeyRotation` instead. The outcome says
    /// which happened.
    ///
    /// # Errors
    ///
    /// [`KmsError::Unsupported`] when neither is possible (always for the local provider;
    /// on AWS for keys with imported material, in custom key stores, or asymmetric);
    /// [`KmsError::KeyNotUsable`], [`KmsError::NotFound`], [`KmsError::AccessDenied`],
    /// [`KmsError::Unavailable`], [`KmsError::Other`] (e.g. the AWS limit of on-demand
    /// rotations per key was reached).
    fn rotate_key_material<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, RotateOutcome>;
}
