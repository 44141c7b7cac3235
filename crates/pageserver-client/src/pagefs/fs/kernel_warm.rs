//! Prewarm's last step: the pages it fetched are read once through the mount, so that the
//! kernel's page cache holds them.
//!
//! A page in pagefs's local cache still costs Postgres a FUSE round trip, a cache read and
//! an open per read; a page in the kernel's page cache costs none of that (the files are
//! opened with `FOPEN_KEEP_CACHE`). A warm compute's reads are nearly all page cache hits,
//! so a prewarm that stopped at the local cache left the first queries after a wake at a
//! fraction of warm speed (`bench/coldstart.sh`: 0.31 of warm TPS over the first 10 s).
//!
//! **Through the kernel, not around it.** FUSE can push data into the page cache
//! (`FUSE_NOTIFY_STORE`), but nothing orders such a push against a client's write of the
//! same page on its way to pagefs: a push carrying the fetched content could land after it
//! and show stale data. A read through the mount is ordered by the kernel like any other
//! read, so what it caches is what pagefs answers at that moment.
//!
//! **Quiet reads.** The reads come from one thread of this process, whose thread id the
//! FUSE handler compares with the request's ([`PageFs::reader_of`]): they are not listed in
//! the heat list and start no readahead. The file is opened with `POSIX_FADV_RANDOM`, so the
//! kernel reads only the blocks asked for.
//!
//! Files are opened for each batch and closed before it ends: an open file would keep the
//! mount busy at unmount.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::PageFs;
use super::state::{State, lock};
use crate::pagefs::layout::{BLOCK_SIZE, ROOT_INO};

/// Most blocks read by one call: 1 MiB, the mount's largest request.
const MAX_RUN_BLOCKS: u64 = 128;

/// Who a read through the mount is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A client of the filesystem (Postgres): listed in the heat list, may start readahead.
    Client,
    /// Prewarm filling the kernel's page cache: neither.
    Prewarm,
}

/// Contiguous blocks of one file, named by its path under the mount.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    path: PathBuf,
    first: u64,
    blocks: u64,
}

impl PageFs {
    /// Tells the filesystem where it is mounted, once the mount is live: prewarm reads
    /// through it. Until then (and in tests without FUSE) prewarm fills the local cache only.
    pub fn set_mountpoint(&self, path: PathBuf) {
        let _ = self.mountpoint.set(path);
    }

    /// Who a FUSE request from thread `pid` (the request header's `pid`, a thread id) is for.
    pub fn reader_of(&self, pid: u32) -> Reader {
        reader(self.kernel_warmer.load(Ordering::Relaxed), pid)
    }

    /// Reads `pages` (`(ino, block)`) once through the mount so the kernel's page cache
    /// holds them; returns how many blocks were read. Pages of files gone or cut shorter are
    /// left out; a file that fails to open or read is skipped (the pages stay in the local
    /// cache). Nothing when the mountpoint is unknown.
    pub(super) async fn warm_kernel(&self, pages: &[(u64, u64)]) -> u64 {
        let Some(root) = self.mountpoint.get().cloned() else {
            return 0;
        };
        let runs = runs(&lock(&self.state), pages);
        if runs.is_empty() {
            return 0;
        }
        let warmer = self.kernel_warmer.clone();
        tokio::task::spawn_blocking(move || read_runs(&root, &runs, &warmer))
            .await
            .unwrap_or(0)
    }
}

/// Who thread `pid` reads for, while thread `warming` (0: none) fills the page cache.
fn reader(warming: u32, pid: u32) -> Reader {
    if warming != 0 && warming == pid {
        Reader::Prewarm
    } else {
        Reader::Client
    }
}

/// The runs of `pages` that files still reach, by path, each at most [`MAX_RUN_BLOCKS`].
fn runs(st: &State, pages: &[(u64, u64)]) -> Vec<Run> {
    let mut by_file: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(ino, b) in pages {
        if st.stored_block(ino, b) {
            by_file.entry(ino).or_default().push(b);
        }
    }
    let wanted: HashSet<u64> = by_file.keys().copied().collect();
    let paths = paths_of(st, &wanted);
    let mut out = Vec::new();
    for (ino, mut blocks) in by_file {
        let Some(path) = paths.get(&ino) else {
            continue;
        };
        blocks.sort_unstable();
        blocks.dedup();
        for b in blocks {
            match out.last_mut() {
                Some(Run {
                    path: p,
                    first,
                    blocks: n,
                }) if p == path && *first + *n == b && *n < MAX_RUN_BLOCKS => *n += 1,
                _ => out.push(Run {
                    path: path.clone(),
                    first: b,
                    blocks: 1,
                }),
            }
        }
    }
    out
}

