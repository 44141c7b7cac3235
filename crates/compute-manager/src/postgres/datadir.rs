//! The on-disk layout of one endpoint, and the files in PGDATA that Lakebed owns.
//!
//! ```text
//! <data_dir>/endpoints/<endpoint>/      root-owned, 0711 (the compute user may pass through)
//!     pgdata/                           PostgreSQL's data directory (the compute user's, 0700):
//!                                       a pagefs mount of the endpoint's timeline, or (for a
//!                                       manager without a page store) a local folder
//!     pgdata.initdb/                    local PGDATA only: while initdb runs
//!     local/                            pagefs only: the sealed cache and scratch files
//!     run/                              the compute user's, 0700: the Unix socket and, with
//!         lakebed-ca.pem                `ComputeTls`, copies made at each boot (0600) of the
//!         lakebed-server.pem            CA that client certificates must chain to and of the
//!         lakebed-server.key            compute's certificate and key
//!     postgres.log                      root-owned, 0600: stderr of this boot's postmaster
//!     pagefs.log                        root-owned, 0600: stderr of this boot's pagefs
//! ```
//!
//! # Who can log in
//!
//! `pg_hba.conf` is rewritten at every boot. In both modes the system role logs in only over
//! the Unix socket, by `peer` authentication mapped (`pg_ident.conf`) from the manager's own
//! OS user; the socket's directory is 0700, and no password exists that could leak. Catalog
//! roles log in over loopback TCP, and how depends on
//! [`ManagerOptions::compute_tls`](crate::ManagerOptions::compute_tls):
//! - **with [`ComputeTls`]** (Postgres runs with `ssl=on`): only over TLS, only with a client
//!   certificate that chains to `ComputeTls::ca_cert` (`clientcert=verify-ca`), and only with
//!   the role's SCRAM-SHA-256 password, all three (`hostssl ... scram-sha-256
//!   clientcert=verify-ca`). Only the proxy holds such a certificate, so **nothing but the
//!   proxy can log in**: a local process that learnt a password is still refused, with or
//!   without TLS;
//! - **without it**: with SCRAM-SHA-256 against the verifier the catalog gave the role,
//!   over plain TCP (`host ... scram-sha-256`), so any local process that knows the password
//!   can.
//!
//! Nothing else is accepted.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use lakebed_config::EndpointName;

use super::{OsUser, PgInstall, SYSTEM_ROLE};
use crate::{ComputeTls, ManagerError};

/// In PGDATA, with [`ComputeTls`]: the CA that client certificates must chain to.
pub(crate) const TLS_CA_FILE: &str = "lakebed-ca.pem";
/// In PGDATA, with [`ComputeTls`]: the compute's server certificate.
pub(crate) const TLS_CERT_FILE: &str = "lakebed-server.pem";
/// In PGDATA, with [`ComputeTls`]: the compute's private key.
pub(crate) const TLS_KEY_FILE: &str = "lakebed-server.key";

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

    /// pagefs's local directory (cache and scratch files).
    pub fn local_dir(&self) -> PathBuf {
        self.root.join("local")
    }

    /// This boot's pagefs log.
    pub fn pagefs_log(&self) -> PathBuf {
        self.root.join("pagefs.log")
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
        if let Err(e) = initdb(install, user, &scratch, &self.root, endpoint.as_str()).await {
            let _ = remove_dir_if_exists(&scratch);
            return Err(e);
        }
        std::fs::rename(&scratch, self.pgdata()).map_err(ManagerError::io(self.pgdata()))
    }

    /// Copies the [`ComputeTls`] files into the run directory ([`TLS_CA_FILE`],
    /// [`TLS_CERT_FILE`], [`TLS_KEY_FILE`]; 0600, owned by `user`), which must exist. They go
    /// there rather than into PGDATA because PGDATA is on the page store, and a compute's
    /// private key must stay on the compute. Copies that earlier versions left in PGDATA
    /// are removed.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Io`] naming the file that could not be read or written.
    pub fn install_tls(&self, tls: Option<&ComputeTls>, user: &OsUser) -> Result<(), ManagerError> {
        let pgdata = self.pgdata();
        for name in [TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE] {
            let path = pgdata.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ManagerError::io(&path)(e));
                }
                _ => {}
            }
        }
        let Some(tls) = tls else {
            return Ok(());
        };
        for (source, name) in [
            (&tls.ca_cert, TLS_CA_FILE),
            (&tls.server_cert, TLS_CERT_FILE),
            (&tls.server_key, TLS_KEY_FILE),
        ] {
            let bytes = std::fs::read(source).map_err(ManagerError::io(source))?;
            write_private(&self.run_dir().join(name), &bytes, user)?;
        }
        Ok(())
    }

    /// Rewrites `pg_hba.conf` and `pg_ident.conf` (see the module docs): the system role by
    /// peer over the socket from `manager_os_user`; everyone else over loopback TCP by SCRAM,
    /// and with `tls` also only over TLS with a client certificate signed by the CA that
    /// [`Self::install_tls`] installed.
    pub fn write_access_rules(
        &self,
        user: &OsUser,
        manager_os_user: &str,
        tls: bool,
    ) -> Result<(), ManagerError> {
        let pgdata = self.pgdata();
        let (tcp, options) = if tls {
            ("hostssl", " clientcert=verify-ca")
        } else {
            ("host   ", "")
        };
        let hba = format!(
            "# Written by Lakebed at each boot; edits are overwritten.\n\
             # TYPE  DATABASE  USER             ADDRESS        METHOD\n\
             local   all       {SYSTEM_ROLE}   peer map=lakebed\n\
             local   all       all              reject\n\
             host    all       {SYSTEM_ROLE}   all            reject\n\
             {tcp} all       all              127.0.0.1/32   scram-sha-256{options}\n\
             {tcp} all       all              ::1/128        scram-sha-256{options}\n"
        );
        let ident = format!(
            "# Written by Lakebed at each boot; edits are overwritten.\n\
             # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n\
             lakebed    {manager_os_user}  {SYSTEM_ROLE}\n"
        );
        for (name, text) in [("pg_hba.conf", hba), ("pg_ident.conf", ident)] {
            let path = pgdata.join(name);
            // Unchanged since the last boot (the common case): not rewritten, since on the
            // page store a rewrite is a truncate and a write to flush before Postgres starts.
            if !is_private_with(&path, text.as_bytes(), user) {
                write_private(&path, text.as_bytes(), user)?;
            }
        }
        Ok(())
    }
}

