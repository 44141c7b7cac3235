//! Computes on the page store: each endpoint's PGDATA is its timeline, mounted by a pagefs
//! process of its own for the life of one compute.
//!
//! - **Template.** initdb runs once per PostgreSQL major version, on a pagefs mount of the
//!   timeline `template-pgNN`; when it succeeded the manager writes the key [`TEMPLATE_DONE`]
//!   into that timeline, so a template half-made by a crash is recognised, deleted and made
//!   again. An endpoint's timeline is a copy-on-write branch of the template made at its first
//!   wake: O(1) in the page store, whatever the template's size.
//! - **Mount.** At each wake: stale mounts and local files of an earlier compute are cleared,
//!   then a `lakebed pagefs` (its own process group) is taken from the warm pool
//!   ([`crate::warm_pool`]), or started if the pool has none, and handed its assignment: the
//!   mount and the tenant's keys. It acquires the timeline's next generation (fencing out
//!   any older compute), mounts, and prints `ready GENERATION`.
//! - **Unmount.** At suspend, after Postgres stopped: SIGTERM, on which pagefs unmounts,
//!   flushes, and deletes its cache and scratch files. If it does not exit within the grace
//!   period it is killed and the mount detached; nothing of the endpoint is left locally
//!   either way (the per-boot key died with the process).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use lakebed_pageserver_client::{
    ClientOptions, ClientTls, PageStoreClient, RpcError, TimelineId, WriteBatch,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::timeout;

use crate::ManagerError;
use crate::postgres::{EndpointDir, OsUser, PgInstall, remove_dir_if_exists};
use crate::steps::PagefsSteps;
use crate::tenant_keys::UnwrappedKeys;
use crate::warm_pool::{HandedOff, Launcher, Member, WarmPool};
use lakebed_pageserver_client::pagefs::launch::{AssignedKeys, Assignment, WAITING};

/// Key written into a template timeline once initdb on it succeeded. Outside pagefs's key
/// space (`i`, `d`, `p` prefixes), so pagefs never sees it.
pub const TEMPLATE_DONE: &[u8] = b"t/complete";

/// Where the page store is and how computes use it.
#[derive(Debug, Clone)]
pub struct PageStoreOptions {
    /// The page store's URL (`http://` or `https://`).
    pub url: String,
    /// PEM CA for an `https://` page store.
    pub ca_file: Option<PathBuf>,
    /// The `lakebed` binary that runs `lakebed pagefs`.
    pub pagefs_bin: PathBuf,
    /// Local cache per compute, in MiB.
    pub cache_mib: u64,
    /// How long pagefs waits for an unreachable page store before EIO.
    pub io_timeout: Duration,
    /// Whether pagefs prewarms its cache at mount (`compute.prewarm`).
    pub prewarm: bool,
    /// pagefs processes kept started ahead of wakes (`compute.warm_pool`); 0: none.
    pub warm_pool: usize,
}

/// The manager's handle on the page store.
pub(crate) struct Storage {
    opts: PageStoreOptions,
    client: PageStoreClient,
    /// pagefs processes started ahead, and the launcher of all of them.
    pool: WarmPool,
    /// Templates known to be complete, by name; the lock serialises their builds.
    templates: tokio::sync::Mutex<std::collections::HashMap<String, TimelineId>>,
}

fn storage_error(endpoint: &str, what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::StartFailed {
        endpoint: endpoint.to_owned(),
        reason: format!("{what}: {e}"),
        log_tail: String::new(),
    }
}

/// What a running pagefs last reported (its `stats` line, once a second): local cache and
/// page store counters since it mounted.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PagefsStats {
    /// Reads served by the local cache.
    pub hits: u64,
    /// Reads the local cache could not serve.
    pub misses: u64,
    /// Pages evicted from the local cache.
    pub evictions: u64,
    /// Pages in the local cache now.
    pub cached_pages: u64,
    /// Read RPCs to the page store.
    pub fetches: u64,
    /// Pages those reads fetched.
    pub fetched_pages: u64,
    /// Time spent in them, in seconds.
    pub fetch_seconds: f64,
    /// Fetches per latency bucket (`lakebed_pageserver_client::pagefs::fs::FETCH_BUCKETS`,
    /// then slower), not cumulative.
    #[serde(default)]
    pub fetch_buckets: Vec<u64>,
    /// Flushes (write batches sent) to the page store.
    pub flushes: u64,
    /// Page bytes flushed.
    pub flushed_bytes: u64,
    /// Page bytes written but not yet flushed.
    pub dirty_bytes: u64,
    /// The re-seal of older pages after a rekey, while one runs or once it ran.
    #[serde(default)]
    pub reseal: Option<ResealStatus>,
    /// The prewarm of this boot's cache, once it started (`compute.prewarm`).
    #[serde(default)]
    pub prewarm: Option<PrewarmStatus>,
}

