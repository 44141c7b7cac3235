//! [`KmsError`]: every way a KMS operation can fail.

use std::path::PathBuf;

use crate::KeyState;

/// Why a [`KmsProvider`](crate::KmsProvider) call failed.
///
/// Messages never contain key material: not the DEK, not the wrapped bytes, not the local
/// master key. They may contain key ids, ARNs, file paths and the text of KMS's own error.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The CMK exists but is not in a state that allows the operation (disabled, pending
    /// deletion, …). The customer must re-enable it; retrying does not help.
    #[error("KMS key {key_id} is not usable: its state is {state}")]
    KeyNotUsable {
        /// The key as KMS names it (an ARN for AWS KMS).
        key_id: String,
        /// Its state at the time of the call.
        state: KeyState,
    },
    /// No such key or alias (AWS `NotFoundException`, or a key id the local provider does
    /// not know).
    #[error("KMS key {key_id} not found")]
    NotFound {
        /// The key id, ARN or alias that was asked for.
        key_id: String,
    },
    /// KMS refused to unwrap: the ciphertext is corrupt, was wrapped under another key, or
    /// the [`EncryptionContext`](crate::EncryptionContext) differs from the one used to wrap.
    /// (AWS `InvalidCiphertextException` and `IncorrectKeyException`; AWS does not say which.)
    #[error(
        "KMS refused the wrapped key: ciphertext invalid, or the key or encryption context does not match"
    )]
    InvalidCiphertext,
    /// The credentials were rejected or lack permission for the operation or key (AWS
    /// `AccessDeniedException`, `UnrecognizedClientException`, expired tokens, …). Holds
    /// KMS's message, which names the action and resource.
    #[error("KMS access denied: {0}")]
    AccessDenied(String),
    /// KMS could not be reached or did not answer in time, or reported an internal or
    /// throttling error. Retrying later may succeed.
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The provider or server does not offer the operation for this key.
    #[error("not supported by this KMS: {0}")]
    Unsupported(String),
    /// Any other failure; the text says what KMS or the SDK reported.
    #[error("KMS error: {0}")]
    Other(String),
    /// The local provider's master key file is missing, unreadable, malformed or too
    /// widely readable.
    #[error("local KMS key file {}: {reason}", path.display())]
    LocalKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl KmsError {
    /// Whether trying the same call again later may succeed ([`KmsError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the error means the customer has withdrawn the key: disabled or scheduled
    /// for deletion ([`KmsError::KeyNotUsable`]), deleted ([`KmsError::NotFound`]), or
    /// access to it revoked ([`KmsError::AccessDenied`]). Computes of the tenant should stop.
    pub fn is_revocation(&self) -> bool {
        matches!(
            self,
            Self::KeyNotUsable { .. } | Self::NotFound { .. } | Self::AccessDenied(_)
        )
    }
}
