//! The states of an endpoint's compute, and what API clients see of them.
//!
//! ```text
//!             wake                  ready
//! Suspended ───────▶ Starting ───────────▶ Active ──── idle past timeout / suspend ───▶ Suspending
//!     ▲                 │                   │                                             │
//!     │                 │ error             │ postgres exited                             │
//!     │                 ▼                   ▼                                             │
//!     │               Failed ◀──────────────┘                                             │
//!     │                 │ wake (tries again)                                              │
//!     └─────────────────┴─────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Transitions happen only while holding the endpoint's lifecycle lock (see [`crate::manager`]),
//! so `Starting` and `Suspending` are visible to readers but never overlap.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::postgres::sql::Activity;

/// The state of an endpoint's compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeState {
    /// No compute runs. A wake starts one.
    Suspended,
    /// A compute is being started: initdb (first boot), postmaster start, roles.
    Starting,
    /// Postgres accepts connections at the address given.
    Active,
    /// Checkpointing and shutting down.
    Suspending,
    /// The last start failed, or Postgres exited on its own. A wake tries again.
    Failed,
}

impl ComputeState {
    /// The state's name, as in the API and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Suspended => "suspended",
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Suspending => "suspending",
            Self::Failed => "failed",
        }
    }

    /// Whether the lifecycle may go from `self` to `to` (the diagram above).
    pub fn can_become(self, to: ComputeState) -> bool {
        use ComputeState::*;
        matches!(
            (self, to),
            (Suspended | Failed, Starting)
                | (Starting, Active | Failed)
                | (Active, Suspending | Failed)
                | (Suspending, Suspended | Failed)
        )
    }
}

/// Why a compute is in [`ComputeState::Failed`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// One line: what went wrong.
    pub reason: String,
    /// The end of the Postgres (or initdb) log.
    pub log_tail: String,
}

/// What the autosuspend monitor decided at its last check of an active compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Sessions, autovacuum or WAL senders are present: the idle clock restarts.
    Busy {
        /// What was seen.
        activity: Activity,
    },
    /// Idle, but not yet for the whole timeout.
    Idle {
        /// How long it has been idle, in milliseconds.
        idle_ms: u64,
        /// The policy's timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// Idle, but a keep-warm window covers now.
    KeepWarm {
        /// The window, as configured.
        window: String,
    },
    /// The policy's `suspend_timeout` is `never`.
    Never,
    /// Idle past the timeout, but the re-check right before stopping found activity.
    Aborted {
        /// What the re-check saw.
        activity: Activity,
    },
    /// Suspended for idleness.
    Suspended {
        /// How long it had been idle, in milliseconds.
        idle_ms: u64,
    },
    /// The compute could not be queried; it is left running.
    Unreachable {
        /// The error.
        error: String,
    },
}

/// The autosuspend monitor's view of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AutosuspendStatus {
    /// How many checks the monitor has made of this endpoint since the manager started.
    pub checks: u64,
    /// The last decision, if any.
    pub last: Option<Decision>,
}

/// A snapshot of an endpoint's compute, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputeStatus {
    /// The current state.
    pub state: ComputeState,
    /// When it entered that state.
    pub since: DateTime<Utc>,
    /// Where Postgres listens (only while active).
    pub address: Option<SocketAddr>,
    /// The postmaster's pid (while starting, active or suspending).
    pub pid: Option<u32>,
    /// Why it failed (only when failed).
    pub failure: Option<Failure>,
    /// The autosuspend monitor's view.
    pub autosuspend: AutosuspendStatus,
}

impl ComputeStatus {
    /// A suspended compute, as of now.
    pub fn suspended() -> Self {
        Self {
            state: ComputeState::Suspended,
            since: Utc::now(),
            address: None,
            pid: None,
            failure: None,
            autosuspend: AutosuspendStatus::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ComputeState::*;

    #[test]
    fn transitions_follow_the_diagram() {
        assert!(Suspended.can_become(Starting));
        assert!(Failed.can_become(Starting));
        assert!(Starting.can_become(Active));
        assert!(Active.can_become(Suspending));
        assert!(Suspending.can_become(Suspended));
        assert!(!Suspended.can_become(Active));
        assert!(!Active.can_become(Starting));
        assert!(!Suspending.can_become(Active));
    }
}
