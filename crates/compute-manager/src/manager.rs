//! Wake and suspend: the life of each endpoint's compute.
//!
//! Each endpoint has a [`Slot`]: an async mutex around its [`Lifecycle`] (down, or up with a
//! running postmaster) and a `watch` channel carrying the [`ComputeStatus`] readers see.
//! Every transition (start, stop, crash handling) happens while holding the mutex, so:
//! - concurrent wakes of one endpoint share one start: the first starts, the rest wait on
//!   the mutex and then find the compute active;
//! - a wake that arrives while the compute is being suspended waits for the suspend to end
//!   and then starts it again: it is held and served, not refused;
//! - starts and stops run in spawned tasks, so a caller that goes away (an HTTP client
//!   hanging up) never leaves a half-started or half-stopped compute behind.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lakebed_config::{
    AutosuspendPolicy, ComputeConfig, Config, EndpointName, PoolMode, PortRange, RoleName,
    TenantName,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::ManagerError;
use crate::catalog::{BootRecord, Catalog, EndpointRecord};
use crate::compute::{ComputeState, ComputeStatus, Decision, Failure};
use crate::postgres::sql::{self, Activity, QUERY_TIMEOUT};
use crate::postgres::{EndpointDir, OsUser, PgInstall, Postmaster, StartError};
use crate::reconcile;
use crate::steps::{Lap, WakeSteps};
use crate::storage::{PageStoreOptions, Pagefs, PagefsStats, Storage};
use crate::tenant_keys::{KeyOptions, KeysView, TenantKeys};
use crate::verifier::{Verifier, generate_password};

/// How many times a start retries with another port when Postgres loses a bind race.
const PORT_ATTEMPTS: usize = 3;

/// What the manager needs from the configuration.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Lakebed's data directory; made absolute by [`Manager::open`].
    pub data_dir: PathBuf,
    /// How computes are run.
    pub compute: ComputeConfig,
    /// How often the autosuspend monitor polls each active compute.
    pub activity_poll_interval: Duration,
    /// TLS for computes. With it, nothing but the holder of a client certificate signed by
    /// [`ComputeTls::ca_cert`] (the proxy) can log in to a compute; without it, catalog roles
    /// log in directly with SCRAM over loopback TCP. See [`crate::postgres::EndpointDir`].
    pub compute_tls: Option<ComputeTls>,
    /// The page store computes run on (PGDATA mounted by pagefs). Without it PGDATA is a
    /// local folder under the data directory, which keeps no promise of statelessness; it
    /// serves tests of the lifecycle alone. `lakebed up` always sets it.
    pub page_store: Option<PageStoreOptions>,
    /// KMS for customer-managed keys. Without it no tenant's pages are sealed (and tenants
    /// cannot name a CMK); `lakebed up` always sets it.
    pub keys: Option<KeyOptions>,
}

/// TLS material for computes; with it, computes accept only clients presenting a certificate
/// signed by `ca_cert` (the proxy).
///
/// At every boot the three files are copied into PGDATA (`lakebed-ca.pem`,
/// `lakebed-server.pem`, `lakebed-server.key`, mode 0600, owned by the compute OS user), so
/// they may live where only the manager can read them. Postgres runs with `ssl=on`, and a
/// TCP login then needs TLS, a client certificate that chains to `ca_cert` (its name is not
/// checked) and the role's SCRAM password, all three. So with `ComputeTls`, nothing but the
/// proxy (the only holder of such a certificate) can log in to a compute; the manager's
/// system role keeps its peer login over the private Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeTls {
    /// PEM CA certificate(s) that client certificates must chain to.
    pub ca_cert: PathBuf,
    /// PEM server certificate (chain) computes present.
    pub server_cert: PathBuf,
    /// PEM private key of `server_cert`.
    pub server_key: PathBuf,
}

impl ManagerOptions {
    /// Takes the manager's part of a loaded [`Config`].
    pub fn from_config(config: &Config) -> Self {
        Self {
            data_dir: config.data_dir.clone(),
            compute: config.compute.clone(),
            activity_poll_interval: config.manager.activity_poll_interval.get(),
            compute_tls: None,
            page_store: None,
            keys: None,
        }
    }
}

/// The answer to a wake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WakeOutcome {
    /// Where Postgres accepts connections (loopback TCP).
    pub address: SocketAddr,
    /// The postmaster's pid.
    pub pid: u32,
    /// Cold start of this boot in milliseconds, when this wake started the compute;
    /// `None` when it was already running.
    pub cold_start_ms: Option<u64>,
}

/// An endpoint as the API shows it: catalog record, compute status and boot history.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// The catalog record.
    #[serde(flatten)]
    pub record: EndpointRecord,
    /// The compute's status.
    pub compute: ComputeStatus,
    /// Successful boots so far.
    pub boots: u64,
    /// Cold start of the last successful boot, in milliseconds.
    pub last_cold_start_ms: Option<u64>,
    /// The last few boots, newest first.
    pub recent_boots: Vec<BootRecord>,
    /// The running compute's pagefs counters (local cache, page store traffic).
    pub pagefs: Option<PagefsStats>,
}

/// A role as the API shows it. The verifier is never shown.
#[derive(Debug, Clone, Serialize)]
pub struct RoleView {
    /// Role name.
    pub name: RoleName,
    /// Its own pool mode, if it overrides the endpoint's.
    pub pool_mode: Option<PoolMode>,
    /// When it was created.
    pub created_at: chrono::DateTime<Utc>,
}

/// A running compute, owned by its slot's lifecycle lock.
pub(crate) struct Running {
    pub(crate) postmaster: Postmaster,
    /// The pagefs serving PGDATA, when on the page store.
    pub(crate) pagefs: Option<Pagefs>,
    /// The system role's connection, for monitoring; reopened if it breaks.
    pub(crate) client: Option<Client>,
    /// The last time the monitor saw activity (or the boot finished).
    pub(crate) last_activity: Instant,
}

