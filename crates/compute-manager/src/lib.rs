//! The Lakebed compute manager: the control plane.
//!
//! It owns the catalog (tenants, endpoints, roles, autosuspend policies, boot history), turns
//! an endpoint into a running PostgreSQL server when asked to ([`Manager::wake`]), and back into
//! nothing when the endpoint's autosuspend policy says so ([`activity`]). It serves an HTTP API
//! ([`api`]) that the `lakebed` CLI and, later, the proxy call.
//!
//! The story, one module each:
//! - [`catalog`]: durable state in SQLite (rusqlite, bundled: a well-kept engine, crash-safe
//!   in WAL mode with `synchronous=FULL`, no server to run).
//! - [`verifier`]: SCRAM-SHA-256 verifiers; the catalog never holds a password.
//! - [`postgres`]: finding Debian's PostgreSQL binaries, initdb, the files we own in PGDATA,
//!   starting and stopping one postmaster as an unprivileged OS user.
//! - [`compute`]: the state a compute is in, as a type, and what a client may see of it.
//! - [`manager`]: wake and suspend, serialised per endpoint so concurrent wakes share one start.
//! - [`steps`]: where the time of each wake went, step by step.
//! - `warm_pool`: pagefs processes started ahead of wakes, tenant-free until handed a mount.
//! - [`activity`]: the autosuspend monitor that polls `pg_stat_activity`.
//! - [`reconcile`]: what a restarted manager does with computes a crashed one left behind.
//! - [`api`]: the axum HTTP API with bearer-token auth and JSON errors.
//!
//! Dependencies point one way: this crate uses `lakebed-config`, and `lakebed-telemetry` to
//! continue a caller's trace (OpenTelemetry, the vendor-neutral standard: see there), and
//! nothing else of Lakebed.

pub mod activity;
pub mod api;
pub mod catalog;
pub mod compute;
mod error;
pub mod manager;
pub mod postgres;
pub mod reconcile;
pub mod steps;
pub mod storage;
pub mod tenant_keys;
pub mod verifier;
mod warm_pool;

pub use error::{ErrorCode, ManagerError};
pub use manager::{ComputeTls, Manager, ManagerOptions, WakeOutcome};
pub use storage::{PageStoreOptions, PagefsStats};
pub use tenant_keys::{KeyOptions, KeysView};
