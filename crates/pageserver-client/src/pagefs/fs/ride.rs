//! An `fsync` that arrives while another flush's write is in flight: its changes are sent
//! at once, alongside, instead of after that write.
//!
//! An `fsync` must see every change made before it durable, those the flush in flight
//! carries too, so it waits for that flush either way. Sending its own changes only after
//! it costs the rest of that round trip plus a whole one; sending them at once (a *ride*)
//! costs the longer of the two. Both are needed for the return: the ride's write and the
//! flight's.
//!
//! **What a ride sends:** every dirty entry except those the flight carries at the same
//! version (they land with it), in one write. Writes in flight together may be applied in
//! either order, so a key in both (a page or an inode record changed again since the
//! flight copied it, typically the file an `fsync` is for) could end with the older value
//! if the ride lands first. So once both answered, if the flight's seq is the later one,
//! the ride sends its overlapping entries again (a *reorder*), and returns only after that.
//! Until then the page store may hold, for a moment, those keys as the flight left them
//! and the rest as the ride did: a mix of unsynced writes, which is what a crash before an
//! `fsync` returns may leave on any filesystem, so nothing acknowledged is at stake.
//!
//! **When a flush does not ride** but goes after the flight as before: no flight, or one
//! split into several writes (too big for one); a ride too big for one write; a directory
//! entry in both (a rename applied half in the old order could show a file under two names
//! after a crash, which POSIX never allows); the flight failed (its entries are still
//! dirty, so the flush sends them itself). A ride that finds nothing new simply waits for
//! the flight.
//!
//! **Fencing** surfaces as before: a write refused for a stale generation fences the mount
//! and the ride fails with `EIO`.
//!
//! One ride at a time (`rider_lock`): a flush, and a re-seal chunk, waits for the ride along
//! the previous flush before copying the dirty set, so no third write ever overtakes one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard, PoisonError};

use bytes::Bytes;
use fuser::Errno;
use lakebed_pageserver_api::Seq;
use tokio::sync::watch;

use super::PageFs;
use super::flush::{Entry, Prepared, Version};
use crate::pagefs::layout;
use crate::pagefs::store::Batch;

/// How a flush's write ended: `Some(seq)` durable at `seq`, `None` failed.
type Landed = Option<Seq>;

/// A flush's single write in flight, as a ride sees it.
#[derive(Debug)]
pub(super) struct FlushFlight {
    /// Versions of the dirty entries it carries: pages by `(ino, block)`, inode records by
    /// ino, directory entries by `(parent, name)`.
    pub(super) pages: HashMap<(u64, u64), u64>,
    pub(super) inodes: HashMap<u64, u64>,
    pub(super) dirents: HashMap<(u64, Vec<u8>), u64>,
    /// Every key it writes.
    keys: HashSet<Bytes>,
    /// `None` until it answered; closed without a value if its flush was dropped.
    landed: watch::Receiver<Option<Landed>>,
}

impl FlushFlight {
    /// How it ended; `None` also when its flush was dropped before it answered.
    async fn landed(&self) -> Landed {
        let mut rx = self.landed.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|l| l.flatten())
    }
}

/// A published flight; tells its riders how it ended, at [`Flying::land`] or on drop.
pub(super) struct Flying<'a> {
    fs: &'a PageFs,
    tx: watch::Sender<Option<Landed>>,
}

impl Flying<'_> {
    /// Ends the flight (its flush has updated the dirty set) and tells its riders how it
    /// ended.
    pub(super) fn land(self, landed: Landed) {
        *self.fs.flight() = None;
        // No rider is fine.
        let _ = self.tx.send(Some(landed));
    }
}

impl Drop for Flying<'_> {
    fn drop(&mut self) {
        *self.fs.flight() = None;
        // Unless landed, riders see the channel close: failed.
    }
}

impl PageFs {
    /// Makes `prepared` (a single write) the flight later flushes may ride along, until
    /// the returned guard lands (or is dropped: then it failed, as far as riders know).
    pub(super) fn publish(&self, prepared: &Prepared) -> Flying<'_> {
        let (tx, landed) = watch::channel(None);
        let mut flight = FlushFlight {
            pages: prepared
                .taken
                .pages
                .iter()
                .map(|(k, d)| (*k, d.version))
                .collect(),
            inodes: HashMap::new(),
            dirents: HashMap::new(),
            keys: prepared.batches.iter().flat_map(batch_keys).collect(),
            landed,
        };
        for (_, _, v) in &prepared.taken.meta {
            match v {
                Version::Inode(ino, v) => {
                    flight.inodes.insert(*ino, *v);
                }
                Version::Dirent(p, name, v) => {
                    flight.dirents.insert((*p, name.clone()), *v);
                }
            }
        }
        *self.flight() = Some(Arc::new(flight));
        Flying { fs: self, tx }
    }

    fn flight(&self) -> MutexGuard<'_, Option<Arc<FlushFlight>>> {
        self.flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rides along the flush in flight, if there is one to ride (see the module docs).
    /// `None`: no ride; the caller flushes the usual way, after the flight.
    ///
    /// # Errors
    ///
    /// `Some(Err(EIO))`: fenced, or the ride's write failed. What it took stays dirty.
    pub(super) async fn ride(&self) -> Option<Result<(), Errno>> {
        let _one_ride = self.rider_lock.lock().await;
        let flight = self.flight().clone()?;
        if let Err(e) = self.check_writable() {
            return Some(Err(e));
        }
        let Some(taken) = self.take_dirty(Some(&flight)) else {
            // Everything dirty is on the way: the flight's outcome is this flush's.
            return flight.landed().await.map(|_| Ok(()));
        };
        let prepared = self.prepare(taken);
        if prepared.batches.len() != 1 {
            self.untake(prepared.taken);
            return None;
        }
        let batch = &prepared.batches[0];
        let overlap: Vec<Entry> = batch_entries(batch)
            .filter(|(k, _)| flight.keys.contains(k))
            .collect();
        if overlap
            .iter()
            .any(|(k, _)| layout::parse_dirent_key(k).is_some())
        {
            self.untake(prepared.taken);
            return None;
        }
        let (landed, sent) = tokio::join!(flight.landed(), self.send(vec![batch.clone()]));
        let reordered = !overlap.is_empty()
            && matches!((landed, &sent), (Some(flight_seq), Ok(ride_seq)) if flight_seq > *ride_seq);
        let sent = match sent {
            Ok(_) if reordered => {
                // The flight overwrote the newer values of the keys both carry: again.
                let mut again = Batch::default();
                for (k, v) in overlap {
                    again.push(k, v);
                }
                self.send(vec![again]).await
            }
            other => other,
        };
        self.io.record_ride(reordered);
        if let Err(e) = self.finish(prepared, sent.map(drop)) {
            return Some(Err(e));
        }
        // A failed flight left its entries dirty: the caller sends them.
        landed.map(|_| Ok(()))
    }
}

/// The entries of `batch`: puts, then deletes.
fn batch_entries(batch: &Batch) -> impl Iterator<Item = Entry> + '_ {
    let puts = batch.puts.iter().map(|(k, v)| (k.clone(), Some(v.clone())));
    puts.chain(batch.deletes.iter().map(|k| (k.clone(), None)))
}

fn batch_keys(batch: &Batch) -> impl Iterator<Item = Bytes> + '_ {
    batch_entries(batch).map(|(k, _)| k)
}
