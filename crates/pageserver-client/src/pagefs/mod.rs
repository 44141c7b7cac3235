//! pagefs: a compute's PGDATA as a FUSE filesystem over its timeline in the page store.
//!
//! One pagefs process per compute (`lakebed pagefs`, started by the compute manager), so it
//! can fail, and be killed in tests, on its own. At mount it acquires the next generation of
//! the timeline (fencing out any older compute), loads the namespace, makes a fresh per-boot
//! key and an empty cache; at unmount it flushes, then deletes the cache and the scratch files.
//! The per-boot key dies with the process, so whatever is left on disk after a crash is
//! unreadable.
//!
//! - [`layout`]: keys and records in the timeline.
//! - [`fs`]: the state and every operation, durability and fencing.
//! - [`store`]: the page store calls pagefs makes, behind a trait (a seam for tests).
//! - [`cache`]: the sealed local cache and scratch files; [`seal`]: the per-boot key.
//! - [`fuse`]: the FUSE request handlers.
//! - [`launch`]: the assignment a pagefs started ahead (a warm pool member) is handed.
//!
//! Why fuser: a maintained pure-Rust FUSE implementation (no libfuse needed when mounting as
//! root), whose 0.18 handlers take `&self` and run on several threads, and whose replies can be
//! sent from any thread, which lets a page fetch wait on a tokio task.

pub mod cache;
pub mod data_key;
pub mod fs;
pub mod fuse;
pub mod launch;
pub mod layout;
pub mod seal;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use lakebed_pageserver_api::{Generation, TimelineId};
use tracing::Instrument;

use crate::rpc::{PageStoreClient, RpcError};

pub use fs::{Options, PageFs};

/// What a mount tells the process that runs it.
#[derive(Debug, Clone)]
pub enum Report {
    /// Mounted, with this generation, in these steps.
    Ready(Generation, MountSteps),
    /// Counters ([`PageFs::stats_json`]), once a second and at the end.
    Stats(String),
    /// Progress of a re-seal after a rekey: `{"scanned":N,"resealed":N,"done":BOOL}`.
    Reseal(String),
}

/// Where the time of a mount went, in milliseconds, for the cold start's account of
/// itself: acquiring the generation, then the namespace load (with the local cache and
/// per-boot key made first), then the FUSE mount itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountSteps {
    /// The `Acquire` call to the page store.
    pub acquire_ms: u64,
    /// Per-boot key, local cache and scratch directory, and the namespace load.
    pub load_ms: u64,
    /// The FUSE mount until it is live.
    pub fuse_ms: u64,
}

impl MountSteps {
    /// As JSON: `{"acquire_ms":N,"load_ms":N,"fuse_ms":N}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"acquire_ms\":{},\"load_ms\":{},\"fuse_ms\":{}}}",
            self.acquire_ms, self.load_ms, self.fuse_ms
        )
    }
}