impl Running {
    /// Why the compute is broken, if it is: the postmaster or pagefs exited on its own.
    pub(crate) fn exited(&mut self) -> Option<String> {
        if let Some(status) = self.postmaster.try_exited() {
            return Some(format!("postgres exited unexpectedly with {status}"));
        }
        let status = self.pagefs.as_mut()?.try_exited()?;
        Some(format!("pagefs exited unexpectedly with {status}"))
    }
}

/// Whether an endpoint's compute runs.
#[allow(clippy::large_enum_variant)] // one per endpoint, never moved in bulk
pub(crate) enum Lifecycle {
    Down,
    Up(Running),
}

/// One endpoint's lifecycle lock and published status.
pub(crate) struct Slot {
    pub(crate) life: tokio::sync::Mutex<Lifecycle>,
    status: watch::Sender<ComputeStatus>,
}

impl Slot {
    fn new() -> Self {
        Self {
            life: tokio::sync::Mutex::new(Lifecycle::Down),
            status: watch::Sender::new(ComputeStatus::suspended()),
        }
    }

    /// Publishes a new state, keeping the monitor's view.
    fn publish(&self, state: ComputeState, pm: Option<&Postmaster>, failure: Option<Failure>) {
        self.status.send_modify(|s| {
            if !s.state.can_become(state) && s.state != state {
                tracing::warn!(from = ?s.state, to = ?state, "unexpected compute state transition");
            }
            s.state = state;
            s.since = Utc::now();
            s.address = pm
                .filter(|_| state == ComputeState::Active)
                .map(Postmaster::address);
            s.pid = pm.map(Postmaster::pid);
            s.failure = failure;
        });
    }

    pub(crate) fn record_decision(&self, decision: Decision) {
        self.status.send_modify(|s| {
            s.autosuspend.checks += 1;
            s.autosuspend.last = Some(decision);
        });
    }
}

/// Why a compute is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// An operator asked (`lakebed endpoint suspend`): stop even if busy.
    Requested,
    /// The autosuspend policy: stop only if the re-check right before stopping finds it idle.
    Idle,
    /// The manager is shutting down.
    Shutdown,
    /// The endpoint is being deleted.
    Deleted,
    /// Its tenant's CMK is no longer usable.
    Revoked,
}

impl StopReason {
    /// The `reason` label of `lakebed_suspends_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::Deleted => "deleted",
            Self::Revoked => "revoked",
        }
    }
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    NotRunning,
    Stopped,
    /// The idle re-check found activity; the compute keeps running.
    Aborted(Activity),
}

/// The compute manager. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ManagerOptions,
    catalog: Catalog,
    install: PgInstall,
    user: OsUser,
    manager_os_user: String,
    storage: Option<Storage>,
    keys: Option<TenantKeys>,
    slots: Mutex<HashMap<EndpointName, Arc<Slot>>>,
    closing: CancellationToken,
}

