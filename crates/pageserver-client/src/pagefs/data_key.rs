//! Sealing what leaves the compute: every page and namespace value pagefs sends to the page
//! store is sealed under the tenant's data encryption key (DEK), so the page store holds
//! ciphertext only and never sees a DEK.
//!
//! The DEK versions come from the compute manager over pagefs's standard input (never argv,
//! environment or a file; see `lakebed pagefs --keys-from-stdin`), unwrapped by the tenant's
//! KMS key at wake. They live only in this process's memory, as aws-lc key schedules; the
//! raw bytes are zeroized once the schedules are built.
//!
//! **Format of a sealed value:** `[1][key version: u32 BE][writer timeline: length u8, then
//! 63 bytes zero-padded][nonce: 12][ciphertext][tag: 16]`. New values are sealed under the
//! newest version; older versions stay readable.
//!
//! **Binding.** The additional data is the format byte, what the value is (a page, an inode
//! record, a directory entry), the tenant, the timeline that wrote it, the inode and block
//! (or entry), and the key version. So a value moved to another file, block, tenant or
//! timeline, or relabelled with another key version, does not open. A branch reads values
//! its ancestors wrote: the header names the timeline that wrote the value, and only the
//! timelines of the mount's lineage (its own, its parent, ...) are accepted.
//!
//! **Nonces** are 96 random bits per seal. A DEK outlives computes, so a counter would
//! repeat across them; with random nonces the chance of a repeat stays below 2^-32 for the
//! first 2^32 seals under one DEK version, and `lakebed keys rekey` starts a new version
//! long before that.
//!
//! **Directory entry names** never reach the page store in the clear: an entry's key holds
//! an HMAC-SHA-256 of its name under a key derived from the first DEK version (stable
//! across rekeys), and its sealed value holds the name and the child's inode.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac};
use bytes::{BufMut, Bytes, BytesMut};
use zeroize::Zeroizing;

const FORMAT: u8 = 1;
/// Room for a timeline id (the longest is 63 characters).
const TIMELINE_FIELD: usize = 63;
const HEADER: usize = 1 + 4 + 1 + TIMELINE_FIELD + NONCE_LEN;
const TAG: usize = 16;
/// Bytes a seal adds to a value: the header and the tag.
pub const SEAL_OVERHEAD: usize = HEADER + TAG;

/// What a sealed value is; part of its additional data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Block `block` of inode `ino`.
    Page {
        /// Inode.
        ino: u64,
        /// Block.
        block: u64,
    },
    /// The record of inode `ino`.
    Inode {
        /// Inode.
        ino: u64,
    },
    /// An entry of directory `parent`, named by its key's name hash.
    Dirent {
        /// The directory.
        parent: u64,
        /// The name's HMAC (as in the key).
        name_mac: [u8; 16],
    },
    /// The re-seal mark (`layout::RESEAL_MARK`): sealed so that the page store cannot
    /// forge one and make a compute skip a re-seal.
    ResealMark,
    /// The heat list (`layout::HEAT`): which pages were read, no contents.
    Heat,
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag, or an unknown format.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under a DEK version this mount was not given.
    #[error("sealed under DEK version {0}, which this compute does not hold")]
    UnknownVersion(u32),
    /// Written by a timeline outside this mount's lineage.
    #[error("written by timeline {0:?}, outside this compute's lineage")]
    ForeignLineage(String),
    /// The tag did not verify: altered, moved, or sealed under another key.
    #[error("does not verify")]
    Forged,
}

/// The tenant's DEK versions and where this mount sits.
pub struct DataKeys {
    tenant: String,
    lineage: Vec<String>,
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
    names: hmac::Key,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("tenant", &self.tenant)
            .field("lineage", &self.lineage)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

/// Why [`DataKeys::new`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataKeysError {
    /// No DEK version was given.
    #[error("no DEK given")]
    NoKey,
    /// No timeline was given.
    #[error("no lineage given")]
    NoLineage,
    /// A timeline id longer than 63 bytes.
    #[error("timeline id {0:?} is too long")]
    TimelineTooLong(String),
    /// A key schedule could not be built.
    #[error("invalid DEK")]
    BadKey,
}

