//! Values passed to and returned by a [`KmsProvider`](crate::KmsProvider): encryption
//! context, data keys (plain and wrapped), key state and key information.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Length of a [`Dek`] in bytes: 32 (AES-256).
pub const DEK_LEN: usize = 32;

/// Key of the tenant entry in [`EncryptionContext::for_tenant`].
pub const CONTEXT_TENANT: &str = "lakebed:tenant";
/// Key of the purpose entry in [`EncryptionContext::for_tenant`].
pub const CONTEXT_PURPOSE: &str = "lakebed:purpose";

/// Non-secret key/value pairs bound to a wrapped key: KMS refuses to unwrap unless the same
/// pairs are given again (AWS KMS "encryption context", authenticated as additional data).
///
/// Ordered (a `BTreeMap`), so [`canonical_bytes`](Self::canonical_bytes) is deterministic.
/// Values are not secret: AWS KMS writes them to CloudTrail in clear, so never put key
/// material or passwords here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context. Prefer [`for_tenant`](Self::for_tenant): an empty context binds
    /// the wrapped key to nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context Lakebed uses for a tenant's keys:
    /// `{"lakebed:tenant": tenant, "lakebed:purpose": purpose}`.
    ///
    /// `purpose` names what the key protects (for example `"pages"`), so a DEK wrapped for
    /// one purpose can not be unwrapped as another.
    pub fn for_tenant(tenant: &str, purpose: &str) -> Self {
        let mut map = BTreeMap::new();
        map.insert(CONTEXT_TENANT.to_owned(), tenant.to_owned());
        map.insert(CONTEXT_PURPOSE.to_owned(), purpose.to_owned());
        Self(map)
    }

    /// Adds or replaces one pair; returns the previous value of `key`, if any.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The pairs, ordered by key.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether the context has no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An unambiguous, deterministic byte encoding of the context, for use as AEAD
    /// additional data.
    ///
    /// Layout: the number of pairs as a big-endian `u32`, then for each pair in key order
    /// the key and the value, each as a big-endian `u32` byte length followed by its UTF-8
    /// bytes. Length prefixes make `{"ab": "c"}` and `{"a": "bc"}` encode differently.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, self.0.len());
        for (k, v) in &self.0 {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out
    }
}

impl FromIterator<(String, String)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Appends `len` as a big-endian `u32`. Lengths here are of strings held in memory, far
/// below 4 GiB; a longer one is clamped, which can only make an AAD mismatch, never a match.
pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends a length-prefixed string (see [`EncryptionContext::canonical_bytes`]).
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A plaintext data encryption key: 32 bytes for AES-256.
///
/// The bytes are zeroed when the value is dropped ([`Zeroizing`]). `Debug` prints `Dek(..)`
/// and there is no `Display`, so a DEK can not end up in a log line by accident. Clones are
/// independent copies, each zeroed on drop. Obtain one only from a
/// [`KmsProvider`](crate::KmsProvider).
#[derive(Clone)]
pub struct Dek(Zeroizing<[u8; DEK_LEN]>);

impl Dek {
    /// Copies a DEK out of `bytes`; `None` unless `bytes` is exactly [`DEK_LEN`] long.
    /// The caller zeroes its own copy.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; DEK_LEN]);
        if bytes.len() != DEK_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(Self(key))
    }

    /// A fresh random DEK from the system CSPRNG (aws-lc).
    pub(crate) fn random() -> Result<Self, crate::KmsError> {
        let mut key = Zeroizing::new([0u8; DEK_LEN]);
        aws_lc_rs::rand::fill(&mut key[..])
            .map_err(|_| crate::KmsError::Other("system random generator failed".into()))?;
        Ok(Self(key))
    }

    /// The 32 key bytes. Don't copy them anywhere that is not zeroed on drop.
    pub fn as_bytes(&self) -> &[u8; DEK_LEN] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(..)")
    }
}

/// A DEK encrypted ("wrapped") under a customer master key (CMK). Not secret: safe to
/// store in the catalog and to log by length.
///
/// Unwrapping needs the same CMK, still usable, and the same [`EncryptionContext`].
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek {
    /// The opaque ciphertext returned by KMS (AWS `CiphertextBlob`) or by the local
    /// provider (see [`LocalKms`](crate::LocalKms) for its format).
    pub ciphertext: Vec<u8>,
    /// The CMK that wrapped it: for AWS KMS the key ARN as KMS returned it (never an
    /// alias), for the local provider `"local"`.
    pub key_id: String,
}

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDek")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// The state of a CMK, as AWS KMS reports it in `DescribeKey` (`KeyMetadata.KeyState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Usable for cryptographic operations.
    Enabled,
    /// Disabled by its owner (`DisableKey`); unusable until `EnableKey`.
    Disabled,
    /// Scheduled for deletion (`ScheduleKeyDeletion`); unusable, and gone after the
    /// waiting period unless `CancelKeyDeletion`.
    PendingDeletion,
    /// Created without key material, waiting for `ImportKeyMaterial`.
    PendingImport,
    /// Its custom key store is disconnected.
    Unavailable,
    /// Any other state, spelled as AWS sends it (`Creating`, `Updating`,
    /// `PendingReplicaDeletion`, or one added later).
    Other(String),
}

