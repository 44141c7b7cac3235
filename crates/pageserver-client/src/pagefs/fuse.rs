//! The FUSE side: [`fuser::Filesystem`] over [`PageFs`].
//!
//! Requests that can be answered from memory or the local disk are answered on the FUSE
//! thread that received them. Those that must wait for the page store (a read or a partial
//! write of a page not held locally, `fsync`) move their reply to a task on the tokio runtime
//! and return at once, so a slow page fetch never holds up the FUSE loop.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use tokio::runtime::Handle;

use super::fs::{Fetched, Need, Node, PageFs};
use super::layout::{BLOCK_SIZE, Kind};

/// How long the kernel may cache attributes and entries. Every change passes through this
/// mount, so the kernel's copies cannot go stale behind its back.
const TTL: Duration = Duration::from_secs(60);

/// The filesystem as FUSE sees it.
pub struct Fuse {
    fs: Arc<PageFs>,
    rt: Handle,
}

impl std::fmt::Debug for Fuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fuse").field("fs", &self.fs).finish()
    }
}

impl Fuse {
    /// Serves `fs`, running slow requests on `rt`.
    pub fn new(fs: Arc<PageFs>, rt: Handle) -> Self {
        Self { fs, rt }
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        attr(self.fs.options(), ino, n)
    }

    fn entry(&self, reply: ReplyEntry, result: Result<(u64, Node), Errno>) {
        match result {
            Ok((ino, n)) => reply.entry(&TTL, &self.attr(ino, &n), Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: up to 1 MiB per write and readahead.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        // The kernel has sent every write by now; make them durable before the process ends.
        let fs = self.fs.clone();
        if self.rt.block_on(fs.flush()).is_err() {
            tracing::error!("final flush at unmount failed: unsynced writes are lost");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.lookup(parent.0, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino.0, &n)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let o = self.fs.options();
        // Every file belongs to the compute's user; chown to anyone else is refused.
        if uid.is_some_and(|u| u != o.uid) || gid.is_some_and(|g| g != o.gid) {
            return reply.error(Errno::EPERM);
        }
        let ino = ino.0;
        if let Some(size) = size {
            let fs = self.fs.clone();
            let first = fs.truncate(ino, size, &Fetched::default());
            match first {
                Ok(Ok(_)) => {}
                Err(e) => return reply.error(e),
                Ok(Err(need)) => {
                    let mtime = mtime.map(time);
                    let attr_of = move |fs: &PageFs, ino: u64| {
                        fs.set_meta(ino, mode, mtime).map(|n| (ino, n))
                    };
                    self.rt.spawn(async move {
                        let result = with_fetched(&fs, ino, need, |f| fs.truncate(ino, size, f))
                            .await
                            .and_then(|_| attr_of(&fs, ino));
                        match result {
                            Ok((ino, n)) => reply.attr(&TTL, &attr(fs.options(), ino, &n)),
                            Err(e) => reply.error(e),
                        }
                    });
                    return;
                }
            }
        }
        match self.fs.set_meta(ino, mode, mtime.map(time)) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino, &n)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .fs
            .create(parent.0, name.as_bytes(), Kind::Directory, mode & !umask);
        self.entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.remove(parent.0, name.as_bytes(), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.remove(parent.0, name.as_bytes(), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.fs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            noreplace,
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(parent.0, name.as_bytes(), Kind::File, mode & !umask)
        {
            Ok((ino, n)) => reply.created(
                &TTL,
                &self.attr(ino, &n),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = ino.0;
        let reader = self.fs.reader_of(req.pid());
        match self
            .fs
            .read_for(reader, ino, offset, size, &Fetched::default())
        {
            Ok(Ok(data)) => reply.data(&data),
            Err(e) => reply.error(e),
            Ok(Err(need)) => {
                let fs = self.fs.clone();
                self.rt.spawn(async move {
                    let read = |f: &Fetched| fs.read_for(reader, ino, offset, size, f);
                    match with_fetched(&fs, ino, need, read).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => reply.error(e),
                    }
                });
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = ino.0;
        // Backpressure: past the dirty limit, wait for a flush (on this FUSE thread; the
        // others go on).
        if self.fs.dirty_bytes() >= self.fs.options().dirty_max_bytes
            && let Err(e) = self.rt.block_on(self.fs.flush())
        {
            return reply.error(e);
        }
        match self.fs.write(ino, offset, data, &Fetched::default()) {
            Ok(Ok(n)) => reply.written(n),
            Err(e) => reply.error(e),
            Ok(Err(need)) => {
                let fs = self.fs.clone();
                let data = data.to_vec();
                self.rt.spawn(async move {
                    match with_fetched(&fs, ino, need, |f| fs.write(ino, offset, &data, f)).await {
                        Ok(n) => reply.written(n),
                        Err(e) => reply.error(e),
                    }
                });
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) promises no durability; fsync does.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(n) if n.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for (next, child, kind, name) in entries {
                    let kind = match kind {
                        Kind::File => FileType::RegularFile,
                        Kind::Directory => FileType::Directory,
                    };
                    if reply.add(INodeNo(child), next, kind, OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The page store has no fixed size; report a large, mostly free volume.
        let blocks = 1u64 << 32;
        reply.statfs(
            blocks,
            blocks / 2,
            blocks / 2,
            1 << 30,
            1 << 29,
            BLOCK_SIZE as u32,
            255,
            BLOCK_SIZE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }
}

/// Fetches what `attempt` needs and runs it again, until it completes. It asks again only
/// for blocks that changed during a fetch (or whose fetch, shared with another reader, was
/// cancelled); after 8 rounds the caller gets `EAGAIN`.
async fn with_fetched<T>(
    fs: &PageFs,
    ino: u64,
    mut need: Need,
    attempt: impl Fn(&Fetched) -> Result<Result<T, Need>, Errno>,
) -> Result<T, Errno> {
    for _ in 0..8 {
        let fetched = fs.fetch(ino, need).await?;
        let result = attempt(&fetched);
        fs.done(fetched);
        match result? {
            Ok(done) => return Ok(done),
            Err(again) => need = again,
        }
    }
    Err(Errno::EAGAIN)
}

fn attr(o: &super::fs::Options, ino: u64, n: &Node) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: n.rec.size,
        blocks: n.rec.size.div_ceil(512),
        atime: n.rec.mtime,
        mtime: n.rec.mtime,
        ctime: n.rec.ctime,
        crtime: n.rec.ctime,
        kind: match n.rec.kind {
            Kind::File => FileType::RegularFile,
            Kind::Directory => FileType::Directory,
        },
        perm: (n.rec.mode & 0o7777) as u16,
        nlink: if n.is_dir() { 2 } else { 1 },
        uid: o.uid,
        gid: o.gid,
        rdev: 0,
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}
