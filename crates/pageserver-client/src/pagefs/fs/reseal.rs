//! Re-sealing after a rekey: values sealed under an older DEK version are written again
//! under the newest, in the background of a running compute.
//!
//! The walk scans the whole timeline in chunks and rewrites, per chunk, the values under an
//! older version. It holds the flush lock (and the rider lock; see the `ride` module) from
//! a chunk's scan to its write, so no flush lands in between, and skips keys that have
//! unflushed changes (their flush seals them anew): so it never writes back a value older
//! than what the timeline holds.
//!
//! **Only when there is something to do.** A walk reads the whole timeline and holds up
//! the compute's flushes chunk by chunk, so it must not run at every wake. None runs when
//! the mount holds one DEK version only (nothing can be under an older one), nor when the
//! timeline's re-seal mark ([`layout::RESEAL_MARK`], sealed) names the current version: a
//! finished walk flushes (so the keys it skipped as dirty are sealed anew) and then writes
//! that mark. Values written later are sealed under the current version anyway, and a
//! branch inherits its parent's mark with the values it describes.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::pagefs::data_key::{DataKeys, ValueKind};
use crate::pagefs::layout;
use crate::pagefs::store::Batch;
use crate::rpc::RpcError;

use super::PageFs;
use super::state::{State, lock};

/// Progress of a re-seal: values looked at and values re-sealed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealProgress {
    /// Values scanned (all of the timeline's pages and namespace records).
    pub scanned: u64,
    /// Values found under an older DEK version and written again under the newest.
    pub resealed: u64,
    /// Whether the whole timeline was scanned.
    pub done: bool,
}

/// Entries per scan page of a re-seal.
const RESEAL_CHUNK: u32 = 512;

impl PageFs {
    /// Re-seals, under the newest DEK version, every value of the timeline sealed under an
    /// older one (after `lakebed keys rekey`), in the background of a running compute.
    /// `report` gets the progress after each chunk.
    ///
    /// Safe against the compute's own writes: each chunk is scanned and written while
    /// holding the flush lock (so no flush lands in between), and keys with unflushed
    /// changes are skipped (their flush seals them anew); no one else writes the timeline
    /// (fencing). A flush waits for at most one chunk's scan and write. Resumable: a value
    /// already under the newest version is left alone, so a re-seal cut short (suspend,
    /// crash) simply starts over at the next wake and skips what was done.
    ///
    /// # Errors
    ///
    /// The page store's error; fencing.
    pub async fn reseal(
        &self,
        report: impl Fn(ResealProgress),
    ) -> Result<ResealProgress, RpcError> {
        let mut progress = ResealProgress::default();
        let Some(keys) = self.keys.clone() else {
            progress.done = true;
            return Ok(progress);
        };
        let current = keys.current_version();
        if keys.oldest_version() == current || self.marked_resealed(&keys).await? {
            progress.done = true;
            return Ok(progress);
        }
        let mut start: Vec<u8> = Vec::new();
        loop {
            let (more, last) = {
                // The chunk is scanned and written under the flush lock, with no ride along
                // a flush in flight either: a flush in between would make the scanned values
                // stale, and re-sealing a stale value would put it back over the flushed one
                // (or bring back a deleted file).
                let _one = self.flush_lock.lock().await;
                let _no_rider = self.rider_lock.lock().await;
                if self.fenced.load(Ordering::Relaxed) {
                    return Err(RpcError::FailedPrecondition {
                        message: "fenced".into(),
                    });
                }
                let page = self
                    .store
                    .scan(&self.timeline, &start, None, None, RESEAL_CHUNK)
                    .await?;
                progress.scanned += page.entries.len() as u64;
                let last = page.entries.last().map(|(k, _)| k.clone());
                let batch = {
                    let st = lock(&self.state);
                    let mut batch = Batch::default();
                    let mut n = 0;
                    for (key, value) in &page.entries {
                        let Some(version) = DataKeys::version_of(value) else {
                            continue;
                        };
                        let Some((kind, dirty)) = value_kind(key, &keys, &st) else {
                            continue;
                        };
                        if version >= current || dirty {
                            continue;
                        }
                        match keys.open(kind, value) {
                            Ok(plain) => {
                                batch.push(key.clone(), Some(keys.seal(kind, &plain)));
                                n += 1;
                            }
                            Err(e) => {
                                tracing::warn!(?key, error = %e, "re-seal: a value does not open; left as it is")
                            }
                        }
                    }
                    progress.resealed += n;
                    (n > 0).then_some(batch)
                };
                if let Some(batch) = batch {
                    self.store
                        .write(&self.timeline, self.generation, batch)
                        .await?;
                }
                (page.more, last)
            };
            report(progress);
            match last {
                Some(k) if more => {
                    start = k.to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        // The keys skipped as dirty are sealed under the current version once flushed.
        if let Err(e) = self.flush().await {
            return Err(RpcError::FailedPrecondition {
                message: format!("the flush before the re-seal mark failed ({e:?})"),
            });
        }
        let mark = keys.seal(ValueKind::ResealMark, &current.to_be_bytes());
        let mut batch = Batch::default();
        batch.push(Bytes::from_static(layout::RESEAL_MARK), Some(mark));
        self.store
            .write(&self.timeline, self.generation, batch)
            .await?;
        progress.done = true;
        report(progress);
        Ok(progress)
    }

    /// Whether the timeline's re-seal mark says every value is under the current version.
    /// A mark that does not open is ignored (and the walk runs).
    async fn marked_resealed(&self, keys: &DataKeys) -> Result<bool, RpcError> {
        let read = self
            .store
            .read(
                &self.timeline,
                vec![Bytes::from_static(layout::RESEAL_MARK)],
                None,
            )
            .await?;
        let Some(Some(sealed)) = read.values.into_iter().next() else {
            return Ok(false);
        };
        Ok(match keys.open(ValueKind::ResealMark, &sealed) {
            Ok(v) => <[u8; 4]>::try_from(&v[..])
                .is_ok_and(|v| u32::from_be_bytes(v) >= keys.current_version()),
            Err(e) => {
                tracing::warn!(error = %e, "the re-seal mark does not open; re-sealing");
                false
            }
        })
    }
}

/// What a stored key holds, for its seal's binding, and whether it has unflushed changes.
fn value_kind(key: &[u8], keys: &DataKeys, st: &State) -> Option<(ValueKind, bool)> {
    // pagefs's own records: written whole at unmount (the heat list) or at the end of a
    // walk (the mark), never dirty in between.
    if key == layout::HEAT {
        return Some((ValueKind::Heat, false));
    }
    if key == layout::RESEAL_MARK {
        return Some((ValueKind::ResealMark, false));
    }
    if let Some(ino) = layout::parse_inode_key(key) {
        return Some((ValueKind::Inode { ino }, st.inodes.contains_key(&ino)));
    }
    if let Some((parent, mac)) = layout::parse_dirent_key(key) {
        let name_mac: [u8; 16] = mac.try_into().ok()?;
        // Entries are tracked by name; any pending entry change of the directory counts.
        let dirty = st
            .dirents
            .keys()
            .any(|(p, name)| *p == parent && keys.name_mac(name) == name_mac);
        return Some((ValueKind::Dirent { parent, name_mac }, dirty));
    }
    let (ino, block) = layout::parse_page_key(key)?;
    Some((
        ValueKind::Page { ino, block },
        st.pages.contains_key(&(ino, block)),
    ))
}
