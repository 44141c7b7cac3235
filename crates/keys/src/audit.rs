//! [`AuditLog`]: an append-only JSON-lines record of every key operation Lakebed performs,
//! for the operator and the customer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::KmsError;

/// What was done with a tenant's key. Serialized in snake_case (`"generate_data_key"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOperation {
    /// A wrapped DEK was unwrapped (a compute starting).
    Unwrap,
    /// A new DEK was generated and wrapped (a tenant created, or a rekey started).
    GenerateDataKey,
    /// The CMK's key material was rotated, or automatic rotation enabled.
    Rotate,
    /// The tenant's CMK reference was set or changed.
    SetCmk,
    /// Data was re-encrypted under a new DEK (progress numbers in `detail`).
    Rekey,
    /// A key check found the CMK disabled, deleted or inaccessible.
    RevocationSeen,
    /// A compute was stopped because its tenant's key was revoked.
    ComputeStopped,
}

/// Whether the operation succeeded. Serialized as `"ok"` or `"error"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It succeeded.
    Ok,
    /// It failed; [`AuditEvent::error`] says why.
    Error,
}

/// One line of the audit log. Never holds key material: only ids, names, outcome and
/// error text ([`KmsError`] messages never contain key bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, as RFC 3339 in UTC with millisecond precision (`2026-03-01T12:00:00.123Z`).
    pub time: String,
    /// The tenant whose key it was.
    pub tenant: String,
    /// The CMK (an ARN for AWS KMS, `local` for the local provider).
    pub key_id: String,
    /// What was done.
    pub operation: AuditOperation,
    /// Whether it worked.
    pub outcome: AuditOutcome,
    /// The error message when `outcome` is `error`, else `null`.
    pub error: Option<String>,
    /// Extra numbers or names (e.g. `{"pages_done": 100, "pages_total": 4096}`); `null`
    /// when there are none.
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    /// A successful `operation`, timed now.
    pub fn ok(tenant: &str, key_id: &str, operation: AuditOperation) -> Self {
        Self {
            time: now_rfc3339(),
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
            operation,
            outcome: AuditOutcome::Ok,
            error: None,
            detail: None,
        }
    }

    /// A failed `operation`, timed now, with `error`'s message.
    pub fn error(tenant: &str, key_id: &str, operation: AuditOperation, error: &KmsError) -> Self {
        Self::failed(tenant, key_id, operation, error.to_string())
    }

    /// A failed `operation`, timed now, with a message of the caller's. Never pass key
    /// material.
    pub fn failed(tenant: &str, key_id: &str, operation: AuditOperation, message: String) -> Self {
        Self {
            outcome: AuditOutcome::Error,
            error: Some(message),
            ..Self::ok(tenant, key_id, operation)
        }
    }

    /// The same event with `detail` set.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// The current time as RFC 3339 UTC, milliseconds.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Why the audit log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening, writing, syncing or reading the file failed.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A line is not a valid [`AuditEvent`] (when reading).
    #[error("audit log {} line {line}: {source}", path.display())]
    Parse {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The event could not be encoded (a `detail` that is not representable as JSON).
    #[error("audit event could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
}

/// An append-only audit log: one JSON object per line ([`AuditEvent`]).
///
/// # Durability
///
/// The file is opened with `O_APPEND` and created with mode 0600 (an existing file keeps its
/// mode). [`record`](Self::record) writes each event with a single `write(2)` of one whole
/// line, so records from several threads or processes never interleave, and then calls
/// `fdatasync(2)`: when `record` returns `Ok`, the line survives a crash or power loss. The
/// directory is fsynced when the file is created, so the file itself survives too.
///
/// `record` blocks for the fsync (typically well under 10 ms on local disks); from async
/// code call it inside `tokio::task::spawn_blocking` or accept the short stall.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens the log at `path` for appending, creating it (mode 0600) if missing. The parent
    /// directory must exist.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] if the file can not be opened or created.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        if !existed {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        Ok(AuditLog { path, file })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` as one line and makes it durable (see [Durability](Self#durability)).
    ///
    /// # Errors
    ///
    /// [`AuditError::Encode`] if `detail` can not be encoded; [`AuditError::Io`] if the write
    /// fails or is short (disk full: the file may then end with a partial line, which
    /// [`read_all`](Self::read_all) reports), or if the sync fails.
    pub fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(event).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let written = (&self.file).write(&line).map_err(io_err)?;
        if written != line.len() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", line.len()),
            )));
        }
        self.file.sync_data().map_err(io_err)
    }

    /// Reads every event in the log at `path`, in order. Empty lines are skipped.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`] if the file can not be read; [`AuditError::Parse`] naming the
    /// first line that is not a valid event.
    pub fn read_all(path: impl AsRef<Path>) -> Result<Vec<AuditEvent>, AuditError> {
        let path = path.as_ref();
        let io_err = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let reader = BufReader::new(File::open(path).map_err(io_err)?);
        let mut events = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(io_err)?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| AuditError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?;
            events.push(event);
        }
        Ok(events)
    }
}
