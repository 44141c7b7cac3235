//! Where the time of a wake goes: each step of a boot, timed, kept in the boot history
//! (`recent_boots[].steps` of `lakebed endpoint show --json`) so a cold start can be
//! accounted for to the millisecond (`bench/coldstart.sh` reads it).

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How long each step of one boot took, in milliseconds, in the order they run. The cold
/// start less their sum is the wake's own overhead (the request, the endpoint's lock, the
/// boot record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeSteps {
    /// Unwrapping the tenant's DEKs with its CMK (AWS KMS `Decrypt`), when its pages are
    /// sealed.
    pub key_unwrap_ms: u64,
    /// Finding the endpoint's timeline in the page store (branching it from the template
    /// at its first boot).
    pub timeline_ms: u64,
    /// Starting pagefs (or handing a warm pool member its mount) until the mount is live.
    pub mount_ms: u64,
    /// Whether the pagefs was a warm pool member (`compute.warm_pool`); `false`: started
    /// for this wake (pool off, empty, or its members dead).
    #[serde(default)]
    pub pooled: bool,
    /// Warm pool members found dead at this wake, replaced and never handed out.
    #[serde(default)]
    pub dead_pool_members: u32,
    /// pagefs's own account of the mount, when on the page store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagefs: Option<PagefsSteps>,
    /// Starting the postmaster until it accepts the system role's connection.
    pub postgres_start_ms: u64,
    /// Applying the catalog's roles (a read when the compute already has them).
    pub roles_ms: u64,
}

/// pagefs's account of its mount (the JSON of its `ready` line), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagefsSteps {
    /// The `Acquire` call to the page store (fencing out older computes).
    pub acquire_ms: u64,
    /// Per-boot key, local cache, and the namespace load.
    pub load_ms: u64,
    /// The FUSE mount.
    pub fuse_ms: u64,
}

impl WakeSteps {
    /// One line for people: `key unwrap 1 ms, timeline 2 ms, ...`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "key unwrap {} ms, timeline {} ms, mount {} ms",
            self.key_unwrap_ms, self.timeline_ms, self.mount_ms
        );
        let mut notes = Vec::new();
        if let Some(p) = &self.pagefs {
            notes.push(if self.pooled { "pooled" } else { "spawned" }.to_owned());
            notes.push(format!(
                "acquire {}, load {}, fuse {}",
                p.acquire_ms, p.load_ms, p.fuse_ms
            ));
        }
        if self.dead_pool_members > 0 {
            notes.push(format!(
                "{} dead pool member(s) replaced",
                self.dead_pool_members
            ));
        }
        if !notes.is_empty() {
            out.push_str(&format!(" ({})", notes.join("; ")));
        }
        out.push_str(&format!(
            ", postgres start {} ms, roles {} ms",
            self.postgres_start_ms, self.roles_ms
        ));
        out
    }
}

/// Times consecutive steps: each [`Lap::lap`] returns the milliseconds since the last.
pub(crate) struct Lap(Instant);

impl Lap {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    /// Milliseconds since the start or the previous lap.
    pub(crate) fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let ms = (now - self.0).as_millis() as u64;
        self.0 = now;
        ms
    }
}
