//! [`LocalKms`]: the embedded development provider. One master key in a file, AES-256-GCM
//! wrapping. **Not for production**: whoever can read the file can unwrap every DEK, and the
//! key can be neither disabled nor rotated.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use zeroize::{Zeroize, Zeroizing};

use crate::types::put_str;
use crate::{
    DEK_LEN, Dek, EncryptionContext, KeyInfo, KeyState, KmsError, KmsFuture, KmsProvider,
    RotateOutcome, WrappedDek,
};

/// The local provider's only key id. `alias/local` is accepted as well.
pub const LOCAL_KEY_ID: &str = "local";
/// Accepted alias of [`LOCAL_KEY_ID`].
pub const LOCAL_KEY_ALIAS: &str = "alias/local";
/// Size of the master key file in bytes: 32 random bytes, nothing else.
pub const MASTER_KEY_LEN: usize = 32;

/// What the integrator logs (at warn level) when the local provider is configured.
pub const DEVELOPMENT_ONLY_WARNING: &str = "the local KMS provider is for development only: its master key is a \
     plain file on this host, keys can not be disabled or rotated, and anyone who can read the file can \
     unwrap every tenant's data key; configure AWS KMS for production";

/// First byte of every wrapped DEK made by this version of the local provider.
const FORMAT_V1: u8 = 1;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Length of a format-1 wrapped DEK: version, nonce, encrypted DEK, tag.
const WRAPPED_V1_LEN: usize = 1 + NONCE_LEN + DEK_LEN + TAG_LEN;
/// Domain separation in the AAD, so these ciphertexts mean nothing to any other use of
/// the master key.
const AAD_DOMAIN: &[u8] = b"lakebed-local-kms";

/// The embedded development [`KmsProvider`]: one master key in a file wraps every DEK.
///
/// # Key file
///
/// [`MASTER_KEY_LEN`] random bytes at the given path, mode 0600. [`LocalKms::open`] creates
/// it if missing and refuses a file that group or others may access, or that has the wrong
/// size. Lose the file and every DEK wrapped under it is lost; copy it and the copy unwraps
/// them all.
///
/// # Wrapped format (version 1, 61 bytes)
///
/// `0x01 ‖ nonce (12 bytes, random) ‖ AES-256-GCM(DEK) (32 bytes) ‖ tag (16 bytes)`, under
/// the master key, with additional data
/// `0x01 ‖ "lakebed-local-kms" ‖ u32be(len) ‖ "local" ‖ EncryptionContext::canonical_bytes()`.
/// The key id in the AAD keeps the format open to several local keys later; the leading
/// version byte lets a later format coexist. Random 96-bit nonces are safe for far more
/// wraps than a development setup makes (NIST's bound: 2^32 per key).
///
/// The key is always `Enabled`; [`rotate_key_material`](KmsProvider::rotate_key_material)
/// returns [`KmsError::Unsupported`]. Log [`DEVELOPMENT_ONLY_WARNING`] at startup (see
/// [`LocalKms::warn_development_only`]).
pub struct LocalKms {
    path: PathBuf,
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// Opens the master key file at `path`, creating it (and missing parent directories,
    /// mode 0700) if it does not exist.
    ///
    /// A new file gets mode 0600 before any byte is written, is filled with 32 random bytes
    /// and fsynced under a temporary name in the same directory, then linked into place
    /// with `link(2)`, which fails instead of replacing a file another process created
    /// meanwhile (a `rename` would replace it, and so lose the key the other process may
    /// already have wrapped DEKs under); the directory is fsynced after.
    ///
    /// # Errors
    ///
    /// [`KmsError::LocalKeyFile`], naming the path, if the file can not be read or created,
    /// is not a regular file, has group or other permission bits set (the message gives the
    /// mode and the `chmod` that fixes it), or is not exactly [`MASTER_KEY_LEN`] bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<LocalKms, KmsError> {
        let path = path.as_ref().to_path_buf();
        match File::open(&path) {
            Ok(file) => Self::load(path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_key_file(&path)
                    .map_err(|e| key_file_error(&path, format!("can not create it: {e}")))?;
                let file = File::open(&path)
                    .map_err(|e| key_file_error(&path, format!("can not open it: {e}")))?;
                Self::load(path, file)
            }
            Err(e) => Err(key_file_error(&path, format!("can not open it: {e}"))),
        }
    }

    /// Validates the open key file and builds the cipher from it.
    fn load(path: PathBuf, mut file: File) -> Result<LocalKms, KmsError> {
        let meta = file
            .metadata()
            .map_err(|e| key_file_error(&path, format!("can not stat it: {e}")))?;
        if !meta.is_file() {
            return Err(key_file_error(&path, "not a regular file".into()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(key_file_error(
                &path,
                format!(
                    "mode {mode:04o} is looser than 0600 (group or others have access); fix with: chmod 600 {}",
                    path.display()
                ),
            ));
        }
        if meta.len() != MASTER_KEY_LEN as u64 {
            return Err(key_file_error(
                &path,
                format!(
                    "size is {} bytes, expected {MASTER_KEY_LEN} (truncated, or not a Lakebed key file)",
                    meta.len()
                ),
            ));
        }
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        file.read_exact(&mut bytes[..])
            .map_err(|e| key_file_error(&path, format!("can not read it: {e}")))?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes[..])
            .map_err(|_| key_file_error(&path, "aws-lc refused the key".into()))?;
        Ok(LocalKms { path, key })
    }

    /// The master key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs [`DEVELOPMENT_ONLY_WARNING`] at warn level, with the key file's path. Call once
    /// at startup when this provider is configured.
    pub fn warn_development_only(&self) {
        tracing::warn!(key_file = %self.path.display(), "{DEVELOPMENT_ONLY_WARNING}");
    }

    /// Wraps `dek` under the master key (format 1).
    fn wrap(&self, dek: &Dek, ctx: &EncryptionContext) -> Result<WrappedDek, KmsError> {
        let mut in_out = Vec::with_capacity(DEK_LEN + TAG_LEN);
        in_out.extend_from_slice(dek.as_bytes());
        let nonce = match self
            .key
            .seal_in_place_append_tag(Aad::from(aad(ctx)), &mut in_out)
        {
            Ok(nonce) => nonce,
            Err(_) => {
                in_out.zeroize();
                return Err(KmsError::Other("local KMS: AES-GCM seal failed".into()));
            }
        };
        let mut ciphertext = Vec::with_capacity(WRAPPED_V1_LEN);
        ciphertext.push(FORMAT_V1);
        ciphertext.extend_from_slice(nonce.as_ref());
        ciphertext.extend_from_slice(&in_out);
        Ok(WrappedDek {
            ciphertext,
            key_id: LOCAL_KEY_ID.to_owned(),
        })
    }

    /// Unwraps a format-1 DEK.
    fn unwrap(&self, wrapped: &WrappedDek, ctx: &EncryptionContext) -> Result<Dek, KmsError> {
        check_key_id(&wrapped.key_id)?;
        let c = &wrapped.ciphertext;
        if c.len() != WRAPPED_V1_LEN || c[0] != FORMAT_V1 {
            return Err(KmsError::InvalidCiphertext);
        }
        let nonce = Nonce::try_assume_unique_for_key(&c[1..1 + NONCE_LEN])
            .map_err(|_| KmsError::InvalidCiphertext)?;
        let mut in_out = Zeroizing::new(c[1 + NONCE_LEN..].to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(ctx)), &mut in_out[..])
            .map_err(|_| KmsError::InvalidCiphertext)?;
        Dek::from_slice(plain).ok_or(KmsError::InvalidCiphertext)
    }
}