impl DataKeys {
    /// Keys for `tenant`'s compute on `lineage` (its own timeline first, then its parent,
    /// ...), from DEK versions `(version, 32 bytes)`; the newest seals.
    ///
    /// # Errors
    ///
    /// [`DataKeysError`].
    pub fn new(
        tenant: String,
        lineage: Vec<String>,
        versions: Vec<(u32, Zeroizing<[u8; 32]>)>,
    ) -> Result<Self, DataKeysError> {
        if lineage.is_empty() {
            return Err(DataKeysError::NoLineage);
        }
        if let Some(t) = lineage.iter().find(|t| t.len() > TIMELINE_FIELD) {
            return Err(DataKeysError::TimelineTooLong(t.clone()));
        }
        let (first, _) = versions
            .iter()
            .min_by_key(|(v, _)| *v)
            .ok_or(DataKeysError::NoKey)?;
        let first = *first;
        let mut keys = BTreeMap::new();
        let mut names = None;
        for (version, raw) in &versions {
            let unbound =
                UnboundKey::new(&AES_256_GCM, raw.as_ref()).map_err(|_| DataKeysError::BadKey)?;
            keys.insert(*version, LessSafeKey::new(unbound));
            if *version == first {
                names = Some(name_key(raw));
            }
        }
        let current = *keys.keys().next_back().ok_or(DataKeysError::NoKey)?;
        Ok(Self {
            tenant,
            lineage,
            keys,
            current,
            names: names.ok_or(DataKeysError::NoKey)?,
        })
    }

    /// The version new values are sealed under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The oldest version this mount holds: when it is the current one, no value can be
    /// sealed under an older version.
    pub fn oldest_version(&self) -> u32 {
        self.keys.keys().next().copied().unwrap_or(self.current)
    }

    /// The 16-byte HMAC of a directory entry name, for its key.
    pub fn name_mac(&self, name: &[u8]) -> [u8; 16] {
        let tag = hmac::sign(&self.names, name);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    fn aad(&self, kind: ValueKind, writer: &str, version: u32) -> Vec<u8> {
        let mut a = Vec::with_capacity(96);
        a.push(FORMAT);
        match kind {
            ValueKind::Page { ino, block } => {
                a.push(b'p');
                a.extend_from_slice(&ino.to_be_bytes());
                a.extend_from_slice(&block.to_be_bytes());
            }
            ValueKind::Inode { ino } => {
                a.push(b'i');
                a.extend_from_slice(&ino.to_be_bytes());
            }
            ValueKind::Dirent { parent, name_mac } => {
                a.push(b'd');
                a.extend_from_slice(&parent.to_be_bytes());
                a.extend_from_slice(&name_mac);
            }
            ValueKind::ResealMark => a.push(b's'),
            ValueKind::Heat => a.push(b'h'),
        }
        for s in [self.tenant.as_str(), writer] {
            a.extend_from_slice(&(s.len() as u32).to_be_bytes());
            a.extend_from_slice(s.as_bytes());
        }
        a.extend_from_slice(&version.to_be_bytes());
        a
    }

    /// Seals `plain` as `kind`, written by this mount's own timeline, under the current
    /// version.
    pub fn seal(&self, kind: ValueKind, plain: &[u8]) -> Bytes {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's CSPRNG failing is not survivable for a process that seals data.
        if getrandom::fill(&mut nonce).is_err() {
            std::process::abort();
        }
        let version = self.current;
        let own = &self.lineage[0];
        let aad = self.aad(kind, own, version);
        let mut out = BytesMut::with_capacity(HEADER + plain.len() + TAG);
        out.put_u8(FORMAT);
        out.put_u32(version);
        out.put_u8(own.len() as u8);
        let mut field = [0u8; TIMELINE_FIELD];
        field[..own.len()].copy_from_slice(own.as_bytes());
        out.put_slice(&field);
        out.put_slice(&nonce);
        let mut body = plain.to_vec();
        let key = &self.keys[&version];
        // Sealing fails only past GCM's ~64 GiB input limit.
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .is_err()
        {
            std::process::abort();
        }
        out.put_slice(&body);
        out.freeze()
    }

    /// Opens a value sealed by [`Self::seal`] (here or by an ancestor timeline).
    ///
    /// # Errors
    ///
    /// [`OpenError`].
    pub fn open(&self, kind: ValueKind, sealed: &[u8]) -> Result<Bytes, OpenError> {
        if sealed.len() < HEADER + TAG || sealed[0] != FORMAT {
            return Err(OpenError::Malformed);
        }
        let version = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let key = self
            .keys
            .get(&version)
            .ok_or(OpenError::UnknownVersion(version))?;
        let len = usize::from(sealed[5]).min(TIMELINE_FIELD);
        let writer = String::from_utf8_lossy(&sealed[6..6 + len]).into_owned();
        if !self.lineage.contains(&writer) {
            return Err(OpenError::ForeignLineage(writer));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[6 + TIMELINE_FIELD..HEADER]);
        let mut body = sealed[HEADER..].to_vec();
        let aad = self.aad(kind, &writer, version);
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| OpenError::Forged)?
            .len();
        body.truncate(len);
        Ok(Bytes::from(body))
    }