impl Manager {
    /// Opens the manager on `opts.data_dir`: finds PostgreSQL, resolves the compute OS user,
    /// opens the catalog, and reconciles computes a previous (crashed) manager left behind.
    ///
    /// # Errors
    ///
    /// [`ManagerError::PostgresNotFound`], [`ManagerError::NoSuchOsUser`], catalog and I/O
    /// errors, and [`ManagerError::InvalidInput`] when the compute user cannot reach the
    /// data directory.
    pub async fn open(mut opts: ManagerOptions) -> Result<Self, ManagerError> {
        let install = PgInstall::find(opts.compute.pg_bin_dir.as_deref())?;
        let user = OsUser::for_computes(&opts.compute.os_user)?;
        let manager_os_user = OsUser::current_name()?;
        opts.data_dir = prepare_data_dir(&opts.data_dir, &user)?;
        let catalog = Catalog::open(&opts.data_dir.join("catalog.db"))?;
        reconcile::reconcile(&opts.data_dir, &catalog, opts.compute.stop_timeout.get()).await?;
        let storage = opts
            .page_store
            .clone()
            .map(|p| Storage::new(p, &opts.data_dir))
            .transpose()?;
        let keys = opts.keys.as_ref().map(TenantKeys::open).transpose()?;
        tracing::info!(
            data_dir = %opts.data_dir.display(),
            postgres = %install.bin_dir.display(),
            compute_user = %user.name,
            "compute manager ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                catalog,
                install,
                user,
                manager_os_user,
                storage,
                keys,
                slots: Mutex::new(HashMap::new()),
                closing: CancellationToken::new(),
            }),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The absolute data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.opts.data_dir
    }

    /// How often the monitor polls.
    pub fn poll_interval(&self) -> Duration {
        self.inner.opts.activity_poll_interval
    }

    /// Cancelled when [`Manager::shutdown`] begins.
    pub fn closing(&self) -> &CancellationToken {
        &self.inner.closing
    }

    fn slot(&self, name: &EndpointName) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    pub(crate) fn slots(&self) -> Vec<(EndpointName, Arc<Slot>)> {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Creates an endpoint in the catalog. Nothing is written to disk until its first wake.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointExists`], [`ManagerError::TenantNotFound`].
    pub fn create_endpoint(
        &self,
        name: &EndpointName,
        tenant: &TenantName,
        policy: &AutosuspendPolicy,
    ) -> Result<EndpointRecord, ManagerError> {
        let record = self.inner.catalog.create_endpoint(name, tenant, policy)?;
        tracing::info!(endpoint = %name, %tenant, "endpoint created");
        Ok(record)
    }

    /// Sets an endpoint's autosuspend policy; the monitor applies it at its next check.
    pub fn set_policy(
        &self,
        name: &EndpointName,
        policy: &AutosuspendPolicy,
    ) -> Result<EndpointRecord, ManagerError> {
        self.inner.catalog.set_policy(name, policy)
    }

    /// Stops the endpoint's compute if it runs, then deletes the endpoint from the catalog and
    /// its files from disk.
    pub async fn delete_endpoint(&self, name: &EndpointName) -> Result<(), ManagerError> {
        self.inner.catalog.endpoint(name)?;
        let slot = self.slot(name);
        let this = self.clone();
        let name = name.clone();
        spawn_owned(async move {
            let mut life = slot.life.lock().await;
            this.stop_locked(&name, &slot, &mut life, StopReason::Deleted)
                .await;
            let timeline = this.inner.catalog.endpoint(&name)?.timeline;
            this.inner.catalog.delete_endpoint(&name)?;
            if let Some(storage) = &this.inner.storage {
                storage.delete_timeline(&timeline).await;
            }
            let dir = EndpointDir::new(this.data_dir(), &name);
            crate::postgres::remove_dir_if_exists(dir.root())?;
            this.inner
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            tracing::info!(endpoint = %name, "endpoint deleted");
            Ok(())
        })
        .await
    }

    /// The endpoint with its compute status and boot history.
    pub fn show(&self, name: &EndpointName) -> Result<EndpointView, ManagerError> {
        let record = self.inner.catalog.endpoint(name)?;
        let recent_boots = self.inner.catalog.boots(name, 5)?;
        Ok(EndpointView {
            pagefs: self.pagefs_stats(name),
            compute: self.status(name),
            boots: self.inner.catalog.boot_count(name)?,
            last_cold_start_ms: recent_boots.iter().find_map(|b| b.cold_start_ms),
            recent_boots,
            record,
        })
    }

    /// Every endpoint, by name.
    pub fn list(&self) -> Result<Vec<EndpointView>, ManagerError> {
        self.inner
            .catalog
            .endpoints()?
            .iter()
            .map(|e| self.show(&e.name))
            .collect()
    }

    /// Sets the `lakebed_computes{state}` gauges: how many endpoints' computes are in each
    /// state now. Called when metrics are scraped.
    pub fn record_gauges(&self) {
        let mut counts = std::collections::HashMap::<&'static str, f64>::new();
        for state in ["suspended", "starting", "active", "suspending", "failed"] {
            counts.insert(state, 0.0);
        }
        if let Ok(endpoints) = self.inner.catalog.endpoints() {
            for e in endpoints {
                *counts
                    .entry(self.status(&e.name).state.label())
                    .or_default() += 1.0;
                if let Some(s) = self.pagefs_stats(&e.name) {
                    let ep = e.name.to_string();
                    // Per compute boot: they restart from zero at each wake.
                    for (name, value) in [
                        ("lakebed_pagefs_cache_hits", s.hits as f64),
                        ("lakebed_pagefs_cache_misses", s.misses as f64),
                        ("lakebed_pagefs_cache_evictions", s.evictions as f64),
                        ("lakebed_pagefs_cache_pages", s.cached_pages as f64),
                        ("lakebed_pagefs_fetches", s.fetches as f64),
                        ("lakebed_pagefs_fetch_seconds", s.fetch_seconds),
                        ("lakebed_pagefs_flushed_bytes", s.flushed_bytes as f64),
                        ("lakebed_pagefs_dirty_bytes", s.dirty_bytes as f64),
                    ] {
                        metrics::gauge!(name, "endpoint" => ep.clone()).set(value);
                    }
                    if let Some(p) = &s.prewarm {
                        for (state, n) in [
                            ("listed", p.listed),
                            ("fetched", p.fetched),
                            ("skipped", p.skipped),
                            ("in_page_cache", p.in_page_cache),
                        ] {
                            metrics::gauge!("lakebed_pagefs_prewarm_pages", "endpoint" => ep.clone(), "state" => state)
                                .set(n as f64);
                        }
                    }
                }
            }
        }
        for (state, n) in counts {
            metrics::gauge!("lakebed_computes", "state" => state).set(n);
        }
        if let Some(storage) = &self.inner.storage {
            metrics::gauge!("lakebed_warm_pool_members").set(storage.pool_members() as f64);
        }
    }

    /// The running compute's latest pagefs report; `None` when it is not up on pagefs (or
    /// is being started or stopped right now).
    pub fn pagefs_stats(&self, name: &EndpointName) -> Option<PagefsStats> {
        let slot = self.slot(name);
        let life = slot.life.try_lock().ok()?;
        let Lifecycle::Up(run) = &*life else {
            return None;
        };
        let stats = run.pagefs.as_ref()?.stats.lock().ok()?;
        Some(stats.clone())
    }

    /// The page fetch latency histograms of running computes' pagefs, in the Prometheus
    /// text format (appended to `/metrics`: pagefs runs in processes of its own, so its
    /// histogram is rendered from its reports rather than recorded here).
    pub fn pagefs_histograms(&self) -> String {
        let mut out = String::new();
        for e in self.inner.catalog.endpoints().unwrap_or_default() {
            if let Some(s) = self.pagefs_stats(&e.name)
                && !s.fetch_buckets.is_empty()
            {
                out.push_str(&s.fetch_histogram(e.name.as_str()));
            }
        }
        if out.is_empty() {
            return out;
        }
        format!(
            "# HELP lakebed_pagefs_fetch_seconds Page fetches from the page store by latency, per running compute since it booted.\n\
             # TYPE lakebed_pagefs_fetch_seconds histogram\n{out}"
        )
    }

    /// The compute status of an endpoint (suspended if it has never been woken).
    pub fn status(&self, name: &EndpointName) -> ComputeStatus {
        self.slot(name).status.borrow().clone()
    }

    /// A receiver that sees every status change of the endpoint's compute.
    pub fn subscribe(&self, name: &EndpointName) -> watch::Receiver<ComputeStatus> {
        self.slot(name).status.subscribe()
    }

    /// Adds a role to an endpoint with `verifier`, or with a generated password when `None`
    /// (returned, to be shown once). Applied at once if the compute runs, else at next boot.
    pub async fn create_role(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        verifier: Option<Verifier>,
    ) -> Result<Option<String>, ManagerError> {
        let (verifier, password) = with_password(verifier);
        self.inner.catalog.create_role(endpoint, role, &verifier)?;
        self.sync_roles_if_running(endpoint).await;
        Ok(password)
    }

    /// Replaces a role's verifier (or generates a new password, returned once).
    pub async fn set_role_password(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        verifier: Option<Verifier>,
    ) -> Result<Option<String>, ManagerError> {
        let (verifier, password) = with_password(verifier);
        self.inner
            .catalog
            .set_role_verifier(endpoint, role, &verifier)?;
        self.sync_roles_if_running(endpoint).await;
        Ok(password)
    }

    /// The roles of an endpoint.
    pub fn roles(&self, endpoint: &EndpointName) -> Result<Vec<RoleView>, ManagerError> {
        Ok(self
            .inner
            .catalog
            .roles(endpoint)?
            .into_iter()
            .map(|r| RoleView {
                name: r.name,
                pool_mode: r.pool_mode,
                created_at: r.created_at,
            })
            .collect())
    }

    /// The SCRAM verifier of a role, for the proxy to authenticate clients against.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`], [`ManagerError::RoleNotFound`].
    pub fn role_verifier(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
    ) -> Result<(Verifier, PoolMode), ManagerError> {
        let endpoint_mode = self.inner.catalog.endpoint(endpoint)?.pool_mode;
        self.inner
            .catalog
            .roles(endpoint)?
            .into_iter()
            .find(|r| &r.name == role)
            .map(|r| (r.verifier, r.pool_mode.unwrap_or(endpoint_mode)))
            .ok_or_else(|| ManagerError::RoleNotFound {
                endpoint: endpoint.to_string(),
                role: role.to_string(),
            })
    }

    /// Sets the endpoint's pool mode; the proxy applies it to new pools (within its secret
    /// cache time).
    pub fn set_pool_mode(
        &self,
        endpoint: &EndpointName,
        mode: PoolMode,
    ) -> Result<(), ManagerError> {
        self.inner.catalog.set_pool_mode(endpoint, mode)
    }

    /// Sets or clears a role's own pool mode.
    pub fn set_role_pool_mode(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        mode: Option<PoolMode>,
    ) -> Result<(), ManagerError> {
        self.inner.catalog.set_role_pool_mode(endpoint, role, mode)
    }

    /// Deletes a role from an endpoint (and from its running compute).
    pub async fn delete_role(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
    ) -> Result<(), ManagerError> {
        self.inner.catalog.delete_role(endpoint, role)?;
        self.sync_roles_if_running(endpoint).await;
        Ok(())
    }

    async fn sync_roles_if_running(&self, endpoint: &EndpointName) {
        let slot = self.slot(endpoint);
        let life = slot.life.lock().await;
        if let Lifecycle::Up(Running {
            client: Some(client),
            ..
        }) = &*life
        {
            let result = match self.inner.catalog.roles(endpoint) {
                Ok(roles) => sql::sync_roles(client, &roles)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = result {
                tracing::warn!(%endpoint, %error, "roles not applied to the running compute; they will be at next boot");
            }
        }
    }

    /// Ensures the endpoint's compute runs and returns its address.
    ///
    /// Returns at once if it is active. Otherwise starts it (initdb on first boot, postmaster,
    /// roles) and returns when Postgres accepts connections. Concurrent calls share one start;
    /// a call during a suspend waits for it and starts the compute again.
    ///
    /// # Errors
    ///
    /// - [`ManagerError::EndpointNotFound`]: not in the catalog.
    /// - [`ManagerError::StartFailed`]: Postgres did not come up; the log tail is attached.
    /// - [`ManagerError::NoFreePort`]: no port in `compute.port_range`.
    /// - [`ManagerError::ShuttingDown`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the start runs in its own task and completes even if this future is
    /// dropped; later callers find the compute active.
    pub async fn wake(&self, name: &EndpointName) -> Result<WakeOutcome, ManagerError> {
        let requested = Instant::now();
        if self.inner.closing.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        self.inner.catalog.endpoint(name)?;
        let slot = self.slot(name);
        let this = self.clone();
        let name = name.clone();
        spawn_owned(async move { this.wake_locked(&name, &slot, requested).await }).await
    }

    async fn wake_locked(
        &self,
        name: &EndpointName,
        slot: &Slot,
        requested: Instant,
    ) -> Result<WakeOutcome, ManagerError> {
        let requested_at = Utc::now() - (Instant::now() - requested);
        let mut life = slot.life.lock().await;
        if self.inner.closing.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        if let Lifecycle::Up(run) = &mut *life {
            match run.exited() {
                None => {
                    // A wake is activity: a client is about to connect, so the idle clock
                    // restarts and the monitor won't stop the compute under it.
                    run.last_activity = Instant::now();
                    metrics::counter!("lakebed_wake_requests_total", "outcome" => "warm")
                        .increment(1);
                    return Ok(WakeOutcome {
                        address: run.postmaster.address(),
                        pid: run.postmaster.pid(),
                        cold_start_ms: None,
                    });
                }
                Some(reason) => self.crashed(name, slot, &mut life, reason).await,
            }
        }
        // The endpoint may have been deleted while this call waited for the lock.
        let endpoint = self.inner.catalog.endpoint(name)?;
        slot.publish(ComputeState::Starting, None, None);
        let mut steps = WakeSteps::default();
        let booted = self.boot(&endpoint, slot, &mut steps).await;
        // The pool member this boot may have taken is replaced now that the boot is over,
        // so the new process does not compete with it for the CPU.
        if let Some(storage) = &self.inner.storage {
            storage.refill_pool();
        }
        match booted {
            Ok(run) => {
                let cold_start = requested.elapsed();
                metrics::counter!("lakebed_wake_requests_total", "outcome" => "cold").increment(1);
                metrics::histogram!("lakebed_cold_start_seconds", "outcome" => "active")
                    .record(cold_start.as_secs_f64());
                self.inner
                    .catalog
                    .record_boot(name, requested_at, Ok(cold_start), &steps)?;
                slot.publish(ComputeState::Active, Some(&run.postmaster), None);
                tracing::info!(endpoint = %name, pid = run.postmaster.pid(),
                    address = %run.postmaster.address(), cold_start_ms = cold_start.as_millis() as u64,
                    steps = %steps.summary(), "compute active");
                let outcome = WakeOutcome {
                    address: run.postmaster.address(),
                    pid: run.postmaster.pid(),
                    cold_start_ms: Some(cold_start.as_millis() as u64),
                };
                *life = Lifecycle::Up(run);
                Ok(outcome)
            }
            Err(e) => {
                let (reason, log_tail) = match &e {
                    ManagerError::StartFailed {
                        reason, log_tail, ..
                    } => (reason.clone(), log_tail.clone()),
                    other => (other.to_string(), String::new()),
                };
                tracing::warn!(endpoint = %name, %reason, "compute failed to start");
                metrics::counter!("lakebed_wake_requests_total", "outcome" => "failed")
                    .increment(1);
                metrics::histogram!("lakebed_cold_start_seconds", "outcome" => "failed")
                    .record(requested.elapsed().as_secs_f64());
                let _ = self
                    .inner
                    .catalog
                    .record_boot(name, requested_at, Err(&reason), &steps);
                slot.publish(
                    ComputeState::Failed,
                    None,
                    Some(Failure { reason, log_tail }),
                );
                Err(e)
            }
        }
    }

    /// Starts a compute for `endpoint`. On error nothing keeps running.
    ///
    /// Each boot step runs in a span named after it (`timeline`, `mount`, or `initdb` for a
    /// local PGDATA, then `postgres_start`, `apply_roles`), children of the API's `wake` span: a new step gets its span with one
    /// `.instrument(info_span!("step"))` on its future. `steps` gets each step's time.
    async fn boot(
        &self,
        endpoint: &EndpointRecord,
        slot: &Slot,
        steps: &mut WakeSteps,
    ) -> Result<Running, ManagerError> {
        let inner = &self.inner;
        let dir = EndpointDir::new(&inner.opts.data_dir, &endpoint.name);
        dir.create()?;
        let mut lap = Lap::start();
        let mut pagefs = match &inner.storage {
            Some(storage) => {
                let keys = match &inner.keys {
                    Some(keys) => {
                        let tenant = inner.catalog.tenant(&endpoint.tenant)?;
                        keys.unwrap(&inner.catalog, &tenant)
                            .instrument(info_span!("key_unwrap"))
                            .await?
                    }
                    None => None,
                };
                steps.key_unwrap_ms = lap.lap();
                let lineage = storage
                    .ensure_timeline(
                        endpoint.name.as_str(),
                        &endpoint.timeline,
                        &inner.install,
                        &inner.user,
                        &inner.opts.data_dir,
                        keys.as_ref(),
                    )
                    .instrument(info_span!("timeline"))
                    .await?;
                steps.timeline_ms = lap.lap();
                let fs = storage
                    .mount_endpoint(
                        endpoint.name.as_str(),
                        &lineage,
                        &dir,
                        &inner.user,
                        keys.as_ref(),
                    )
                    .instrument(info_span!("mount"))
                    .await?;
                steps.mount_ms = lap.lap();
                steps.pagefs = fs.steps;
                steps.pooled = fs.origin.pooled;
                steps.dead_pool_members = fs.origin.dead_members;
                Some(fs)
            }
            None => {
                if !dir.is_initialized() {
                    dir.initdb(&inner.install, &inner.user, &endpoint.name)
                        .instrument(info_span!("initdb"))
                        .await?;
                }
                None
            }
        };
        let mut result = self.start_postgres(endpoint, slot, &dir, steps).await;
        if let Some(fs) = &mut pagefs {
            match &mut result {
                Ok(_) => fs.compute_active().await,
                Err(e) => {
                    // Postgres fails when its data directory goes away: name the cause.
                    if let (Some(status), ManagerError::StartFailed { reason, .. }) =
                        (fs.try_exited(), &mut *e)
                    {
                        *reason = format!(
                            "pagefs exited with {status} while postgres was starting ({reason})"
                        );
                    }
                    fs.stop(inner.opts.compute.stop_timeout.get()).await;
                }
            }
        }
        result.map(|mut run| {
            run.pagefs = pagefs;
            run
        })
    }

    /// Starts the postmaster on a ready PGDATA and prepares it.
    async fn start_postgres(
        &self,
        endpoint: &EndpointRecord,
        slot: &Slot,
        dir: &EndpointDir,
        steps: &mut WakeSteps,
    ) -> Result<Running, ManagerError> {
        let inner = &self.inner;
        let mut lap = Lap::start();
        let tls = inner.opts.compute_tls.as_ref();
        let grace = inner.opts.compute.stop_timeout.get();
        let mut tried = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = self.pick_port(&tried)?;
            tried.push(port);
            // Off the async workers: PGDATA may be a pagefs mount, where a read can wait
            // for a page from a page store that this very process serves.
            let (dir_, user, os_user, tls_) = (
                dir.clone(),
                inner.user.clone(),
                inner.manager_os_user.clone(),
                tls.cloned(),
            );
            tokio::task::spawn_blocking(move || {
                dir_.write_access_rules(&user, &os_user, tls_.is_some())?;
                dir_.fresh_private_dir(&dir_.run_dir(), &user)?;
                dir_.install_tls(tls_.as_ref(), &user)
            })
            .await
            .map_err(|e| ManagerError::io(dir.pgdata())(std::io::Error::other(e)))??;
            let cluster = format!("lakebed/{}", endpoint.name);
            let mut pm = Postmaster::spawn(
                &inner.install,
                &inner.user,
                dir,
                &cluster,
                port,
                tls.is_some(),
            )
            .map_err(ManagerError::io(inner.install.bin("postgres")))?;
            slot.publish(ComputeState::Starting, Some(&pm), None);
            match pm
                .wait_ready(inner.opts.compute.start_timeout.get())
                .instrument(info_span!("postgres_start", port))
                .await
            {
                Ok(client) => {
                    steps.postgres_start_ms = lap.lap();
                    let prepared = self
                        .prepare(&client, endpoint)
                        .instrument(info_span!("apply_roles"))
                        .await;
                    match prepared {
                        Ok(()) => {
                            steps.roles_ms = lap.lap();
                            return Ok(Running {
                                postmaster: pm,
                                pagefs: None,
                                client: Some(client),
                                last_activity: Instant::now(),
                            });
                        }
                        Err(e) => {
                            drop(client);
                            let log_tail = pm.log_tail();
                            pm.stop(grace).await;
                            let _ = crate::postgres::remove_dir_if_exists(&dir.run_dir());
                            // A failed role setup is a failed start, and said as one.
                            return Err(match e {
                                ManagerError::ComputeSql { source, .. } => {
                                    ManagerError::StartFailed {
                                        endpoint: endpoint.name.to_string(),
                                        reason: format!(
                                            "applying the catalog's roles failed: {}",
                                            crate::error::sql_error_text(&source)
                                        ),
                                        log_tail,
                                    }
                                }
                                other => other,
                            });
                        }
                    }
                }
                Err(StartError::PortTaken) => {
                    pm.stop(grace).await;
                    tracing::info!(endpoint = %endpoint.name, port, "port taken while starting; trying another");
                }
                Err(StartError::Failed { reason, log_tail }) => {
                    pm.stop(grace).await;
                    let _ = crate::postgres::remove_dir_if_exists(&dir.run_dir());
                    return Err(ManagerError::StartFailed {
                        endpoint: endpoint.name.to_string(),
                        reason,
                        log_tail,
                    });
                }
            }
        }
        Err(ManagerError::NoFreePort {
            range: port_range_text(&inner.opts.compute.port_range),
        })
    }

    /// Per-boot setup over the system connection: group role, grants, catalog roles. Runs
    /// only when a read finds the compute not in that state already: the setup writes the
    /// catalogs, and a write makes the boot wait for a commit on the page store.
    async fn prepare(
        &self,
        client: &Client,
        endpoint: &EndpointRecord,
    ) -> Result<(), ManagerError> {
        let sql_err = |source| ManagerError::ComputeSql {
            endpoint: endpoint.name.to_string(),
            source,
        };
        let roles = self.inner.catalog.roles(&endpoint.name)?;
        if sql::roles_in_place(client, &roles).await.map_err(sql_err)? {
            return Ok(());
        }
        sql::bootstrap(client).await.map_err(sql_err)?;
        sql::sync_roles(client, &roles).await.map_err(sql_err)
    }

    /// A free loopback port: any (`auto`) or the first free one in the configured range,
    /// skipping `tried`.
    fn pick_port(&self, tried: &[u16]) -> Result<u16, ManagerError> {
        let range = &self.inner.opts.compute.port_range;
        let free = |port: u16| {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .ok()
        };
        let found = match *range {
            PortRange::Auto => free(0),
            PortRange::Range { low, high } => {
                (low..=high).filter(|p| !tried.contains(p)).find_map(free)
            }
        };
        found.ok_or_else(|| ManagerError::NoFreePort {
            range: port_range_text(range),
        })
    }

    /// Records that the compute broke (the postmaster or its pagefs exited on its own),
    /// removes what is left of it (orphaned backends, pagefs, the mount, local files), and
    /// clears the slot. The next wake starts afresh, with crash recovery.
    pub(crate) async fn crashed(
        &self,
        name: &EndpointName,
        slot: &Slot,
        life: &mut Lifecycle,
        reason: String,
    ) {
        let Lifecycle::Up(mut run) = std::mem::replace(life, Lifecycle::Down) else {
            return;
        };
        let log_tail = run.postmaster.log_tail();
        tracing::warn!(endpoint = %name, %reason, "compute crashed");
        let grace = self.inner.opts.compute.stop_timeout.get();
        drop(run.client.take());
        // Also kills the backends a killed postmaster left behind.
        run.postmaster.stop(grace).await;
        if let Some(fs) = &mut run.pagefs {
            fs.stop(grace).await;
        }
        let dir = EndpointDir::new(self.data_dir(), name);
        let _ = crate::postgres::remove_dir_if_exists(&dir.run_dir());
        slot.publish(
            ComputeState::Failed,
            None,
            Some(Failure { reason, log_tail }),
        );
    }

    /// Suspends the endpoint's compute now, even if clients are connected (their sessions
    /// end, as with `pg_ctl stop -m fast`). Returns the resulting state.
    pub async fn suspend(&self, name: &EndpointName) -> Result<ComputeState, ManagerError> {
        self.inner.catalog.endpoint(name)?;
        let slot = self.slot(name);
        let this = self.clone();
        let name = name.clone();
        spawn_owned(async move {
            let mut life = slot.life.lock().await;
            this.stop_locked(&name, &slot, &mut life, StopReason::Requested)
                .await;
            Ok(slot.status.borrow().state)
        })
        .await
    }

    /// Stops the compute held in `life`: CHECKPOINT, (for [`StopReason::Idle`]) a re-check
    /// that it is still idle, fast shutdown, confirm the process is gone, clean up.
    pub(crate) async fn stop_locked(
        &self,
        name: &EndpointName,
        slot: &Slot,
        life: &mut Lifecycle,
        reason: StopReason,
    ) -> StopOutcome {
        let Lifecycle::Up(run) = life else {
            return StopOutcome::NotRunning;
        };
        if let Some(reason) = run.exited() {
            self.crashed(name, slot, life, reason).await;
            return StopOutcome::NotRunning;
        }
        if let Some(client) = &run.client {
            if let Err(e) = timeout(QUERY_TIMEOUT, sql::checkpoint(client)).await {
                tracing::debug!(endpoint = %name, error = %e, "checkpoint before shutdown timed out");
            }
            if reason == StopReason::Idle {
                // Re-check right before stopping: a query that arrived while we decided is
                // not killed. Anything but a clean "idle" keeps the compute up.
                match timeout(QUERY_TIMEOUT, sql::activity(client)).await {
                    Ok(Ok(a)) if !a.blocks_suspend() => {}
                    Ok(Ok(a)) => {
                        run.last_activity = Instant::now();
                        return StopOutcome::Aborted(a);
                    }
                    _ => return StopOutcome::Aborted(Activity::default()),
                }
            }
        }
        let Lifecycle::Up(mut run) = std::mem::replace(life, Lifecycle::Down) else {
            return StopOutcome::NotRunning;
        };
        slot.publish(ComputeState::Suspending, Some(&run.postmaster), None);
        drop(run.client.take());
        let grace = self.inner.opts.compute.stop_timeout.get();
        let status = run.postmaster.stop(grace).await;
        if let Some(fs) = &mut run.pagefs
            && !fs.stop(grace).await.is_some_and(|s| s.success())
        {
            tracing::error!(endpoint = %name, "pagefs did not unmount cleanly; see pagefs.log");
        }
        let dir = EndpointDir::new(self.data_dir(), name);
        let _ = crate::postgres::remove_dir_if_exists(&dir.run_dir());
        slot.publish(ComputeState::Suspended, None, None);
        tracing::info!(endpoint = %name, ?reason, %status, "compute suspended");
        metrics::counter!("lakebed_suspends_total", "reason" => reason.label()).increment(1);
        StopOutcome::Stopped
    }

    /// Creates tenant `name` whose data is sealed under CMK `kms_key_id` (default: the
    /// configured default key), with its first DEK from KMS.
    ///
    /// # Errors
    ///
    /// [`ManagerError::TenantExists`], [`ManagerError::KeyUnavailable`],
    /// [`ManagerError::KmsFailed`]; [`ManagerError::InvalidInput`] without keys configured
    /// or without a key id.
    pub async fn create_tenant(
        &self,
        name: &TenantName,
        kms_key_id: Option<&str>,
    ) -> Result<crate::catalog::TenantRecord, ManagerError> {
        let keys = self.keys()?;
        let key_id = kms_key_id
            .map(str::to_owned)
            .or_else(|| self.inner.opts.keys.as_ref()?.default_key_id.clone())
            .ok_or_else(|| {
                ManagerError::InvalidInput(
                    "no KMS key: give --kms-key-id (or set keys.default_kms_key_id)".into(),
                )
            })?;
        let record = keys
            .create_tenant(&self.inner.catalog, name, &key_id)
            .await?;
        tracing::info!(tenant = %name, kms_key_id = %key_id, "tenant created");
        Ok(record)
    }

    fn keys(&self) -> Result<&TenantKeys, ManagerError> {
        self.inner
            .keys
            .as_ref()
            .ok_or_else(|| ManagerError::InvalidInput("no KMS is configured".into()))
    }

    /// The tenant's keys: CMK, its state, wrapped DEK versions, last rotation.
    pub async fn keys_show(&self, tenant: &TenantName) -> Result<KeysView, ManagerError> {
        let mut view = self.keys()?.show(&self.inner.catalog, tenant).await?;
        for e in self.inner.catalog.endpoints()? {
            if e.tenant == *tenant
                && let Some(status) = self.pagefs_stats(&e.name).and_then(|s| s.reseal)
            {
                view.reseal.push(crate::tenant_keys::ResealView {
                    endpoint: e.name.to_string(),
                    status,
                });
            }
        }
        Ok(view)
    }

    /// Rotates the tenant's CMK key material and re-wraps its DEKs (`ReEncrypt`); nothing
    /// is rewritten and no compute stops. Returns what was done.
    pub async fn keys_rotate(
        &self,
        tenant: &TenantName,
    ) -> Result<serde_json::Value, ManagerError> {
        self.keys()?.rewrap(&self.inner.catalog, tenant, None).await
    }

    /// Re-wraps the tenant's DEKs under CMK `kms_key_id` and makes it the tenant's key.
    pub async fn keys_set_cmk(
        &self,
        tenant: &TenantName,
        kms_key_id: &str,
    ) -> Result<serde_json::Value, ManagerError> {
        self.keys()?
            .rewrap(&self.inner.catalog, tenant, Some(kms_key_id))
            .await
    }

    /// A new DEK version for the tenant; its computes seal new writes under it from their
    /// next wake. Returns the version.
    pub async fn keys_rekey(&self, tenant: &TenantName) -> Result<u32, ManagerError> {
        self.keys()?.rekey(&self.inner.catalog, tenant).await
    }

    /// One revocation check: every tenant with a CMK and running computes has its key's
    /// state asked; computes of tenants whose key is no longer usable are stopped. A KMS
    /// that cannot be reached stops nothing.
    pub async fn check_keys(&self) {
        let Some(keys) = &self.inner.keys else {
            return;
        };
        let Ok(tenants) = self.inner.catalog.tenants() else {
            return;
        };
        let running: Vec<(EndpointName, TenantName)> = self
            .inner
            .catalog
            .endpoints()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| self.status(&e.name).state != ComputeState::Suspended)
            .map(|e| (e.name, e.tenant))
            .collect();
        for tenant in tenants.iter().filter(|t| t.kms_key_id.is_some()) {
            let of_tenant: Vec<&EndpointName> = running
                .iter()
                .filter(|(_, t)| *t == tenant.name)
                .map(|(e, _)| e)
                .collect();
            if of_tenant.is_empty() {
                continue;
            }
            match keys.check(tenant).await {
                Ok(()) => {}
                Err(ManagerError::KeyUnavailable { key_id, state, .. }) => {
                    for endpoint in of_tenant {
                        tracing::warn!(tenant = %tenant.name, %endpoint, %state,
                            "the tenant's key is no longer usable: stopping its compute");
                        let slot = self.slot(endpoint);
                        let mut life = slot.life.lock().await;
                        if let StopOutcome::Stopped = self
                            .stop_locked(endpoint, &slot, &mut life, StopReason::Revoked)
                            .await
                        {
                            keys.record_stop(tenant.name.as_str(), &key_id, endpoint.as_str());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant.name, error = %e, "could not check the tenant's key; computes keep running")
                }
            }
        }
    }

    /// Appends a finished re-seal of `endpoint`'s timeline to the keys audit log.
    pub(crate) fn audit_reseal(
        &self,
        endpoint: &EndpointRecord,
        status: crate::storage::ResealStatus,
    ) {
        if let (Some(keys), Ok(tenant)) = (
            &self.inner.keys,
            self.inner.catalog.tenant(&endpoint.tenant),
        ) {
            keys.record_reseal(&tenant, endpoint.name.as_str(), status);
        }
    }

    /// Runs [`Self::check_keys`] every `keys.check_interval` until shutdown.
    pub fn spawn_key_monitor(&self) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.inner.keys.as_ref()?.check_interval;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = this.inner.closing.cancelled() => return,
                    _ = tick.tick() => this.check_keys().await,
                }
            }
        }))
    }

    /// Stops taking work, kills the warm pool's pagefs processes and suspends every compute.
    /// Returns when no postmaster and no pagefs is left.
    pub async fn shutdown(&self) {
        self.inner.closing.cancel();
        // First: no member is started or handed out from here on.
        if let Some(storage) = &self.inner.storage {
            storage.close_pool().await;
        }
        let mut stops = tokio::task::JoinSet::new();
        for (name, slot) in self.slots() {
            let this = self.clone();
            stops.spawn(async move {
                let mut life = slot.life.lock().await;
                this.stop_locked(&name, &slot, &mut life, StopReason::Shutdown)
                    .await;
            });
        }
        while stops.join_next().await.is_some() {}
        tracing::info!("compute manager stopped; no compute left running");
    }
}

