//! How a data directory is laid out in a timeline's keyspace.
//!
//! The page store stores opaque values under opaque keys; this module is the one place that
//! gives them meaning. Files are known by inode number, so a rename changes one directory
//! entry and no page moves:
//!
//! | key                                   | value                                   |
//! |---------------------------------------|-----------------------------------------|
//! | `i` ino (u64 BE)                      | the inode record ([`InodeRecord`])      |
//! | `d` parent ino (u64 BE) name bytes    | the child's ino (u64 BE)                |
//! | `p` ino (u64 BE) block (u64 BE)       | the block: [`BLOCK_SIZE`] bytes         |
//!
//! Under a tenant DEK ([`super::data_key`]) every value is sealed, and a directory entry's key
//! holds a 16-byte HMAC of the name instead of the name; its value is then the child's ino
//! followed by the name.
//!
//! A block that has no key reads as zeros (a hole). Inode numbers are never reused: a compute
//! allocates `generation << 32 | n` for n = 1, 2, ..., and generations only grow, so pages of
//! a deleted file can never be mistaken for another file's. The root directory is ino 1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Size of a block: Postgres's page size (`BLCKSZ`) and WAL page size, so each Postgres
/// write is one whole block.
pub const BLOCK_SIZE: usize = 8192;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;

/// Key prefixes.
const INODE: u8 = b'i';
const DIRENT: u8 = b'd';
const PAGE: u8 = b'p';

/// The key of the re-seal mark: the newest DEK version every value of the timeline (and of
/// its ancestors, up to its branch point) is sealed under, written once a re-seal went
/// through the whole timeline (see `fs::reseal`). Outside the inode, entry and page ranges.
pub const RESEAL_MARK: &[u8] = b"s";

/// The key of the heat list: the pages the last compute read, in the order it first read
/// them, for the next one to prewarm (see `fs::prewarm`). Outside the other ranges.
pub const HEAT: &[u8] = b"h";

/// The key of inode `ino`'s record.
pub fn inode_key(ino: u64) -> Bytes {
    let mut k = BytesMut::with_capacity(9);
    k.put_u8(INODE);
    k.put_u64(ino);
    k.freeze()
}

/// The key of the entry `name` in directory `parent`.
pub fn dirent_key(parent: u64, name: &[u8]) -> Bytes {
    let mut k = BytesMut::with_capacity(9 + name.len());
    k.put_u8(DIRENT);
    k.put_u64(parent);
    k.put_slice(name);
    k.freeze()
}

/// The key of block `block` of inode `ino`.
pub fn page_key(ino: u64, block: u64) -> Bytes {
    let mut k = BytesMut::with_capacity(17);
    k.put_u8(PAGE);
    k.put_u64(ino);
    k.put_u64(block);
    k.freeze()
}

/// The key range `[start, end)` holding every inode record.
pub fn inode_range() -> ([u8; 1], [u8; 1]) {
    ([INODE], [INODE + 1])
}

/// The key range `[start, end)` holding every directory entry.
pub fn dirent_range() -> ([u8; 1], [u8; 1]) {
    ([DIRENT], [DIRENT + 1])
}

