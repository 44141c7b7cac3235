//! Dispatch of subcommands.

mod endpoint;
mod role;

use std::io::Read;

use anyhow::{Context, Result, bail};
use lakebed_config::Config;

use crate::cli::{Cli, Command};
use crate::client::{ADDR_FILE, ApiClient, PROXY_ADDR_FILE};

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Up => crate::up::run(config).await,
        Command::Endpoint(cmd) => endpoint::run(&client(&config, cli.api_url)?, cmd).await,
        Command::Role(cmd) => role::run(&client(&config, cli.api_url)?, cmd).await,
        Command::Pools { json } => pools(&config, json).await,
    }
}

fn client(config: &Config, api_url: Option<String>) -> Result<ApiClient> {
    let base = match api_url {
        Some(url) => url,
        None => match std::fs::read_to_string(config.data_dir.join(ADDR_FILE)) {
            Ok(addr) => format!("http://{}", addr.trim()),
            Err(_) => format!("http://{}", config.manager.listen),
        },
    };
    ApiClient::new(base, &config.data_dir)
}

/// `lakebed pools`: the proxy's pools, from its HTTP API.
async fn pools(config: &Config, json: bool) -> Result<()> {
    let base = match std::fs::read_to_string(config.data_dir.join(PROXY_ADDR_FILE)) {
        Ok(addr) => format!("http://{}", addr.trim()),
        Err(_) => format!("http://{}", config.proxy.api_listen),
    };
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
