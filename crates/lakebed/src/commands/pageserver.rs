//! `lakebed pageserver`: the page store as a process of its own, with `GET /metrics` when
//! `pageserver.metrics_listen` (or `--metrics-listen`) is set.

use std::time::Duration;

use anyhow::{Context, Result};
use lakebed_config::Config;
use lakebed_pageserver::{PageServer, ServerOptions, ServerTls};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How long requests in flight get to finish after SIGINT or SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    })
    .await
    .context("starting the page store")?;
    let addr = server.local_addr();
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