/// A path under the mount for each file of `wanted` that has a name (any one of its names).
fn paths_of(st: &State, wanted: &HashSet<u64>) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    let mut dirs = vec![(ROOT_INO, PathBuf::new())];
    while let Some((dir, path)) = dirs.pop() {
        let Some(node) = st.nodes.get(&dir) else {
            continue;
        };
        for (name, &child) in &node.children {
            match st.nodes.get(&child) {
                Some(n) if n.is_dir() && !n.scratch => {
                    dirs.push((child, path.join(OsStr::from_bytes(name))));
                }
                Some(_) if wanted.contains(&child) => {
                    out.insert(child, path.join(OsStr::from_bytes(name)));
                }
                _ => {}
            }
        }
    }
    out
}

/// Reads `runs` under `root` on this thread, with its id in `warmer` meanwhile.
fn read_runs(root: &Path, runs: &[Run], warmer: &Arc<AtomicU32>) -> u64 {
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    warmer.store(u32::try_from(tid).unwrap_or(0), Ordering::Relaxed);
    let mut buf = vec![0u8; MAX_RUN_BLOCKS as usize * BLOCK_SIZE];
    let mut open: Option<(&Path, File)> = None;
    let mut read = 0;
    for run in runs {
        if open.as_ref().is_none_or(|(p, _)| *p != run.path) {
            open = File::open(root.join(&run.path)).ok().map(|f| {
                // Only the blocks asked for: no kernel readahead past them.
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random);
                (run.path.as_path(), f)
            });
        }
        let Some((_, file)) = &open else {
            continue;
        };
        let len = run.blocks as usize * BLOCK_SIZE;
        if file
            .read_exact_at(&mut buf[..len], run.first * BLOCK_SIZE as u64)
            .is_ok()
        {
            read += run.blocks;
        }
    }
    warmer.store(0, Ordering::Relaxed);
    read
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::pagefs::fs::Node;
    use crate::pagefs::layout::{InodeRecord, Kind};

    fn node(kind: Kind, size: u64) -> Node {
        let now = SystemTime::now();
        let rec = InodeRecord {
            kind,
            mode: 0o600,
            size,
            mtime: now,
            ctime: now,
        };
        Node::new(rec, ROOT_INO, false)
    }

    /// A namespace of `base/` (inode 5) holding `(ino, name, blocks)` files.
    fn namespace(files: &[(u64, &str, u64)]) -> State {
        let mut st = State::default();
        let mut root = node(Kind::Directory, 0);
        root.children.insert(b"base".to_vec(), 5);
        st.nodes.insert(ROOT_INO, root);
        let mut base = node(Kind::Directory, 0);
        for &(ino, name, blocks) in files {
            base.children.insert(name.as_bytes().to_vec(), ino);
            st.nodes
                .insert(ino, node(Kind::File, blocks * BLOCK_SIZE as u64));
        }
        st.nodes.insert(5, base);
        st
    }

    fn run(path: &str, first: u64, blocks: u64) -> Run {
        Run {
            path: PathBuf::from(path),
            first,
            blocks,
        }
    }

    #[test]
    fn runs_split_at_gaps_between_files_and_at_the_largest_read() {
        let st = namespace(&[(7, "a", 300), (9, "b", 10)]);
        let mut pages: Vec<(u64, u64)> = (0..MAX_RUN_BLOCKS + 2)
            .chain([200, 202, 202])
            .map(|b| (7, b))
            .collect();
        pages.push((9, 3));
        pages.reverse();
        assert_eq!(
            runs(&st, &pages),
            vec![
                run("base/a", 0, MAX_RUN_BLOCKS),
                run("base/a", MAX_RUN_BLOCKS, 2),
                run("base/a", 200, 1),
                run("base/a", 202, 1),
                run("base/b", 3, 1),
            ]
        );
    }

    #[test]
    fn pages_of_files_gone_or_cut_shorter_are_left_out() {
        let st = namespace(&[(10, "16384", 4)]);
        // Block 4 is past the end of file 10; inode 11 is no file.
        assert_eq!(
            runs(&st, &[(10, 1), (10, 4), (11, 0)]),
            vec![run("base/16384", 1, 1)]
        );
    }

    #[test]
    fn only_the_warming_thread_reads_quietly() {
        assert_eq!(reader(0, 0), Reader::Client);
        assert_eq!(reader(0, 4242), Reader::Client);
        assert_eq!(reader(4242, 4242), Reader::Prewarm);
        assert_eq!(reader(4242, 4243), Reader::Client);
    }
}
