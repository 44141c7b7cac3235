//! Room kept for the manifest on a full disk.
//!
//! The way out of a full disk is to delete something (a timeline) and collect; both end in a
//! manifest write, which needs a little new space: on a disk that writes and flush retries
//! keep filling to the last byte, it would fail too. So the store keeps `RESERVE`, a file of
//! [`RESERVE_BYTES`] written out (not sparse), and gives it up when a manifest write finds
//! the disk full; it is made again after a later manifest write, once there is room for it
//! and for writes besides (so that making it never takes the last room writes need).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::StoreError;
use super::wal::sync_dir;

/// The reserve's file name.
pub const FILE: &str = "RESERVE";
/// The name it is written under before it is renamed into place.
pub const TMP_FILE: &str = "RESERVE.tmp";
/// Its size: room for a manifest of many timelines.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// The reserve in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Whether `dir` holds a whole reserve.
pub fn present(dir: &Path) -> bool {
    std::fs::metadata(path(dir)).is_ok_and(|m| m.len() == RESERVE_BYTES)
}

/// Writes the reserve in `dir` (under a temporary name, then renamed). On an error nothing
/// of it is left.
///
/// # Errors
///
/// [`StoreError::DiskFull`] when there is no room for it; [`StoreError::Io`].
pub fn make(dir: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(TMP_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        let zeros = vec![0u8; 64 * 1024];
        for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path(dir))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(&tmp, e));
    }
    sync_dir(dir)
}

/// Bytes free for this process on the file system of `dir`, if it can tell.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|st| st.blocks_available() * st.fragment_size())
}

/// Removes the reserve in `dir`, giving its space to the file system.
///
/// # Errors
///
/// [`StoreError::Io`].
pub fn release(dir: &Path) -> Result<(), StoreError> {
    let path = path(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}
