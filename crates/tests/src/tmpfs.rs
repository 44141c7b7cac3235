//! [`Tmpfs`]: a small tmpfs of a given size, for tests that fill a disk (tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::detach;

/// A tmpfs mounted on a fresh temporary directory, of a size the test picks, so a test can
/// fill it and give space back ([`Tmpfs::resize`]). Dropping it detaches the mount (`umount
/// -l`, so a process still holding files there does not keep it mounted) and removes the
/// directory. Drop the processes using it first.
pub struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB. Panics (naming what `mount` said) if it cannot.
    pub fn mount(mib: u64) -> Self {
        let (dir, path) = crate::canonical_tempdir("lakebed-tmpfs-");
        run_mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m,mode=0755"),
            "tmpfs",
            path.to_str().expect("a UTF-8 path"),
        ]);
        Self { path, _dir: dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the size to `mib` MiB while mounted (`mount -o remount,size=...`): how an
    /// operator gives a full disk more room.
    pub fn resize(&self, mib: u64) {
        run_mount(&[
            "-o",
            &format!("remount,size={mib}m"),
            self.path.to_str().expect("a UTF-8 path"),
        ]);
    }

    /// Bytes still free for an unprivileged writer, as `statvfs` says.
    pub fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path).expect("statvfs the tmpfs");
        st.blocks_available() * st.fragment_size()
    }
}

fn run_mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount (tests that fill a disk run as root)");
    assert!(
        out.status.success(),
        "mount {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        detach(&self.path);
    }
}