    /// The version a sealed value was sealed under, from its header.
    pub fn version_of(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= HEADER && sealed[0] == FORMAT)
            .then(|| u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
    }
}

/// The name-hashing key: HKDF-SHA-256 of the first DEK version.
fn name_key(dek: &[u8; 32]) -> hmac::Key {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"lakebed pagefs").extract(dek);
    let mut out = Zeroizing::new([0u8; 32]);
    let filled = prk
        .expand(&[b"directory entry names"], Len)
        .and_then(|okm| okm.fill(out.as_mut()));
    if filled.is_err() {
        std::process::abort();
    }
    hmac::Key::new(hmac::HMAC_SHA256, out.as_ref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn keys(lineage: &[&str], versions: &[(u32, u8)]) -> DataKeys {
        DataKeys::new(
            "acme".into(),
            lineage.iter().map(|s| s.to_string()).collect(),
            versions
                .iter()
                .map(|&(v, b)| (v, Zeroizing::new([b; 32])))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_binding_and_lineage() {
        let k = keys(&["ep-1", "tpl"], &[(1, 7)]);
        let page = ValueKind::Page { ino: 5, block: 2 };
        let sealed = k.seal(page, b"secret row");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(&k.open(page, &sealed).unwrap()[..], b"secret row");
        // Moved to another block, or flipped: refused.
        assert_eq!(
            k.open(ValueKind::Page { ino: 5, block: 3 }, &sealed),
            Err(OpenError::Forged)
        );
        let mut bad = sealed.to_vec();
        bad[HEADER + 1] ^= 1;
        assert_eq!(k.open(page, &bad), Err(OpenError::Forged));
        // A child branch reads what its parent wrote...
        let parent = keys(&["tpl"], &[(1, 7)]);
        assert_eq!(
            &k.open(page, &parent.seal(page, b"inherited")).unwrap()[..],
            b"inherited"
        );
        // ...but not a sibling's value, nor one relabelled as its own.
        let sibling = keys(&["ep-2", "tpl"], &[(1, 7)]);
        let from_sibling = sibling.seal(page, b"x");
        assert_eq!(
            k.open(page, &from_sibling),
            Err(OpenError::ForeignLineage("ep-2".into()))
        );
        let mut relabelled = from_sibling.to_vec();
        relabelled[6..10].copy_from_slice(b"ep-1");
        assert_eq!(k.open(page, &relabelled), Err(OpenError::Forged));
        // Another tenant with the same bytes: refused.
        let other = DataKeys::new(
            "other".into(),
            vec!["ep-1".into()],
            vec![(1, Zeroizing::new([7; 32]))],
        )
        .unwrap();
        assert_eq!(other.open(page, &sealed), Err(OpenError::Forged));
    }

    #[test]
    fn versions_and_names() {
        let old = keys(&["ep"], &[(1, 1)]);
        let new = keys(&["ep"], &[(1, 1), (2, 2)]);
        let kind = ValueKind::Inode { ino: 9 };
        let v1 = old.seal(kind, b"a");
        let v2 = new.seal(kind, b"b");
        assert_eq!(DataKeys::version_of(&v1), Some(1));
        assert_eq!(DataKeys::version_of(&v2), Some(2));
        assert_eq!(&new.open(kind, &v1).unwrap()[..], b"a");
        assert_eq!(old.open(kind, &v2), Err(OpenError::UnknownVersion(2)));
        // Names hash the same across versions (derived from version 1), differently per DEK.
        assert_eq!(old.name_mac(b"base"), new.name_mac(b"base"));
        assert_ne!(
            old.name_mac(b"base"),
            keys(&["ep"], &[(1, 9)]).name_mac(b"base")
        );
    }
}