fn millis(since: std::time::Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Default size of the local cache: 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// FUSE threads reading requests.
const FUSE_THREADS: usize = 4;

/// What one mount needs.
#[derive(Debug)]
pub struct MountSpec {
    /// Where to mount (an existing empty directory).
    pub mountpoint: PathBuf,
    /// The timeline served.
    pub timeline: TimelineId,
    /// The compute's local directory for the cache and scratch files (created, must not
    /// exist or be empty; removed at unmount).
    pub local_dir: PathBuf,
    /// Cache size in bytes.
    pub cache_bytes: u64,
    /// Owner, group and flush tuning.
    pub options: Options,
    /// The tenant's DEKs, to seal everything sent to the page store; `None`: sent plain.
    pub keys: Option<data_key::DataKeys>,
    /// Whether to fetch the pages the previous compute read into the cache at mount, in
    /// the background (see `fs::prewarm`). The list of this boot's reads is written at
    /// unmount either way.
    pub prewarm: bool,
    /// Resolves (or is dropped) once the compute accepts clients: the end of the heat
    /// list's startup part, and the start of the rest of the prewarm. `None`: at once.
    pub active: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Why a mount failed or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The page store refused or did not answer (acquire, namespace load).
    #[error("page store: {0}")]
    PageStore(#[from] RpcError),
    /// The local directory, the key or the mount failed.
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The final flush at unmount failed: writes not fsynced before are lost.
    #[error("final flush to the page store failed")]
    FinalFlush,
}

fn local(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MountError {
    let what = what.into();
    move |source| MountError::Local { what, source }
}

/// Creates `dir` (mode 0700), which must not exist or be empty.
fn fresh_dir(dir: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(local(format!("{}", dir.display())))?;
        if entries.next().is_some() {
            return Err(MountError::Local {
                what: format!("{}", dir.display()),
                source: std::io::Error::other("not empty: a previous compute's files are left"),
            });
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(local(format!("create {}", dir.display())))
}

/// Mounts `spec` (acquire, namespace load and mount run in `mount_span`, which ends once
/// the mount is live), reports [`Report::Ready`] once the mount is live, and serves until
/// `stop` resolves (then unmounts) or someone unmounts it. Reports [`Report::Stats`] with
/// [`PageFs::stats_json`] every second and once at the end. Flushes everything before
/// returning and deletes the local directory.
///
/// # Errors
///
/// [`MountError`]; on [`MountError::FinalFlush`] the caller should exit non-zero.
pub async fn serve(
    client: PageStoreClient,
    mut spec: MountSpec,
    mount_span: tracing::Span,
    report: impl Fn(Report) + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), MountError> {
    let started = std::time::Instant::now();
    let generation = client
        .acquire(&spec.timeline)
        .instrument(mount_span.clone())
        .await?;
    let steps = MountSteps {
        acquire_ms: millis(started),
        ..MountSteps::default()
    };
    fresh_dir(&spec.local_dir)?;
    let taken = (spec.keys.take(), spec.active.take());
    let result = serve_in(
        client,
        &spec,
        taken,
        (generation, steps),
        mount_span,
        report,
        stop,
    )
    .await;
    if let Err(e) = std::fs::remove_dir_all(&spec.local_dir) {
        tracing::warn!(dir = %spec.local_dir.display(), error = %e, "could not remove the local directory");
    }
    result
}

#[allow(clippy::too_many_arguments)] // one call site, each argument a different thing
async fn serve_in(
    client: PageStoreClient,
    spec: &MountSpec,
    (keys, announced): (
        Option<data_key::DataKeys>,
        Option<tokio::sync::oneshot::Receiver<()>>,
    ),
    (generation, mut steps): (Generation, MountSteps),
    mount_span: tracing::Span,
    report: impl Fn(Report) + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), MountError> {
    let loading = std::time::Instant::now();
    let key = Arc::new(
        seal::BootKey::generate()
            .map_err(|_| local("per-boot key")(std::io::Error::other("no randomness")))?,
    );
    let scratch_dir = spec.local_dir.join("scratch");
    fresh_dir(&scratch_dir)?;
    let payload = layout::BLOCK_SIZE
        + if keys.is_some() {
            data_key::SEAL_OVERHEAD
        } else {
            0
        };
    let cache = cache::Cache::create(
        &spec.local_dir.join("cache"),
        spec.cache_bytes,
        payload,
        key.clone(),
    )
    .map_err(local("create the cache file"))?;
    let scratch = cache::Scratch::new(&scratch_dir, key);
    let fs = Arc::new(
        PageFs::load(
            client,
            spec.timeline.clone(),
            generation,
            spec.options.clone(),
            cache,
            scratch,
            keys,
        )
        .instrument(mount_span.clone())
        .await?,
    );
    steps.load_ms = millis(loading);
    let mounting = std::time::Instant::now();
    // Once the compute accepts clients: the heat list's startup part ends, and the rest of
    // the prewarm may start.
    let (active_tx, active_rx) = tokio::sync::watch::channel(false);
    let activity = {
        let fs = fs.clone();
        tokio::spawn(async move {
            if let Some(announced) = announced {
                let _ = announced.await;
                fs.compute_active();
            }
            let _ = active_tx.send(true);
        })
    };
    // Started before the mount is live: the pages Postgres reads first come first.
    let prewarmer = spec.prewarm.then(|| {
        let fs = fs.clone();
        let mut active = active_rx;
        tokio::spawn(async move {
            let active = async move {
                let _ = active.wait_for(|a| *a).await;
            };
            match fs.heat_list().await {
                Ok(list) if !list.is_empty() => {
                    let p = fs.prewarm(list, active, |_| {}).await;
                    tracing::info!(
                        listed = p.listed,
                        fetched = p.fetched,
                        skipped = p.skipped,
                        "prewarm done"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "no prewarm: the heat list could not be read"),
            }
        })
    });
    let flusher = tokio::spawn(fs::flusher(fs.clone()));
    let prefetcher = tokio::spawn(fs::prefetcher(fs.clone()));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("pagefs".into()),
        MountOption::Subtype("lakebed".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let handler = fuse::Fuse::new(fs.clone(), tokio::runtime::Handle::current());
    let mountpoint = spec.mountpoint.clone();
    let mut session =
        tokio::task::spawn_blocking(move || Session::new(handler, &mountpoint, &config))
            .await
            .map_err(|e| local("mount")(std::io::Error::other(e)))?
            .map_err(local(format!("mount {}", spec.mountpoint.display())))?;
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pagefs-session".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(local("start the FUSE threads"))?;
    fs.set_mountpoint(spec.mountpoint.clone());
    tracing::info!(parent: &mount_span, mountpoint = %spec.mountpoint.display(), %generation, "mounted");
    drop(mount_span);
    steps.fuse_ms = millis(mounting);
    let report = Arc::new(report);
    report(Report::Ready(generation, steps));
    // After a rekey: older pages are re-sealed under the newest DEK version, in the
    // background, reporting progress as `reseal` stats.
    let resealer = {
        let (fs, report) = (fs.clone(), report.clone());
        tokio::spawn(async move {
            let progress = |p: fs::ResealProgress| {
                report(Report::Reseal(format!(
                    "{{\"scanned\":{},\"resealed\":{},\"done\":{}}}",
                    p.scanned, p.resealed, p.done
                )))
            };
            match fs.reseal(progress).await {
                Ok(p) if p.resealed > 0 => {
                    tracing::info!(resealed = p.resealed, scanned = p.scanned, "re-seal done")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "re-seal stopped; it resumes at the next mount")
                }
            }
        })
    };
    let reporter = {
        let (fs, report) = (fs.clone(), report.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                report(Report::Stats(fs.stats_json()));
            }
        })
    };

    tokio::pin!(done_rx);
    let ended = tokio::select! {
        () = stop => None,
        r = &mut done_rx => Some(r),
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            // Prewarm reads through the mount: its files must be closed for the unmount.
            if let Some(p) = &prewarmer {
                p.abort();
            }
            tracing::info!("unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed; detaching");
                let _ = nix_umount_detach(&spec.mountpoint);
            }
            done_rx.await
        }
    };
    if let Ok(Err(e)) = ended {
        tracing::warn!(error = %e, "FUSE session ended with an error");
    }
    flusher.abort();
    prefetcher.abort();
    reporter.abort();
    resealer.abort();
    if let Some(p) = prewarmer {
        p.abort();
    }
    activity.abort();
    // The handler flushed at destroy; this one reports whether anything is left.
    let flushed = fs.flush().await;
    if flushed.is_ok()
        && let Err(e) = fs.save_heat().await
    {
        tracing::warn!(error = %e, "the heat list was not saved; the next mount prewarms an older one");
    }
    let stats = fs.stats_json();
    tracing::info!(%stats, "unmounted");
    report(Report::Stats(stats));
    flushed.map_err(|_| MountError::FinalFlush)
}

/// `umount -l`: detaches a mount that a normal unmount could not remove.
fn nix_umount_detach(path: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "umount -l exited with {status}"
        )))
    }
}
