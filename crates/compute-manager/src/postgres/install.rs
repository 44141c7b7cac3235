//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};

use crate::ManagerError;

/// Where Debian's `postgresql-NN` packages put their binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// A PostgreSQL server installation: a directory holding `postgres` and `initdb`.
#[derive(Debug, Clone)]
pub struct PgInstall {
    /// The `bin` directory.
    pub bin_dir: PathBuf,
    /// The major version, read from the directory name or `postgres --version`.
    pub major: u32,
}

impl PgInstall {
    /// Finds the server binaries: `configured` if given, else the newest
    /// `/usr/lib/postgresql/<major>/bin` (Debian's layout).
    ///
    /// # Errors
    ///
    /// [`ManagerError::PostgresNotFound`] saying what was searched and how to install.
    pub fn find(configured: Option<&Path>) -> Result<Self, ManagerError> {
        if let Some(dir) = configured {
            return Self::at(dir).ok_or_else(|| ManagerError::PostgresNotFound {
                searched: format!(
                    "compute.pg_bin_dir = {} has no postgres and initdb",
                    dir.display()
                ),
            });
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        found.sort();
        found
            .into_iter()
            .rev()
            .find_map(|(_, dir)| Self::at(&dir))
            .ok_or_else(|| ManagerError::PostgresNotFound {
                searched: format!("looked in {DEBIAN_ROOT}/*/bin"),
            })
    }

    fn at(dir: &Path) -> Option<Self> {
        if !(dir.join("postgres").is_file() && dir.join("initdb").is_file()) {
            return None;
        }
        let out = std::process::Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .ok()?;
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().nth(2)?;
        let major = version.split('.').next()?.parse().ok()?;
        Some(Self {
            bin_dir: dir.to_path_buf(),
            major,
        })
    }

    /// Path of one binary in the installation, e.g. `bin("initdb")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}
