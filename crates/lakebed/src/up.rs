//! `lakebed up`: the whole stack in one process.
//!
//! Makes the development TLS material ([`crate::pki`]), opens the compute manager on the
//! data directory (stopping computes a crashed run left behind), creates tenant `default`,
//! endpoint `main` and role `lakebed` on first start, creates or updates the endpoints named
//! in the configuration, serves the API, runs the autosuspend monitor and the proxy.
//! Computes accept only the proxy (its client certificate from the internal CA). SIGINT or
//! SIGTERM stops the proxy, suspends every compute, sends the last trace spans (if traces
//! are exported), then the process exits: no postgres process is left behind.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use lakebed_compute_manager::{
    ComputeTls, KeyOptions, Manager, ManagerError, ManagerOptions, PageStoreOptions, activity, api,
    verifier,
};
use lakebed_config::{
    AutosuspendPolicy, Config, EndpointName, KmsProviderKind, RoleName, TenantName,
};
use lakebed_keys::{AwsKms, KmsProvider, LOCAL_KEY_ID, LocalKms};
use lakebed_pageserver::{PageServer, ServerOptions};
use lakebed_proxy::control::ControlPlaneOptions;
use lakebed_proxy::tls::{TlsServer, compute_client_config};
use lakebed_proxy::{Proxy, ProxyOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::pki::{self, Pki};

use crate::client::{ADDR_FILE, PROXY_ADDR_FILE, TOKEN_FILE};

const DEFAULT_TENANT: &str = "default";
const DEFAULT_ENDPOINT: &str = "main";
const DEFAULT_ROLE: &str = "lakebed";

pub async fn run(config: Config) -> Result<()> {
    let tracing = crate::logging::init(config.logging.format, "info,tokio_postgres=warn")?;
    let result = serve(config).await;
    // Also after a failed start: its spans say why.
    tracing.shutdown().await;
    result
}

async fn serve(config: Config) -> Result<()> {
    // Signals first, so a SIGTERM during start-up is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // This process unwraps tenants' DEKs at each wake: no core dump may hold them.
    nix::sys::prctl::set_dumpable(false).context("making the process non-dumpable")?;

    // Everything that can fail for reasons outside the data dir (ports, TLS files) is tried
    // before the catalog is touched, so a failed first start leaves no endpoint or role
    // behind whose generated password nobody saw.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // One `lakebed up` per data dir: a second would take the first one's computes for
    // orphans and kill them. The lock goes with the process, however it ends.
    let _lock = lock_data_dir(&config.data_dir)?;
    let pki = pki::ensure(&config.data_dir, &config.proxy.domain)?;
    let token = ensure_token(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.manager.listen)
        .await
        .with_context(|| format!("manager.listen: cannot listen on {}", config.manager.listen))?;
    let api_addr = listener.local_addr()?;
    let proxy = start_proxy(&config, &pki, format!("http://{api_addr}"), token.clone()).await?;
    let proxy_addr = proxy.local_addr();
    let proxy_api = tokio::net::TcpListener::bind(config.proxy.api_listen)
        .await
        .with_context(|| {
            format!(
                "proxy.api_listen: cannot listen on {}",
                config.proxy.api_listen
            )
        })?;

    let (pageserver_url, pageserver) = start_pageserver(&config).await?;

    let mut manager_opts = ManagerOptions::from_config(&config);
    manager_opts.compute_tls = Some(ComputeTls {
        ca_cert: pki.internal_ca_cert.clone(),
        server_cert: pki.compute_cert.clone(),
        server_key: pki.compute_key.clone(),
    });
    manager_opts.keys = Some(key_options(&config).await?);
    manager_opts.page_store = Some(PageStoreOptions {
        url: pageserver_url,
        ca_file: None,
        pagefs_bin: std::env::current_exe().context("finding the lakebed binary for pagefs")?,
        cache_mib: config.compute.cache_mib,
        io_timeout: config.compute.io_timeout.get(),
        prewarm: config.compute.prewarm,
        warm_pool: config.compute.warm_pool as usize,
    });
    let manager = Manager::open(manager_opts).await?;
    let data_dir = manager.data_dir().to_path_buf();
    let first = bootstrap(&manager, &config).await?;

    let addr_file = data_dir.join(ADDR_FILE);
    std::fs::write(&addr_file, api_addr.to_string())
        .with_context(|| format!("writing {}", addr_file.display()))?;
    let monitor = activity::spawn_monitor(manager.clone());
    let key_monitor = manager.spawn_key_monitor();
    let prometheus = crate::metrics::recorder()?;
    let render_manager: api::RenderMetrics = {
        let (manager, prometheus) = (manager.clone(), prometheus.clone());
        std::sync::Arc::new(move || {
            manager.record_gauges();
            let mut text = prometheus.render();
            text.push_str(&manager.pagefs_histograms());
            text
        })
    };
    let server = tokio::spawn(api::serve(
        listener,
        manager.clone(),
        token.clone(),
        Some(render_manager),
    ));

    let stop_proxy = CancellationToken::new();
    let proxy_api_file = data_dir.join(PROXY_ADDR_FILE);
    std::fs::write(&proxy_api_file, proxy_api.local_addr()?.to_string())
        .with_context(|| format!("writing {}", proxy_api_file.display()))?;
    let render_proxy: lakebed_proxy::api::RenderMetrics = {
        let prometheus = prometheus.clone();
        std::sync::Arc::new(move || prometheus.render())
    };
    let proxy_api_task = tokio::spawn(lakebed_proxy::api::serve(
        proxy_api,
        proxy.pools(),
        token,
        stop_proxy.clone(),
        Some(render_proxy),
    ));
    let proxy_task = tokio::spawn(proxy.serve(stop_proxy.clone()));

    print_banner(
        &manager,
        &config,
        &pki,
        &data_dir,
        api_addr,
        proxy_addr,
        first.as_deref(),
    )?;

    tokio::select! {
        _ = sigint.recv() => tracing::info!("SIGINT: suspending every compute"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: suspending every compute"),
    }
    stop_proxy.cancel();
    let _ = proxy_task.await;
    let _ = proxy_api_task.await;
    let _ = std::fs::remove_file(&proxy_api_file);
    manager.shutdown().await;
    // Only now: suspending computes flush their pages to it.
    if let Some((stop, task)) = pageserver {
        stop.cancel();
        let _ = task.await;
    }
    let _ = monitor.await;
    if let Some(m) = key_monitor {
        let _ = m.await;
    }
    let _ = server.await;
    let _ = std::fs::remove_file(&addr_file);
    println!("Lakebed stopped; every compute is suspended.");
    Ok(())
}

/// The KMS of tenants' CMKs: the local development provider (a master key file, announced
/// as development only) or AWS KMS; audit lines go to `<data_dir>/keys/audit.log`.
async fn key_options(config: &Config) -> Result<KeyOptions> {
    let keys_dir = config.data_dir.join("keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;
    let (provider, default_key): (std::sync::Arc<dyn KmsProvider>, Option<String>) =
        match config.keys.provider {
            KmsProviderKind::Local => {
                let key_file = config.local_key_file();
                if !key_file.exists() && local_keys_in_use(&config.data_dir)? {
                    anyhow::bail!(
                        "keys.local_key_file: {} is missing, but tenants' data keys are wrapped \
                         by it: restore the file (a new one could not unwrap them)",
                        key_file.display()
                    );
                }
                let local = LocalKms::open(&key_file).context("keys.local_key_file")?;
                local.warn_development_only();
                (
                    std::sync::Arc::new(local),
                    Some(
                        config
                            .keys
                            .default_kms_key_id
                            .clone()
                            .unwrap_or_else(|| LOCAL_KEY_ID.to_owned()),
                    ),
                )
            }
            KmsProviderKind::AwsKms => (
                std::sync::Arc::new(
                    AwsKms::from_env(config.keys.aws_endpoint_url.clone())
                        .await
                        .context("keys.provider = \"aws-kms\"")?,
                ),
                config.keys.default_kms_key_id.clone(),
            ),
        };
    Ok(KeyOptions {
        provider,
        audit_log: keys_dir.join("audit.log"),
        check_interval: config.keys.check_interval.get(),
        default_key_id: default_key,
    })
}

/// Locks `<data_dir>/lakebed.lock` for this process, or says who holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join("lakebed.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "lakebed up is already running for data dir {} (it holds {})",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Whether the catalog holds tenants whose DEKs the local provider wrapped.
fn local_keys_in_use(data_dir: &Path) -> Result<bool> {
    let path = data_dir.join("catalog.db");
    if !path.exists() {
        return Ok(false);
    }
    let catalog = lakebed_compute_manager::catalog::Catalog::open(&path)?;
    Ok(catalog.tenants()?.iter().any(|t| {
        t.kms_key_id
            .as_deref()
            .is_some_and(|k| k == LOCAL_KEY_ID || k == lakebed_keys::LOCAL_KEY_ALIAS)
    }))
}

/// The page store computes use: `compute.pageserver_url`, or else one served from this
/// process on `pageserver.listen` with its data in `pageserver.data_dir`. Returns its URL and,
/// when served here, how to stop it.
async fn start_pageserver(
    config: &Config,
) -> Result<(
    String,
    Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
)> {
    if let Some(url) = &config.compute.pageserver_url {
        return Ok((url.clone(), None));
    }
    let data_dir = config.pageserver_data_dir();
    let server = PageServer::bind(ServerOptions {
        listen: config.pageserver.listen,
        data_dir: data_dir.clone(),
        tls: None,
        store: crate::commands::pageserver::store_options(config),
    })
    .await
    .with_context(|| {
        format!(
            "pageserver.listen: cannot serve the page store on {}",
            config.pageserver.listen
        )
    })?;
    let addr = server.local_addr();
    crate::commands::pageserver::write_addr_file(config, addr)?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "page store ready");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(stopped.cancelled_owned()).await {
            tracing::error!(error = %e, "the page store failed");
        }
    });
    Ok((format!("http://{addr}"), Some((stop, task))))
}

