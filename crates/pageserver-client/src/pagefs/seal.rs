//! Sealing under the compute's per-boot key: AES-256-GCM (aws-lc-rs) over one block at a
//! time, for everything pagefs puts on the compute's local disk (cache pages and scratch
//! files).
//!
//! **The key** is 32 random bytes from aws-lc's CSPRNG, made when pagefs mounts. It is held
//! only in this process's memory (as aws-lc's key schedule; the raw bytes are zeroized as
//! soon as the schedule is built, and aws-lc cleanses the schedule when the key is dropped at
//! unmount). It is never written anywhere, so once the process is gone every sealed byte it
//! left behind is noise.
//!
//! **Nonce uniqueness.** GCM is only safe if no nonce repeats under one key. Each seal takes
//! its nonce from one 64-bit counter per key, incremented atomically ([`BootKey::seal`] is
//! the only way to seal), placed in the low 8 bytes of the 96-bit nonce (the high 4 are zero).
//! A key lives for one process, starting at counter 1, and 2^64 seals cannot be reached, so a
//! nonce is never used twice under a key. Keys are never shared between processes.
//!
//! **Binding.** The additional data names what the block is ([`Aad`]: inode and block, plus a
//! domain byte telling cache from scratch), so a sealed block moved to another slot or file
//! fails to open. The caller keeps the nonce it got from the seal and passes it when opening,
//! so an older sealed copy of the same block, put back by someone who can write the file,
//! fails too (no rollback).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{AES_256_GCM, Aad as GcmAad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Bytes the seal adds to a block: the GCM tag.
pub const TAG_LEN: usize = 16;

/// Where a sealed block lives, bound into its additional data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A clean page in the local cache.
    Cache = 1,
    /// A block of a scratch file (never sent to the page store).
    Scratch = 2,
}

/// What a sealed block is: its domain, inode and block number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad {
    /// Cache or scratch.
    pub domain: Domain,
    /// The file's inode number.
    pub ino: u64,
    /// The block number within the file.
    pub block: u64,
}

impl Aad {
    fn bytes(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0] = self.domain as u8;
        b[1..9].copy_from_slice(&self.ino.to_be_bytes());
        b[9..17].copy_from_slice(&self.block.to_be_bytes());
        b
    }
}

/// A sealed block did not open: wrong key, altered bytes, moved or rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed block of inode {ino:#x} block {block} does not verify")]
pub struct SealError {
    /// The inode.
    pub ino: u64,
    /// The block.
    pub block: u64,
}

/// The per-boot key and its nonce counter.
pub struct BootKey {
    key: LessSafeKey,
    counter: AtomicU64,
}

impl std::fmt::Debug for BootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootKey(..)")
    }
}

impl BootKey {
    /// A fresh random key.
    ///
    /// # Errors
    ///
    /// The system's random source failed.
    pub fn generate() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|_| aws_lc_rs::error::Unspecified)?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw.as_ref())?);
        Ok(Self {
            key,
            counter: AtomicU64::new(1),
        })
    }

    /// Seals `block` (plaintext) in place, appending the [`TAG_LEN`]-byte tag, and returns
    /// the nonce counter used. The caller stores it (in memory) to pass to [`Self::open`].
    pub fn seal(&self, aad: Aad, block: &mut Vec<u8>) -> u64 {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        // Sealing fails only for inputs past GCM's ~64 GiB limit; blocks are 8 KiB.
        let sealed =
            self.key
                .seal_in_place_append_tag(nonce(counter), GcmAad::from(aad.bytes()), block);
        debug_assert!(sealed.is_ok());
        counter
    }

    /// Opens `sealed` (ciphertext then tag, as [`Self::seal`] left it) in place, with the
    /// nonce `counter` the seal returned, and returns the plaintext part.
    ///
    /// # Errors
    ///
    /// [`SealError`] when the bytes, tag, nonce or binding do not match.
    pub fn open<'a>(
        &self,
        aad: Aad,
        counter: u64,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.key
            .open_in_place(nonce(counter), GcmAad::from(aad.bytes()), sealed)
            .map_err(|_| SealError {
                ino: aad.ino,
                block: aad.block,
            })
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}
