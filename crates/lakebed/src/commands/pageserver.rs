//! `lakebed pageserver`: the page store as a process of its own.

use std::time::Duration;

use anyhow::{Context, Result};
use lakebed_config::Config;
use lakebed_pageserver::{PageServer, ServerOptions, ServerTls};
use tokio::signal::unix::{SignalKind, signal};

/// How long requests in flight get to finish after SIGINT or SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the page store until SIGINT or SIGTERM.
pub async fn run(config: &Config) -> Result<()> {
    crate::logging::init(config.logging.format, "info");
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
    tracing::info!(%addr, data_dir = %data_dir.display(), tls = tls.is_some(), "page store ready");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
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
    tracing::info!("page store stopped");
    Ok(())
}
