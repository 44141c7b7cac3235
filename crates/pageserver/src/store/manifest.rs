//! The manifest: which timelines exist, their generations and branch points, which layer
//! files hold their versions, and where log replay starts. Small, rewritten whole (under a
//! temporary name, fsynced, renamed) whenever layers or timelines change; the log carries
//! what happened since.
//!
//! ```text
//! MANIFEST: "lakebed-pagestore-manifest 1 <crc32 of the JSON, 8 hex digits>\n" JSON
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::codec::crc;
use super::error::StoreError;
use super::wal::sync_dir;

/// The manifest's file name.
pub const FILE: &str = "MANIFEST";
/// The name a new manifest is written under before it is renamed over [`FILE`].
pub const TMP_FILE: &str = "MANIFEST.tmp";
const HEADER: &str = "lakebed-pagestore-manifest 1";

/// The whole manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The next internal timeline number to give out.
    pub next_tid: u64,
    /// The next layer file number to give out.
    pub next_file: u64,
    /// The first log segment replay reads: older ones are all in layer files.
    pub wal_start: u64,
    /// Every timeline.
    pub timelines: Vec<TimelineRecord>,
}

/// One timeline in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineRecord {
    /// The timeline's id.
    pub id: String,
    /// Its internal number: log records and layers name it by this, so a deleted
    /// timeline's leftovers never mix with a new one of the same id.
    pub tid: u64,
    /// Its generation as of this manifest (the log may raise it).
    pub generation: u32,
    /// Its last seq as of this manifest (the log may raise it).
    pub last_seq: u64,
    /// For a branch: the parent's internal number and the branch seq.
    pub parent: Option<(u64, u64)>,
    /// Its layer files.
    pub layers: Vec<u64>,
    /// The horizon its history was last collected at: nothing below is readable.
    pub gc_horizon: u64,
    /// `(seq, unix time ms)`: when seqs were committed, at least a second apart; what maps
    /// the retention window onto seqs.
    pub commit_times: Vec<(u64, u64)>,
}

/// Reads the manifest in `dir`; `None` if there is none (a new store).
///
/// # Errors
///
/// [`StoreError::Io`]; [`StoreError::Corrupt`] naming the file if it does not decode or
/// fails its checksum.
pub fn load(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.join(FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let corrupt = |why: &str| StoreError::corrupt(&path, why);
    let newline = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line (truncated?)"))?;
    let (header, body) = (&data[..newline], &data[newline + 1..]);
    let header = std::str::from_utf8(header).map_err(|_| corrupt("header is not text"))?;
    let sum = header
        .strip_prefix(HEADER)
        .map(str::trim)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| corrupt("unknown header"))?;
    if crc(body) != sum {
        return Err(corrupt("checksum mismatch (truncated or changed)"));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| corrupt(&format!("does not decode: {e}")))
}

/// Writes `manifest` to `dir` atomically and durably.
///
/// # Errors
///
/// [`StoreError::Io`], [`StoreError::DiskFull`]: the previous manifest stays.
pub fn store(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let body = serde_json::to_vec(manifest).map_err(|e| StoreError::Io {
        path: dir.join(FILE),
        error: std::io::Error::other(e),
    })?;
    let tmp: PathBuf = dir.join(TMP_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{HEADER} {:08x}", crc(&body))?;
        f.write_all(&body)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(&tmp, e));
    }
    let path = dir.join(FILE);
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    sync_dir(dir)
}