impl KeyState {
    /// Maps AWS's spelling (`"Enabled"`, `"PendingDeletion"`, …) to a state.
    pub fn from_aws(s: &str) -> Self {
        match s {
            "Enabled" => Self::Enabled,
            "Disabled" => Self::Disabled,
            "PendingDeletion" => Self::PendingDeletion,
            "PendingImport" => Self::PendingImport,
            "Unavailable" => Self::Unavailable,
            other => Self::Other(other.to_owned()),
        }
    }

    /// AWS's spelling of the state.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
            Self::PendingImport => "PendingImport",
            Self::Unavailable => "Unavailable",
            Self::Other(s) => s,
        }
    }

    /// Whether KMS will use the key for encrypt/decrypt: only in [`KeyState::Enabled`].
    pub fn is_usable(&self) -> bool {
        matches!(self, Self::Enabled)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`KmsProvider::describe_key`](crate::KmsProvider::describe_key) found out about a CMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's canonical id: for AWS KMS its ARN (also when described through an alias),
    /// for the local provider `"local"`.
    pub key_id: String,
    /// Its current state.
    pub state: KeyState,
    /// Whether automatic rotation of the key material is on (AWS `GetKeyRotationStatus`);
    /// `None` when that could not be asked (no permission, key type without rotation,
    /// transient error). The local provider reports `Some(false)`.
    pub rotation_enabled: Option<bool>,
}

/// What [`KmsProvider::rotate_key_material`](crate::KmsProvider::rotate_key_material) did.
///
/// Either way the CMK's id stays the same and DEKs wrapped before still unwrap: KMS keeps
/// the earlier key material for decryption. New wraps use the new material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum RotateOutcome {
    /// `RotateKeyOnDemand` was accepted: KMS makes new key material now (AWS completes it
    /// asynchronously, usually within seconds).
    RotatedOnDemand,
    /// The server does not offer `RotateKeyOnDemand`, so `EnableKeyRotation` turned on
    /// automatic rotation instead (AWS default period: 365 days). No new material yet.
    AutomaticRotationEnabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_tenant_has_both_pairs() {
        let ctx = EncryptionContext::for_tenant("acme", "pages");
        assert_eq!(ctx.get(CONTEXT_TENANT), Some("acme"));
        assert_eq!(ctx.get(CONTEXT_PURPOSE), Some("pages"));
        assert_eq!(ctx.as_map().len(), 2);
    }

    #[test]
    fn canonical_bytes_are_unambiguous() {
        let a: EncryptionContext = [("ab".to_owned(), "c".to_owned())].into_iter().collect();
        let b: EncryptionContext = [("a".to_owned(), "bc".to_owned())].into_iter().collect();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(
            a.canonical_bytes(),
            [&[0, 0, 0, 1, 0, 0, 0, 2][..], b"ab", &[0, 0, 0, 1], b"c"].concat()
        );
        assert_eq!(EncryptionContext::new().canonical_bytes(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn dek_debug_hides_bytes() {
        let dek = Dek::from_slice(&[0xAB; DEK_LEN]).expect("32 bytes");
        assert_eq!(format!("{dek:?}"), "Dek(..)");
        assert!(Dek::from_slice(&[0; 31]).is_none());
        assert!(Dek::from_slice(&[0; 33]).is_none());
    }

    #[test]
    fn key_state_round_trips_aws_spelling() {
        for s in [
            "Enabled",
            "Disabled",
            "PendingDeletion",
            "PendingImport",
            "Unavailable",
            "Creating",
        ] {
            assert_eq!(KeyState::from_aws(s).to_string(), s);
        }
        assert_eq!(
            KeyState::from_aws("Creating"),
            KeyState::Other("Creating".into())
        );
        assert!(KeyState::Enabled.is_usable());
        assert!(!KeyState::Disabled.is_usable());
        assert!(!KeyState::Other("Updating".into()).is_usable());
    }

    #[test]
    fn wrapped_debug_shows_length_only() {
        let w = WrappedDek {
            ciphertext: vec![1, 2, 3],
            key_id: "k".into(),
        };
        assert_eq!(
            format!("{w:?}"),
            r#"WrappedDek { key_id: "k", ciphertext_len: 3 }"#
        );
    }
}
