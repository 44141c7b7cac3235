//! The namespace: lookups, directory listings, and the changes that make, move or remove
//! names.
//!
//! Everything here is answered from memory under the state lock; a change marks the inode
//! records and directory entries it touched dirty, and the next flush writes them together.
//! A file removed while open keeps its inode (unlinked) until the last close; then its
//! pages are queued for deletion (the `dead` list), since nothing can reach them anymore.

use std::time::SystemTime;

use bytes::Bytes;
use fuser::Errno;

use super::PageFs;
use super::state::{DirEntry, Node, State, lock, scratch_kind};
use crate::pagefs::layout::{InodeRecord, Kind, blocks_for};

impl PageFs {
    /// A copy of inode `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`.
    pub fn getattr(&self, ino: u64) -> Result<Node, Errno> {
        lock(&self.state).node(ino).cloned()
    }

    /// The child `name` of `parent`, as `(ino, node)`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `ENOTDIR`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Node), Errno> {
        let st = lock(&self.state);
        let p = st.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let ino = match name {
            b"." => parent,
            b".." => p.parent,
            _ => *p.children.get(name).ok_or(Errno::ENOENT)?,
        };
        Ok((ino, st.node(ino)?.clone()))
    }

    /// Entries of directory `ino` from index `offset` on, with `.` and `..` first.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `ENOTDIR`.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        let st = lock(&self.state);
        let dir = st.node(ino)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dots = [(ino, b".".to_vec()), (dir.parent, b"..".to_vec())];
        let all = dots
            .into_iter()
            .chain(dir.children.iter().map(|(n, &c)| (c, n.clone())));
        Ok(all
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .filter_map(|(i, (c, name))| {
                let kind = st.nodes.get(&c)?.rec.kind;
                Some((i as u64 + 1, c, kind, name))
            })
            .collect())
    }

    /// Creates `name` in `parent` (a file, opened once, or a directory) with permission bits
    /// `mode`.
    ///
    /// # Errors
    ///
    /// `EEXIST`, `ENOENT`, `ENOTDIR`, `EIO` when fenced.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
    ) -> Result<(u64, Node), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let p = st.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if p.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let (scratch, scratch_children) = scratch_kind(parent, p, name, kind);
        let ino = st.next_ino;
        st.next_ino += 1;
        let now = SystemTime::now();
        let rec = InodeRecord {
            kind,
            mode: mode & 0o7777,
            size: 0,
            mtime: now,
            ctime: now,
        };
        let mut node = Node::new(rec, parent, scratch);
        node.scratch_children = scratch_children;
        if kind == Kind::File {
            node.opens = 1;
        }
        st.nodes.insert(ino, node.clone());
        let p = st.node_mut(parent)?;
        p.children.insert(name.to_vec(), ino);
        p.rec.mtime = now;
        p.rec.ctime = now;
        st.mark_inode(ino);
        st.mark_inode(parent);
        st.mark_dirent(parent, name, scratch);
        if parent == crate::pagefs::layout::ROOT_INO && name == b"pg_wal" && kind == Kind::Directory
        {
            st.wal_dir = Some(ino);
        }
        Ok((ino, node))
    }

    /// Counts an open of `ino`.
    ///
    /// # Errors
    ///
    /// `ENOENT`.
    pub fn open(&self, ino: u64) -> Result<(), Errno> {
        lock(&self.state).node_mut(ino)?.opens += 1;
        Ok(())
    }

    /// Counts a close of `ino`; the last close of an unlinked file frees it.
    pub fn release(&self, ino: u64) {
        let mut st = lock(&self.state);
        let free = match st.nodes.get_mut(&ino) {
            Some(n) => {
                n.opens = n.opens.saturating_sub(1);
                n.opens == 0 && !n.linked
            }
            None => false,
        };
        if free {
            self.free(&mut st, ino);
        }
    }

    /// Drops an unlinked, closed inode and queues its pages' deletion.
    fn free(&self, st: &mut State, ino: u64) {
        st.readahead.forget(ino);
        st.staged.forget(ino);
        let Some(node) = st.nodes.remove(&ino) else {
            return;
        };
        if node.scratch {
            self.scratch.truncate(ino, 0);
            return;
        }
        let v = st.bump();
        st.inodes.insert(ino, v);
        if node.rec.kind == Kind::File {
            let before = st.pages.len();
            st.pages.retain(|&(i, _), _| i != ino);
            if before != st.pages.len() {
                st.page_bytes = st
                    .pages
                    .values()
                    .map(|p| p.data.as_ref().map_or(0, Bytes::len))
                    .sum();
            }
            self.cache.remove_from(ino, 0);
            st.dead.push((ino, blocks_for(node.rec.size)));
        }
    }

    /// Removes the entry `name` from `parent`: a file (`dir = false`) or an empty directory.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EISDIR`, `ENOTDIR`, `ENOTEMPTY`, `EIO` when fenced.
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<(), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let ino = *st.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        let node = st.node(ino)?;
        match (dir, node.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let scratch = node.scratch;
        let now = SystemTime::now();
        let p = st.node_mut(parent)?;
        p.children.remove(name);
        p.rec.mtime = now;
        p.rec.ctime = now;
        st.mark_inode(parent);
        st.mark_dirent(parent, name, scratch);
        self.unlink_node(&mut st, ino);
        Ok(())
    }

    fn unlink_node(&self, st: &mut State, ino: u64) {
        let Some(n) = st.nodes.get_mut(&ino) else {
            return;
        };
        n.linked = false;
        if n.opens == 0 {
            self.free(st, ino);
        } else {
            st.mark_inode(ino);
        }
    }

    /// Renames `parent/name` to `new_parent/new_name`, replacing a file (or an empty
    /// directory) there unless `noreplace`.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EEXIST` (noreplace), `EISDIR`/`ENOTDIR` (kind mismatch), `ENOTEMPTY`,
    /// `EXDEV` (between scratch and persisted places), `EINVAL` (a directory into itself),
    /// `EIO` when fenced.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        noreplace: bool,
    ) -> Result<(), Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let ino = *st.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        let node = st.node(ino)?.clone();
        let np = st.node(new_parent)?;
        if !np.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let kind = node.rec.kind;
        if scratch_kind(new_parent, np, new_name, kind).0 != node.scratch {
            return Err(Errno::EXDEV);
        }
        let replaced = np.children.get(new_name).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        if let Some(r) = replaced {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let r = st.node(r)?;
            match (node.is_dir(), r.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !r.children.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        // A directory must not move under itself.
        if node.is_dir() {
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                let up = st.node(at)?.parent;
                if up == at {
                    break;
                }
                at = up;
            }
        }
        let now = SystemTime::now();
        for p in [parent, new_parent] {
            let p = st.node_mut(p)?;
            p.rec.mtime = now;
            p.rec.ctime = now;
        }
        st.node_mut(parent)?.children.remove(name);
        st.node_mut(new_parent)?
            .children
            .insert(new_name.to_vec(), ino);
        let n = st.node_mut(ino)?;
        n.parent = new_parent;
        n.rec.ctime = now;
        st.mark_inode(parent);
        st.mark_inode(new_parent);
        st.mark_inode(ino);
        st.mark_dirent(parent, name, node.scratch);
        st.mark_dirent(new_parent, new_name, node.scratch);
        if let Some(r) = replaced {
            self.unlink_node(&mut st, r);
        }
        Ok(())
    }

    /// Changes permission bits and times.
    ///
    /// # Errors
    ///
    /// `ENOENT`, `EIO` when fenced.
    pub fn set_meta(
        &self,
        ino: u64,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Result<Node, Errno> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        let n = st.node_mut(ino)?;
        if let Some(mode) = mode {
            n.rec.mode = mode & 0o7777;
        }
        if let Some(t) = mtime {
            n.rec.mtime = t;
        }
        n.rec.ctime = SystemTime::now();
        let n = n.clone();
        st.mark_inode(ino);
        Ok(n)
    }
}