/// Progress of the prewarm at wake: the pages the previous compute read, fetched back into
/// the cache in the background.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrewarmStatus {
    /// Pages on the previous compute's list.
    pub listed: u64,
    /// Pages fetched into the cache so far.
    pub fetched: u64,
    /// Pages left out: gone (a dropped table), past the end of their file, or already local.
    pub skipped: u64,
    /// Of `fetched`, those also read into the kernel's page cache, where Postgres's reads
    /// find them without reaching pagefs.
    #[serde(default)]
    pub in_page_cache: u64,
    /// Whether the prewarm ended.
    pub done: bool,
    /// Why it ended before the end of the list (`"cache full"`, `"page store error"`).
    #[serde(default)]
    pub stopped: Option<String>,
}

/// Progress of a re-seal under the newest DEK version (after `lakebed keys rekey`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResealStatus {
    /// Values of the timeline looked at.
    pub scanned: u64,
    /// Values re-sealed.
    pub resealed: u64,
    /// Whether the whole timeline was scanned.
    pub done: bool,
}

impl PagefsStats {
    /// The page fetch latency histogram of `endpoint` in the Prometheus text format
    /// (`lakebed_pagefs_fetch_seconds`, cumulative buckets, `_sum`, `_count`), without the
    /// `# TYPE` line.
    pub fn fetch_histogram(&self, endpoint: &str) -> String {
        use lakebed_pageserver_client::pagefs::fs::FETCH_BUCKETS;
        let mut out = String::new();
        let mut cumulative = 0;
        for (i, count) in self.fetch_buckets.iter().enumerate() {
            cumulative += count;
            let le = FETCH_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            out.push_str(&format!(
                "lakebed_pagefs_fetch_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "lakebed_pagefs_fetch_seconds_sum{{endpoint=\"{endpoint}\"}} {}\n\
             lakebed_pagefs_fetch_seconds_count{{endpoint=\"{endpoint}\"}} {cumulative}\n",
            self.fetch_seconds
        ));
        out
    }

    /// Hits over lookups, if there were any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// A running pagefs.
pub(crate) struct Pagefs {
    /// Its latest report.
    pub(crate) stats: std::sync::Arc<std::sync::Mutex<PagefsStats>>,
    /// Its account of the mount, if its `ready` line had one.
    pub(crate) steps: Option<PagefsSteps>,
    /// Whether it came from the warm pool.
    pub(crate) origin: PagefsOrigin,
    /// Its standard input, until [`Pagefs::compute_active`] says the compute is up.
    stdin: Option<tokio::process::ChildStdin>,
    /// Whether a finished re-seal was already handed out by [`Pagefs::finished_reseal`].
    reseal_seen: bool,
    child: Child,
    mountpoint: PathBuf,
    local_dir: PathBuf,
}

impl Storage {
    /// The page store's handle, with the warm pool of pagefs processes (members live in
    /// `data_dir`) filling from now on.
    pub(crate) fn new(opts: PageStoreOptions, data_dir: &Path) -> Result<Self, ManagerError> {
        let mut o = ClientOptions::new(opts.url.clone());
        o.total_timeout = opts.io_timeout;
        if let Some(ca) = &opts.ca_file {
            o.tls = Some(ClientTls {
                ca_pem: std::fs::read(ca).map_err(ManagerError::io(ca))?,
                domain: None,
                identity: None,
            });
        }
        let client = PageStoreClient::new(o)
            .map_err(|e| ManagerError::InvalidInput(format!("compute.pageserver_url: {e}")))?;
        let pool = WarmPool::start(Launcher::new(opts.clone(), data_dir)?, opts.warm_pool);
        Ok(Self {
            opts,
            client,
            pool,
            templates: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Makes sure `timeline` exists, branching it from the template (made first if needed;
    /// one per tenant when its pages are sealed under `keys`). Returns its lineage: itself,
    /// then its parent.
    pub(crate) async fn ensure_timeline(
        &self,
        endpoint: &str,
        timeline: &str,
        install: &PgInstall,
        user: &OsUser,
        data_dir: &Path,
        keys: Option<&UnwrappedKeys>,
    ) -> Result<Vec<String>, ManagerError> {
        let id: TimelineId = timeline
            .parse()
            .map_err(|e| storage_error(endpoint, "timeline id", e))?;
        match self.client.describe_timeline(&id).await {
            Ok(info) => {
                let mut lineage = vec![timeline.to_owned()];
                lineage.extend(info.parent.map(|(p, _)| p.to_string()));
                return Ok(lineage);
            }
            Err(RpcError::NotFound { .. }) => {}
            Err(e) => return Err(storage_error(endpoint, "page store", e)),
        }
        let template = self.template(install, user, data_dir, keys).await?;
        match self
            .client
            .create_timeline(&id, Some((&template, None)))
            .await
        {
            Ok(_) | Err(RpcError::AlreadyExists { .. }) => {
                tracing::info!(endpoint, timeline, %template, "timeline branched from the template");
                Ok(vec![timeline.to_owned(), template.to_string()])
            }
            Err(e) => Err(storage_error(endpoint, "branching the timeline", e)),
        }
    }

    /// The template timeline for `install`'s major version (and, for sealed pages, the
    /// tenant: a template's pages are sealed under its tenant's DEK), built if missing or
    /// half-made.
    async fn template(
        &self,
        install: &PgInstall,
        user: &OsUser,
        data_dir: &Path,
        keys: Option<&UnwrappedKeys>,
    ) -> Result<TimelineId, ManagerError> {
        let name = match keys {
            None => format!("template-pg{}", install.major),
            Some(k) => format!(
                "tpl-{:016x}-pg{}",
                fnv1a(k.tenant.as_bytes()),
                install.major
            ),
        };
        let mut cached = self.templates.lock().await;
        if let Some(t) = cached.get(&name) {
            return Ok(t.clone());
        }
        let id: TimelineId = name
            .parse()
            .map_err(|e| storage_error(&name, "template id", e))?;
        let fail = |what: &str, e: RpcError| storage_error(&name, what, e);
        let done = match self
            .client
            .read(&id, vec![Bytes::from_static(TEMPLATE_DONE)], None)
            .await
        {
            Ok(r) => r.values.first().is_some_and(Option::is_some),
            Err(RpcError::NotFound { .. }) => false,
            Err(e) => return Err(fail("reading the template", e)),
        };
        if !done {
            let started = std::time::Instant::now();
            match self.client.delete_timeline(&id).await {
                Ok(()) => tracing::warn!(template = %id, "deleting a half-made template"),
                Err(RpcError::NotFound { .. }) => {}
                Err(e) => return Err(fail("deleting a half-made template", e)),
            }
            self.client
                .create_timeline(&id, None)
                .await
                .map_err(|e| fail("creating the template", e))?;
            let dir = data_dir.join("template");
            let _ = remove_dir_if_exists(&dir);
            std::fs::create_dir_all(&dir).map_err(ManagerError::io(&dir))?;
            let input = keys.map(|k| k.pagefs_keys(&[name.as_str()]));
            // Not from the pool: a template is made once, and the pool is for wakes.
            let mut fs = self
                .mount(
                    &name,
                    &id,
                    MountAt {
                        mountpoint: &dir.join("pgdata"),
                        local_dir: &dir.join("local"),
                        log_file: &dir.join("pagefs.log"),
                    },
                    user,
                    input,
                    false,
                )
                .await?;
            let made =
                crate::postgres::initdb(install, user, &dir.join("pgdata"), &dir, &name).await;
            let unmounted = fs.stop(Duration::from_secs(30)).await;
            made?;
            if !unmounted.is_some_and(|s| s.success()) {
                return Err(storage_error(
                    &name,
                    "pagefs",
                    "did not flush the template at unmount",
                ));
            }
            let generation = self
                .client
                .acquire(&id)
                .await
                .map_err(|e| fail("marking the template", e))?;
            self.client
                .write(
                    &id,
                    generation,
                    WriteBatch::new()
                        .put(Bytes::from_static(TEMPLATE_DONE), Bytes::from_static(b"1")),
                )
                .await
                .map_err(|e| fail("marking the template", e))?;
            let _ = remove_dir_if_exists(&dir);
            tracing::info!(template = %id, ms = started.elapsed().as_millis() as u64, "template made");
        }
        cached.insert(name, id.clone());
        Ok(id)
    }

    /// Deletes an endpoint's timeline (after the endpoint was deleted). A missing one is fine.
    pub(crate) async fn delete_timeline(&self, timeline: &str) {
        let Ok(id) = timeline.parse::<TimelineId>() else {
            return;
        };
        match self.client.delete_timeline(&id).await {
            Ok(()) | Err(RpcError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(%timeline, error = %e, "could not delete the timeline; it stays as garbage")
            }
        }
    }

    /// Mounts the endpoint's timeline (first of `lineage`) on its PGDATA, sealed under
    /// `keys` if given.
    pub(crate) async fn mount_endpoint(
        &self,
        endpoint: &str,
        lineage: &[String],
        dir: &EndpointDir,
        user: &OsUser,
        keys: Option<&UnwrappedKeys>,
    ) -> Result<Pagefs, ManagerError> {
        let id: TimelineId = lineage
            .first()
            .map(String::as_str)
            .unwrap_or_default()
            .parse()
            .map_err(|e| storage_error(endpoint, "timeline id", e))?;
        let lineage: Vec<&str> = lineage.iter().map(String::as_str).collect();
        let input = keys.map(|k| k.pagefs_keys(&lineage));
        self.mount(
            endpoint,
            &id,
            MountAt {
                mountpoint: &dir.pgdata(),
                local_dir: &dir.local_dir(),
                log_file: &dir.pagefs_log(),
            },
            user,
            input,
            true,
        )
        .await
    }

    /// Live members of the warm pool now.
    pub(crate) fn pool_members(&self) -> usize {
        self.pool.live_members()
    }

    /// Cues the warm pool's refill in the background (once a wake is over).
    pub(crate) fn refill_pool(&self) {
        self.pool.refill_soon();
    }

    /// Kills the warm pool's members and stops its refill.
    pub(crate) async fn close_pool(&self) {
        self.pool.close().await;
    }

    /// A pagefs waiting for its assignment: from the pool if `from_pool` (a wake), else (or
    /// if the pool has none) started now. Counts the hand-off's outcome for a wake.
    async fn waiting_pagefs(
        &self,
        from_pool: bool,
        origin: &mut PagefsOrigin,
    ) -> Result<(Member, bool), ManagerError> {
        if from_pool {
            let taken = self.pool.take().await;
            origin.dead_members += taken.dead;
            metrics::counter!("lakebed_warm_pool_handoffs_total", "outcome" => "dead")
                .increment(u64::from(taken.dead));
            if let Some(member) = taken.member {
                return Ok((member, true));
            }
        }
        Ok((self.pool.launcher().spawn(None)?, false))
    }

    #[allow(clippy::too_many_arguments)] // two call sites, each argument a different thing
    async fn mount(
        &self,
        endpoint: &str,
        timeline: &TimelineId,
        at: MountAt<'_>,
        user: &OsUser,
        keys: Option<AssignedKeys>,
        from_pool: bool,
    ) -> Result<Pagefs, ManagerError> {
        let MountAt {
            mountpoint,
            local_dir,
            log_file,
        } = at;
        prepare_mountpoint(mountpoint, local_dir)?;
        std::fs::create_dir_all(mountpoint).map_err(ManagerError::io(mountpoint))?;
        let mut assignment = Assignment {
            mountpoint: mountpoint.to_owned(),
            timeline: timeline.clone(),
            local_dir: local_dir.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            cache_mib: self.opts.cache_mib,
            io_timeout: self.opts.io_timeout,
            prewarm: self.opts.prewarm,
            trace: Vec::new(),
            keys,
        };
        // The current span's trace context, so pagefs's mount is a step of this wake's trace.
        lakebed_telemetry::inject(&tracing::Span::current(), |name, value| {
            assignment.trace.push((name.to_owned(), value));
        });
        // The DEKs go over a pipe only this child holds; the text is zeroized when dropped.
        let message = assignment
            .encode()
            .map_err(|e| storage_error(endpoint, "pagefs assignment", e))?;
        drop(assignment);
        let mut origin = PagefsOrigin::default();
        let handed = loop {
            let (mut member, pooled) = self.waiting_pagefs(from_pool, &mut origin).await?;
            // This compute's log from here on; the open file follows the rename.
            member.move_log(log_file);
            match member.hand_off(&message).await {
                Ok(handed) => {
                    origin.pooled = pooled;
                    if from_pool {
                        let outcome = if pooled { "pooled" } else { "spawned" };
                        metrics::counter!("lakebed_warm_pool_handoffs_total", "outcome" => outcome)
                            .increment(1);
                    }
                    break handed;
                }
                // Died between the check and the hand-off: as dead, and the next one.
                Err((member, e)) if pooled => {
                    tracing::warn!(endpoint, error = %e, "a warm pool member died at hand-off; replacing it");
                    origin.dead_members += 1;
                    metrics::counter!("lakebed_warm_pool_handoffs_total", "outcome" => "dead")
                        .increment(1);
                    member.discard().await;
                }
                Err((member, e)) => {
                    member.discard().await;
                    detach(mountpoint);
                    let _ = remove_dir_if_exists(local_dir);
                    return Err(storage_error(endpoint, "handing pagefs its mount", e));
                }
            }
        };
        let HandedOff {
            mut child,
            stdin,
            stdout: mut lines,
        } = handed;
        let ready = timeout(self.opts.io_timeout + Duration::from_secs(10), async {
            loop {
                match lines.next_line().await {
                    // A member started for this wake says it first.
                    Ok(Some(line)) if line == WAITING => continue,
                    Ok(Some(line)) => return parse_ready(&line),
                    _ => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        let Some((generation, steps)) = ready else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            detach(mountpoint);
            let _ = remove_dir_if_exists(local_dir);
            let text = std::fs::read_to_string(log_file).unwrap_or_default();
            return Err(ManagerError::StartFailed {
                endpoint: endpoint.to_owned(),
                reason: "pagefs did not mount".into(),
                log_tail: crate::postgres::tail_lines(&text, 10),
            });
        };
        let stdin = Some(stdin);
        let stats = std::sync::Arc::new(std::sync::Mutex::new(PagefsStats::default()));
        let latest = stats.clone();
        // Reads the reports until pagefs exits (a closed pipe would kill it).
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut latest = latest.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(json) = line.strip_prefix("stats ")
                    && let Ok(s) = serde_json::from_str::<PagefsStats>(json)
                {
                    let reseal = latest.reseal.take();
                    *latest = s;
                    latest.reseal = reseal;
                } else if let Some(json) = line.strip_prefix("reseal ")
                    && let Ok(r) = serde_json::from_str(json)
                {
                    latest.reseal = Some(r);
                }
            }
        });
        tracing::info!(endpoint, %timeline, generation, pooled = origin.pooled, "pagefs mounted");
        Ok(Pagefs {
            stats,
            steps,
            origin,
            stdin,
            reseal_seen: false,
            child,
            mountpoint: mountpoint.to_owned(),
            local_dir: local_dir.to_owned(),
        })
    }
}

/// Where a compute's pagefs came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PagefsOrigin {
    /// Taken from the warm pool (else started for this mount).
    pub(crate) pooled: bool,
    /// Pool members found dead (and replaced) before it.
    pub(crate) dead_members: u32,
}

/// Parses pagefs's `ready GENERATION {STEPS}` line (the steps are optional).
fn parse_ready(line: &str) -> Option<(u32, Option<PagefsSteps>)> {
    let rest = line.strip_prefix("ready ")?;
    let (generation, steps) = rest.split_once(' ').unwrap_or((rest, ""));
    let generation = generation.trim().parse().ok()?;
    Some((generation, serde_json::from_str(steps.trim()).ok()))
}

/// FNV-1a, 64 bits: a stable short name for a tenant's template timeline.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where one pagefs mounts, keeps its local files and logs.
struct MountAt<'a> {
    mountpoint: &'a Path,
    local_dir: &'a Path,
    log_file: &'a Path,
}

impl Pagefs {
    /// Tells pagefs the compute accepts clients (the line `active`, then the end of its
    /// standard input): what it read so far is its heat list's startup part, and the rest of
    /// its prewarm may start. Once; a pagefs that is gone is not an error here.
    pub(crate) async fn compute_active(&mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut pipe) = self.stdin.take() {
            let _ = pipe.write_all(b"active\n").await;
        }
    }

    /// A re-seal that finished and re-sealed something, once (for the audit log).
    pub(crate) fn finished_reseal(&mut self) -> Option<ResealStatus> {
        let r = self.stats.lock().ok()?.reseal?;
        if self.reseal_seen || !r.done || r.resealed == 0 {
            return None;
        }
        self.reseal_seen = true;
        Some(r)
    }

    /// The exit status, if pagefs has exited.
    pub(crate) fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Unmounts: SIGTERM (pagefs unmounts, flushes, cleans up), then after `grace` SIGKILL
    /// and a detached unmount. Returns pagefs's exit status if it exited by itself.
    pub(crate) async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        let pid = Pid::from_raw(self.child.id().unwrap_or_default() as i32);
        let mut status = self.try_exited();
        if status.is_none() {
            let _ = kill(pid, Signal::SIGTERM);
            status = timeout(grace, self.child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        if status.is_none() {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "pagefs did not stop; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        detach(&self.mountpoint);
        let _ = remove_dir_if_exists(&self.local_dir);
        status
    }
}

/// Whether something is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*target))
}

/// Pids of the `lakebed pagefs` processes serving `mountpoint`: named in their argv
/// (`--mountpoint`), or, handed their mount as an assignment (argv names none), working in
/// its parent directory, the compute's (see `lakebed pagefs`).
pub fn pagefs_serving(mountpoint: &Path) -> Vec<i32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    crate::postgres::processes_where(|proc_dir| {
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            return false;
        };
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !argv.contains(&&b"pagefs"[..]) {
            return false;
        }
        argv.windows(2)
            .any(|w| w[0] == b"--mountpoint" && w[1] == want)
            || (argv.contains(&&b"--assignment-from-stdin"[..])
                && std::fs::read_link(proc_dir.join("cwd"))
                    .is_ok_and(|cwd| Some(cwd.as_path()) == mountpoint.parent()))
    })
}

/// Detaches a mount at `path` if there is one (`umount -l`: also works on a dead FUSE mount).
pub fn detach(path: &Path) {
    if is_mounted(path) {
        let ok = std::process::Command::new("umount")
            .arg("-l")
            .arg(path)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(path = %path.display(), "could not detach a stale mount");
        }
    }
}

/// Removes what an earlier compute may have left: a (dead) mount and its local files. An
/// orphaned pagefs whose mount is detached flushes and exits by itself.
pub fn clear_stale(mountpoint: &Path, local_dir: &Path) -> Result<(), ManagerError> {
    detach(mountpoint);
    remove_dir_if_exists(local_dir)
}

/// Clears what an earlier compute left, and sets aside a local PGDATA in the way.
fn prepare_mountpoint(mountpoint: &Path, local_dir: &Path) -> Result<(), ManagerError> {
    clear_stale(mountpoint, local_dir)?;
    // A local PGDATA from before computes ran on the page store is kept, set aside.
    if mountpoint.join("PG_VERSION").exists() {
        let aside = mountpoint.with_extension("local-before-pagefs");
        tracing::warn!(from = %mountpoint.display(), to = %aside.display(),
            "a local data directory is in the way of the pagefs mount; moving it aside");
        std::fs::rename(mountpoint, &aside).map_err(ManagerError::io(mountpoint))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` with mode 0600: a log only the manager reads.
pub(crate) fn private_file(path: &Path) -> Result<std::fs::File, ManagerError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(ManagerError::io(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_ready_line_gives_the_generation_and_the_mount_steps() {
        assert_eq!(
            parse_ready(r#"ready 7 {"acquire_ms":3,"load_ms":12,"fuse_ms":1}"#),
            Some((
                7,
                Some(PagefsSteps {
                    acquire_ms: 3,
                    load_ms: 12,
                    fuse_ms: 1
                })
            ))
        );
        assert_eq!(parse_ready("ready 7"), Some((7, None)));
        assert_eq!(parse_ready("ready x {}"), None);
        assert_eq!(parse_ready("stats {}"), None);
    }
}
