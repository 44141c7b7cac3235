//! [`StoreError`]: what can go wrong in a store operation, split into the caller's doing
//! (nothing changed) and the store's (I/O, corruption).

use std::path::PathBuf;

use lakebed_pageserver_api::{Generation, Seq, TimelineId};

/// What went wrong in a store operation. Every variant but [`StoreError::Io`],
/// [`StoreError::DiskFull`], [`StoreError::Corrupt`] and [`StoreError::Open`] is the caller's
/// doing; on every error of a write, nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The timeline does not exist.
    #[error("timeline {0} does not exist")]
    NotFound(TimelineId),
    /// The parent named for a new branch does not exist.
    #[error("parent timeline {0} does not exist")]
    ParentNotFound(TimelineId),
    /// A timeline with this id exists already.
    #[error("timeline {0} already exists")]
    AlreadyExists(TimelineId),
    /// The write carried a generation older than the timeline's: a newer compute has acquired
    /// the timeline.
    #[error("timeline {timeline}: stale generation {sent} < {current}")]
    StaleGeneration {
        /// The timeline written to.
        timeline: TimelineId,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// The write carried a generation newer than the timeline's: nobody acquired it.
    #[error("timeline {timeline}: generation {sent} was never acquired (current is {current})")]
    NotAcquired {
        /// The timeline written to.
        timeline: TimelineId,
        /// The generation the write carried.
        sent: Generation,
        /// The timeline's current generation.
        current: Generation,
    },
    /// A read or branch asked for a seq the timeline has not reached.
    #[error("timeline {timeline}: seq {asked} is beyond its last seq {last}")]
    SeqBeyondLast {
        /// The timeline.
        timeline: TimelineId,
        /// The seq asked for.
        asked: Seq,
        /// The timeline's last seq.
        last: Seq,
    },
    /// A read or branch asked for a seq below the timeline's GC horizon: that history is
    /// outside `pageserver.history_retention` and may have been collected.
    #[error(
        "timeline {timeline}: seq {asked} is below the GC horizon {horizon} \
         (history is kept for pageserver.history_retention)"
    )]
    BelowHorizon {
        /// The timeline.
        timeline: TimelineId,
        /// The seq asked for.
        asked: Seq,
        /// The oldest seq still readable.
        horizon: Seq,
    },
    /// Deleting a timeline that branches depend on.
    #[error("timeline {timeline} has branches ({children}): delete them first")]
    HasBranches {
        /// The timeline.
        timeline: TimelineId,
        /// The branches' ids, comma-separated.
        children: String,
    },
    /// Generation or seq would pass its type's maximum.
    #[error("timeline {timeline}: {what} is exhausted")]
    Exhausted {
        /// The timeline.
        timeline: TimelineId,
        /// `"generation"` or `"seq"`.
        what: &'static str,
    },
    /// A limit was exceeded or the request is malformed; the message names the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The data directory or a store file could not be created, opened or locked.
    #[error("cannot open the page store at {path}: {reason}")]
    Open {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file system has no space left. Nothing was written; the same call succeeds once
    /// space returns.
    #[error("the page store's disk is full ({path})")]
    DiskFull {
        /// The file that could not grow.
        path: PathBuf,
    },
    /// Reading or writing a store file failed.
    #[error("page store I/O on {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A store file does not decode or fails its checksum: it is never served as data.
    #[error("corrupt page store file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store is shutting down (its background threads are gone).
    #[error("the page store is shutting down")]
    ShuttingDown,
}

impl StoreError {
    /// An I/O error on `path`, told apart as [`StoreError::DiskFull`] when the disk is full.
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        let path = path.into();
        if error.raw_os_error() == Some(libc_enospc())
            || error.kind() == std::io::ErrorKind::StorageFull
        {
            StoreError::DiskFull { path }
        } else {
            StoreError::Io { path, error }
        }
    }

    /// A corrupt-file error.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `ENOSPC` (28 on Linux), without a libc dependency for one number.
const fn libc_enospc() -> i32 {
    28
}
