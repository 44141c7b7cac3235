//! `lakebed pageserver`: the page store as a process of its own, with `GET /metrics` when
//! `pageserver.metrics_listen` (or `--metrics-listen`) is set; `lakebed pageserver gc`:
//! collect a running page store's history now.

use std::time::Duration;

use anyhow::{Context, Result};
use lakebed_config::Config;
use lakebed_pageserver::{PageServer, ServerOptions, ServerTls, StoreOptions};
use lakebed_pageserver_client::rpc::{ClientOptions, PageStoreClient};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How long requests in flight get to finish after SIGINT or SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The store's options from `[pageserver]`.
pub fn store_options(config: &Config) -> StoreOptions {
    let ps = &config.pageserver;
    StoreOptions {
        history_retention: ps.history_retention.get(),
        gc_interval: ps.gc_interval.get(),
        cache_bytes: ps.cache_mib << 20,
        ..StoreOptions::default()
    }
}

/// Writes `<data_dir>/pageserver-addr`, so `lakebed pageserver gc` finds the page store
/// this data dir's process serves.
pub fn write_addr_file(config: &Config, addr: std::net::SocketAddr) -> Result<()> {
    let path = config.data_dir.join(crate::client::PAGESERVER_ADDR_FILE);
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| std::fs::write(&path, addr.to_string()))
        .with_context(|| format!("writing {}", path.display()))
}

/// `lakebed pageserver gc`: asks the page store at `url` to collect history now and prints
/// what it freed.
pub async fn gc(url: &str, timeline: Option<&str>) -> Result<()> {
    let timeline = timeline
        .map(str::parse::<lakebed_pageserver_api::TimelineId>)
        .transpose()
        .context("--timeline")?;
    let mut options = ClientOptions::new(url);
    // Collection merges whole timelines: give it time.
    options.request_timeout = Duration::from_secs(600);
    options.total_timeout = Duration::from_secs(600);
    let client = PageStoreClient::new(options)?;
    let report = client
        .gc(timeline.as_ref())
        .await
        .with_context(|| format!("page store at {url}"))?;
    for t in &report.timelines {
        println!(
            "{}: horizon {}, {} versions removed",
            t.timeline, t.horizon.0, t.versions_removed
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "page store: {:.1} MiB before, {:.1} MiB after, {:.1} MiB freed",
        mib(report.bytes_before),
        mib(report.bytes_after),
        mib(report.bytes_before.saturating_sub(report.bytes_after))
    );
    Ok(())
}

/// Serves the page store until SIGINT or SIGTERM.
pub async fn run(config: &Config) -> Result<()> {
    let tracing = crate::logging::init(config.logging.format, "info")?;
    let result = serve(config).await;
    tracing.shutdown().await;
    result
}

async fn serve(config: &Config) -> Result<()> {
    // Signals first, so a SIGTERM during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let ps = &config.pageserver;
    let tls = match (&ps.tls_cert, &ps.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: std::fs::read(cert)
                .with_context(|| format!("pageserver.tls_cert: reading {}", cert.display()))?,
            key_pem: std::fs::read(key)
                .with_context(|| format!("pageserver.tls_key: reading {}", key.display()))?,
            client_ca_pem: None,
        }),
        _ => None,
    };
    let data_dir = config.pageserver_data_dir();
    let server = PageServer::bind(ServerOptions {
        listen: ps.listen,
        data_dir: data_dir.clone(),
        tls: tls.clone(),
        store: store_options(config),
    })
    .await
    .context("starting the page store")?;
    let addr = server.local_addr();
    write_addr_file(config, addr)?;
    let stop_metrics = CancellationToken::new();
    let metrics = match ps.metrics_listen {
        None => None,
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("pageserver.metrics_listen: cannot listen on {listen}"))?;
            let metrics_addr = listener.local_addr()?;
            let prometheus = crate::metrics::recorder()?;
            let task = tokio::spawn(crate::metrics::serve(
                listener,
                prometheus,
                stop_metrics.clone().cancelled_owned(),
            ));
            Some((metrics_addr, task))
        }
    };
    tracing::info!(%addr, data_dir = %data_dir.display(), tls = tls.is_some(), "page store ready");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    if let Some((metrics_addr, _)) = &metrics {
        println!("pageserver metrics on {metrics_addr}");
    }
    // Printed once the socket is bound: connections are accepted from here on.
    println!("pageserver listening on {addr}");
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
        ended = &mut serving => {
            ended.context("the page store task failed")??;
            anyhow::bail!("the page store stopped by itself");
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    let _ = stop.send(());
    match tokio::time::timeout(DRAIN_TIMEOUT, serving).await {
        Ok(ended) => ended.context("the page store task failed")??,
        Err(_) => tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; exiting"),
    }
    stop_metrics.cancel();
    if let Some((_, task)) = metrics {
        let _ = task.await;
    }
    tracing::info!("page store stopped");
    Ok(())
}