/// Binds the proxy with TLS for clients (configured, else the development certificate) and
/// the internal client certificate toward computes.
async fn start_proxy(
    config: &Config,
    pki: &Pki,
    manager_url: String,
    token: String,
) -> Result<Proxy> {
    let (cert, key) = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => (pki.proxy_cert.clone(), pki.proxy_key.clone()),
    };
    let tls = TlsServer::load(&cert, &key).context("proxy.tls_cert / proxy.tls_key")?;
    let compute_tls = compute_client_config(
        &pki.internal_ca_cert,
        &pki.proxy_client_cert,
        &pki.proxy_client_key,
    )?;
    let control = ControlPlaneOptions {
        base_url: manager_url,
        token,
        secret_ttl: config.proxy.auth_cache_ttl.get(),
    };
    let opts = ProxyOptions::from_config(&config.proxy, control, Some(tls), Some(compute_tls));
    Proxy::bind(opts)
        .await
        .with_context(|| format!("proxy.listen: cannot listen on {}", config.proxy.listen))
}

/// Reads the admin token, creating it (mode 0600) on first start.
fn ensure_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = format!(
        "{}{}",
        verifier::generate_password(),
        verifier::generate_password()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// First start: tenant `default`, endpoint `main`, role `lakebed` with a generated password
/// (returned, to be printed once). Every start: the endpoints named in the configuration.
async fn bootstrap(manager: &Manager, config: &Config) -> Result<Option<String>> {
    let tenant: TenantName = DEFAULT_TENANT.parse()?;
    let first_start = match manager.catalog().tenant(&tenant) {
        Ok(_) => false,
        Err(ManagerError::TenantNotFound(_)) => {
            manager
                .create_tenant(&tenant, None)
                .await
                .context("creating the default tenant with its DEK")?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    let main: EndpointName = DEFAULT_ENDPOINT.parse()?;
    let mut password = None;
    if first_start {
        let policy = config
            .endpoints
            .get(&main)
            .map(|e| e.policy())
            .unwrap_or_default();
        match manager.create_endpoint(&main, &tenant, &policy) {
            Ok(_) | Err(ManagerError::EndpointExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let role: RoleName = DEFAULT_ROLE.parse()?;
        match manager.create_role(&main, &role, None).await {
            Ok(p) => password = p,
            Err(ManagerError::RoleExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (name, endpoint) in &config.endpoints {
        let policy: AutosuspendPolicy = endpoint.policy();
        let mode = endpoint.pool_mode;
        match manager.catalog().endpoint(name) {
            Ok(existing) if existing.policy == policy => {}
            Ok(_) => {
                manager.set_policy(name, &policy)?;
            }
            Err(ManagerError::EndpointNotFound(_)) => {
                manager.create_endpoint(name, &tenant, &policy)?;
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(mode) = mode {
            manager.set_pool_mode(name, mode)?;
        }
    }
    Ok(password)
}

fn print_banner(
    manager: &Manager,
    config: &Config,
    pki: &Pki,
    data_dir: &Path,
    api_addr: std::net::SocketAddr,
    proxy_addr: std::net::SocketAddr,
    password: Option<&str>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "Lakebed is up. Data in {}", data_dir.display())?;
    writeln!(
        out,
        "  proxy      {proxy_addr}  (TLS optional on loopback; CA: {})",
        pki.ca_cert.display()
    )?;
    writeln!(
        out,
        "  API        http://{api_addr}  (admin token in {})",
        data_dir.join(TOKEN_FILE).display()
    )?;
    for ep in manager.list()? {
        let policy = match ep.record.policy.suspend_timeout {
            lakebed_config::SuspendTimeout::Never => "never suspended".to_owned(),
            t => format!("suspend after {t} idle"),
        };
        writeln!(
            out,
            "  endpoint   {} ({policy}, {} pooling)",
            ep.record.name, ep.record.pool_mode
        )?;
    }
    match password {
        Some(pw) => {
            writeln!(out, "  role       {DEFAULT_ROLE}, password {pw}")?;
            writeln!(
                out,
                "             (shown once; Lakebed keeps only a SCRAM verifier;"
            )?;
            writeln!(
                out,
                "              `lakebed role password {DEFAULT_ROLE}` sets a new one)"
            )?;
        }
        None => writeln!(
            out,
            "  role       {DEFAULT_ROLE} (password shown at first start; `lakebed role password {DEFAULT_ROLE}` sets a new one)"
        )?,
    }
    let (host, port) = (proxy_addr.ip(), proxy_addr.port());
    let credentials = match password {
        Some(pw) => format!("{DEFAULT_ROLE}:{pw}"),
        None => DEFAULT_ROLE.to_owned(),
    };
    writeln!(out, "Connect (the endpoint wakes on connect):")?;
    writeln!(
        out,
        "  psql \"postgres://{credentials}@{host}:{port}/postgres\""
    )?;
    writeln!(out, "Verified TLS, endpoint named by SNI:")?;
    writeln!(
        out,
        "  psql \"host={DEFAULT_ENDPOINT}.{} hostaddr={host} port={port} user={DEFAULT_ROLE} dbname=postgres sslmode=verify-full sslrootcert={}\"",
        config.proxy.domain,
        pki.ca_cert.display()
    )?;
    writeln!(out, "Ctrl-C suspends every compute and stops.")?;
    out.flush()?;
    Ok(())
}
