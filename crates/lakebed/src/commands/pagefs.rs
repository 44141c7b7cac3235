//! `lakebed pagefs`: one compute's PGDATA, mounted from the page store.
//!
//! Started in one of two ways, after which it behaves the same:
//! - with the mount's parameters as arguments (none secret), and the tenant's keys on its
//!   standard input (with `--keys-from-stdin`);
//! - with `--assignment-from-stdin`, by the compute manager's warm pool, ahead of any wake:
//!   it does only what needs no tenant (runtime, its channel to the page store connected,
//!   the random source and AES set up), prints `waiting`, and reads the whole mount, keys
//!   included, as one assignment (`pagefs::launch`). The end of standard input or SIGTERM
//!   before one ends it at once. Its working directory is then its mount point's parent,
//!   the compute's directory: the only place `/proc` shows which compute it serves.
//!
//! Then the compute manager writes the line `active` once the compute accepts clients (the
//! rest of the prewarm waits for it; the end of standard input counts too), waits for the
//! line `ready GENERATION {STEPS}` on standard output (the steps of the mount, as JSON:
//! `MountSteps`), reads a `stats {JSON}` line every second after it (cache and page store
//! counters) and `reseal {JSON}` lines while pages are re-sealed after a rekey, and stops it
//! with SIGTERM (or by unmounting). Logs go to standard error. The process is made
//! non-dumpable first: it holds the per-boot key and plaintext pages.

use anyhow::{Context, Result};
use lakebed_pageserver_client::pagefs::data_key::DataKeys;
use lakebed_pageserver_client::pagefs::launch::{self, AssignedKeys, Assignment};
use lakebed_pageserver_client::pagefs::{self, MountSpec, Options, Report};
use lakebed_pageserver_client::{ClientOptions, ClientTls, PageStoreClient};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

use crate::cli::PagefsArgs;

/// How long a pool member tries to connect to the page store before it waits with a channel
/// that connects at first use instead (a page store still starting must not hold it up).
const WARM_CONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// Mounts, serves until SIGTERM/SIGINT or an unmount, flushes, cleans up.
pub async fn run(args: PagefsArgs) -> Result<()> {
    let tracing = crate::logging::init(lakebed_config::LogFormat::Text, "info")?;
    let result = serve(args).await;
    tracing.shutdown().await;
    result
}

async fn serve(args: PagefsArgs) -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("making the process non-dumpable")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut options = ClientOptions::new(args.pageserver.clone());
    options.total_timeout = args.io_timeout;
    if let Some(ca) = &args.pageserver_ca {
        options.tls = Some(ClientTls {
            ca_pem: std::fs::read(ca)
                .with_context(|| format!("--pageserver-ca {}", ca.display()))?,
            domain: None,
            identity: None,
        });
    }
    let mut stdin = stdin_lines();
    let (assignment, client) = if args.assignment_from_stdin {
        let client = warm(options.clone()).await?;
        let assigned = tokio::select! {
            a = read_assignment(&mut stdin) => a?,
            _ = sigint.recv() => None,
            _ = sigterm.recv() => None,
        };
        let Some(assignment) = assigned else {
            tracing::info!("no assignment came; exiting");
            return Ok(());
        };
        say(launch::ASSIGNED);
        // The channel was made for the io timeout given at start; another needs its own.
        let client = if assignment.io_timeout == options.total_timeout {
            client
        } else {
            options.total_timeout = assignment.io_timeout;
            PageStoreClient::new(options).context("page store client")?
        };
        if let Some(dir) = assignment.mountpoint.parent()
            && let Err(e) = std::env::set_current_dir(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot work in the compute's directory");
        }
        (assignment, client)
    } else {
        let client = PageStoreClient::new(options).context("page store client")?;
        (from_args(&args, &mut stdin).await?, client)
    };
    // The mount's steps continue the trace of the wake that started this process, if the
    // manager passed its context (in the assignment, or TRACEPARENT, TRACESTATE) and traces
    // are exported.
    let mount_span = tracing::info_span!("pagefs_mount", timeline = %assignment.timeline);
    lakebed_telemetry::set_parent(&mount_span, |name| {
        assignment
            .trace
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    });
    let Assignment {
        mountpoint,
        timeline,
        local_dir,
        uid,
        gid,
        cache_mib,
        prewarm,
        keys,
        ..
    } = assignment;
    let keys = keys
        .map(
            |AssignedKeys {
                 tenant,
                 lineage,
                 deks,
             }| DataKeys::new(tenant, lineage, deks),
        )
        .transpose()
        .context("the tenant's keys")?;
    // The manager's next line, `active`, says the compute accepts clients (see MountSpec);
    // so does the end of standard input.
    let (active_tx, active) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        while let Some(line) = stdin.recv().await {
            if line.trim() == "active" {
                break;
            }
        }
        let _ = active_tx.send(());
    });
    let spec = MountSpec {
        mountpoint,
        timeline,
        local_dir,
        cache_bytes: cache_mib.saturating_mul(1 << 20),
        options: Options::new(uid, gid),
        keys,
        prewarm,
        active: Some(active),
    };
    pagefs::serve(
        client,
        spec,
        mount_span,
        |report| {
            let line = match report {
                Report::Ready(generation, steps) => {
                    format!("ready {generation} {}", steps.to_json())
                }
                Report::Stats(json) => format!("stats {json}"),
                Report::Reseal(json) => format!("reseal {json}"),
            };
            say(&line);
        },
        async {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
        },
    )
    .await?;
    Ok(())
}

