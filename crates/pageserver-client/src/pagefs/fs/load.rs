//! Mounting: the whole namespace is read from the page store once, at one seq.
//!
//! A data directory has a few thousand inodes and entries, so two scans (inode records,
//! then directory entries at the same seq) load it all, and every later lookup, readdir and
//! rename is answered from memory. Records that do not decode (or do not open under the
//! tenant's key) refuse the mount rather than hide files; entries that point at nothing are
//! skipped, since nothing can reach them.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use lakebed_pageserver_api::{Generation, TimelineId};
use tokio::sync::Notify;

use super::heat::Heat;
use super::prefetch::Prefetch;
use super::staged::{self, Staged};
use super::state::{Node, State};
use super::stats::IoStats;
use super::{Options, PageFs};
use crate::pagefs::cache::{Cache, Scratch};
use crate::pagefs::data_key::{DataKeys, ValueKind};
use crate::pagefs::layout::{self, InodeRecord, Kind, ROOT_INO};
use crate::pagefs::store::PageStore;
use crate::rpc::RpcError;

impl PageFs {
    /// Loads the namespace of `timeline` (at its newest seq) from `store` and returns the
    /// filesystem, writing with `generation` (which the caller acquired). An empty timeline
    /// gets a root directory with mode 0700.
    ///
    /// `store` is normally a [`crate::PageStoreClient`]; tests pass the storage engine
    /// in-process.
    ///
    /// # Errors
    ///
    /// The page store's error; [`RpcError::Protocol`] for records that do not decode, or for
    /// an inode number this generation (or a later one) would hand out.
    pub async fn load(
        store: impl PageStore + 'static,
        timeline: TimelineId,
        generation: Generation,
        options: Options,
        cache: Cache,
        scratch: Scratch,
        keys: Option<DataKeys>,
    ) -> Result<Self, RpcError> {
        let unsealed = |kind: ValueKind, v: &Bytes| -> Result<Bytes, RpcError> {
            match &keys {
                None => Ok(v.clone()),
                Some(k) => k.open(kind, v).map_err(|e| {
                    RpcError::Protocol(format!("a namespace record under the tenant's key: {e}"))
                }),
            }
        };
        let (start, end) = layout::inode_range();
        let (seq, records) = store.scan_all(&timeline, &start, Some(&end), None).await?;
        let (start, end) = layout::dirent_range();
        let (_, dirents) = store
            .scan_all(&timeline, &start, Some(&end), Some(seq))
            .await?;

        let mut nodes = HashMap::new();
        for (k, v) in &records {
            let rec = layout::parse_inode_key(k).map(|ino| {
                let v = unsealed(ValueKind::Inode { ino }, v);
                v.map(|v| InodeRecord::decode(&v).map(|rec| (ino, rec)))
            });
            let Some(Some((ino, rec))) = rec.transpose()? else {
                return Err(RpcError::Protocol(format!(
                    "undecodable inode record {k:?}"
                )));
            };
            nodes.insert(ino, Node::new(rec, ROOT_INO, false));
        }
        let first_ino = (u64::from(generation.0) << 32) | 1;
        // Inodes are named after the generation that made them; one from this generation or
        // a later one means the timeline was written under a generation we do not hold.
        if let Some(&ino) = nodes.keys().find(|&&ino| ino >= first_ino) {
            return Err(RpcError::Protocol(format!(
                "inode {ino:#x} is not older than generation {generation}: refusing to mount"
            )));
        }
        let mut state = State {
            next_ino: first_ino,
            heat: Heat::new(cache.capacity()),
            staged: Staged::new(staged::bound(cache.capacity())),
            ..State::default()
        };
        // An empty timeline: a root directory, to be written at the first flush.
        if let std::collections::hash_map::Entry::Vacant(root) = nodes.entry(ROOT_INO) {
            let now = SystemTime::now();
            let rec = InodeRecord {
                kind: Kind::Directory,
                mode: 0o700,
                size: 0,
                mtime: now,
                ctime: now,
            };
            root.insert(Node::new(rec, ROOT_INO, false));
            let v = state.bump();
            state.inodes.insert(ROOT_INO, v);
        }
        for (k, v) in &dirents {
            let entry = match (&keys, layout::parse_dirent_key(k)) {
                (Some(_), Some((parent, mac))) => {
                    let name_mac: [u8; 16] = mac.try_into().map_err(|_| {
                        RpcError::Protocol(format!("undecodable directory entry {k:?}"))
                    })?;
                    let v = unsealed(ValueKind::Dirent { parent, name_mac }, v)?;
                    layout::parse_sealed_dirent_value(&v)
                        .map(|(child, name)| (parent, name.to_vec(), child))
                }
                (None, _) => layout::parse_dirent(k, v),
                (Some(_), None) => None,
            };
            let Some((parent, name, child)) = entry else {
                return Err(RpcError::Protocol(format!(
                    "undecodable directory entry {k:?}"
                )));
            };
            // Entries whose inode or parent is missing are skipped: nothing reaches them.
            if !nodes.contains_key(&child) || !nodes.get(&parent).is_some_and(Node::is_dir) {
                continue;
            }
            if let Some(c) = nodes.get_mut(&child) {
                c.parent = parent;
                if parent == ROOT_INO && name == b"pg_stat_tmp" {
                    c.scratch_children = true;
                }
            }
            if parent == ROOT_INO && name == b"pg_wal" {
                state.wal_dir = Some(child);
            }
            if let Some(p) = nodes.get_mut(&parent) {
                p.children.insert(name, child);
            }
        }
        state.nodes = nodes;
        tracing::info!(
            %timeline, %generation, %seq, inodes = state.nodes.len(),
            "namespace loaded"
        );
        Ok(Self {
            store: Box::new(store),
            timeline,
            generation,
            options,
            state: Mutex::new(state),
            cache,
            scratch,
            flush_lock: tokio::sync::Mutex::new(()),
            rider_lock: tokio::sync::Mutex::new(()),
            flight: Mutex::new(None),
            fenced: AtomicBool::new(false),
            flush_wanted: Notify::new(),
            io: IoStats::default(),
            prefetch: Prefetch::default(),
            keys: keys.map(Arc::new),
            prewarming: Default::default(),
            mountpoint: std::sync::OnceLock::new(),
            kernel_warmer: Arc::default(),
        })
    }
}
