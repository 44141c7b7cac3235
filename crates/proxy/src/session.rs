//! The accept loop and the life of one client connection.
//!
//! Each connection is one trace: the root span `conn` (fields `peer`, `ep`, `role`) with the
//! children `accept` (startup packets; `tls` inside it for the TLS handshake), `auth`, `wake`
//! (field `cold`) and `connect_compute` when a server connection is opened for it, and
//! `session` (the relay, until the client leaves).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lakebed_config::{EndpointName, PoolConfig, PoolMode, ProxyConfig, RoleName};
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::auth::{AuthContext, authenticate};
use crate::cancel::CancelMap;
use crate::compute::{self, ComputeConn, ConnectError};
use crate::control::{ControlPlane, ControlPlaneOptions};
use crate::error::ProxyError;
use crate::handshake::{Handshake, handshake};
use crate::pool::client::PooledClient;
use crate::pool::server::{
    MAX_SERVER_MESSAGE, POOL_APPLICATION_NAME, parameter_status, take_frame,
};
use crate::pool::state::SessionState;
use crate::pool::{Lent, Pools};
use crate::pqproto::{PROTOCOL_MINOR, StartupParams, be, put_message};
use crate::rate_limit::AuthFailureLimiter;
use crate::routing;
use crate::scram::{ClientKey, KEY_LEN, ScramSecret};
use crate::stream::{PqStream, Stream};
use crate::tls::TlsServer;

/// Startup phase and authentication together may take this long, as Postgres's
/// `authentication_timeout` (default 1 min).
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the proxy needs to run.
pub struct ProxyOptions {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// TLS for clients; `None` answers `N` to `SSLRequest`.
    pub tls: Option<TlsServer>,
    /// Refuse clients without TLS.
    pub require_tls: bool,
    /// Allow cleartext passwords (over TLS only).
    pub allow_cleartext: bool,
    /// SNI domain.
    pub domain: String,
    /// Endpoint for clients that name none.
    pub default_endpoint: Option<EndpointName>,
    /// How long a client waits for its compute.
    pub wake_timeout: Duration,
    /// Failed authentications per address and endpoint per minute.
    pub auth_failures_per_minute: u32,
    /// Client connections at once.
    pub max_client_connections: usize,
    /// The compute manager.
    pub control: ControlPlaneOptions,
    /// TLS (with the proxy's client certificate) toward computes; `None` = plain TCP.
    pub compute_tls: Option<Arc<ClientConfig>>,
    /// Server connection pools.
    pub pool: PoolConfig,
}

impl ProxyOptions {
    /// Options from the `[proxy]` configuration plus what `lakebed up` (or a deployment)
    /// supplies: the control plane, client TLS and compute TLS.
    pub fn from_config(
        cfg: &ProxyConfig,
        control: ControlPlaneOptions,
        tls: Option<TlsServer>,
        compute_tls: Option<Arc<ClientConfig>>,
    ) -> Self {
        Self {
            listen: cfg.listen,
            require_tls: cfg.tls_required(),
            allow_cleartext: cfg.allow_cleartext,
            domain: cfg.domain.clone(),
            default_endpoint: cfg.default_endpoint(),
            wake_timeout: cfg.wake_timeout.get(),
            auth_failures_per_minute: cfg.auth_failures_per_minute,
            max_client_connections: cfg.max_client_connections as usize,
            control,
            tls,
            compute_tls,
            pool: cfg.pool.clone(),
        }
    }
}

struct Shared {
    opts: ProxyOptions,
    control: Arc<ControlPlane>,
    pools: Arc<Pools>,
    cancel: Arc<CancelMap>,
    limiter: AuthFailureLimiter,
    mock_key: [u8; KEY_LEN],
    slots: Arc<Semaphore>,
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Binds the listener.
    ///
    /// # Errors
    ///
    /// The bind error (address in use, permission).
    pub async fn bind(mut opts: ProxyOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(opts.listen).await?;
        opts.listen = listener.local_addr()?;
        let mut mock_key = [0u8; KEY_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut mock_key[..]);
        let control = Arc::new(ControlPlane::new(opts.control.clone()));
        let pools = Arc::new(Pools::new(
            opts.pool.clone(),
            control.clone(),
            opts.compute_tls.clone(),
            opts.wake_timeout,
        ));
        let shared = Arc::new(Shared {
            control,
            pools,
            cancel: Arc::new(CancelMap::default()),
            limiter: AuthFailureLimiter::new(opts.auth_failures_per_minute),
            slots: Arc::new(Semaphore::new(opts.max_client_connections)),
            mock_key,
            opts,
        });
        Ok(Self { listener, shared })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.opts.listen
    }

    /// The proxy's pools, for its HTTP API.
    pub fn pools(&self) -> Arc<Pools> {
        self.shared.pools.clone()
    }

