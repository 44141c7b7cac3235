//! The warm pool: `lakebed pagefs` processes started ahead of wakes (`compute.warm_pool`),
//! so a wake hands one its mount instead of paying for a process start.
//!
//! A member is started with `--assignment-from-stdin` and nothing of a tenant: its argv
//! names only the page store, its environment only `PATH` and the OpenTelemetry settings.
//! It does the tenant-free work of a mount (runtime, its channel to the page store, the
//! random source), says `waiting`, and only then counts as a member. A wake takes the
//! oldest live member and writes it one assignment
//! (`lakebed_pageserver_client::pagefs::launch`): the mount, the tenant's keys and the
//! wake's trace context. From then on it is that compute's pagefs, and no member of the pool.
//!
//! - **Used once.** A member leaves the pool when taken, whatever happens next.
//! - **Dead members.** A member that exited (checked with `try_wait` when taken, or found
//!   when its hand-off write fails) is counted, reaped and never handed out; the wake takes
//!   the next one, or starts a pagefs of its own.
//! - **Refill.** Once the wake that took a member is over (served or failed), a background
//!   task starts members until the pool is full again: not during the wake, where a process
//!   start would take CPU from the mount and Postgres's start on a small host, and the wake
//!   never waits for it.
//! - **Shutdown.** [`WarmPool::close`] stops the refill and kills every member (none holds
//!   a mount or anything of a tenant). A member whose manager died sees its standard input
//!   end and exits by itself.
//!
//! Members live in `DATA_DIR/pagefs-pool` (their working directory and their logs); a
//! member's log follows it to its compute's `pagefs.log` at hand-off.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakebed_pageserver_client::pagefs::launch::{ASSIGNED, WAITING};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ManagerError;
use crate::storage::PageStoreOptions;

/// The pool's directory under the data directory.
const POOL_DIR: &str = "pagefs-pool";

/// How long a new member may take to say `waiting` before it is given up.
const WARM_LIMIT: Duration = Duration::from_secs(30);

/// How long a member may take to say it read its assignment (`assigned`) before it counts
/// as dead: a live one answers in milliseconds, and a stopped or stuck one must not hold a
/// wake for the mount's whole timeout.
const ASSIGNED_LIMIT: Duration = Duration::from_secs(2);

/// How long the refill waits after a member failed to start before it tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Starts pagefs processes that wait for their assignment: the pool's members, and the
/// pagefs of a wake that found the pool empty (the same contract, handed off at once).
pub(crate) struct Launcher {
    opts: PageStoreOptions,
    dir: PathBuf,
    seq: AtomicU64,
}

impl Launcher {
    /// A launcher keeping its members' files in `data_dir/pagefs-pool` (emptied first: logs
    /// of members a previous manager left, which exited with its pipes).
    pub(crate) fn new(opts: PageStoreOptions, data_dir: &Path) -> Result<Self, ManagerError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join(POOL_DIR);
        crate::postgres::remove_dir_if_exists(&dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(ManagerError::io(&dir))?;
        Ok(Self {
            opts,
            dir,
            seq: AtomicU64::new(0),
        })
    }

    /// Starts a pagefs that waits for its assignment, logging to `log` (default: a file of
    /// its own in the pool's directory).
    pub(crate) fn spawn(&self, log: Option<&Path>) -> Result<Member, ManagerError> {
        let log = log.map(Path::to_owned).unwrap_or_else(|| {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            self.dir.join(format!("member-{n}.log"))
        });
        let file = crate::storage::private_file(&log)?;
        let mut cmd = Command::new(&self.opts.pagefs_bin);
        cmd.args([
            "pagefs",
            "--assignment-from-stdin",
            "--pageserver",
            &self.opts.url,
        ])
        .arg("--io-timeout")
        .arg(humantime::format_duration(self.opts.io_timeout).to_string());
        if let Some(ca) = &self.opts.ca_file {
            cmd.arg("--pageserver-ca").arg(ca);
        }
        // Nothing of the manager's environment but PATH and the OpenTelemetry settings; the
        // wake's trace context comes with the assignment.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("OTEL_")))
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file)
            .process_group(0)
            // A pagefs handed its mount must outlive a dropped handle to flush; a member
            // whose handle is dropped sees its standard input end and exits by itself.
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(ManagerError::io(&self.opts.pagefs_bin))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(ManagerError::io(&self.opts.pagefs_bin)(
                std::io::Error::other("pagefs started without pipes"),
            ));
        };
        Ok(Member {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            in_pool_dir: log.starts_with(&self.dir),
            warmed: false,
            log,
        })
    }
}

