//! The page store's interface, shared by the server (`lakebed-pageserver`) and the client
//! (`lakebed-pageserver-client`): the gRPC messages and service stubs in [`proto`], generated
//! at build time from `proto/pagestore.proto`, plus the domain types both sides validate into
//! ([`TimelineId`], [`Generation`], [`Seq`]) and the [`limits`] the server enforces.
//!
//! Why a crate of its own: the server must not depend on the client crate (which will carry
//! pagefs and FUSE), nor the client on the server's storage engine; both need the same wire
//! types. This keeps it slim, as Neon's `page_api` does.
//!
//! Why protox: it is a protobuf compiler written in Rust, so building needs no system `protoc`.
//! The generated code is not checked in; `build.rs` regenerates it.

use std::fmt;
use std::str::FromStr;

/// Generated protobuf messages and tonic stubs for `lakebed.pagestore.v1`.
///
/// `bytes` fields are [`bytes::Bytes`](prost::bytes::Bytes), so values decoded from a
/// request share its buffer instead of being copied.
pub mod codec;

#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/lakebed.pagestore.v1.rs"));
}

/// An error and its sources, joined with `: `, each source once (tonic's transport and TLS
/// errors say little at the top level). Shared by the server and the client.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Sizes the server enforces. A request past one of them is refused with
/// `INVALID_ARGUMENT` and a message naming the limit; nothing is changed.
pub mod limits {
    /// Largest key: 1 KiB.
    pub const MAX_KEY_BYTES: usize = 1024;
    /// Largest value: 1 MiB.
    pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
    /// Largest write batch: 64 MiB, counting every key and value byte of its puts and deletes.
    pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
    /// Most keys in one write batch (puts plus deletes).
    pub const MAX_BATCH_KEYS: usize = 65_536;
    /// Most keys in one read.
    pub const MAX_READ_KEYS: usize = 8192;
    /// Most value bytes in one read or scan response: 64 MiB. A read that would exceed it is
    /// refused; a scan stops early with `more = true`.
    pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
    /// Most entries in one scan response (also what `limit = 0` means).
    pub const MAX_SCAN_ENTRIES: u32 = 10_000;
    /// Largest gRPC message either side accepts: a full batch plus room for framing.
    pub const MAX_MESSAGE_BYTES: usize = MAX_BATCH_BYTES + 4 * 1024 * 1024;
}

/// HTTP/2 settings both ends of the page store's gRPC connection use (RFC 9113 section 6.5.2
/// and 6.9). With h2's defaults (64 KiB windows, 16 KiB frames) an 8 MiB `Scan` answer, a
/// pagefs readahead window, waits for a window update every 64 KiB and goes out in 512
/// frames: a round trip through both processes per 64 KiB, which capped a cold sequential
/// scan at about 75 MB/s.
pub mod http2 {
    /// Flow control window of one stream: a whole readahead answer or write batch at once.
    pub const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
    /// Flow control window of the connection, shared by its streams.
    pub const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;
    /// Largest frame a peer may send (the protocol's upper bound is 16 MiB - 1).
    pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;
}

/// Longest timeline id, in characters.
const MAX_ID_LEN: usize = 63;

/// The id of a timeline: 1 to 63 characters from `a-z`, `0-9` and `-`, not starting or
/// ending with `-` (the shape of an endpoint name, so one can be used as the other).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(String);

/// Why a string is not a valid [`TimelineId`]. Messages quote the input and say what is
/// allowed, e.g. `timeline id "Main": only lowercase letters, digits and '-' are allowed
/// (found 'M')`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelineIdError {
    /// Empty or longer than 63 characters.
    #[error("timeline id {0:?}: must be 1 to 63 characters")]
    Length(String),
    /// A character outside `a-z`, `0-9`, `-`.
    #[error(
        "timeline id {id:?}: only lowercase letters, digits and '-' are allowed (found {found:?})"
    )]
    InvalidChar {
        /// The rejected input.
        id: String,
        /// The first character not allowed.
        found: char,
    },
    /// Starts or ends with `-`.
    #[error("timeline id {0:?}: must not start or end with '-'")]
    EdgeHyphen(String),
}

impl TimelineId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TimelineId {
    type Err = TimelineIdError;

    fn from_str(s: &str) -> Result<Self, TimelineIdError> {
        if s.is_empty() || s.chars().count() > MAX_ID_LEN {
            // Don't echo an arbitrarily long input back in full.
            let shown: String = s.chars().take(MAX_ID_LEN + 1).collect();
            return Err(TimelineIdError::Length(shown));
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(TimelineIdError::InvalidChar {
                id: s.to_owned(),
                found,
            });
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(TimelineIdError::EdgeHyphen(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<&str> for TimelineId {
    type Error = TimelineIdError;

    fn try_from(s: &str) -> Result<Self, TimelineIdError> {
        s.parse()
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fencing number. Each compute boot acquires the next generation of its timeline; the page
/// store then refuses writes carrying any other (older) generation, so a compute that lost its
/// timeline to a newer one cannot change it (no split brain). A new root timeline is at
/// generation 0; a branch starts at its parent's generation at the time of branching, so
/// every generation acquired on the branch is above those that wrote what it inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation(pub u32);

impl Generation {
    /// The generation after this one, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<Generation> {
        self.0.checked_add(1).map(Generation)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A write sequence number on a timeline. Every committed write batch gets the next seq
/// (the first write of a new root timeline gets 1); a read at seq `S` sees every batch with
/// seq ≤ `S`. A branch's seqs continue from its branch point, so seq 0 means "nothing written"
/// only on a root timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn timeline_ids() {
        for ok in ["a", "main", "ep-1", "0", &"x".repeat(63)] {
            assert_eq!(ok.parse::<TimelineId>().unwrap().as_str(), ok);
        }
        assert_eq!(
            "".parse::<TimelineId>().unwrap_err().to_string(),
            "timeline id \"\": must be 1 to 63 characters"
        );
        assert_eq!(
            "x".repeat(64).parse::<TimelineId>().unwrap_err(),
            TimelineIdError::Length("x".repeat(64))
        );
        assert_eq!(
            "Main".parse::<TimelineId>().unwrap_err().to_string(),
            "timeline id \"Main\": only lowercase letters, digits and '-' are allowed (found 'M')"
        );
        assert_eq!(
            "a/b".parse::<TimelineId>().unwrap_err(),
            TimelineIdError::InvalidChar {
                id: "a/b".into(),
                found: '/'
            }
        );
        assert_eq!(
            "-a".parse::<TimelineId>().unwrap_err().to_string(),
            "timeline id \"-a\": must not start or end with '-'"
        );
        assert!("a-".parse::<TimelineId>().is_err());
        assert!("é".parse::<TimelineId>().is_err());
    }

    #[test]
    fn generation_next() {
        assert_eq!(Generation(0).next(), Some(Generation(1)));
        assert_eq!(Generation(u32::MAX).next(), None);
    }
}

/// What one timeline's history collection did (`Gc` in `pagestore.proto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcTimeline {
    /// The timeline.
    pub timeline: TimelineId,
    /// The horizon it was collected at: reads and branches below it are refused.
    pub horizon: Seq,
    /// Versions (puts and tombstones) removed.
    pub versions_removed: u64,
}

/// What one history collection did, over one timeline or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Per timeline collected.
    pub timelines: Vec<GcTimeline>,
    /// Bytes of the page store's files on disk before.
    pub bytes_before: u64,
    /// Bytes of the page store's files on disk after.
    pub bytes_after: u64,
}