    /// Accepts connections until `shutdown` is cancelled. Sessions already running go on
    /// until their client or compute ends them.
    pub async fn serve(self, shutdown: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            metrics::counter!("lakebed_proxy_connections_accepted_total").increment(1);
            let permit = self.shared.slots.clone().try_acquire_owned().ok();
            let shared = self.shared.clone();
            let span = tracing::info_span!("conn", %peer, ep = field::Empty, role = field::Empty);
            tokio::spawn(handle(shared, tcp, peer, permit).instrument(span));
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _active = ActiveConnection::new();
    let accept = tracing::info_span!("accept");
    let started = timeout(
        AUTH_TIMEOUT,
        handshake(tcp, shared.opts.tls.as_ref()).instrument(accept),
    )
    .await;
    let (mut stream, minor, params, server_name) = match started {
        Err(_) => return,
        Ok(Ok(Handshake::Cancel(key))) => {
            shared.cancel.cancel(key).await;
            return;
        }
        Ok(Ok(Handshake::Startup {
            stream,
            minor,
            params,
            server_name,
        })) => (stream, minor, params, server_name),
        Ok(Err(failed)) => {
            tracing::info!(error = %failed.error, "startup failed");
            if let Some(mut s) = failed.stream {
                report(&mut s, &failed.error).await;
            }
            return;
        }
    };
    let started = match permit {
        Some(permit) => setup(&shared, &mut stream, peer, minor, params, server_name)
            .await
            .map(|started| (started, permit)),
        None => Err(ProxyError::TooManyConnections),
    };
    match started {
        Ok(((client, held), _permit)) => {
            let (io, ahead) = stream.into_parts();
            let session = tracing::info_span!("session");
            if let Err(e) = client.run(io, ahead, held).instrument(session).await {
                tracing::info!(error = %e, "session ended with an error");
            }
        }
        Err(e @ ProxyError::ClientIo(_)) => tracing::debug!(error = %e, "client went away"),
        Err(e) => {
            if e.is_client_error() {
                tracing::info!(error = %e, "connection refused");
            } else {
                tracing::warn!(error = %e, "connection failed");
            }
            report(&mut stream, &e).await;
        }
    }
}

/// Counts a client connection in `lakebed_proxy_connections_active` while it lives.
struct ActiveConnection;

impl ActiveConnection {
    fn new() -> Self {
        metrics::gauge!("lakebed_proxy_connections_active").increment(1.0);
        Self
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        metrics::gauge!("lakebed_proxy_connections_active").decrement(1.0);
    }
}

/// Sends `e` as a FATAL `ErrorResponse`, if anything can be sent.
async fn report(stream: &mut PqStream<Stream>, e: &ProxyError) {
    if let Some(bytes) = e.to_wire() {
        stream.write_raw(&bytes);
        let _ = timeout(Duration::from_secs(5), stream.flush()).await;
    }
}

/// Everything between the `StartupMessage` and the pooled relay: TLS policy, protocol
/// negotiation, routing, authentication, then a first server connection from the pool
/// (which wakes the compute) to learn the session's parameters. On success the client has
/// received `ParameterStatus` messages, our `BackendKeyData` and `ReadyForQuery`; the
/// server connection is returned with it for session pooling.
async fn setup(
    shared: &Shared,
    stream: &mut PqStream<Stream>,
    peer: SocketAddr,
    minor: u16,
    mut params: StartupParams,
    server_name: Option<String>,
) -> Result<(PooledClient, Option<Lent>), ProxyError> {
    let opts = &shared.opts;
    let tls = stream.get_ref().is_tls();
    if opts.require_tls && !tls {
        return Err(ProxyError::TlsRequired);
    }
    let unrecognized: Vec<&str> = params
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if minor > PROTOCOL_MINOR || !unrecognized.is_empty() {
        be::negotiate_protocol_version(stream.out(), PROTOCOL_MINOR, &unrecognized);
    }
    if params
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(ProxyError::Unsupported(
            "replication connections are not supported through the proxy",
        ));
    }
    // The pool marks its idle server connections with this name (autosuspend ignores
    // them); a client may not pass for one.
    if params.get("application_name") == Some(POOL_APPLICATION_NAME) {
        params.set(
            "application_name",
            format!("{POOL_APPLICATION_NAME} (client)"),
        );
    }
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ProxyError::InvalidName("no PostgreSQL user name specified in startup packet".into())
        })?
        .to_owned();
    let options = routing::split_options(params.get("options").unwrap_or_default())?;
    let from_sni = routing::from_sni(server_name.as_deref(), &opts.domain)?;
    let route = match (&from_sni, &options.endpoint) {
        (Some(_), _) => "sni",
        (None, Some(_)) => "options",
        (None, None) => "password_or_default",
    };
    let endpoint = routing::merge(from_sni, options.endpoint)?;

    let tls_end_point = match (tls, &opts.tls) {
        (true, Some(t)) => Some(t.end_point.as_slice()),
        _ => None,
    };
    let ctx = AuthContext {
        control: &shared.control,
        limiter: &shared.limiter,
        peer: peer.ip(),
        tls_end_point,
        cleartext: tls && opts.allow_cleartext,
        default_endpoint: opts.default_endpoint.as_ref(),
        domain: &opts.domain,
        mock_key: &shared.mock_key,
    };
    let authenticating =
        authenticate(stream, &ctx, endpoint, &user).instrument(tracing::info_span!("auth"));
    let auth = timeout(AUTH_TIMEOUT, authenticating)
        .await
        .map_err(|_| ProxyError::ClientIo(std::io::ErrorKind::TimedOut.into()))??;
    let span = tracing::Span::current();
    span.record("ep", field::display(&auth.endpoint));
    span.record("role", field::display(&auth.role));

    let database = params.get("database").filter(|d| !d.is_empty());
    let pool = shared.pools.pool_for(&auth, database);
    let session = pool.mode == PoolMode::Session;
    let state = SessionState::from_startup(&params, &options.rest, session);
    let mut conn = pool.acquire().await?;
    let mut statuses: Vec<(String, String)> = Vec::new();
    let mut startup = bytes::BytesMut::from(&conn.startup_params[..]);
    while let Ok(Some((tag, body))) = take_frame(&mut startup, MAX_SERVER_MESSAGE) {
        if tag == b'S'
            && let Some(p) = parameter_status(&body)
        {
            statuses.push(p);
        }
    }
    if conn.applied != state.fingerprint() {
        let changed = conn.apply_state(&state.apply_sql()).await.map_err(|raw| {
            if raw.is_empty() {
                ProxyError::ComputeConnect {
                    endpoint: auth.endpoint.to_string(),
                    detail: "server connection failed while applying settings".into(),
                }
            } else {
                // Postgres rejects bad startup settings with FATAL; so do we.
                ProxyError::Upstream(crate::pqproto::as_fatal(&raw).into())
            }
        })?;
        conn.applied = state.fingerprint();
        for (k, v) in changed {
            match statuses.iter_mut().find(|(n, _)| *n == k) {
                Some(entry) => entry.1 = v,
                None => statuses.push((k, v)),
            }
        }
    }
    // The client sees its own application_name, not the pool's.
    statuses.retain(|(k, _)| k != "application_name");
    statuses.push((
        "application_name".into(),
        params
            .get("application_name")
            .unwrap_or_default()
            .to_owned(),
    ));
    for (k, v) in &statuses {
        put_message(stream.out(), b'S', |b| {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        });
    }
    let (key, cancel) = shared.cancel.register(None);
    be::backend_key_data(stream.out(), key);
    put_message(stream.out(), b'Z', |b| b.push(b'I'));
    stream.flush().await.map_err(ProxyError::ClientIo)?;
    tracing::info!(compute = %conn.addr, mode = %pool.mode, "session started");
    metrics::counter!(
        "lakebed_proxy_sessions_total",
        "tls" => if tls { "true" } else { "false" },
        "route" => route
    )
    .increment(1);
    let held = session.then_some(conn);
    Ok((PooledClient::new(pool, state, cancel), held))
}