/// A pagefs process waiting for its assignment.
pub(crate) struct Member {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// Whether the log is the member's own (in the pool's directory), to delete with it.
    in_pool_dir: bool,
    /// Whether it said `waiting` (a pool member); one started for a wake is handed its
    /// assignment at once and says `waiting` first.
    warmed: bool,
}

/// A pagefs just handed its assignment: the process and its pipes.
pub(crate) struct HandedOff {
    /// The process.
    pub(crate) child: Child,
    /// Its standard input, for `active`.
    pub(crate) stdin: ChildStdin,
    /// Its standard output: `ready`, then `stats` and `reseal` lines.
    pub(crate) stdout: Lines<BufReader<ChildStdout>>,
}

impl Member {
    /// Whether the process still runs (reaping it if not).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most [`WARM_LIMIT`]) for its `waiting` line.
    async fn warmed(&mut self) -> bool {
        self.warmed = matches!(
            tokio::time::timeout(WARM_LIMIT, self.stdout.next_line()).await,
            Ok(Ok(Some(line))) if line == WAITING
        );
        self.warmed
    }

    /// Moves its log to `to` (its compute's `pagefs.log`): the open file follows.
    pub(crate) fn move_log(&mut self, to: &Path) {
        match std::fs::rename(&self.log, to) {
            Ok(()) => {
                self.log = to.to_owned();
                self.in_pool_dir = false;
            }
            Err(e) => {
                tracing::warn!(from = %self.log.display(), to = %to.display(), error = %e,
                    "could not move the pool member's log")
            }
        }
    }

    /// Writes `message` (the encoded assignment) to its standard input and waits for it to
    /// say it read it: at most [`ASSIGNED_LIMIT`] for a pool member, [`WARM_LIMIT`] more for
    /// one started for this wake. On failure (the process is gone, stopped or stuck) the
    /// member comes back with the error.
    pub(crate) async fn hand_off(
        mut self,
        message: &str,
    ) -> Result<HandedOff, (Self, std::io::Error)> {
        let written = async {
            self.stdin.write_all(message.as_bytes()).await?;
            self.stdin.flush().await?;
            // One started for this wake first warms up, then says `waiting`.
            let limit = if self.warmed {
                ASSIGNED_LIMIT
            } else {
                WARM_LIMIT + ASSIGNED_LIMIT
            };
            let said = tokio::time::timeout(limit, async {
                loop {
                    match self.stdout.next_line().await? {
                        Some(line) if line == ASSIGNED => return Ok(()),
                        Some(line) if line == WAITING && !self.warmed => {}
                        Some(line) => {
                            return Err(std::io::Error::other(format!(
                                "it said {line:?} where {ASSIGNED:?} was expected"
                            )));
                        }
                        None => return Err(std::io::Error::other("it exited")),
                    }
                }
            });
            said.await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("it did not take its assignment within {limit:?}"),
                ))
            })
        }
        .await;
        match written {
            Ok(()) => Ok(HandedOff {
                child: self.child,
                stdin: self.stdin,
                stdout: self.stdout,
            }),
            Err(e) => Err((self, e)),
        }
    }

    /// Kills it and waits for it; deletes its own log. It holds no mount and nothing of a
    /// tenant, so nothing else is left.
    pub(crate) async fn discard(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if self.in_pool_dir {
            let _ = std::fs::remove_file(&self.log);
        }
    }

    /// The last lines of its log, for a member that died.
    fn log_tail(&self) -> String {
        crate::postgres::tail_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 5)
    }
}

/// What [`WarmPool::take`] found.
pub(crate) struct Taken {
    /// A live member, if there was one.
    pub(crate) member: Option<Member>,
    /// Members found dead on the way (discarded).
    pub(crate) dead: u32,
}

