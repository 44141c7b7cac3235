//! The command line, as clap types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Lakebed: serverless PostgreSQL computes, woken on demand and suspended when idle.
#[derive(Debug, Parser)]
#[command(name = "lakebed", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./lakebed.toml if it exists). LAKEBED_* variables
    /// override it, e.g. LAKEBED_COMPUTE__OS_USER=postgres.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Data directory (default: data_dir from the configuration, ./.lakebed).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The compute manager's API, e.g. http://127.0.0.1:6480 (default: the address the
    /// running `lakebed up` wrote to <data_dir>/api-addr, else manager.listen).
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole stack in this process until Ctrl-C or SIGTERM.
    Up,
    /// Create, inspect, wake, suspend and delete endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Create, list and delete an endpoint's roles.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Create and list tenants (each with its own KMS key).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// A tenant's customer-managed key: show, rotate, move to another CMK, rekey.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the page store alone until Ctrl-C or SIGTERM. Prints `pageserver listening on
    /// ADDR` once it accepts connections. Its data goes to pageserver.data_dir, by default
    /// <data_dir>/pageserver.
    #[command(args_conflicts_with_subcommands = true)]
    Pageserver {
        /// Instead of serving: an operation on the running page store.
        #[command(subcommand)]
        action: Option<PageserverCommand>,
        /// Address to serve gRPC on (default: pageserver.listen, 127.0.0.1:6434); port 0
        /// picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// PEM certificate chain to serve TLS with (default: pageserver.tls_cert).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert (default: pageserver.tls_key).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Address to serve `GET /metrics` on (default: pageserver.metrics_listen, none);
        /// port 0 picks a free port. Prints `pageserver metrics on ADDR` before the line
        /// above.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Serve one compute's PGDATA from the page store (started by the compute manager, one
    /// process per compute). Prints `ready GENERATION` once mounted; SIGTERM unmounts.
    #[command(hide = true)]
    Pagefs(PagefsArgs),
    /// One screen: every endpoint's state, last cold start, clients, pooled servers.
    Status,
    /// Show the proxy's connection pools: clients, servers, waits, transactions, bytes.
    Pools {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lakebed pageserver ...` operations on a running page store.
#[derive(Debug, Subcommand)]
pub enum PageserverCommand {
    /// Collect history now: versions older than pageserver.history_retention that no
    /// branch point needs. Prints, per timeline, the horizon and the versions removed, and
    /// the store's size before and after.
    Gc {
        /// Only this timeline (default: every timeline).
        #[arg(long)]
        timeline: Option<String>,
        /// The page store's URL (default: compute.pageserver_url, else the page store this
        /// data dir's `lakebed up` or `lakebed pageserver` serves).
        #[arg(long, value_name = "URL")]
        pageserver: Option<String>,
    },
}

/// `lakebed pagefs`: what to mount where (or, with `--assignment-from-stdin`, only which
/// page store: the rest comes over standard input). Nothing secret is passed here.
#[derive(Debug, Args)]
pub struct PagefsArgs {
    /// Directory to mount on (must exist and be empty).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "assignment_from_stdin"
    )]
    pub mountpoint: Option<PathBuf>,
    /// The page store's URL, e.g. http://127.0.0.1:6434.
    #[arg(long, value_name = "URL")]
    pub pageserver: String,
    /// PEM CA to verify the page store's TLS certificate (https:// URLs).
    #[arg(long, value_name = "FILE")]
    pub pageserver_ca: Option<PathBuf>,
    /// The timeline to serve.
    #[arg(long, required_unless_present = "assignment_from_stdin")]
    pub timeline: Option<String>,
    /// Local directory for the sealed cache and scratch files (removed at unmount).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "assignment_from_stdin"
    )]
    pub local_dir: Option<PathBuf>,
    /// Local cache size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub cache_mib: u64,
    /// Owner of every file.
    #[arg(long, required_unless_present = "assignment_from_stdin")]
    pub uid: Option<u32>,
    /// Group of every file.
    #[arg(long, required_unless_present = "assignment_from_stdin")]
    pub gid: Option<u32>,
    /// How long reads and fsyncs wait for an unreachable page store before failing with
    /// EIO, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = lakebed_config::parse_duration)]
    pub io_timeout: std::time::Duration,
    /// Read the tenant's DEKs from standard input (from the compute manager, never argv or
    /// environment) and seal everything sent to the page store under them.
    #[arg(long)]
    pub keys_from_stdin: bool,
    /// Do not fetch the pages the previous compute read at mount (compute.prewarm = false).
    #[arg(long)]
    pub no_prewarm: bool,
    /// Start ahead of the mount (a warm pool member): do only what needs no tenant, print
    /// `waiting`, then read the whole mount, keys included, from standard input as one
    /// assignment (see `lakebed_pageserver_client::pagefs::launch`).
    #[arg(
        long,
        conflicts_with_all = ["mountpoint", "timeline", "local_dir", "uid", "gid", "keys_from_stdin", "no_prewarm"]
    )]
    pub assignment_from_stdin: bool,
}

/// `lakebed tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant whose data is sealed under its own KMS key (CMK).
    Create {
        /// Tenant name: lowercase letters, digits and '-'.
        name: String,
        /// The CMK: a KMS key id, ARN or alias (default: keys.default_kms_key_id; `local`
        /// with the development provider).
        #[arg(long, value_name = "ID")]
        kms_key_id: Option<String>,
    },
    /// List tenants and their keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lakebed keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The tenant's CMK, its state in KMS, the wrapped DEK versions and the last rotation.
    Show {
        /// Tenant.
        tenant: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// New key material for the CMK (where KMS allows), then every DEK re-wrapped: no page
    /// rewritten, no downtime.
    Rotate {
        /// Tenant.
        tenant: String,
    },
    /// Re-wrap every DEK under another CMK, which becomes the tenant's key.
    SetCmk {
        /// Tenant.
        tenant: String,
        /// The new CMK: key id, ARN or alias.
        #[arg(long, value_name = "ID")]
        kms_key_id: String,
    },
    /// A new DEK version: computes seal new writes under it from their next wake.
    Rekey {
        /// Tenant.
        tenant: String,
    },
}

/// Policy flags shared by `endpoint create` and `endpoint set`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Suspend after this long idle: a duration such as 90s or 5m, or "never".
    #[arg(long, value_name = "DURATION")]
    pub suspend_timeout: Option<String>,
    /// A keep-warm window, e.g. "Mon-Fri 08:00-18:00 Europe/Berlin" (repeat for several).
    #[arg(long, value_name = "WINDOW")]
    pub keep_warm: Vec<String>,
    /// How the proxy pools server connections: session or transaction.
    #[arg(long, value_name = "MODE")]
    pub pool_mode: Option<String>,
}

/// `lakebed endpoint ...`
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint (its compute starts at the first wake).
    Create {
        /// Endpoint name: lowercase letters, digits and '-', 1 to 63 characters.
        name: String,
        /// Owning tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List endpoints.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an endpoint: state, address, policy, last cold start, boots.
    Show {
        /// Endpoint name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint's autosuspend policy.
    Set {
        /// Endpoint name.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Remove every keep-warm window.
        #[arg(long, conflicts_with = "keep_warm")]
        no_keep_warm: bool,
    },
    /// Start the endpoint's compute if needed and print its address.
    Wake {
        /// Endpoint name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suspend the endpoint's compute now (connected sessions end).
    Suspend {
        /// Endpoint name.
        name: String,
    },
    /// Delete an endpoint, its roles and its data.
    Delete {
        /// Endpoint name.
        name: String,
    },
}

/// `lakebed role ...`
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create a login role; prints a generated password once unless --password-stdin.
    Create {
        /// Role name: lowercase letters, digits and '_', 1 to 63 characters.
        name: String,
        /// The endpoint the role belongs to.
        #[arg(long, default_value = "main")]
        endpoint: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        /// The role's own pool mode (session or transaction); default: the endpoint's.
        #[arg(long, value_name = "MODE")]
        pool_mode: Option<String>,
    },
    /// Change a role's pool mode (session, transaction, or "endpoint" to follow the endpoint).
    Set {
        /// Role name.
        name: String,
        /// The endpoint the role belongs to.
        #[arg(long, default_value = "main")]
        endpoint: String,
        /// session, transaction or endpoint.
        #[arg(long, value_name = "MODE")]
        pool_mode: String,
    },
    /// Set a new password for a role; generated and printed once unless --password-stdin.
    Password {
        /// Role name.
        name: String,
        /// The endpoint the role belongs to.
        #[arg(long, default_value = "main")]
        endpoint: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List an endpoint's roles.
    List {
        /// The endpoint.
        #[arg(long, default_value = "main")]
        endpoint: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a role.
    Delete {
        /// Role name.
        name: String,
        /// The endpoint the role belongs to.
        #[arg(long, default_value = "main")]
        endpoint: String,
    },
}
