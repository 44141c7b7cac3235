//! The on-disk layout of one endpoint, and the files in PGDATA that Lakebed owns.
//!
//! ```text
//! <data_dir>/endpoints/<endpoint>/      root-owned, 0711 (the compute user may pass through)
//!     pgdata/                           the compute user's, 0700: PostgreSQL's data directory
//!     pgdata.initdb/                    only while initdb runs; removed on failure
//!     run/                              the compute user's, 0700: the Unix socket
//!     postgres.log                      root-owned, 0600: stderr of this boot's postmaster
//! ```
//!
//! Until the page store lands (issue 4) PGDATA is this local folder.
//!
//! # Who can log in
//!
//! `pg_hba.conf` is rewritten at every boot:
//! - the system role logs in only over the Unix socket, by `peer` authentication mapped
//!   (`pg_ident.conf`) from the manager's own OS user; the socket's directory is 0700, and
//!   no password exists that could leak;
//! - every other role logs in over loopback TCP with SCRAM-SHA-256 against the verifier the
//!   catalog gave it; nothing else is accepted.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use lakebed_config::EndpointName;

use super::{OsUser, PgInstall, SYSTEM_ROLE};
use crate::ManagerError;

/// Paths of one endpoint's files.
#[derive(Debug, Clone)]
pub struct EndpointDir {
    root: PathBuf,
}

impl EndpointDir {
    /// The directory of `endpoint` under `data_dir`.
    pub fn new(data_dir: &Path, endpoint: &EndpointName) -> Self {
        Self {
            root: Self::parent(data_dir).join(endpoint.as_str()),
        }
    }

    /// `<data_dir>/endpoints`, the parent of every endpoint's directory.
    pub fn parent(data_dir: &Path) -> PathBuf {
        data_dir.join("endpoints")
    }

    /// The endpoint's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// PostgreSQL's data directory.
    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    /// Where initdb writes before the result is renamed to [`Self::pgdata`].
    fn pgdata_initdb(&self) -> PathBuf {
        self.root.join("pgdata.initdb")
    }

    /// The directory holding the compute's Unix socket.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// This boot's PostgreSQL log.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Whether the endpoint has a data directory yet (it has booted at least once).
    pub fn is_initialized(&self) -> bool {
        self.pgdata().join("PG_VERSION").is_file()
    }

    /// Creates the endpoint's directory (0711) if missing.
    pub fn create(&self) -> Result<(), ManagerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(ManagerError::io(&self.root))?;
        set_mode(&self.root, 0o711)
    }

    /// Makes a fresh private directory owned by `user` (removing an old one).
    pub fn fresh_private_dir(&self, path: &Path, user: &OsUser) -> Result<(), ManagerError> {
        remove_dir_if_exists(path)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(ManagerError::io(path))?;
        user.own(path)
    }

    /// Runs initdb for the endpoint's first boot, into a scratch directory that is renamed into
    /// place only when initdb succeeded, so a failure leaves nothing half-made.
    ///
    /// # Errors
    ///
    /// [`ManagerError::StartFailed`] with initdb's output as the log tail.
    pub async fn initdb(
        &self,
        install: &PgInstall,
        user: &OsUser,
        endpoint: &EndpointName,
    ) -> Result<(), ManagerError> {
        let scratch = self.pgdata_initdb();
        self.fresh_private_dir(&scratch, user)?;
        let mut cmd = tokio::process::Command::new(install.bin("initdb"));
        cmd.arg("--pgdata")
            .arg(&scratch)
            .args([
                "--username",
                SYSTEM_ROLE,
                "--auth-local=peer",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        user.apply(&mut cmd);
        let out = cmd
            .output()
            .await
            .map_err(ManagerError::io(install.bin("initdb")))?;
        if !out.status.success() {
            let _ = remove_dir_if_exists(&scratch);
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            return Err(ManagerError::StartFailed {
                endpoint: endpoint.to_string(),
                reason: format!("initdb exited with {}", out.status),
                log_tail: tail_lines(&text, 20),
            });
        }
        std::fs::rename(&scratch, self.pgdata()).map_err(ManagerError::io(self.pgdata()))
    }

    /// Rewrites `pg_hba.conf` and `pg_ident.conf` (see the module docs): the system role by
    /// peer over the socket from `manager_os_user`, everyone else by SCRAM over loopback.
    pub fn write_access_rules(
        &self,
        user: &OsUser,
        manager_os_user: &str,
    ) -> Result<(), ManagerError> {
        let pgdata = self.pgdata();
        let hba = format!(
            "# Written by Lakebed at each boot; edits are overwritten.\n\
             # TYPE  DATABASE  USER             ADDRESS        METHOD\n\
             local   all       {SYSTEM_ROLE}   peer map=lakebed\n\
             local   all       all              reject\n\
             host    all       {SYSTEM_ROLE}   all            reject\n\
             host    all       all              127.0.0.1/32   scram-sha-256\n\
             host    all       all              ::1/128        scram-sha-256\n"
        );
        let ident = format!(
            "# Written by Lakebed at each boot; edits are overwritten.\n\
             # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n\
             lakebed    {manager_os_user}  {SYSTEM_ROLE}\n"
        );
        for (name, text) in [("pg_hba.conf", hba), ("pg_ident.conf", ident)] {
            let path = pgdata.join(name);
            std::fs::write(&path, text).map_err(ManagerError::io(&path))?;
            set_mode(&path, 0o600)?;
            user.own(&path)?;
        }
        Ok(())
    }
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_dir_if_exists(path: &Path) -> Result<(), ManagerError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ManagerError::io(path)(e)),
        _ => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ManagerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(ManagerError::io(path))
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