/// Parses an inode record key; `None` if it is not one.
pub fn parse_inode_key(key: &[u8]) -> Option<u64> {
    match key {
        [INODE, rest @ ..] if rest.len() == 8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Parses a directory entry key and value into `(parent, name, child)`.
pub fn parse_dirent(key: &[u8], value: &[u8]) -> Option<(u64, Vec<u8>, u64)> {
    if key.len() < 10 || key[0] != DIRENT || value.len() != 8 {
        return None;
    }
    let parent = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let child = u64::from_be_bytes(value.try_into().ok()?);
    Some((parent, key[9..].to_vec(), child))
}

/// Parses a page key into `(ino, block)`.
pub fn parse_page_key(key: &[u8]) -> Option<(u64, u64)> {
    match key {
        [PAGE, rest @ ..] if rest.len() == 16 => Some((
            u64::from_be_bytes(rest[..8].try_into().ok()?),
            u64::from_be_bytes(rest[8..].try_into().ok()?),
        )),
        _ => None,
    }
}

/// Splits a directory entry key into the parent and the rest (the name, or under a DEK the
/// name's 16-byte HMAC).
pub fn parse_dirent_key(key: &[u8]) -> Option<(u64, &[u8])> {
    if key.len() < 10 || key[0] != DIRENT {
        return None;
    }
    Some((u64::from_be_bytes(key[1..9].try_into().ok()?), &key[9..]))
}

/// The plaintext of a sealed directory entry's value: the child's ino, then the name.
pub fn sealed_dirent_value(child: u64, name: &[u8]) -> Bytes {
    let mut v = BytesMut::with_capacity(8 + name.len());
    v.put_u64(child);
    v.put_slice(name);
    v.freeze()
}

/// Parses [`sealed_dirent_value`]'s output into `(child, name)`.
pub fn parse_sealed_dirent_value(v: &[u8]) -> Option<(u64, &[u8])> {
    if v.len() < 9 {
        return None;
    }
    Some((u64::from_be_bytes(v[..8].try_into().ok()?), &v[8..]))
}

/// Encodes a directory entry's value.
pub fn dirent_value(child: u64) -> Bytes {
    Bytes::copy_from_slice(&child.to_be_bytes())
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// An inode's persistent attributes. Owner and group are not stored: every file belongs to
/// the compute's OS user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeRecord {
    /// File or directory.
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

/// Version byte of the record encoding.
const RECORD_V1: u8 = 1;
/// Encoded length: version, kind, mode, size, mtime and ctime as nanoseconds.
const RECORD_LEN: usize = 1 + 1 + 4 + 8 + 8 + 8;

impl InodeRecord {
    /// The record's value bytes.
    pub fn encode(&self) -> Bytes {
        let mut v = BytesMut::with_capacity(RECORD_LEN);
        v.put_u8(RECORD_V1);
        v.put_u8(match self.kind {
            Kind::File => 1,
            Kind::Directory => 2,
        });
        v.put_u32(self.mode);
        v.put_u64(self.size);
        v.put_u64(nanos(self.mtime));
        v.put_u64(nanos(self.ctime));
        v.freeze()
    }

    /// Decodes a record; `None` if the bytes are not one.
    pub fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != RECORD_LEN || v[0] != RECORD_V1 {
            return None;
        }
        let kind = match v[1] {
            1 => Kind::File,
            2 => Kind::Directory,
            _ => return None,
        };
        let u64_at = |i: usize| v[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        Some(Self {
            kind,
            mode: u32::from_be_bytes(v[2..6].try_into().ok()?),
            size: u64_at(6)?,
            mtime: UNIX_EPOCH + Duration::from_nanos(u64_at(14)?),
            ctime: UNIX_EPOCH + Duration::from_nanos(u64_at(22)?),
        })
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The number of blocks a file of `size` bytes spans.
pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn record_round_trip() {
        let r = InodeRecord {
            kind: Kind::File,
            mode: 0o600,
            size: 123_456,
            mtime: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            ctime: UNIX_EPOCH + Duration::from_secs(5),
        };
        assert_eq!(InodeRecord::decode(&r.encode()), Some(r));
        assert_eq!(InodeRecord::decode(b"short"), None);
    }

    #[test]
    fn keys() {
        assert_eq!(parse_inode_key(&inode_key(42)), Some(42));
        assert_eq!(parse_inode_key(&page_key(42, 1)), None);
        let k = dirent_key(7, b"base");
        assert_eq!(
            parse_dirent(&k, &dirent_value(9)),
            Some((7, b"base".to_vec(), 9))
        );
        // Every record and entry sorts inside its range.
        let (s, e) = dirent_range();
        assert!(k.as_ref() >= &s[..] && k.as_ref() < &e[..]);
        assert_eq!(blocks_for(0), 0);
        assert_eq!(blocks_for(1), 1);
        assert_eq!(blocks_for(8192), 1);
        assert_eq!(blocks_for(8193), 2);
    }
}
