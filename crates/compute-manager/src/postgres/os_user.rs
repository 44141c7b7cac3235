//! The OS user computes run as.
//!
//! PostgreSQL refuses to run as root. When Lakebed runs as root, computes run as
//! `compute.os_user` (default `postgres`, which Debian's postgresql package creates) and
//! everything they write is chowned to that user; otherwise they run as Lakebed's own user.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, chown, geteuid};

use crate::ManagerError;

/// An OS user that computes run as, and how to make a child process run as it.
#[derive(Debug, Clone)]
pub struct OsUser {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid.
    pub gid: Gid,
    /// Whether children must switch to this user (we are root) or already are it.
    switch: bool,
}

impl OsUser {
    /// Resolves the user computes run as: `configured` when we are root, else ourselves.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NoSuchOsUser`] if `configured` does not exist;
    /// [`ManagerError::InvalidInput`] if it is root.
    pub fn for_computes(configured: &str) -> Result<Self, ManagerError> {
        let me = geteuid();
        if !me.is_root() {
            let user = lookup_uid(me)?;
            return Ok(Self {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
                switch: false,
            });
        }
        let user = User::from_name(configured)
            .ok()
            .flatten()
            .ok_or_else(|| ManagerError::NoSuchOsUser(configured.to_owned()))?;
        if user.uid.is_root() {
            return Err(ManagerError::InvalidInput(format!(
                "compute.os_user \"{configured}\" is root; PostgreSQL refuses to run as root"
            )));
        }
        Ok(Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            switch: true,
        })
    }

    /// The name of the OS user this process runs as (mapped to the system role by peer auth).
    pub fn current_name() -> Result<String, ManagerError> {
        Ok(lookup_uid(geteuid())?.name)
    }

    /// Makes `cmd` run as this user (dropping supplementary groups; std does that when it
    /// switches uid).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if self.switch {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// Gives `path` to this user (no-op when we are not root).
    pub fn own(&self, path: &Path) -> Result<(), ManagerError> {
        if self.switch {
            chown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| ManagerError::io(path)(e.into()))?;
        }
        Ok(())
    }
}

fn lookup_uid(uid: Uid) -> Result<User, ManagerError> {
    User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| ManagerError::InvalidInput(format!("uid {uid} has no passwd entry")))
}