/// One line on standard output, flushed at once (the manager waits for it).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A pool member's tenant-free preparation: the random source and AES set up, the channel
/// to the page store connected (or, if the page store does not answer within
/// [`WARM_CONNECT`], one that connects at first use). Says `waiting` when done.
async fn warm(options: ClientOptions) -> Result<PageStoreClient> {
    launch::warm_up().map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let client =
        match tokio::time::timeout(WARM_CONNECT, PageStoreClient::connect(options.clone())).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "page store not reached; connecting at the mount");
                PageStoreClient::new(options).context("page store client")?
            }
            Err(_) => {
                tracing::warn!("page store not reached in time; connecting at the mount");
                PageStoreClient::new(options).context("page store client")?
            }
        };
    say(launch::WAITING);
    Ok(client)
}

/// The lines of one message: up to and including `end`, at most
/// [`launch::MAX_MESSAGE_BYTES`]. `None` if standard input ends before any line.
async fn read_message(
    lines: &mut UnboundedReceiver<Zeroizing<String>>,
) -> Result<Option<Vec<Zeroizing<String>>>> {
    let mut message = Vec::new();
    let mut size = 0;
    loop {
        let Some(line) = lines.recv().await else {
            if message.is_empty() {
                return Ok(None);
            }
            anyhow::bail!("standard input ended before \"end\"");
        };
        size += line.len() + 1;
        anyhow::ensure!(
            size <= launch::MAX_MESSAGE_BYTES,
            "more than {} bytes on standard input before \"end\"",
            launch::MAX_MESSAGE_BYTES
        );
        let end = line.trim_end() == "end";
        message.push(line);
        if end {
            return Ok(Some(message));
        }
    }
}

/// The assignment the manager writes at hand-off; `None` if standard input ended first
/// (the manager is gone or dropped this member).
async fn read_assignment(
    lines: &mut UnboundedReceiver<Zeroizing<String>>,
) -> Result<Option<Assignment>> {
    let Some(message) = read_message(lines).await? else {
        return Ok(None);
    };
    let assignment = Assignment::decode(message.iter().map(|l| l.as_str()))
        .context("reading the assignment from standard input")?;
    Ok(Some(assignment))
}

/// The mount given as arguments (and, with `--keys-from-stdin`, the keys on standard input).
async fn from_args(
    args: &PagefsArgs,
    stdin: &mut UnboundedReceiver<Zeroizing<String>>,
) -> Result<Assignment> {
    // clap makes these required without --assignment-from-stdin.
    let missing = |what: &str| anyhow::anyhow!("--{what} is required");
    let keys = if args.keys_from_stdin {
        let message = read_message(stdin)
            .await?
            .context("standard input ended before the tenant's keys")?;
        Some(
            AssignedKeys::decode(message.iter().map(|l| l.as_str()))
                .context("reading the tenant's keys from standard input")?,
        )
    } else {
        None
    };
    Ok(Assignment {
        mountpoint: args
            .mountpoint
            .clone()
            .ok_or_else(|| missing("mountpoint"))?,
        timeline: args
            .timeline
            .as_deref()
            .ok_or_else(|| missing("timeline"))?
            .parse()
            .context("--timeline")?,
        local_dir: args.local_dir.clone().ok_or_else(|| missing("local-dir"))?,
        uid: args.uid.ok_or_else(|| missing("uid"))?,
        gid: args.gid.ok_or_else(|| missing("gid"))?,
        cache_mib: args.cache_mib,
        io_timeout: args.io_timeout,
        prewarm: !args.no_prewarm,
        trace: ["TRACEPARENT", "TRACESTATE"]
            .iter()
            .filter_map(|k| Some((k.to_ascii_lowercase(), std::env::var(k).ok()?)))
            .collect(),
        keys,
    })
}

/// Standard input's lines, read on a thread of their own (zeroized once handled). Not
/// tokio's stdin: its read runs on the blocking pool, and the runtime would wait for it at
/// exit while the manager keeps the pipe open.
fn stdin_lines() -> UnboundedReceiver<Zeroizing<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("pagefs-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if tx.send(Zeroizing::new(line)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read standard input");
    }
    rx
}
