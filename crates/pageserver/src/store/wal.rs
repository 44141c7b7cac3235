//! The log: every write batch and every generation change, appended and made durable (one
//! `fdatasync` per group of records) before it is acknowledged. Together with the manifest
//! it is the store's truth until the memtable it fed reaches layer files; then its segments
//! are deleted.
//!
//! ```text
//! segment file wal/<segment:016x>.log: record*
//! record:  payload length u32 | crc32 of payload u32 | payload
//! payload: 1 | timeline u64 | seq u64 | unix time ms u64 | entry count u32 | entry*   (write)
//!          2 | timeline u64 | generation u32                                          (acquire)
//! ```
//!
//! A record that is cut short or fails its checksum ends its segment at replay: it was
//! being written when the process died, so it was never acknowledged. Replay says so in
//! the log, naming the file and offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes};

use super::codec::{Entry, Reader, crc, put_entry};
use super::error::StoreError;

const WRITE: u8 = 1;
const ACQUIRE: u8 = 2;

/// One replayed record.
#[derive(Debug)]
pub enum Record {
    /// A committed write batch.
    Write {
        /// The timeline's internal number.
        tid: u64,
        /// The batch's seq.
        seq: u64,
        /// When it was committed, ms since the Unix epoch.
        time_ms: u64,
        /// Its puts and deletes.
        entries: Vec<Entry>,
    },
    /// A generation acquired.
    Acquire {
        /// The timeline's internal number.
        tid: u64,
        /// The new generation.
        generation: u32,
    },
}

/// Appends a write record to `out`.
pub fn encode_write(
    out: &mut Vec<u8>,
    tid: u64,
    seq: u64,
    time_ms: u64,
    puts: &[(Bytes, Bytes)],
    deletes: &[Bytes],
) {
    let start = begin(out);
    out.put_u8(WRITE);
    out.put_u64_le(tid);
    out.put_u64_le(seq);
    out.put_u64_le(time_ms);
    out.put_u32_le((puts.len() + deletes.len()) as u32);
    for (k, v) in puts {
        put_entry(out, k, seq, Some(v));
    }
    for k in deletes {
        put_entry(out, k, seq, None);
    }
    end(out, start);
}

/// Appends an acquire record to `out`.
pub fn encode_acquire(out: &mut Vec<u8>, tid: u64, generation: u32) {
    let start = begin(out);
    out.put_u8(ACQUIRE);
    out.put_u64_le(tid);
    out.put_u32_le(generation);
    end(out, start);
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.put_u64_le(0); // length and checksum, filled in by `end`
    start
}

fn end(out: &mut [u8], start: usize) {
    let payload = &out[start + 8..];
    let len = (payload.len() as u32).to_le_bytes();
    let sum = crc(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&sum);
}

/// The file of `segment` in `dir`.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.log"))
}

/// The segments in `dir`, ascending.
///
/// # Errors
///
/// [`StoreError::Io`].
pub fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(n) = u64::from_str_radix(hex, 16) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every whole record of `segment`, calling `f` on each, in order.
///
/// # Errors
///
/// [`StoreError::Io`]; whatever `f` returns.
pub fn replay(
    dir: &Path,
    segment: u64,
    mut f: impl FnMut(Record) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = segment_path(dir, segment);
    let data = Bytes::from(std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?);
    let mut pos = 0usize;
    while pos < data.len() {
        match decode_at(&data, pos) {
            Some((record, next)) => {
                f(record)?;
                pos = next;
            }
            None => {
                tracing::warn!(
                    file = %path.display(),
                    offset = pos,
                    bytes = data.len() - pos,
                    "log ends in a record that was cut short or fails its checksum \
                     (written when the process died, never acknowledged): ignored"
                );
                break;
            }
        }
    }
    Ok(())
}

fn decode_at(data: &Bytes, pos: usize) -> Option<(Record, usize)> {
    let mut header = Reader::new(data.slice(pos..));
    let len = header.u32()? as usize;
    let sum = header.u32()?;
    let payload = header.bytes(len)?;
    if crc(&payload) != sum {
        return None;
    }
    let mut r = Reader::new(payload);
    let record = match r.u8()? {
        WRITE => {
            let tid = r.u64()?;
            let seq = r.u64()?;
            let time_ms = r.u64()?;
            let count = r.u32()?;
            let mut entries = Vec::with_capacity(count.min(65_536) as usize);
            for _ in 0..count {
                entries.push(r.entry()?);
            }
            Record::Write {
                tid,
                seq,
                time_ms,
                entries,
            }
        }
        ACQUIRE => Record::Acquire {
            tid: r.u64()?,
            generation: r.u32()?,
        },
        _ => return None,
    };
    Some((record, pos + 8 + len))
}

/// The segment being appended to.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment: u64,
    file: File,
    len: u64,
    /// A failed append could not be undone: the next append starts a new segment.
    broken: bool,
}

impl Wal {
    /// Starts segment `segment` (new and empty) in `dir`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::DiskFull`].
    pub fn create(dir: &Path, segment: u64) -> Result<Wal, StoreError> {
        let path = segment_path(dir, segment);
        let file = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_owned(),
            segment,
            file,
            len: 0,
            broken: false,
        })
    }

    /// Appends `records` and makes them durable. On an error nothing of them remains: the
    /// segment is cut back (or, failing that, abandoned for a new one at the next append).
    ///
    /// # Errors
    ///
    /// [`StoreError::DiskFull`], [`StoreError::Io`].
    pub fn append(&mut self, records: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            *self = Wal::create(&self.dir, self.segment + 1)?;
        }
        let path = segment_path(&self.dir, self.segment);
        let result = self
            .file
            .write_all_at(records, self.len)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += records.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_err()
                {
                    self.broken = true;
                }
                Err(StoreError::io(path, e))
            }
        }
    }

    /// Whether nothing was appended to this segment yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Closes this segment and starts the next; returns the new segment's number.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`], [`StoreError::DiskFull`] (this segment stays current).
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        *self = Wal::create(&self.dir, self.segment + 1)?;
        Ok(self.segment)
    }
}

/// fsyncs directory `dir`, so that names created or removed in it are durable.
///
/// # Errors
///
/// [`StoreError::Io`].
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
