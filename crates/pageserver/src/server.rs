//! Binding and serving: open the store, listen, serve gRPC (optionally over TLS) until told
//! to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lakebed_pageserver_api::http2;
use lakebed_pageserver_api::limits::MAX_MESSAGE_BYTES;
use lakebed_pageserver_api::proto::page_store_server::PageStoreServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::service::PageStoreService;
use crate::store::{Store, StoreError, StoreOptions};

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free port (see [`PageServer::local_addr`]).
    pub listen: SocketAddr,
    /// Directory of the store's files (created if missing).
    pub data_dir: PathBuf,
    /// History retention, GC interval and cache sizes.
    pub store: StoreOptions,
    /// Serve TLS instead of plaintext HTTP/2.
    pub tls: Option<ServerTls>,
}

/// TLS material for the server, PEM-encoded.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key of the leaf certificate.
    pub key_pem: Vec<u8>,
    /// If set, clients must present a certificate issued by this CA (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The TLS material was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A page server with its store open, its TLS material loaded and its socket bound, ready to
/// [`serve`](Self::serve).
pub struct PageServer {
    store: Arc<Store>,
    listener: TcpListener,
    local_addr: SocketAddr,
    builder: Server,
    tls: bool,
}

impl std::fmt::Debug for PageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServer")
            .field("store", &self.store.path())
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PageServer {
    /// Loads the TLS material, opens the store in `options.data_dir` and binds
    /// `options.listen`.
    ///
    /// # Errors
    ///
    /// [`ServerError::Tls`] (unusable certificate or key), [`ServerError::Store`] (directory
    /// not writable, store locked by another process, ...), [`ServerError::Bind`].
    pub async fn bind(options: ServerOptions) -> Result<PageServer, ServerError> {
        let tls = options.tls.is_some();
        let mut builder = Server::builder()
            .initial_stream_window_size(http2::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(http2::CONNECTION_WINDOW_BYTES)
            .max_frame_size(http2::MAX_FRAME_BYTES);
        if let Some(tls) = options.tls {
            // tonic builds its rustls config with the process-wide default provider.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let mut config =
                ServerTlsConfig::new().identity(Identity::from_pem(tls.cert_pem, tls.key_pem));
            if let Some(ca) = tls.client_ca_pem {
                config = config.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(config)
                .map_err(|e| ServerError::Tls(lakebed_pageserver_api::error_chain(&e)))?;
        }
        let dir = options.data_dir.clone();
        let store_options = options.store.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&dir, store_options))
            .await
            .map_err(|e| StoreError::Open {
                path: options.data_dir.clone(),
                reason: e.to_string(),
            })??;
        let bind_err = |error| ServerError::Bind {
            addr: options.listen,
            error,
        };
        let listener = TcpListener::bind(options.listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(PageServer {
            store: Arc::new(store),
            listener,
            local_addr,
            builder,
            tls,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store being served.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Serves until `shutdown` completes, then stops accepting and finishes the requests in
    /// flight (writes already committed stay committed; a write cut off before its commit
    /// changed nothing).
    ///
    /// # Errors
    ///
    /// [`ServerError::Serve`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let service = PageStoreServer::new(PageStoreService::new(self.store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let gauges = tokio::spawn(report_gauges(self.store.clone()));
        let mut builder = self.builder;
        let result = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        gauges.abort();
        result?;
        Ok(())
    }
}

/// Publishes the store's figures as gauges every few seconds:
/// `lakebed_pagestore_disk_bytes`, `lakebed_pagestore_layers`,
/// `lakebed_pagestore_memtable_bytes`, `lakebed_pagestore_cache_bytes`. (The store counts
/// `lakebed_pagestore_log_syncs_total` and `lakebed_pagestore_entries_visited_total` as they
/// happen, so a scrape right after a call sees its work.)
async fn report_gauges(store: Arc<Store>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let s = store.clone();
        let Ok(stats) = tokio::task::spawn_blocking(move || s.stats()).await else {
            return;
        };
        metrics::gauge!("lakebed_pagestore_disk_bytes").set(stats.disk_bytes as f64);
        metrics::gauge!("lakebed_pagestore_layers").set(stats.layers as f64);
        metrics::gauge!("lakebed_pagestore_memtable_bytes").set(stats.memtable_bytes as f64);
        metrics::gauge!("lakebed_pagestore_cache_bytes").set(stats.cache_bytes as f64);
    }
}