/// Runs initdb into `pgdata` (which must exist, empty, owned by `user`) as `user`, from
/// `cwd`. The system role is its bootstrap superuser, logging in by peer only.
///
/// # Errors
///
/// [`ManagerError::StartFailed`] for `endpoint`, with initdb's output as the log tail.
pub(crate) async fn initdb(
    install: &PgInstall,
    user: &OsUser,
    pgdata: &Path,
    cwd: &Path,
    endpoint: &str,
) -> Result<(), ManagerError> {
    let mut cmd = tokio::process::Command::new(install.bin("initdb"));
    cmd.arg("--pgdata")
        .arg(pgdata)
        .args([
            "--username",
            SYSTEM_ROLE,
            "--auth-local=peer",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    user.apply(&mut cmd);
    let out = cmd
        .output()
        .await
        .map_err(ManagerError::io(install.bin("initdb")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(ManagerError::StartFailed {
        endpoint: endpoint.to_owned(),
        reason: format!("initdb exited with {}", out.status),
        log_tail: tail_lines(&text, 20),
    })
}

/// Writes `bytes` to `path` (created 0600, never readable by others), then gives it to `user`.
/// Whether `path` holds exactly `bytes`, with mode 0600, owned by `user`: as
/// [`write_private`] would leave it.
fn is_private_with(path: &Path, bytes: &[u8], user: &OsUser) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.mode() & 0o7777 == 0o600
        && meta.uid() == user.uid.as_raw()
        && meta.gid() == user.gid.as_raw()
        && meta.len() == bytes.len() as u64
        && std::fs::read(path).is_ok_and(|b| b == bytes)
}

fn write_private(path: &Path, bytes: &[u8], user: &OsUser) -> Result<(), ManagerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(ManagerError::io(path))?;
    set_mode(path, 0o600)?;
    user.own(path)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// (inode, mtime in ns) of `path`: changes when the file is written.
    fn written(path: &Path) -> (u64, i64) {
        let m = std::fs::metadata(path).unwrap();
        (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec())
    }

    #[test]
    fn access_rules_are_rewritten_only_when_they_differ() {
        let root = tempfile::tempdir().unwrap();
        let user = OsUser::for_computes("postgres").unwrap();
        let dir = EndpointDir::new(root.path(), &"main".parse().unwrap());
        std::fs::create_dir_all(dir.pgdata()).unwrap();
        let hba = dir.pgdata().join("pg_hba.conf");
        dir.write_access_rules(&user, "root", true).unwrap();
        let first = written(&hba);
        dir.write_access_rules(&user, "root", true).unwrap();
        assert_eq!(written(&hba), first, "unchanged rules are left as they are");

        // Edited, or other rules: written again.
        std::fs::write(&hba, "host all all 0.0.0.0/0 trust\n").unwrap();
        dir.write_access_rules(&user, "root", true).unwrap();
        assert!(
            std::fs::read_to_string(&hba)
                .unwrap()
                .contains("clientcert=verify-ca")
        );
        dir.write_access_rules(&user, "root", false).unwrap();
        let text = std::fs::read_to_string(&hba).unwrap();
        assert!(!text.contains("hostssl"), "{text}");
        assert_eq!(std::fs::metadata(&hba).unwrap().mode() & 0o777, 0o600);
    }
}
