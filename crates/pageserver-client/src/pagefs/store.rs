//! The page store as pagefs uses it: three calls, behind a trait.
//!
//! pagefs needs only `read` (page fetches), `write` (flushes and re-seals) and `scan`
//! (the namespace at mount, the re-seal's walk). Putting them behind [`PageStore`] lets the
//! whole filesystem (dirty set, fetch races, fencing, the commit path) run in a unit test
//! over the real storage engine in-process, without FUSE, root or a gRPC server; in
//! production the implementation is [`PageStoreClient`], with its deadlines and retries.
//!
//! The trait is object safe (futures are boxed): [`super::fs::PageFs`] holds a
//! `Box<dyn PageStore>`, so the filesystem is not generic and the boxing costs one
//! allocation per call, which is nothing next to a round trip.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use lakebed_pageserver_api::{Generation, Seq, TimelineId};

use crate::rpc::{PageStoreClient, ReadResult, RpcError, ScanPage, WriteBatch};

/// A boxed future that can move between threads, as [`PageStore`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keys with their values, in ascending key order, as a scan returns them.
pub type Entries = Vec<(Bytes, Bytes)>;

/// One atomic write: puts and deletes, applied under one seq. A key may appear only once.
///
/// pagefs's own batch type rather than [`WriteBatch`], so that an implementation of
/// [`PageStore`] can read what it is asked to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Keys with their new values.
    pub puts: Vec<(Bytes, Bytes)>,
    /// Keys to delete (tombstones).
    pub deletes: Vec<Bytes>,
}

impl Batch {
    /// Adds a put of `value` under `key`, or a delete of `key` when `value` is `None`.
    pub fn push(&mut self, key: Bytes, value: Option<Bytes>) {
        match value {
            Some(v) => self.puts.push((key, v)),
            None => self.deletes.push(key),
        }
    }

    /// Keys in the batch (puts plus deletes), as the page store counts them against
    /// [`lakebed_pageserver_api::limits::MAX_BATCH_KEYS`].
    pub fn keys(&self) -> usize {
        self.puts.len() + self.deletes.len()
    }

    /// Key and value bytes in the batch, as the page store counts them against
    /// [`lakebed_pageserver_api::limits::MAX_BATCH_BYTES`].
    pub fn bytes(&self) -> usize {
        self.puts
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.deletes.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// The page store calls pagefs makes. Errors are [`RpcError`]s whatever the transport, so
/// pagefs tells fencing ([`RpcError::StaleGeneration`], [`RpcError::GenerationNotAcquired`])
/// from other failures the same way in tests and in production.
pub trait PageStore: Send + Sync {
    /// Reads `keys` of `timeline` at seq `at` (default: the newest); one value per key, in
    /// order, `None` for an absent key.
    fn read<'a>(
        &'a self,
        timeline: &'a TimelineId,
        keys: Vec<Bytes>,
        at: Option<Seq>,
    ) -> BoxFuture<'a, Result<ReadResult, RpcError>>;

    /// Applies `batch` to `timeline` atomically under `generation`; returns its seq once
    /// durable. Nothing is changed on any error.
    fn write<'a>(
        &'a self,
        timeline: &'a TimelineId,
        generation: Generation,
        batch: Batch,
    ) -> BoxFuture<'a, Result<Seq, RpcError>>;

    /// One page of the keys of `timeline` in `[start, end)` (`end` `None`: unbounded) at
    /// seq `at` (default: the newest), at most `limit` entries (0: the page store's
    /// maximum, [`MAX_SCAN_ENTRIES`]).
    ///
    /// [`MAX_SCAN_ENTRIES`]: lakebed_pageserver_api::limits::MAX_SCAN_ENTRIES
    fn scan<'a>(
        &'a self,
        timeline: &'a TimelineId,
        start: &'a [u8],
        end: Option<&'a [u8]>,
        at: Option<Seq>,
        limit: u32,
    ) -> BoxFuture<'a, Result<ScanPage, RpcError>>;

    /// Every key of `timeline` in `[start, end)` at one seq (`at`, default the newest at the
    /// first page), scanning page by page. Returns the seq and the entries.
    fn scan_all<'a>(
        &'a self,
        timeline: &'a TimelineId,
        start: &'a [u8],
        end: Option<&'a [u8]>,
        at: Option<Seq>,
    ) -> BoxFuture<'a, Result<(Seq, Entries), RpcError>> {
        Box::pin(async move {
            let mut page = self.scan(timeline, start, end, at, 0).await?;
            let seq = page.seq;
            let mut entries = Vec::new();
            loop {
                let more = page.more;
                let next = page.entries.last().map(|(k, _)| {
                    let mut k = k.to_vec();
                    k.push(0);
                    k
                });
                entries.extend(page.entries);
                match next {
                    Some(next) if more => {
                        page = self.scan(timeline, &next, end, Some(seq), 0).await?;
                    }
                    _ => return Ok((seq, entries)),
                }
            }
        })
    }
}

impl PageStore for PageStoreClient {
    fn read<'a>(
        &'a self,
        timeline: &'a TimelineId,
        keys: Vec<Bytes>,
        at: Option<Seq>,
    ) -> BoxFuture<'a, Result<ReadResult, RpcError>> {
        Box::pin(PageStoreClient::read(self, timeline, keys, at))
    }

    fn write<'a>(
        &'a self,
        timeline: &'a TimelineId,
        generation: Generation,
        batch: Batch,
    ) -> BoxFuture<'a, Result<Seq, RpcError>> {
        let mut wire = WriteBatch::new();
        for (k, v) in batch.puts {
            wire = wire.put(k, v);
        }
        for k in batch.deletes {
            wire = wire.delete(k);
        }
        Box::pin(PageStoreClient::write(self, timeline, generation, wire))
    }

    fn scan<'a>(
        &'a self,
        timeline: &'a TimelineId,
        start: &'a [u8],
        end: Option<&'a [u8]>,
        at: Option<Seq>,
        limit: u32,
    ) -> BoxFuture<'a, Result<ScanPage, RpcError>> {
        Box::pin(PageStoreClient::scan(self, timeline, start, end, at, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_keys_and_bytes_as_the_page_store_does() {
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.push(Bytes::from_static(b"ab"), Some(Bytes::from_static(b"xyz")));
        b.push(Bytes::from_static(b"cdef"), None);
        assert_eq!(b.keys(), 2);
        // Puts count key and value, deletes their key.
        assert_eq!(b.bytes(), 2 + 3 + 4);
        assert!(!b.is_empty());
    }
}
