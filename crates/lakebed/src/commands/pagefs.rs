//! `lakebed pagefs`: one compute's PGDATA, mounted from the page store.
//!
//! The compute manager starts it with the mount's parameters as arguments (none secret),
//! waits for the line `ready GENERATION` on standard output, reads a `stats {JSON}` line
//! every second after it (cache and page store counters), and stops it with SIGTERM (or by
//! unmounting). Logs go to standard error. The process is made non-dumpable first: it
//! holds the per-boot key and plaintext pages.

use anyhow::{Context, Result};
use lakebed_pageserver_client::pagefs::{self, MountSpec, Options};
use lakebed_pageserver_client::{ClientOptions, ClientTls, PageStoreClient};
use tokio::signal::unix::{SignalKind, signal};

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
    let spec = MountSpec {
        mountpoint: args.mountpoint,
        timeline,
        local_dir: args.local_dir,
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
        options: Options::new(args.uid, args.gid),
    };
    pagefs::serve(
        client,
        spec,
        mount_span,
        |generation| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready {generation}");
            let _ = out.flush();
        },
        |stats| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "stats {stats}");
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