impl KmsProvider for LocalKms {
    fn name(&self) -> &str {
        "local"
    }

    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, (Dek, WrappedDek)> {
        Box::pin(async move {
            check_key_id(key_id)?;
            let dek = Dek::random()?;
            let wrapped = self.wrap(&dek, ctx)?;
            Ok((dek, wrapped))
        })
    }

    fn decrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Dek> {
        Box::pin(async move { self.unwrap(wrapped, ctx) })
    }

    fn re_encrypt<'a>(
        &'a self,
        wrapped: &'a WrappedDek,
        ctx: &'a EncryptionContext,
        destination_key_id: &'a str,
    ) -> KmsFuture<'a, WrappedDek> {
        Box::pin(async move {
            check_key_id(destination_key_id)?;
            let dek = self.unwrap(wrapped, ctx)?;
            self.wrap(&dek, ctx)
        })
    }

    fn describe_key<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, KeyInfo> {
        Box::pin(async move {
            check_key_id(key_id)?;
            Ok(KeyInfo {
                key_id: LOCAL_KEY_ID.to_owned(),
                state: KeyState::Enabled,
                rotation_enabled: Some(false),
            })
        })
    }

    fn rotate_key_material<'a>(&'a self, key_id: &'a str) -> KmsFuture<'a, RotateOutcome> {
        Box::pin(async move {
            check_key_id(key_id)?;
            Err(KmsError::Unsupported(
                "the local KMS provider has one fixed master key and can not rotate it".into(),
            ))
        })
    }
}

/// [`KmsError::NotFound`] unless `key_id` names the local key.
fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    if key_id == LOCAL_KEY_ID || key_id == LOCAL_KEY_ALIAS {
        Ok(())
    } else {
        Err(KmsError::NotFound {
            key_id: key_id.to_owned(),
        })
    }
}

/// Additional data for format 1 (see [`LocalKms`]).
fn aad(ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = vec![FORMAT_V1];
    aad.extend_from_slice(AAD_DOMAIN);
    put_str(&mut aad, LOCAL_KEY_ID);
    aad.extend_from_slice(&ctx.canonical_bytes());
    aad
}

fn key_file_error(path: &Path, reason: String) -> KmsError {
    KmsError::LocalKeyFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// Creates the key file atomically; returns `Ok` also if another process created it first.
fn create_key_file(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix)
        .map_err(|_| io::Error::other("system random generator failed"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        u64::from_le_bytes(suffix)
    ));
    let result = write_new_key(&tmp).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&tmp);
    result?;
    File::open(&dir)?.sync_all()
}

/// Writes a new random master key to `tmp` (which must not exist), mode 0600, fsynced.
fn write_new_key(tmp: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    // The umask can only clear bits, but set the mode explicitly before any key byte
    // exists in the file, whatever the umask.
    file.set_permissions(Permissions::from_mode(0o600))?;
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    aws_lc_rs::rand::fill(&mut key[..])
        .map_err(|_| io::Error::other("system random generator failed"))?;
    file.write_all(&key[..])?;
    file.sync_all()
}
