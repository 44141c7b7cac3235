//! `lakebed pagefs`: one compute's PGDATA, mounted from the page store.
//!
//! The compute manager starts it with the mount's parameters as arguments (none secret),
//! writes the tenant's keys to its standard input (with `--keys-from-stdin`), then the line
//! `active` once the compute accepts clients (the rest of the prewarm waits for it; the end
//! of standard input counts too), waits for the line `ready GENERATION {STEPS}` on standard
//! output (the steps of the mount, as JSON: `MountSteps`), reads a `stats {JSON}` line
//! every second after it (cache and page store counters) and `reseal {JSON}` lines while
//! pages are re-sealed after a rekey, and stops it with SIGTERM (or by unmounting). Logs go to standard error. The process is made non-dumpable first: it
//! holds the per-boot key and plaintext pages.

use anyhow::{Context, Result};
use lakebed_pageserver_client::pagefs::data_key::DataKeys;
use lakebed_pageserver_client::pagefs::{self, MountSpec, Options, Report};
use lakebed_pageserver_client::{ClientOptions, ClientTls, PageStoreClient};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

use crate::cli::PagefsArgs;

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

    let timeline = args.timeline.parse().context("--timeline")?;
    let mut options = ClientOptions::new(args.pageserver);
    options.total_timeout = args.io_timeout;
    if let Some(ca) = &args.pageserver_ca {
        options.tls = Some(ClientTls {
            ca_pem: std::fs::read(ca)
                .with_context(|| format!("--pageserver-ca {}", ca.display()))?,
            domain: None,
            identity: None,
        });
    }
    let client = PageStoreClient::new(options).context("page store client")?;
    // The mount's steps continue the trace of the wake that started this process, if the
    // manager passed its context (TRACEPARENT, TRACESTATE) and traces are exported.
    let mount_span = tracing::info_span!("pagefs_mount", timeline = %args.timeline);
    let carried: Vec<(String, String)> = ["TRACEPARENT", "TRACESTATE"]
        .iter()
        .filter_map(|k| Some((k.to_ascii_lowercase(), std::env::var(k).ok()?)))
        .collect();
    lakebed_telemetry::set_parent(&mount_span, |name| {
        carried
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    });
    let mut stdin = stdin_lines();
    let keys = if args.keys_from_stdin {
        Some(
            read_keys(&mut stdin)
                .await
                .context("reading the tenant's keys from standard input")?,
        )
    } else {
        None
    };
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
        mountpoint: args.mountpoint,
        timeline,
        local_dir: args.local_dir,
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
        options: Options::new(args.uid, args.gid),
        keys,
        prewarm: !args.no_prewarm,
        active: Some(active),
    };
    pagefs::serve(
        client,
        spec,
        mount_span,
        |report| {
            use std::io::Write;
            let line = match report {
                Report::Ready(generation, steps) => {
                    format!("ready {generation} {}", steps.to_json())
                }
                Report::Stats(json) => format!("stats {json}"),
                Report::Reseal(json) => format!("reseal {json}"),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
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

/// Reads the tenant's keys that the compute manager writes to standard input: `tenant
/// NAME`, `lineage TIMELINE...` (own first), one `dek VERSION BASE64` per DEK version,
/// `end`. The DEK bytes are zeroized once the key schedules are built.
async fn read_keys(lines: &mut UnboundedReceiver<Zeroizing<String>>) -> Result<DataKeys> {
    use base64::Engine;
    let (mut tenant, mut lineage, mut deks) = (None, Vec::new(), Vec::new());
    loop {
        let Some(line) = lines.recv().await else {
            anyhow::bail!("standard input ended before \"end\"");
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("tenant") => tenant = words.next().map(str::to_owned),
            Some("lineage") => lineage = words.map(str::to_owned).collect(),
            Some("dek") => {
                let version: u32 = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("a dek line without a version")?;
                let raw = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(words.next().unwrap_or_default())
                        .map_err(|_| anyhow::anyhow!("DEK version {version} is not base64"))?,
                );
                let mut key = Zeroizing::new([0u8; 32]);
                anyhow::ensure!(raw.len() == 32, "DEK version {version} is not 32 bytes");
                key.copy_from_slice(&raw);
                deks.push((version, key));
            }
            Some("end") => break,
            _ => anyhow::bail!("unexpected line on standard input"),
        }
    }
    let tenant = tenant.context("no tenant line")?;
    Ok(DataKeys::new(tenant, lineage, deks)?)
}
