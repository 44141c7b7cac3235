//! Dispatch of subcommands.

mod endpoint;
mod keys;
mod pagefs;
pub mod pageserver;
mod role;

use std::io::Read;

use anyhow::{Context, Result, bail};
use lakebed_config::Config;

use crate::cli::{Cli, Command, PageserverCommand};
use crate::client::{ADDR_FILE, ApiClient, PAGESERVER_ADDR_FILE, PROXY_ADDR_FILE};

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    // pagefs is configured entirely by its parent, through its arguments.
    if let Command::Pagefs(args) = cli.command {
        return pagefs::run(args).await;
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Up => crate::up::run(config).await,
        Command::Endpoint(cmd) => endpoint::run(&client(&config, cli.api_url)?, cmd).await,
        Command::Role(cmd) => role::run(&client(&config, cli.api_url)?, cmd).await,
        Command::Tenant(cmd) => keys::tenant(&client(&config, cli.api_url)?, cmd).await,
        Command::Keys(cmd) => keys::keys(&client(&config, cli.api_url)?, cmd).await,
        Command::Pools { json } => pools(&config, json).await,
        Command::Status => status(&config, cli.api_url).await,
        Command::Pageserver {
            action:
                Some(PageserverCommand::Gc {
                    timeline,
                    pageserver: url,
                }),
            ..
        } => {
            let url = match url.or_else(|| config.compute.pageserver_url.clone()) {
                Some(url) => url,
                None => format!("http://{}", running_addr(&config, PAGESERVER_ADDR_FILE)?),
            };
            pageserver::gc(&url, timeline.as_deref()).await
        }
        Command::Pageserver {
            action: None,
            listen,
            tls_cert,
            tls_key,
            metrics_listen,
        } => {
            if let Some(listen) = listen {
                config.pageserver.listen = listen;
            }
            if metrics_listen.is_some() {
                config.pageserver.metrics_listen = metrics_listen;
            }
            if tls_cert.is_some() {
                config.pageserver.tls_cert = tls_cert;
                config.pageserver.tls_key = tls_key;
            }
            pageserver::run(&config).await
        }
        Command::Pagefs(_) => unreachable!("handled above"),
    }
}

/// The API client for the `lakebed up` running on this data dir: its address comes from
/// the file `lakebed up` writes while it runs (so the CLI never talks to another
/// instance's API by accident), or from `--api-url`.
fn client(config: &Config, api_url: Option<String>) -> Result<ApiClient> {
    let base = match api_url {
        Some(url) => url,
        None => format!("http://{}", running_addr(config, ADDR_FILE)?),
    };
    ApiClient::new(base, &config.data_dir)
}

/// The address in `<data_dir>/<file>`, written by a running `lakebed up`.
fn running_addr(config: &Config, file: &str) -> Result<String> {
    let path = config.data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(addr) => Ok(addr.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "lakebed up is not running for data dir {} (no {}); start it, or pass --data-dir \
             or --api-url",
            config.data_dir.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `lakebed status`: endpoints from the manager, clients and servers from the proxy.
async fn status(config: &Config, api_url: Option<String>) -> Result<()> {
    let endpoints = client(config, api_url)?
        .call(reqwest::Method::GET, "/v1/endpoints", None)
        .await?;
    let pools = ApiClient::new(
        format!("http://{}", running_addr(config, PROXY_ADDR_FILE)?),
        &config.data_dir,
    )?
    .call(reqwest::Method::GET, "/v1/pools", None)
    .await?;
    println!(
        "{:<24} {:<11} {:<22} {:>10} {:>6} {:>8} {:>8} {:>8} {:>10}",
        "ENDPOINT",
        "STATE",
        "ADDRESS",
        "COLD START",
        "BOOTS",
        "CLIENTS",
        "WAITING",
        "SERVERS",
        "CACHE HIT"
    );
    for ep in endpoints.as_array().into_iter().flatten() {
        let name = ep["name"].as_str().unwrap_or("?");
        let of_endpoint = pools
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["endpoint"].as_str() == Some(name));
        let (mut clients, mut waiting, mut servers) = (0, 0, 0);
        for p in of_endpoint {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            clients += n("clients_active");
            waiting += n("clients_waiting");
            servers += n("servers_active") + n("servers_idle");
        }
        let pagefs = &ep["pagefs"];
        let (hits, misses) = (pagefs["hits"].as_u64(), pagefs["misses"].as_u64());
        let hit_ratio = match (hits, misses) {
            (Some(h), Some(m)) if h + m > 0 => format!("{:.1}%", 100.0 * h as f64 / (h + m) as f64),
            _ => "-".into(),
        };
        println!(
            "{:<24} {:<11} {:<22} {:>10} {:>6} {:>8} {:>8} {:>8} {:>10}",
            name,
            ep["compute"]["state"].as_str().unwrap_or("?"),
            ep["compute"]["address"].as_str().unwrap_or("-"),
            ep["last_cold_start_ms"]
                .as_u64()
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            ep["boots"].as_u64().unwrap_or(0),
            clients,
            waiting,
            servers,
            hit_ratio,
        );
    }
    match &config.compute.pageserver_url {
        Some(url) => println!("page store: {url}"),
        None => {
            let dir = config.pageserver_data_dir();
            let bytes = dir_bytes(&dir);
            println!(
                "page store: {:.1} MiB in {}",
                bytes as f64 / (1 << 20) as f64,
                dir.display()
            );
        }
    }
    Ok(())
}

/// Bytes in the files under `dir` and its subdirectories (the page store keeps its log and
/// layer files in subdirectories); 0 for what cannot be read.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, m)| {
            if m.is_dir() {
                dir_bytes(&path)
            } else {
                m.len()
            }
        })
        .sum()
}

/// `lakebed pools`: the proxy's pools, from its HTTP API.
async fn pools(config: &Config, json: bool) -> Result<()> {
    let base = format!("http://{}", running_addr(config, PROXY_ADDR_FILE)?);
    let pools = ApiClient::new(base, &config.data_dir)?
        .call(reqwest::Method::GET, "/v1/pools", None)
        .await?;
    if json {
        return print_json(&pools);
    }
    println!(
        "{:<16} {:<16} {:<12} {:<11} {:>7} {:>7} {:>7} {:>7} {:>9} {:>10} {:>12} {:>12}",
        "ENDPOINT",
        "ROLE",
        "DATABASE",
        "MODE",
        "CL_ACT",
        "CL_WAIT",
        "SV_ACT",
        "SV_IDLE",
        "MAXWAIT",
        "XACTS",
        "BYTES_IN",
        "BYTES_OUT"
    );
    for p in pools.as_array().into_iter().flatten() {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:<16} {:<12} {:<11} {:>7} {:>7} {:>7} {:>7} {:>7}ms {:>10} {:>12} {:>12}",
            p["endpoint"].as_str().unwrap_or("?"),
            p["role"].as_str().unwrap_or("?"),
            p["database"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            n("clients_active"),
            n("clients_waiting"),
            n("servers_active"),
            n("servers_idle"),
            n("longest_wait_ms"),
            n("transactions"),
            n("bytes_in"),
            n("bytes_out"),
        );
    }
    Ok(())
}

/// Reads a password from standard input: everything up to the end, less one trailing newline.
fn read_password_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from standard input")?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        bail!("the password on standard input is empty");
    }
    Ok(password.to_owned())
}

/// Prints a JSON value, pretty.
fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