/// Who logs in to a compute: the endpoint and role, with the SCRAM key and secret.
pub(crate) struct Login<'a> {
    pub endpoint: &'a EndpointName,
    pub role: &'a RoleName,
    pub key: &'a ClientKey,
    pub secret: &'a ScramSecret,
}

/// Wakes the endpoint and connects, retrying with backoff while the compute is starting
/// or has just stopped, until the wake timeout.
pub(crate) async fn connect_with_wake(
    control: &ControlPlane,
    compute_tls: Option<&Arc<ClientConfig>>,
    wake_timeout: Duration,
    login: &Login<'_>,
    params: &StartupParams,
) -> Result<(SocketAddr, ComputeConn), ProxyError> {
    let deadline = Instant::now() + wake_timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let addr = control.wake(login.endpoint, remaining).await?;
        let attempt = compute::connect(addr, compute_tls, params, login.key, login.secret)
            .instrument(tracing::info_span!("connect_compute", compute = %addr))
            .await;
        match attempt {
            Ok(conn) => return Ok((addr, conn)),
            Err(ConnectError::Retryable(detail)) => {
                if Instant::now() + backoff >= deadline {
                    return Err(ProxyError::ComputeConnect {
                        endpoint: login.endpoint.to_string(),
                        detail,
                    });
                }
                tracing::debug!(%detail, ?backoff, "compute not reachable yet; waking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(ConnectError::StaleSecret) => {
                control.invalidate(login.endpoint, login.role);
                return Err(ProxyError::AuthFailed {
                    user: login.role.to_string(),
                });
            }
            Err(ConnectError::Postgres(raw)) => return Err(ProxyError::Upstream(raw)),
            Err(ConnectError::Fatal(detail)) => {
                return Err(ProxyError::ComputeConnect {
                    endpoint: login.endpoint.to_string(),
                    detail,
                });
            }
        }
    }
}
