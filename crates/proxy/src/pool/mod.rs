//! Connection pooling: server connections per (endpoint, role, database), lent to clients
//! for a session or a transaction, as PgBouncer does, and kept across suspends: a pooled
//! client's next transaction wakes the compute.
//!
//! - [`protocol`]: what each client message becomes on a lent connection, and which server
//!   answers the client sees (prepared statements, ordering), with no I/O.
//! - [`state`]: the client's session settings, applied to each connection it is lent.
//! - [`server`]: pooled server connections and the bb8 manager that opens them.
//! - [`client`]: one client's loop: lend, relay, release, timeouts, cleanup.
//!
//! Why bb8: a well-kept async pool with the knobs PgBouncer users expect (size, minimum
//! idle, idle timeout, lifetime, checkout timeout, checkout test), so this module only adds
//! what is particular to the Postgres protocol.

pub mod client;
pub mod protocol;
pub mod server;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lakebed_config::{EndpointName, PoolConfig, PoolMode, RoleName};
use rustls::ClientConfig;
use serde::Serialize;

use crate::auth::Authenticated;
use crate::control::ControlPlane;
use crate::error::ProxyError;
use server::{Requesters, ServerManager};

/// What identifies a pool. The verifier's StoredKey is part of it: a password change makes
/// a new pool (the old one's connections log in with the old key) and the old one idles out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The endpoint.
    pub endpoint: EndpointName,
    /// The role.
    pub role: RoleName,
    /// The database (`None`: the role's name, as Postgres defaults).
    pub database: Option<String>,
    stored_key: [u8; 32],
}

/// Counters of one pool, for `lakebed pools`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients holding a server connection now.
    pub active: AtomicU64,
    /// Clients waiting for one now.
    pub waiting: AtomicU64,
    waiters: Mutex<HashMap<u64, Instant>>,
    next_waiter: AtomicU64,
    /// Transactions (ReadyForQuery `I`) completed.
    pub transactions: AtomicU64,
    /// Bytes from clients to servers.
    pub bytes_in: AtomicU64,
    /// Bytes from servers to clients.
    pub bytes_out: AtomicU64,
}

impl PoolStats {
    fn longest_wait(&self) -> Duration {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }
}

/// Marks a client as waiting while it lives.
struct Waiting<'a> {
    stats: &'a PoolStats,
    id: u64,
}