/// Runs `fut` in its own task, so that it completes even if the caller is dropped.
async fn spawn_owned<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, ManagerError>> + Send + 'static,
) -> Result<T, ManagerError> {
    tokio::spawn(fut.in_current_span())
        .await
        .unwrap_or_else(|e| {
            Err(ManagerError::InvalidInput(format!(
                "internal task failed: {e}"
            )))
        })
}

fn with_password(verifier: Option<Verifier>) -> (Verifier, Option<String>) {
    match verifier {
        Some(v) => (v, None),
        None => {
            let password = generate_password();
            (Verifier::from_password(&password), Some(password))
        }
    }
}

fn port_range_text(range: &PortRange) -> String {
    match range {
        PortRange::Auto => "auto".into(),
        PortRange::Range { low, high } => format!("{low}-{high}"),
    }
}

/// Creates the data directory (0711: the compute user may pass through, not list) and makes
/// sure the compute user can reach it. Returns its absolute path.
fn prepare_data_dir(data_dir: &Path, user: &OsUser) -> Result<PathBuf, ManagerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(data_dir)
        .map_err(ManagerError::io(data_dir))?;
    let abs = data_dir
        .canonicalize()
        .map_err(ManagerError::io(data_dir))?;
    for dir in [abs.clone(), EndpointDir::parent(&abs)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&dir)
            .map_err(ManagerError::io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(ManagerError::io(&dir))?;
    }
    if user.uid != nix::unistd::geteuid() {
        for ancestor in abs.ancestors().skip(1) {
            let meta = std::fs::metadata(ancestor).map_err(ManagerError::io(ancestor))?;
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(ManagerError::InvalidInput(format!(
                    "the compute user \"{}\" cannot pass through {} (mode {:o}), so computes \
                     could not reach data dir {}; choose a --data-dir outside it, such as \
                     /var/lib/lakebed",
                    user.name,
                    ancestor.display(),
                    meta.permissions().mode() & 0o777,
                    abs.display()
                )));
            }
        }
    }
    Ok(abs)
}