/// The pool. Cheap to clone; clones share it.
#[derive(Clone)]
pub(crate) struct WarmPool {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Launcher,
    target: usize,
    members: Mutex<VecDeque<Member>>,
    /// The refill's cue ([`WarmPool::refill_soon`]).
    taken: Notify,
    closing: CancellationToken,
    refill: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WarmPool {
    /// A pool of `target` members started by `launcher`, filled in the background from now
    /// on (none with `target` 0).
    pub(crate) fn start(launcher: Launcher, target: usize) -> Self {
        let pool = Self {
            inner: Arc::new(Inner {
                launcher,
                target,
                members: Mutex::new(VecDeque::new()),
                taken: Notify::new(),
                closing: CancellationToken::new(),
                refill: Mutex::new(None),
            }),
        };
        metrics::gauge!("lakebed_warm_pool_members").set(0.0);
        if target > 0 {
            let task = tokio::spawn(pool.clone().refill());
            *pool.lock_refill() = Some(task);
        }
        pool
    }

    /// The launcher, for a pagefs started outside the pool.
    pub(crate) fn launcher(&self) -> &Launcher {
        &self.inner.launcher
    }

    fn members(&self) -> std::sync::MutexGuard<'_, VecDeque<Member>> {
        self.inner.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_refill(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.inner.refill.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the oldest live member out of the pool, discarding dead ones on the way. Never
    /// waits for a member to start; [`Self::refill_soon`] cues the refill once the wake is
    /// over.
    pub(crate) async fn take(&self) -> Taken {
        let mut dead = Vec::new();
        let member = {
            let mut members = self.members();
            let mut found = None;
            while let Some(mut m) = members.pop_front() {
                if m.alive() {
                    found = Some(m);
                    break;
                }
                dead.push(m);
            }
            metrics::gauge!("lakebed_warm_pool_members").set(members.len() as f64);
            found
        };
        let n = dead.len() as u32;
        for m in dead {
            tracing::warn!(pid = ?m.child.id(), log = %m.log_tail(), "a warm pool member died; replacing it");
            m.discard().await;
        }
        Taken { member, dead: n }
    }

    /// Cues the refill (after a wake): members are started in the background until the pool
    /// is full. A no-op when it is full, or without a pool.
    pub(crate) fn refill_soon(&self) {
        self.inner.taken.notify_one();
    }

    /// Members that are alive now (the `lakebed_warm_pool_members` gauge).
    pub(crate) fn live_members(&self) -> usize {
        let mut members = self.members();
        let mut live = 0;
        for m in members.iter_mut() {
            live += usize::from(m.alive());
        }
        live
    }

    /// Stops the refill and kills every member; returns once none is left.
    pub(crate) async fn close(&self) {
        self.inner.closing.cancel();
        let refill = self.lock_refill().take();
        if let Some(task) = refill {
            let _ = task.await;
        }
        let members: Vec<Member> = self.members().drain(..).collect();
        for m in members {
            m.discard().await;
        }
        metrics::gauge!("lakebed_warm_pool_members").set(0.0);
    }

    /// Keeps the pool full until closed: starts members one at a time, each added once it
    /// says `waiting`; then sleeps until the next take.
    async fn refill(self) {
        let closing = self.inner.closing.clone();
        loop {
            while self.members().len() < self.inner.target {
                if closing.is_cancelled() {
                    return;
                }
                let mut member = match self.inner.launcher.spawn(None) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a warm pool member");
                        tokio::select! {
                            () = closing.cancelled() => return,
                            () = tokio::time::sleep(RETRY) => continue,
                        }
                    }
                };
                let warmed = tokio::select! {
                    () = closing.cancelled() => {
                        member.discard().await;
                        return;
                    }
                    warmed = member.warmed() => warmed,
                };
                if warmed {
                    let mut members = self.members();
                    members.push_back(member);
                    metrics::gauge!("lakebed_warm_pool_members").set(members.len() as f64);
                } else {
                    tracing::warn!(log = %member.log_tail(), "a warm pool member did not start");
                    member.discard().await;
                    tokio::select! {
                        () = closing.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
            tokio::select! {
                () = closing.cancelled() => return,
                () = self.inner.taken.notified() => {}
            }
        }
    }
}