impl<'a> Waiting<'a> {
    fn new(stats: &'a PoolStats) -> Self {
        let id = stats.next_waiter.fetch_add(1, Ordering::Relaxed);
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        Self { stats, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A lent server connection; back to the pool when dropped (or closed, if broken).
pub type Lent = bb8::PooledConnection<'static, ServerManager>;

/// bb8 opens connections in the background and, on failure, only tells its error sink;
/// this sink passes the errors on to the clients waiting, so that a compute that cannot
/// start gets its 57P03 and reason to them at once instead of a timeout.
#[derive(Debug, Clone)]
struct ConnectErrors(tokio::sync::broadcast::Sender<Arc<ProxyError>>);

impl bb8::ErrorSink<ProxyError> for ConnectErrors {
    fn sink(&self, error: ProxyError) {
        // A stale idle connection is bb8's business: it drops it and tries another.
        if !matches!(error, ProxyError::StaleConnection) {
            tracing::info!(%error, "pool could not open a server connection");
            let _ = self.0.send(Arc::new(error));
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<ProxyError>> {
        Box::new(self.clone())
    }
}

/// One pool.
pub struct Pool {
    /// What it pools.
    pub key: PoolKey,
    /// Session or transaction.
    pub mode: PoolMode,
    /// Its counters.
    pub stats: PoolStats,
    /// Client-side timeouts.
    pub timeouts: ClientTimeouts,
    inner: bb8::Pool<ServerManager>,
    acquire_timeout: Duration,
    connect_errors: ConnectErrors,
    requesters: Arc<Requesters>,
}

/// The client-side timeouts of `[proxy.pool]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTimeouts {
    /// No transaction open and nothing sent for this long: disconnect (57P05).
    pub client_idle: Option<Duration>,
    /// Idle inside a transaction this long: disconnect and roll back (25P03).
    pub idle_transaction: Option<Duration>,
    /// A query running this long is cancelled (57014).
    pub query: Option<Duration>,
}

impl Pool {
    /// Lends a server connection, opening one (and waking the compute) if none is idle.
    ///
    /// # Errors
    ///
    /// [`ProxyError::PoolTimeout`] (53300) after `acquire_timeout`; the error of opening a
    /// connection (57P03 when the compute cannot be woken, for instance).
    pub async fn acquire(&self) -> Result<Lent, ProxyError> {
        let _waiting = Waiting::new(&self.stats);
        let _requester = self.requesters.wait();
        let mut failures = self.connect_errors.0.subscribe();
        let got = tokio::select! {
            got = self.inner.get_owned() => got,
            Ok(error) = failures.recv() => return Err(error.replicate()),
        };
        match got {
            Ok(conn) => Ok(conn),
            Err(bb8::RunError::User(e)) => Err(e),
            Err(bb8::RunError::TimedOut) => Err(ProxyError::PoolTimeout {
                waited: self.acquire_timeout,
                limit: format!("pool_size {}", self.inner.state().connections),
            }),
        }
    }
}

/// A pool as `lakebed pools` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Endpoint.
    pub endpoint: EndpointName,
    /// Role.
    pub role: RoleName,
    /// Database.
    pub database: String,
    /// Pool mode.
    pub mode: PoolMode,
    /// Clients holding a server connection.
    pub clients_active: u64,
    /// Clients waiting for one.
    pub clients_waiting: u64,
    /// Server connections lent.
    pub servers_active: u64,
    /// Server connections idle in the pool.
    pub servers_idle: u64,
    /// How long the longest-waiting client has waited, in milliseconds.
    pub longest_wait_ms: u64,
    /// Transactions completed.
    pub transactions: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
}

/// Every pool of the proxy.
pub struct Pools {
    config: PoolConfig,
    /// Each endpoint's connection budget, shared by its pools.
    budgets: Mutex<HashMap<EndpointName, Arc<tokio::sync::Semaphore>>>,
    control: Arc<ControlPlane>,
    compute_tls: Option<Arc<ClientConfig>>,
    wake_timeout: Duration,
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    /// No pools yet; they are made as clients arrive.
    pub fn new(
        config: PoolConfig,
        control: Arc<ControlPlane>,
        compute_tls: Option<Arc<ClientConfig>>,
        wake_timeout: Duration,
    ) -> Self {
        Self {
            config,
            budgets: Mutex::new(HashMap::new()),
            control,
            compute_tls,
            wake_timeout,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for an authenticated client and database, made on first use.
    pub fn pool_for(self: &Arc<Self>, auth: &Authenticated, database: Option<&str>) -> Arc<Pool> {
        let key = PoolKey {
            endpoint: auth.endpoint.clone(),
            role: auth.role.clone(),
            database: database.map(str::to_owned),
            stored_key: auth.secret.stored_key,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = map.get(&key)
            && pool.mode == auth.pool_mode
        {
            return pool.clone();
        }
        let c = &self.config;
        let budget = self
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(auth.endpoint.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    c.max_endpoint_connections as usize,
                ))
            })
            .clone();
        let requesters = Arc::new(Requesters::default());
        let manager = ServerManager {
            budget,
            pools: Arc::downgrade(self),
            acquire_timeout: c.acquire_timeout.get(),
            control: self.control.clone(),
            compute_tls: self.compute_tls.clone(),
            wake_timeout: self.wake_timeout,
            endpoint: auth.endpoint.clone(),
            role: auth.role.clone(),
            database: key.database.clone(),
            key: auth.client_key.clone(),
            secret: auth.secret.clone(),
            requesters: requesters.clone(),
        };
        let connect_errors = ConnectErrors(tokio::sync::broadcast::channel(16).0);
        let inner = bb8::Pool::builder()
            .max_size(c.pool_size)
            .min_idle((c.min_idle > 0).then_some(c.min_idle))
            .idle_timeout(c.server_idle_timeout.get())
            .max_lifetime(c.server_lifetime.get())
            .connection_timeout(c.acquire_timeout.get())
            .test_on_check_out(true)
            // A failed connect (say, a compute that cannot start) goes to the client at
            // once with its reason, instead of being retried until the timeout.
            .retry_connection(false)
            .error_sink(Box::new(connect_errors.clone()))
            .build_unchecked(manager);
        let pool = Arc::new(Pool {
            key: key.clone(),
            mode: auth.pool_mode,
            stats: PoolStats::default(),
            timeouts: ClientTimeouts {
                client_idle: c.client_idle_timeout.get(),
                idle_transaction: c.idle_transaction_timeout.get(),
                query: c.query_timeout.get(),
            },
            inner,
            acquire_timeout: c.acquire_timeout.get(),
            connect_errors,
            requesters,
        });
        map.insert(key, pool.clone());
        pool
    }

    /// Closes one idle server connection of a pool of `endpoint` other than (role,
    /// database), so that its place in the endpoint's budget goes to a pool that needs it.
    pub fn close_one_idle(&self, endpoint: &EndpointName, role: &str, database: Option<&str>) {
        let pools: Vec<Arc<Pool>> = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.values()
                .filter(|p| {
                    &p.key.endpoint == endpoint
                        && !(p.key.role.as_str() == role && p.key.database.as_deref() == database)
                        && p.inner.state().idle_connections > 0
                })
                .cloned()
                .collect()
        };
        for pool in pools {
            // An idle connection is handed out at once; take it and close it.
            let mut get = std::pin::pin!(pool.inner.get());
            let waker = std::task::Waker::noop();
            if let std::task::Poll::Ready(Ok(mut conn)) = get
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
            {
                conn.broken = true;
                tracing::info!(endpoint = %endpoint, role = %pool.key.role, "closing an idle pooled connection for another pool");
                return;
            }
        }
    }

    /// Sets the pool gauges (`lakebed_pool_*{endpoint, role, database}`) from the pools'
    /// counters. Called when metrics are scraped.
    pub fn record_gauges(&self) {
        for v in self.views() {
            let labels = [
                ("endpoint", v.endpoint.to_string()),
                ("role", v.role.to_string()),
                ("database", v.database.clone()),
            ];
            metrics::gauge!("lakebed_pool_clients_active", &labels).set(v.clients_active as f64);
            metrics::gauge!("lakebed_pool_clients_waiting", &labels).set(v.clients_waiting as f64);
            metrics::gauge!("lakebed_pool_servers_active", &labels).set(v.servers_active as f64);
            metrics::gauge!("lakebed_pool_servers_idle", &labels).set(v.servers_idle as f64);
            metrics::gauge!("lakebed_pool_longest_wait_seconds", &labels)
                .set(v.longest_wait_ms as f64 / 1000.0);
            metrics::gauge!("lakebed_pool_transactions", &labels).set(v.transactions as f64);
        }
    }

    /// Every pool's counters.
    pub fn views(&self) -> Vec<PoolView> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<PoolView> = map
            .values()
            .map(|p| {
                let state = p.inner.state();
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                PoolView {
                    endpoint: p.key.endpoint.clone(),
                    role: p.key.role.clone(),
                    database: p
                        .key
                        .database
                        .clone()
                        .unwrap_or_else(|| p.key.role.to_string()),
                    mode: p.mode,
                    clients_active: load(&p.stats.active),
                    clients_waiting: load(&p.stats.waiting),
                    servers_active: u64::from(state.connections - state.idle_connections),
                    servers_idle: u64::from(state.idle_connections),
                    longest_wait_ms: p.stats.longest_wait().as_millis() as u64,
                    transactions: load(&p.stats.transactions),
                    bytes_in: load(&p.stats.bytes_in),
                    bytes_out: load(&p.stats.bytes_out),
                }
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.endpoint, &a.role, &a.database).cmp(&(&b.endpoint, &b.role, &b.database))
        });
        views
    }
}
