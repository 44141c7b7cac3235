//! The configuration file, its defaults, environment overrides and error messages.
//!
//! Sources, later ones winning: built-in defaults, then one TOML file, then `LAKEBED_*`
//! environment variables. figment merges them and remembers where each value came from,
//! which is how an error can name `lakebed.toml` or `environment variable
//! LAKEBED_COMPUTE__OS_USER` rather than just the key.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{FromStrVisitor, HumanDuration, SuspendTimeout};
use crate::names::EndpointName;
use crate::policy::{AutosuspendPolicy, KeepWarmWindow};

/// The file [`Config::load`] reads from the current directory when no file is given.
const DEFAULT_FILE: &str = "lakebed.toml";

/// Prefix of the environment variables that override the file.
const ENV_PREFIX: &str = "LAKEBED_";

/// Separator between key levels in an environment variable name.
const ENV_SEPARATOR: &str = "__";

/// Top-level keys of [`Config`]. `LAKEBED_*` variables that start with one of these, or
/// name a nested key, are read; others (say `LAKEBED_LOG`) don't fail the load.
const TOP_LEVEL_KEYS: [&str; 7] = [
    "data_dir",
    "logging",
    "manager",
    "compute",
    "proxy",
    "pageserver",
    "endpoints",
];

/// Source name for checks on values that no provider can be blamed for.
const GENERIC_SOURCE: &str = "configuration";

/// Smallest allowed [`ManagerConfig::activity_poll_interval`].
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Default [`PageServerConfig::cache_mib`].
const DEFAULT_PAGESERVER_CACHE_MIB: u64 = 256;

/// Smallest allowed [`PageServerConfig::cache_mib`]: below it the memtable budget alone
/// would force a flush every few megabytes written.
const MIN_PAGESERVER_CACHE_MIB: u64 = 16;

/// Largest allowed [`ComputeConfig::warm_pool`]: each member is a process kept running for a
/// wake that may never come, and a handful covers any burst of wakes a host can start.
pub const MAX_WARM_POOL: u32 = 16;

/// Largest allowed `cache_mib` (page store and compute): 1 TiB. Past it no machine has the
/// memory or disk, and the byte count would overflow.
const MAX_CACHE_MIB: u64 = 1 << 20;

/// Why the configuration could not be loaded.
///
/// `Display` and `std::error::Error` are written by hand rather than derived with
/// `thiserror`, which would treat the `source: String` field as the underlying error.
#[derive(Debug)]
pub enum ConfigError {
    /// A value is missing, of the wrong type, out of range, or not a known key; or the
    /// TOML file is not valid TOML.
    ///
    /// Displayed as `{source}: {key}: {reason}`, for example
    /// `lakebed.toml: endpoints.main.suspend_timeout: "5 parsecs" is not a duration
    /// (examples: 90s, 5m, 1h)` or `lakebed.toml: compute.os_usr: unknown key`.
    Invalid {
        /// Where the value came from: the file path as given (`lakebed.toml`),
        /// `environment variable LAKEBED_COMPUTE__OS_USER`, or `configuration` when no
        /// single source can be named.
        source: String,
        /// The dotted key, e.g. `endpoints.main.suspend_timeout`. For TOML syntax errors
        /// this is the position instead, e.g. `line 3, column 19`.
        key: String,
        /// What is wrong, in words meant for the person editing the file.
        reason: String,
    },
    /// The file could not be read (missing, unreadable, not UTF-8).
    Read {
        /// The path as given.
        path: PathBuf,
        /// The underlying I/O error.
        error: io::Error,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid {
                source,
                key,
                reason,
            } => write!(f, "{source}: {key}: {reason}"),
            Self::Read { path, error } => write!(f, "{}: cannot read: {error}", path.display()),
        }
    }
}

/// `source()` is always `None`: the `Read` message already includes the I/O error, and
/// reporting it again as the source would print it twice in error chains.
impl std::error::Error for ConfigError {}

/// All settings, as read from `lakebed.toml` and `LAKEBED_*` environment variables.
///
/// Every key has a default ([`Config::default`]), so an empty file is valid. Unknown keys
/// are errors, so typos don't pass silently.
///
/// ```toml
/// data_dir = ".lakebed"
///
/// [manager]
/// listen = "127.0.0.1:6480"
/// activity_poll_interval = "1s"
///
/// [compute]
/// os_user = "postgres"
/// port_range = "20000-20100"
/// start_timeout = "60s"
/// stop_timeout = "30s"
/// prewarm = true
/// warm_pool = 1
///
/// [pageserver]
/// listen = "127.0.0.1:6434"
/// data_dir = "/var/lib/lakebed/pages"
/// metrics_listen = "127.0.0.1:6435"
/// history_retention = "24h"
/// gc_interval = "10m"
/// cache_mib = 256
///
/// [endpoints.main]
/// suspend_timeout = "10m"
/// keep_warm = ["Mon-Fri 08:00-18:00 Europe/Berlin"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Lakebed keeps its state (catalog, compute data directories). Relative paths
    /// are relative to the working directory. Default `.lakebed`.
    pub data_dir: PathBuf,
    /// The compute manager's own settings (`[manager]`).
    pub manager: ManagerConfig,
    /// How computes (Postgres processes) are run (`[compute]`).
    pub compute: ComputeConfig,
    /// The client-facing proxy (`[proxy]`).
    pub proxy: ProxyConfig,
    /// The page store (`[pageserver]`).
    pub pageserver: PageServerConfig,
    /// Logging (`[logging]`).
    pub logging: LogConfig,
    /// Customer-managed keys (`[keys]`).
    pub keys: KeysConfig,
    /// Per-endpoint settings (`[endpoints.NAME]`); keys must be valid [`EndpointName`]s.
    /// Endpoints not listed use the default policy. Default empty.
    pub endpoints: BTreeMap<EndpointName, EndpointConfig>,
}

impl Default for Config {
    /// Every key at its documented default.
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".lakebed"),
            manager: ManagerConfig::default(),
            compute: ComputeConfig::default(),
            proxy: ProxyConfig::default(),
            pageserver: PageServerConfig::default(),
            logging: LogConfig::default(),
            keys: KeysConfig::default(),
            endpoints: BTreeMap::new(),
        }
    }
}

/// Settings of the compute manager (`[manager]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// Address of the admin HTTP API, `ip:port`. Default `127.0.0.1:6480`. Must be a
    /// loopback address (`127.0.0.0/8` or `::1`): the admin API (bearer-token protected)
    /// is meant for this host only.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub listen: SocketAddr,
    /// How often computes are asked for client activity (connection counts), which
    /// drives autosuspend. Default `1s`; at least `50ms`.
    pub activity_poll_interval: HumanDuration,
}

impl Default for ManagerConfig {
    /// `127.0.0.1:6480`, polling every second.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6480)),
            activity_poll_interval: HumanDuration(Duration::from_secs(1)),
        }
    }
}

/// How computes (Postgres server processes) are run (`[compute]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Directory holding `postgres`, `initdb` and `pg_ctl`. Default none: found
    /// automatically (e.g. from `PATH` or `pg_config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_bin_dir: Option<PathBuf>,
    /// The OS user computes run as when Lakebed itself runs as root (Postgres refuses to
    /// run as root). Ignored otherwise. Default `postgres`; must not be empty.
    pub os_user: String,
    /// TCP ports computes may listen on. Default [`PortRange::Auto`].
    pub port_range: PortRange,
    /// How long a compute may take to accept connections after being started before it
    /// is considered failed. Default `60s`; must be more than zero.
    pub start_timeout: HumanDuration,
    /// How long a compute gets to shut down after being asked before it is killed.
    /// Default `30s`; must be more than zero.
    pub stop_timeout: HumanDuration,
    /// The page store computes' data directories are served from, e.g.
    /// `http://10.0.0.5:6434`. Default none: `lakebed up` runs one in its own process
    /// (listening on `pageserver.listen`) and uses that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pageserver_url: Option<String>,
    /// Size of each compute's local page cache (sealed under its per-boot key), in MiB.
    /// Default `1024`; at least `1`.
    pub cache_mib: u64,
    /// How long a compute's reads and fsyncs wait for an unreachable page store before
    /// they fail with EIO (Postgres then reports an error). Default `60s`; must be more
    /// than zero.
    pub io_timeout: HumanDuration,
    /// Whether a compute fetches the pages its endpoint's previous compute read back into
    /// its local cache at wake, in the background, so the first queries after a wake run
    /// at warm speed (the list of pages, no data, is written at suspend, sealed under the
    /// tenant's DEK). Default `true`.
    pub prewarm: bool,
    /// How many pagefs processes the compute manager keeps started ahead, each waiting for
    /// the mount of the next wake (tenant-free until then: no key, timeline or data), so a
    /// wake does not pay for starting one. Each is used once. Default `1`; `0` disables
    /// the pool; at most [`MAX_WARM_POOL`].
    pub warm_pool: u32,
}

impl Default for ComputeConfig {
    /// Binaries found automatically, user `postgres`, automatic ports, 60s / 30s timeouts.
    fn default() -> Self {
        Self {
            pg_bin_dir: None,
            os_user: "postgres".to_owned(),
            port_range: PortRange::Auto,
            start_timeout: HumanDuration(Duration::from_secs(60)),
            stop_timeout: HumanDuration(Duration::from_secs(30)),
            pageserver_url: None,
            cache_mib: 1024,
            io_timeout: HumanDuration(Duration::from_secs(60)),
            prewarm: true,
            warm_pool: 1,
        }
    }
}

/// Logging (`[logging]`). Logs go to standard error; `RUST_LOG` sets the levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default; coloured on a terminal) or `json` (one object per line, with the
    /// span fields such as `ep` and `role`).
    pub format: LogFormat,
}

/// Customer-managed keys (`[keys]`): which KMS holds tenants' CMKs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// `local` (default: a master key file in the data directory, for development only) or
    /// `aws-kms` (AWS KMS or any server speaking its API; region and credentials from the
    /// standard AWS chain).
    pub provider: KmsProviderKind,
    /// The KMS endpoint for `aws-kms`, e.g. `http://127.0.0.1:5000`. Default none: the
    /// standard `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL`, else AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_endpoint_url: Option<String>,
    /// The CMK of tenants created without `--kms-key-id`, and of the `default` tenant that
    /// `lakebed up` makes. Default: `local` with the local provider, none with `aws-kms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_kms_key_id: Option<String>,
    /// How often the state of CMKs with running computes is checked; computes of a tenant
    /// whose key was disabled are stopped within it. Default `60s`; at least `1s`.
    pub check_interval: HumanDuration,
    /// The local provider's master key file (0600). Default `<data_dir>/keys/local-master.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_key_file: Option<PathBuf>,
}

impl Default for KeysConfig {
    /// The local provider, checked every 60s.
    fn default() -> Self {
        Self {
            provider: KmsProviderKind::Local,
            aws_endpoint_url: None,
            default_kms_key_id: None,
            check_interval: HumanDuration(Duration::from_secs(60)),
            local_key_file: None,
        }
    }
}

/// Which KMS holds the CMKs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsProviderKind {
    /// A master key file in the data directory (development only).
    #[default]
    #[serde(rename = "local")]
    Local,
    /// AWS KMS through aws-sdk-kms.
    #[serde(rename = "aws-kms")]
    AwsKms,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The client-facing proxy (`[proxy]`): where clients connect, TLS, routing and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where clients connect, `ip:port`. Default `127.0.0.1:6432`.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub listen: SocketAddr,
    /// PEM certificate chain for client TLS. Default none: `lakebed up` then makes a
    /// development CA and certificate in the data directory. Give both or neither of
    /// `tls_cert` and `tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The domain under which the first label of the TLS server name (SNI) names the
    /// endpoint: with `db.example.com`, `main.db.example.com` routes to `main`. Default
    /// `lakebed.localhost`.
    pub domain: String,
    /// The endpoint for clients that name none (no SNI label, `options=endpoint=`, or
    /// `endpoint=NAME;` password prefix). Default `main`; `""` means none: such clients
    /// get an error that says how to name one.
    pub default_endpoint: String,
    /// Refuse clients that do not use TLS. Default: required unless `listen` is a loopback
    /// address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    /// Allow cleartext password authentication (needed for the `endpoint=NAME;password`
    /// form). Only ever offered over TLS. Default `false`.
    pub allow_cleartext: bool,
    /// How long a role's SCRAM verifier fetched from the compute manager is reused. A
    /// deleted role or changed password takes effect at the proxy within this time.
    /// Default `1s`; `0s` asks the manager at every login.
    pub auth_cache_ttl: HumanDuration,
    /// How long a client waits for its endpoint's compute to wake before it gets 57P03.
    /// Default `90s`.
    pub wake_timeout: HumanDuration,
    /// Failed authentications allowed per client address and endpoint per minute; more get
    /// refused until the minute passes. Default `10`.
    pub auth_failures_per_minute: u32,
    /// Client connections open at once; the next one gets 53300. Default `10000`.
    pub max_client_connections: u32,
    /// Where the proxy serves its HTTP API (`GET /v1/pools`), behind the admin token.
    /// Default `127.0.0.1:6433`.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub api_listen: SocketAddr,
    /// Server connection pools (`[proxy.pool]`).
    pub pool: crate::PoolConfig,
}

impl Default for ProxyConfig {
    /// Loopback port 6432, development TLS, domain `lakebed.localhost`, default endpoint
    /// `main`, SCRAM only.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6432)),
            tls_cert: None,
            tls_key: None,
            domain: "lakebed.localhost".to_owned(),
            default_endpoint: "main".to_owned(),
            require_tls: None,
            allow_cleartext: false,
            auth_cache_ttl: HumanDuration(Duration::from_secs(1)),
            wake_timeout: HumanDuration(Duration::from_secs(90)),
            auth_failures_per_minute: 10,
            max_client_connections: 10_000,
            api_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6433)),
            pool: crate::PoolConfig::default(),
        }
    }
}

impl ProxyConfig {
    /// Whether plain (non-TLS) clients are refused: `require_tls`, or by default whenever
    /// `listen` is not a loopback address.
    pub fn tls_required(&self) -> bool {
        self.require_tls.unwrap_or(!self.listen.ip().is_loopback())
    }

    /// The default endpoint, if one is set.
    pub fn default_endpoint(&self) -> Option<EndpointName> {
        self.default_endpoint.parse().ok()
    }
}

/// The page store (`[pageserver]`): where it listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageServerConfig {
    /// Where the page store serves gRPC, `ip:port`. Default `127.0.0.1:6434`. Any address is
    /// allowed (computes may run on other hosts); off loopback, set `tls_cert` and `tls_key`.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub listen: SocketAddr,
    /// Directory of the page store's file. Default none: `<data_dir>/pageserver` (see
    /// [`Config::pageserver_data_dir`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with. Default none: plaintext. Give both or neither
    /// of `tls_cert` and `tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Where `lakebed pageserver` serves `GET /metrics` (Prometheus text, no token), `ip:port`.
    /// Default none: no metrics endpoint.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_some_socket_addr"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// How far back reads at an older seq and branches at an older point keep working.
    /// Versions that no read inside this window and no branch point can see are
    /// garbage-collected. Default `24h`; `0s` keeps only the newest versions.
    pub history_retention: HumanDuration,
    /// How often garbage collection runs in the background. Default `10m`; must be more
    /// than zero.
    pub gc_interval: HumanDuration,
    /// Bound on the page store's in-memory caches (block cache and memtable budget
    /// together), in MiB. Default `256`; at least `16`.
    pub cache_mib: u64,
}

impl Default for PageServerConfig {
    /// Loopback port 6434, data under the data directory, no TLS, no metrics endpoint,
    /// 24h of history collected every 10m, 256 MiB of caches.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6434)),
            data_dir: None,
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
            history_retention: HumanDuration(Duration::from_secs(24 * 60 * 60)),
            gc_interval: HumanDuration(Duration::from_secs(10 * 60)),
            cache_mib: DEFAULT_PAGESERVER_CACHE_MIB,
        }
    }
}

/// The TCP ports computes may use.
///
/// Written as `"auto"` (the OS picks a free port) or `"LOW-HIGH"`, both ends inclusive,
/// with `1024 <= LOW <= HIGH <= 65535`, e.g. `"20000-20100"`. `Display` and serde use the
/// same form. A malformed or out-of-range string is a deserialization error whose message
/// quotes the input and says what is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PortRange {
    /// Let the operating system pick a free port.
    #[default]
    Auto,
    /// Use a port from `low..=high`.
    Range {
        /// Lowest usable port, at least 1024.
        low: u16,
        /// Highest usable port, at least `low`.
        high: u16,
    },
}

impl PortRange {
    /// Whether `port` may be used: always for [`PortRange::Auto`], otherwise when
    /// `low <= port <= high`.
    pub fn contains(self, port: u16) -> bool {
        match self {
            Self::Auto => true,
            Self::Range { low, high } => (low..=high).contains(&port),
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// Parses `auto` or `LOW-HIGH`; the error is a sentence for the user.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let shape = || format!("{s:?} is not a port range (use \"auto\" or e.g. \"20000-20100\")");
        let (low, high) = s.split_once('-').ok_or_else(shape)?;
        let low: u16 = low.trim().parse().map_err(|_| shape())?;
        let high: u16 = high.trim().parse().map_err(|_| shape())?;
        if low < 1024 {
            return Err(format!(
                "{s:?} is not a usable port range: ports below 1024 are privileged"
            ));
        }
        if low > high {
            return Err(format!(
                "{s:?} is not a usable port range: the first port must not be above the second"
            ));
        }
        Ok(Self::Range { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Range { low, high } => write!(f, "{low}-{high}"),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(
            "a port range such as \"20000-20100\", or \"auto\"",
        ))
    }
}

/// Reads a socket address from a string, with a message that shows the expected form.
fn deserialize_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    /// `SocketAddr` parsing with a friendlier error than std's.
    struct Addr(SocketAddr);
    impl FromStr for Addr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            s.trim()
                .parse()
                .map(Addr)
                .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:6480 or [::1]:6480"))
        }
    }
    d.deserialize_str(FromStrVisitor::<Addr>::new(
        "an address such as \"127.0.0.1:6480\"",
    ))
    .map(|a| a.0)
}

/// As [`deserialize_socket_addr`], for an optional key (absent keys take the default).
fn deserialize_some_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    deserialize_socket_addr(d).map(Some)
}

/// Settings for one endpoint (`[endpoints.NAME]`).
///
/// Every key is optional; a missing key takes the [`AutosuspendPolicy`] default. Use
/// [`EndpointConfig::policy`] to get the effective policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Idle time before the compute is stopped, or `"never"`. Default `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_timeout: Option<SuspendTimeout>,
    /// Keep-warm windows, e.g. `["Mon-Fri 08:00-18:00 Europe/Berlin"]`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_warm: Option<Vec<KeepWarmWindow>>,
    /// How the proxy pools this endpoint's server connections. Default `session`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<crate::PoolMode>,
}

impl EndpointConfig {
    /// The effective autosuspend policy: the keys given here, the defaults for the rest.
    pub fn policy(&self) -> AutosuspendPolicy {
        let default = AutosuspendPolicy::default();
        AutosuspendPolicy {
            suspend_timeout: self.suspend_timeout.unwrap_or(default.suspend_timeout),
            keep_warm: self.keep_warm.clone().unwrap_or(default.keep_warm),
        }
    }
}

impl Config {
    /// The local KMS provider's key file: `keys.local_key_file`, else
    /// `<data_dir>/keys/local-master.key`.
    pub fn local_key_file(&self) -> PathBuf {
        self.keys
            .local_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("local-master.key"))
    }

    /// The page store's directory: `pageserver.data_dir` if set, else
    /// `<data_dir>/pageserver`.
    pub fn pageserver_data_dir(&self) -> PathBuf {
        self.pageserver
            .data_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pageserver"))
    }

    /// Loads the configuration: defaults, then a TOML file, then environment variables.
    ///
    /// - `file: Some(path)`: that file is read and must exist.
    /// - `file: None`: `lakebed.toml` in the current directory is read if it exists;
    ///   otherwise only defaults and the environment are used.
    ///
    /// Then `LAKEBED_*` environment variables override the file. `__` separates key
    /// levels and names are case-insensitive: `LAKEBED_DATA_DIR=/srv/lakebed` sets
    /// `data_dir`, `LAKEBED_MANAGER__LISTEN=127.0.0.1:7000` sets `manager.listen`,
    /// `LAKEBED_ENDPOINTS__MAIN__SUSPEND_TIMEOUT=never` sets
    /// `endpoints.main.suspend_timeout`. Only variables whose first level is a top-level
    /// key (`data_dir`, `manager`, `compute`, `proxy`, `pageserver`, `endpoints`) are read.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::Read`]: the given file (or an existing `lakebed.toml`) can't be read.
    /// - [`ConfigError::Invalid`]: TOML syntax error, unknown key, wrong type or invalid
    ///   value. `source` names the file or the exact environment variable.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let (name, text) = match file {
            Some(path) => (path.display().to_string(), read(path)?),
            None => match std::fs::read_to_string(DEFAULT_FILE) {
                Ok(text) => (DEFAULT_FILE.to_owned(), text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Self::extract(Figment::new().merge(env_provider()), GENERIC_SOURCE);
                }
                Err(error) => {
                    return Err(ConfigError::Read {
                        path: PathBuf::from(DEFAULT_FILE),
                        error,
                    });
                }
            },
        };
        let toml = TomlSource::parse(&name, &text)?;
        Self::extract(Figment::new().merge(toml).merge(env_provider()), &name)
    }

    /// Builds a configuration from defaults plus the TOML document `toml`, ignoring the
    /// environment. `source_name` is what errors call the document (e.g. a file name).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`], as for [`Config::load`], with `source_name` as source.
    pub fn from_toml_str(source_name: &str, toml: &str) -> Result<Config, ConfigError> {
        let toml = TomlSource::parse(source_name, toml)?;
        Self::extract(Figment::new().merge(toml), source_name)
    }

    /// Deserializes `figment` and checks the rules serde can't express. `fallback` names
    /// the source when the origin of a value is unknown.
    fn extract(figment: Figment, fallback: &str) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| invalid_from_figment(&figment, e))?;
        config.validate(&figment, fallback)?;
        Ok(config)
    }

    /// Cross-field and range checks that run after deserialization.
    fn validate(&self, figment: &Figment, fallback: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| {
            let source = figment
                .find_metadata(key)
                .map(|md| md.interpolate(&Profile::Default, &key.split('.').collect::<Vec<_>>()))
                .unwrap_or_else(|| fallback.to_owned());
            Err(ConfigError::Invalid {
                source,
                key: key.to_owned(),
                reason,
            })
        };
        let m = &self.manager;
        if !m.listen.ip().is_loopback() {
            return fail(
                "manager.listen",
                format!(
                    "{} is not a loopback address: the admin API is loopback-only \
                     (use 127.0.0.1 or [::1])",
                    m.listen
                ),
            );
        }
        if m.activity_poll_interval.get() < MIN_POLL_INTERVAL {
            return fail(
                "manager.activity_poll_interval",
                format!(
                    "{} is too short: must be at least 50ms",
                    m.activity_poll_interval
                ),
            );
        }
        let p = &self.proxy;
        if p.tls_cert.is_some() != p.tls_key.is_some() {
            let key = if p.tls_cert.is_some() {
                "proxy.tls_key"
            } else {
                "proxy.tls_cert"
            };
            return fail(
                key,
                "proxy.tls_cert and proxy.tls_key go together: give both or neither".to_owned(),
            );
        }
        if let Err(e) = p.default_endpoint.parse::<EndpointName>()
            && !p.default_endpoint.is_empty()
        {
            return fail("proxy.default_endpoint", e.to_string());
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.domain.len() > 253 || !p.domain.split('.').all(label_ok) {
            return fail(
                "proxy.domain",
                format!("{:?} is not a domain like db.example.com", p.domain),
            );
        }
        if p.pool.max_endpoint_connections == 0 {
            return fail(
                "proxy.pool.max_endpoint_connections",
                "must be at least 1".to_owned(),
            );
        }
        if p.pool.pool_size == 0 {
            return fail("proxy.pool.pool_size", "must be at least 1".to_owned());
        }
        if p.pool.min_idle > p.pool.pool_size {
            return fail(
                "proxy.pool.min_idle",
                format!(
                    "{} is more than proxy.pool.pool_size ({})",
                    p.pool.min_idle, p.pool.pool_size
                ),
            );
        }
        if p.pool.acquire_timeout.get().is_zero() {
            return fail(
                "proxy.pool.acquire_timeout",
                "must be more than 0s".to_owned(),
            );
        }
        if p.max_client_connections == 0 {
            return fail(
                "proxy.max_client_connections",
                "must be at least 1".to_owned(),
            );
        }
        if p.wake_timeout.get().is_zero() {
            return fail("proxy.wake_timeout", "must be more than 0s".to_owned());
        }
        let ps = &self.pageserver;
        if ps.tls_cert.is_some() != ps.tls_key.is_some() {
            let key = if ps.tls_cert.is_some() {
                "pageserver.tls_key"
            } else {
                "pageserver.tls_cert"
            };
            return fail(
                key,
                "pageserver.tls_cert and pageserver.tls_key go together: give both or neither"
                    .to_owned(),
            );
        }
        if ps
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return fail("pageserver.data_dir", "must not be empty".to_owned());
        }
        if ps.gc_interval.get().is_zero() {
            return fail("pageserver.gc_interval", "must be more than 0s".to_owned());
        }
        if ps.cache_mib < MIN_PAGESERVER_CACHE_MIB {
            return fail(
                "pageserver.cache_mib",
                format!(
                    "{} is too small: must be at least {MIN_PAGESERVER_CACHE_MIB}",
                    ps.cache_mib
                ),
            );
        }
        for (key, mib) in [
            ("pageserver.cache_mib", ps.cache_mib),
            ("compute.cache_mib", self.compute.cache_mib),
        ] {
            if mib > MAX_CACHE_MIB {
                return fail(
                    key,
                    format!("{mib} is too large: at most {MAX_CACHE_MIB} (1 TiB)"),
                );
            }
        }
        let c = &self.compute;
        if c.os_user.trim().is_empty() {
            return fail("compute.os_user", "must not be empty".to_owned());
        }
        if self.keys.provider == KmsProviderKind::AwsKms && self.keys.default_kms_key_id.is_none() {
            return fail(
                "keys.default_kms_key_id",
                "required with provider \"aws-kms\": the CMK of the default tenant".to_owned(),
            );
        }
        if self.keys.check_interval.get() < Duration::from_secs(1) {
            return fail("keys.check_interval", "must be at least 1s".to_owned());
        }
        if c.cache_mib == 0 {
            return fail("compute.cache_mib", "must be at least 1".to_owned());
        }
        if c.warm_pool > MAX_WARM_POOL {
            return fail(
                "compute.warm_pool",
                format!("{} is too large: at most {MAX_WARM_POOL}", c.warm_pool),
            );
        }
        if let Some(url) = &c.pageserver_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail(
                "compute.pageserver_url",
                format!("{url:?} is not a URL like http://127.0.0.1:6434"),
            );
        }
        for (key, value) in [
            ("compute.start_timeout", c.start_timeout),
            ("compute.stop_timeout", c.stop_timeout),
            ("compute.io_timeout", c.io_timeout),
        ] {
            if value.get().is_zero() {
                return fail(key, "must be more than 0s".to_owned());
            }
        }
        Ok(())
    }
}

/// Reads `path` to a string, as a [`ConfigError::Read`] on failure.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Turns a figment error into [`ConfigError::Invalid`], naming the source of the value.
fn invalid_from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
    use figment::error::Kind;

    let mut path = error.path.clone();
    let reason = match &error.kind {
        Kind::Message(msg) => msg.clone(),
        // figment usually has the offending key in the path already; add it if not.
        Kind::UnknownField(field, _) => {
            push_unless_last(&mut path, field);
            "unknown key".to_owned()
        }
        Kind::MissingField(field) => {
            push_unless_last(&mut path, field);
            "missing key".to_owned()
        }
        Kind::DuplicateField(field) => {
            push_unless_last(&mut path, field);
            "key given more than once".to_owned()
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!(
                "expected {}, found {}",
                describe_expected(expected),
                describe_actual(actual)
            )
        }
        Kind::InvalidLength(len, expected) => format!("expected {expected}, found {len} items"),
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown value {found:?}, expected one of: {}",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    };
    let key = path.join(".");
    // Prefer the provider of the exact value; fall back to the error's own metadata (for
    // example the enclosing table's when the key itself doesn't exist).
    let metadata = figment.find_metadata(&key).or(error.metadata.as_ref());
    let profile = error.profile.clone().unwrap_or_default();
    // An unknown key that is a table, as `LAKEBED_PROXI__LISTEN` makes `proxi`: the source
    // is named by a value under it, so that the message names the whole variable.
    let mut source_path = path.clone();
    if matches!(error.kind, Kind::UnknownField(..)) {
        let mut value = figment.find_value(&key).ok();
        while let Some(figment::value::Value::Dict(_, dict)) = value {
            let Some((k, v)) = dict.into_iter().next() else {
                break;
            };
            source_path.push(k);
            value = Some(v);
        }
    }
    let source = match metadata {
        Some(md) => md.interpolate(&profile, &source_path),
        None => GENERIC_SOURCE.to_owned(),
    };
    ConfigError::Invalid {
        source,
        key: if key.is_empty() {
            "(top level)".to_owned()
        } else {
            key
        },
        reason,
    }
}

/// Says what serde expected in TOML terms ("a table" rather than "struct ComputeConfig").
fn describe_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        "a table".to_owned()
    } else if expected == "a sequence" {
        "a list".to_owned()
    } else {
        expected.to_owned()
    }
}

/// Says what was found in TOML terms ("integer 60" rather than "signed int `60`").
fn describe_actual(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Bool(v) => format!("boolean {v}"),
        Actual::Unsigned(v) => format!("integer {v}"),
        Actual::Signed(v) => format!("integer {v}"),
        Actual::Float(v) => format!("number {v}"),
        Actual::Str(v) => format!("string {v:?}"),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a table".to_owned(),
        other => other.to_string(),
    }
}

/// Appends `key` to `path` unless it already ends with it.
fn push_unless_last(path: &mut Vec<String>, key: &str) {
    if path.last().map(String::as_str) != Some(key) {
        path.push(key.to_owned());
    }
}

/// A parsed TOML document that figment errors attribute to `name`.
struct TomlSource {
    name: String,
    dict: Dict,
}

impl TomlSource {
    /// Parses `text`; a syntax error becomes [`ConfigError::Invalid`] with the line and
    /// column as the key.
    fn parse(name: &str, text: &str) -> Result<Self, ConfigError> {
        match Toml::from_str::<Dict>(text) {
            Ok(dict) => Ok(Self {
                name: name.to_owned(),
                dict,
            }),
            Err(e) => {
                let key = match e.span() {
                    Some(span) => {
                        let (line, column) = line_column(text, span.start);
                        format!("line {line}, column {column}")
                    }
                    None => "TOML syntax".to_owned(),
                };
                let reason = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(ConfigError::Invalid {
                    source: name.to_owned(),
                    key,
                    reason: format!("invalid TOML: {reason}"),
                })
            }
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl Provider for TomlSource {
    fn metadata(&self) -> Metadata {
        let name = self.name.clone();
        Metadata::named(self.name.clone()).interpolater(move |_: &Profile, _: &[&str]| name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// `LAKEBED_*` variables, with errors naming the exact variable.
struct EnvSource(Env);

impl Provider for EnvSource {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variables").interpolater(|_: &Profile, keys: &[&str]| {
            let name: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!(
                "environment variable {ENV_PREFIX}{}",
                name.join(ENV_SEPARATOR)
            )
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// The environment provider: `LAKEBED_A__B=v` sets `a.b`, for known top-level keys only.
fn env_provider() -> EnvSource {
    EnvSource(
        Env::prefixed(ENV_PREFIX)
            // A variable naming a nested key (`__`) is meant as configuration, so a typo in
            // it (`LAKEBED_PROXI__LISTEN`) is reported as an unknown key; a single-level
            // one that is not a top-level key (`LAKEBED_LOG`) belongs to someone else.
            .filter(|key| {
                let first = key.as_str().split(ENV_SEPARATOR).next().unwrap_or_default();
                key.as_str().contains(ENV_SEPARATOR)
                    || TOP_LEVEL_KEYS.iter().any(|k| first.eq_ignore_ascii_case(k))
            })
            .split(ENV_SEPARATOR),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // `Jail::expect_with` closures must return figment's own (large) `Result`.
    #![allow(clippy::result_large_err)]

    use std::net::Ipv6Addr;

    use figment::Jail;

    use super::*;

    #[test]
    fn log_format_is_text_or_json() {
        let c = Config::from_toml_str("t.toml", "[logging]\nformat = \"json\"").unwrap();
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(Config::default().logging.format, LogFormat::Text);
        let (_, key, _) =
            invalid(Config::from_toml_str("t.toml", "[logging]\nformat = \"xml\"").unwrap_err());
        assert_eq!(key, "logging.format");
    }

    fn invalid(err: ConfigError) -> (String, String, String) {
        match err {
            ConfigError::Invalid {
                source,
                key,
                reason,
            } => (source, key, reason),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let config = Config::default();
        assert_eq!(config.data_dir, PathBuf::from(".lakebed"));
        assert_eq!(config.manager.listen, "127.0.0.1:6480".parse().unwrap());
        assert_eq!(
            config.manager.activity_poll_interval.get(),
            Duration::from_secs(1)
        );
        assert_eq!(config.compute.pg_bin_dir, None);
        assert_eq!(config.compute.os_user, "postgres");
        assert_eq!(config.compute.port_range, PortRange::Auto);
        assert_eq!(config.compute.start_timeout.get(), Duration::from_secs(60));
        assert_eq!(config.compute.stop_timeout.get(), Duration::from_secs(30));
        assert!(config.endpoints.is_empty());
        assert_eq!(config.pageserver.listen, "127.0.0.1:6434".parse().unwrap());
        assert_eq!(config.pageserver.data_dir, None);
        assert_eq!(
            config.pageserver_data_dir(),
            PathBuf::from(".lakebed/pageserver")
        );
        assert_eq!(
            (&config.pageserver.tls_cert, &config.pageserver.tls_key),
            (&None, &None)
        );
        assert_eq!(
            config.pageserver.history_retention.get(),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            config.pageserver.gc_interval.get(),
            Duration::from_secs(10 * 60)
        );
        assert_eq!(config.pageserver.cache_mib, 256);
        assert_eq!(Config::from_toml_str("empty.toml", "").unwrap(), config);
    }

    #[test]
    fn load_without_file_uses_defaults() {
        Jail::expect_with(|jail| {
            // The jail's working directory is a fresh, empty temporary directory.
            assert!(!jail.directory().join(DEFAULT_FILE).exists());
            assert_eq!(Config::load(None).unwrap(), Config::default());
            Ok(())
        });
    }

    #[test]
    fn load_reads_lakebed_toml_from_current_dir() {
        Jail::expect_with(|jail| {
            jail.create_file(DEFAULT_FILE, "data_dir = \"/srv/lakebed\"")?;
            let config = Config::load(None).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("/srv/lakebed"));
            Ok(())
        });
    }

    #[test]
    fn full_file_parses() {
        let config = Config::from_toml_str(
            "lakebed.toml",
            r#"
            data_dir = "/var/lib/lakebed"

            [manager]
            listen = "[::1]:7000"
            activity_poll_interval = "250ms"

            [compute]
            pg_bin_dir = "/usr/lib/postgresql/17/bin"
            os_user = "pg"
            port_range = "20000-20100"
            start_timeout = "2m"
            stop_timeout = "10s"

            [endpoints.main]
            suspend_timeout = "never"
            keep_warm = ["Mon-Fri 08:00-18:00 Europe/Berlin"]

            [endpoints.batch]
            suspend_timeout = "1m"
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/lakebed"));
        assert_eq!(
            config.manager.listen,
            SocketAddr::from((Ipv6Addr::LOCALHOST, 7000))
        );
        assert_eq!(
            config.manager.activity_poll_interval.get(),
            Duration::from_millis(250)
        );
        assert_eq!(
            config.compute.pg_bin_dir,
            Some(PathBuf::from("/usr/lib/postgresql/17/bin"))
        );
        assert_eq!(config.compute.os_user, "pg");
        assert_eq!(
            config.compute.port_range,
            PortRange::Range {
                low: 20000,
                high: 20100
            }
        );
        assert_eq!(config.compute.start_timeout.get(), Duration::from_secs(120));
        assert_eq!(config.compute.stop_timeout.get(), Duration::from_secs(10));

        let main: EndpointName = "main".parse().unwrap();
        let policy = config.endpoints[&main].policy();
        assert_eq!(policy.suspend_timeout, SuspendTimeout::Never);
        assert_eq!(
            policy.keep_warm,
            vec!["Mon-Fri 08:00-18:00 Europe/Berlin".parse().unwrap()]
        );

        let batch: EndpointName = "batch".parse().unwrap();
        let policy = config.endpoints[&batch].policy();
        assert_eq!(
            policy.suspend_timeout,
            SuspendTimeout::After(Duration::from_secs(60))
        );
        assert!(
            policy.keep_warm.is_empty(),
            "missing keep_warm takes the default"
        );
    }

    #[test]
    fn pageserver_section() {
        let config = Config::from_toml_str(
            "lakebed.toml",
            "data_dir = \"/srv/lb\"\n[pageserver]\nlisten = \"0.0.0.0:7434\"\n\
             tls_cert = \"/etc/ps.crt\"\ntls_key = \"/etc/ps.key\"",
        )
        .unwrap();
        assert_eq!(config.pageserver.listen, "0.0.0.0:7434".parse().unwrap());
        assert_eq!(
            config.pageserver_data_dir(),
            PathBuf::from("/srv/lb/pageserver")
        );
        assert_eq!(
            config.pageserver.tls_cert,
            Some(PathBuf::from("/etc/ps.crt"))
        );
        assert_eq!(
            config.pageserver.tls_key,
            Some(PathBuf::from("/etc/ps.key"))
        );

        assert_eq!(config.pageserver.metrics_listen, None, "off by default");

        let config =
            Config::from_toml_str("lakebed.toml", "[pageserver]\ndata_dir = \"/fast/pages\"")
                .unwrap();
        assert_eq!(config.pageserver_data_dir(), PathBuf::from("/fast/pages"));

        let config = Config::from_toml_str(
            "lakebed.toml",
            "[pageserver]\nmetrics_listen = \"127.0.0.1:6435\"",
        )
        .unwrap();
        assert_eq!(
            config.pageserver.metrics_listen,
            Some("127.0.0.1:6435".parse().unwrap())
        );

        let cases = [
            (
                "[pageserver]\nlisten = \"6434\"",
                "lakebed.toml: pageserver.listen: \"6434\" is not an address like 127.0.0.1:6480 or [::1]:6480",
            ),
            (
                "[pageserver]\ntls_cert = \"/etc/ps.crt\"",
                "lakebed.toml: pageserver.tls_key: pageserver.tls_cert and pageserver.tls_key go together: give both or neither",
            ),
            (
                "[pageserver]\ntls_key = \"/etc/ps.key\"",
                "lakebed.toml: pageserver.tls_cert: pageserver.tls_cert and pageserver.tls_key go together: give both or neither",
            ),
            (
                "[pageserver]\ndata_dir = \"\"",
                "lakebed.toml: pageserver.data_dir: must not be empty",
            ),
            (
                "[pageserver]\nmetrics_listen = \"6435\"",
                "lakebed.toml: pageserver.metrics_listen: \"6435\" is not an address like 127.0.0.1:6480 or [::1]:6480",
            ),
            (
                "[pageserver]\nmetrics_listen = 6435",
                "lakebed.toml: pageserver.metrics_listen: expected an address such as \"127.0.0.1:6480\", found integer 6435",
            ),
            (
                "[pageserver]\nlisten_addr = \"127.0.0.1:1\"",
                "lakebed.toml: pageserver.listen_addr: unknown key",
            ),
            (
                "[pageserver]\nhistory_retention = \"-5m\"",
                "lakebed.toml: pageserver.history_retention: \"-5m\" is not a duration (examples: 90s, 5m, 1h)",
            ),
            (
                "[pageserver]\nhistory_retention = \"a day\"",
                "lakebed.toml: pageserver.history_retention: \"a day\" is not a duration (examples: 90s, 5m, 1h)",
            ),
            (
                "[pageserver]\nhistory_retention = 3600",
                "lakebed.toml: pageserver.history_retention: expected a duration such as \"90s\" or \"5m\", found integer 3600",
            ),
            (
                "[pageserver]\ngc_interval = \"0s\"",
                "lakebed.toml: pageserver.gc_interval: must be more than 0s",
            ),
            (
                "[pageserver]\ngc_interval = \"often\"",
                "lakebed.toml: pageserver.gc_interval: \"often\" is not a duration (examples: 90s, 5m, 1h)",
            ),
            (
                "[pageserver]\ncache_mib = 15",
                "lakebed.toml: pageserver.cache_mib: 15 is too small: must be at least 16",
            ),
            (
                "[pageserver]\ncache_mib = 0",
                "lakebed.toml: pageserver.cache_mib: 0 is too small: must be at least 16",
            ),
            (
                "[pageserver]\ncache_mib = 9223372036854775807",
                "lakebed.toml: pageserver.cache_mib: 9223372036854775807 is too large: at most 1048576 (1 TiB)",
            ),
            (
                "[compute]\ncache_mib = 2000000",
                "lakebed.toml: compute.cache_mib: 2000000 is too large: at most 1048576 (1 TiB)",
            ),
            (
                "[pageserver]\ngc_interval = \"18446744073709551615s\"",
                "lakebed.toml: pageserver.gc_interval: \"18446744073709551615s\" is too long: at most 100 years",
            ),
            (
                "[pageserver]\ncache_mib = \"256MiB\"",
                "lakebed.toml: pageserver.cache_mib: expected u64, found string \"256MiB\"",
            ),
            (
                "[pageserver]\nhistory_retension = \"1h\"",
                "lakebed.toml: pageserver.history_retension: unknown key",
            ),
        ];
        for (toml, want) in cases {
            let err = Config::from_toml_str("lakebed.toml", toml).unwrap_err();
            assert_eq!(err.to_string(), want, "toml {toml:?}");
        }
    }

    #[test]
    fn pageserver_history_gc_and_cache() {
        let config = Config::from_toml_str(
            "lakebed.toml",
            "[pageserver]\nhistory_retention = \"7d\"\ngc_interval = \"30s\"\ncache_mib = 1024",
        )
        .unwrap();
        assert_eq!(
            config.pageserver.history_retention.get(),
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(config.pageserver.gc_interval.get(), Duration::from_secs(30));
        assert_eq!(config.pageserver.cache_mib, 1024);

        // No history at all is allowed; so are the smallest interval and cache.
        let config = Config::from_toml_str(
            "lakebed.toml",
            "[pageserver]\nhistory_retention = \"0s\"\ngc_interval = \"1ms\"\ncache_mib = 16",
        )
        .unwrap();
        assert_eq!(config.pageserver.history_retention.get(), Duration::ZERO);
        assert_eq!(
            config.pageserver.gc_interval.get(),
            Duration::from_millis(1)
        );
        assert_eq!(config.pageserver.cache_mib, 16);

        let json = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(json["pageserver"]["history_retention"], "1day");
        assert_eq!(json["pageserver"]["gc_interval"], "10m");
        assert_eq!(json["pageserver"]["cache_mib"], 256);
    }

    #[test]
    fn pageserver_history_env_overrides() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "lakebed.toml",
                "[pageserver]\nhistory_retention = \"48h\"\ngc_interval = \"1m\"",
            )?;
            jail.set_env("LAKEBED_PAGESERVER__HISTORY_RETENTION", "0s");
            jail.set_env("LAKEBED_PAGESERVER__CACHE_MIB", "64");
            let config = Config::load(None).unwrap();
            assert_eq!(config.pageserver.history_retention.get(), Duration::ZERO);
            assert_eq!(config.pageserver.gc_interval.get(), Duration::from_secs(60));
            assert_eq!(config.pageserver.cache_mib, 64);

            jail.set_env("LAKEBED_PAGESERVER__HISTORY_RETENTION", "-5m");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_PAGESERVER__HISTORY_RETENTION: \
                 pageserver.history_retention: \"-5m\" is not a duration (examples: 90s, 5m, 1h)"
            );
            jail.set_env("LAKEBED_PAGESERVER__HISTORY_RETENTION", "30s");

            jail.set_env("LAKEBED_PAGESERVER__GC_INTERVAL", "0s");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_PAGESERVER__GC_INTERVAL: \
                 pageserver.gc_interval: must be more than 0s"
            );
            jail.set_env("LAKEBED_PAGESERVER__GC_INTERVAL", "5m");

            jail.set_env("LAKEBED_PAGESERVER__CACHE_MIB", "8");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_PAGESERVER__CACHE_MIB: \
                 pageserver.cache_mib: 8 is too small: must be at least 16"
            );
            jail.set_env("LAKEBED_PAGESERVER__CACHE_MIB", "16");

            jail.set_env("LAKEBED_PAGESERVER__GC_INTERVALL", "5m");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_PAGESERVER__GC_INTERVALL: \
                 pageserver.gc_intervall: unknown key"
            );
            Ok(())
        });
    }

    #[test]
    fn pageserver_env_overrides() {
        Jail::expect_with(|jail| {
            jail.set_env("LAKEBED_PAGESERVER__LISTEN", "127.0.0.1:7000");
            jail.set_env("LAKEBED_PAGESERVER__DATA_DIR", "/env/pages");
            let config = Config::load(None).unwrap();
            assert_eq!(config.pageserver.listen, "127.0.0.1:7000".parse().unwrap());
            assert_eq!(config.pageserver_data_dir(), PathBuf::from("/env/pages"));

            jail.set_env("LAKEBED_PAGESERVER__LISTEN", "nowhere");
            let (source, key, _) = invalid(Config::load(None).unwrap_err());
            assert_eq!(source, "environment variable LAKEBED_PAGESERVER__LISTEN");
            assert_eq!(key, "pageserver.listen");
            Ok(())
        });
    }

    #[test]
    fn empty_endpoint_table_gets_default_policy() {
        let config = Config::from_toml_str("lakebed.toml", "[endpoints.main]\n").unwrap();
        let main: EndpointName = "main".parse().unwrap();
        assert_eq!(
            config.endpoints[&main].policy(),
            AutosuspendPolicy::default()
        );
    }

    #[test]
    fn bad_duration_message_is_exact() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "lakebed.toml",
                "[endpoints.main]\nsuspend_timeout = \"5 parsecs\"",
            )?;
            let err = Config::load(Some(Path::new("lakebed.toml"))).unwrap_err();
            assert_eq!(
                err.to_string(),
                "lakebed.toml: endpoints.main.suspend_timeout: \"5 parsecs\" is not a duration (examples: 90s, 5m, 1h)"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = Config::from_toml_str("lakebed.toml", "[compute]\nos_usr = \"pg\"").unwrap_err();
        assert_eq!(err.to_string(), "lakebed.toml: compute.os_usr: unknown key");

        let err = Config::from_toml_str("lakebed.toml", "data_dri = \"x\"").unwrap_err();
        assert_eq!(err.to_string(), "lakebed.toml: data_dri: unknown key");

        let err =
            Config::from_toml_str("lakebed.toml", "[endpoints.main]\nkeep_worm = []").unwrap_err();
        assert_eq!(
            err.to_string(),
            "lakebed.toml: endpoints.main.keep_worm: unknown key"
        );
    }

    #[test]
    fn wrong_type_says_what_was_expected() {
        let (source, key, reason) = invalid(
            Config::from_toml_str("cfg.toml", "[compute]\nstart_timeout = 60").unwrap_err(),
        );
        assert_eq!(source, "cfg.toml");
        assert_eq!(key, "compute.start_timeout");
        assert!(
            reason.contains("expected a duration such as \"90s\" or \"5m\""),
            "{reason}"
        );
        assert!(reason.ends_with(", found integer 60"), "{reason}");

        let (_, key, reason) =
            invalid(Config::from_toml_str("cfg.toml", "[compute]\nos_user = 7").unwrap_err());
        assert_eq!(key, "compute.os_user");
        assert_eq!(reason, "expected a string, found integer 7");

        let err = Config::from_toml_str("cfg.toml", "compute = 5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cfg.toml: compute: expected a table, found integer 5"
        );

        let err = Config::from_toml_str(
            "cfg.toml",
            "[endpoints.main]\nkeep_warm = \"daily 09:00-10:00\"",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cfg.toml: endpoints.main.keep_warm: expected a list, found string \"daily 09:00-10:00\""
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            (
                "[endpoints.Main]\n",
                "lakebed.toml: endpoints.Main: endpoint name \"Main\": only lowercase letters, digits and '-' are allowed (found 'M')",
            ),
            (
                "[compute]\nport_range = \"80-90\"",
                "lakebed.toml: compute.port_range: \"80-90\" is not a usable port range: ports below 1024 are privileged",
            ),
            (
                "[compute]\nport_range = \"9000-8000\"",
                "lakebed.toml: compute.port_range: \"9000-8000\" is not a usable port range: the first port must not be above the second",
            ),
            (
                "[compute]\nport_range = \"lots\"",
                "lakebed.toml: compute.port_range: \"lots\" is not a port range (use \"auto\" or e.g. \"20000-20100\")",
            ),
            (
                "[manager]\nlisten = \"localhost\"",
                "lakebed.toml: manager.listen: \"localhost\" is not an address like 127.0.0.1:6480 or [::1]:6480",
            ),
            (
                "[endpoints.main]\nkeep_warm = [\"Mon-Fri 8-18\"]",
                "lakebed.toml: endpoints.main.keep_warm.0: \"Mon-Fri 8-18\" is not a keep-warm window: \"8-18\" is not a time range like 08:00-18:00",
            ),
            (
                "[endpoints.main]\nsuspend_timeout = \"500ms\"",
                "lakebed.toml: endpoints.main.suspend_timeout: \"500ms\" is too short: suspend_timeout must be at least 1s, or \"never\"",
            ),
        ];
        for (toml, want) in cases {
            let err = Config::from_toml_str("lakebed.toml", toml).unwrap_err();
            assert_eq!(err.to_string(), want, "toml {toml:?}");
        }
    }

    #[test]
    fn warm_pool_defaults_to_one_and_bad_values_name_the_key() {
        assert_eq!(Config::default().compute.warm_pool, 1);
        let off = Config::from_toml_str("lakebed.toml", "[compute]\nwarm_pool = 0").unwrap();
        assert_eq!(off.compute.warm_pool, 0);
        let most = Config::from_toml_str("lakebed.toml", "[compute]\nwarm_pool = 16").unwrap();
        assert_eq!(most.compute.warm_pool, MAX_WARM_POOL);
        let cases = [
            (
                "[compute]\nwarm_pool = 17",
                "lakebed.toml: compute.warm_pool: 17 is too large: at most 16",
            ),
            (
                "[compute]\nwarm_pool = -1",
                "lakebed.toml: compute.warm_pool: expected u32, found integer -1",
            ),
            (
                "[compute]\nwarm_pool = \"many\"",
                "lakebed.toml: compute.warm_pool: expected u32, found string \"many\"",
            ),
            (
                "[compute]\nwarm_pool = true",
                "lakebed.toml: compute.warm_pool: expected u32, found boolean true",
            ),
        ];
        for (toml, want) in cases {
            let err = Config::from_toml_str("lakebed.toml", toml).unwrap_err();
            assert_eq!(err.to_string(), want, "toml {toml:?}");
        }
    }

    #[test]
    fn cross_field_validation() {
        let cases = [
            (
                "[manager]\nlisten = \"0.0.0.0:6480\"",
                "lakebed.toml: manager.listen: 0.0.0.0:6480 is not a loopback address: the admin API is loopback-only (use 127.0.0.1 or [::1])",
            ),
            (
                "[manager]\nactivity_poll_interval = \"10ms\"",
                "lakebed.toml: manager.activity_poll_interval: 10ms is too short: must be at least 50ms",
            ),
            (
                "[compute]\nstart_timeout = \"0s\"",
                "lakebed.toml: compute.start_timeout: must be more than 0s",
            ),
            (
                "[compute]\nstop_timeout = \"0s\"",
                "lakebed.toml: compute.stop_timeout: must be more than 0s",
            ),
            (
                "[compute]\nos_user = \"\"",
                "lakebed.toml: compute.os_user: must not be empty",
            ),
        ];
        for (toml, want) in cases {
            let err = Config::from_toml_str("lakebed.toml", toml).unwrap_err();
            assert_eq!(err.to_string(), want, "toml {toml:?}");
        }
        // The boundary itself is fine.
        let ok = Config::from_toml_str(
            "lakebed.toml",
            "[manager]\nactivity_poll_interval = \"50ms\"\nlisten = \"127.0.0.2:1\"",
        )
        .unwrap();
        assert_eq!(
            ok.manager.activity_poll_interval.get(),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let (source, key, reason) = invalid(
            Config::from_toml_str(
                "lakebed.toml",
                "[compute]\nos_user = \"pg\"\nstop_timeout = \n",
            )
            .unwrap_err(),
        );
        assert_eq!(source, "lakebed.toml");
        assert_eq!(key, "line 3, column 16");
        assert_eq!(reason, "invalid TOML: invalid string; expected `\"`, `'`");

        let err = Config::from_toml_str(
            "lakebed.toml",
            "[compute]\nos_user = \"a\"\nos_user = \"b\"",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "lakebed.toml: line 3, column 1: invalid TOML: duplicate key `os_user` in table `compute`"
        );
    }

    #[test]
    fn missing_explicit_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Config::load(Some(&path)).unwrap_err();
        match &err {
            ConfigError::Read { path: p, error } => {
                assert_eq!(p, &path);
                assert_eq!(error.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Read, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot read: ", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn env_overrides_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "data_dir = \"/from/file\"\n[compute]\nos_user = \"file-user\"\nstop_timeout = \"5s\"",
            )?;
            jail.set_env("LAKEBED_COMPUTE__OS_USER", "env-user");
            jail.set_env("LAKEBED_DATA_DIR", "/from/env");
            jail.set_env("LAKEBED_MANAGER__LISTEN", "127.0.0.1:7000");
            jail.set_env("LAKEBED_ENDPOINTS__MAIN__SUSPEND_TIMEOUT", "never");
            // Not a config section: ignored rather than an unknown key.
            jail.set_env("LAKEBED_LOG", "debug");
            let config = Config::load(Some(Path::new("custom.toml"))).unwrap();
            assert_eq!(config.compute.os_user, "env-user");
            assert_eq!(config.data_dir, PathBuf::from("/from/env"));
            assert_eq!(config.manager.listen, "127.0.0.1:7000".parse().unwrap());
            assert_eq!(config.compute.stop_timeout.get(), Duration::from_secs(5));
            let main: EndpointName = "main".parse().unwrap();
            assert_eq!(
                config.endpoints[&main].policy().suspend_timeout,
                SuspendTimeout::Never
            );
            Ok(())
        });
    }

    #[test]
    fn env_errors_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("lakebed.toml", "[manager]\nactivity_poll_interval = \"2s\"")?;
            jail.set_env("LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL", "fast");
            let err = Config::load(None).unwrap_err();
            assert_eq!(
                err.to_string(),
                "environment variable LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL: \
                 manager.activity_poll_interval: \"fast\" is not a duration (examples: 90s, 5m, 1h)"
            );

            // A value that parses but fails validation also names the variable.
            jail.set_env("LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL", "10ms");
            let (source, key, _) = invalid(Config::load(None).unwrap_err());
            assert_eq!(
                source,
                "environment variable LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL"
            );
            assert_eq!(key, "manager.activity_poll_interval");

            jail.set_env("LAKEBED_MANAGER__ACTIVITY_POLL_INTERVAL", "1s");
            jail.set_env("LAKEBED_COMPUTE__OS_USR", "pg");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_COMPUTE__OS_USR: compute.os_usr: unknown key"
            );
            Ok(())
        });
    }

    #[test]
    fn env_errors_name_the_whole_variable_of_a_misspelt_section() {
        Jail::expect_with(|jail| {
            jail.set_env("LAKEBED_PROXI__LISTEN", "127.0.0.1:1");
            assert_eq!(
                Config::load(None).unwrap_err().to_string(),
                "environment variable LAKEBED_PROXI__LISTEN: proxi: unknown key"
            );
            Ok(())
        });
    }

    #[test]
    fn env_without_file() {
        Jail::expect_with(|jail| {
            jail.set_env("LAKEBED_COMPUTE__PORT_RANGE", "30000-30010");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.compute.port_range,
                PortRange::Range {
                    low: 30000,
                    high: 30010
                }
            );
            assert!(config.compute.port_range.contains(30010));
            assert!(!config.compute.port_range.contains(30011));
            Ok(())
        });
    }

    #[test]
    fn config_serializes_back_to_the_same_values() {
        let mut config = Config::from_toml_str(
            "lakebed.toml",
            "[compute]\nport_range = \"20000-20100\"\n[endpoints.main]\nsuspend_timeout = \"1h 30m\"\nkeep_warm = [\"Sat,Sun 10:00-12:00\"]",
        )
        .unwrap();
        config.compute.pg_bin_dir = Some(PathBuf::from("/opt/pg/bin"));
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["compute"]["port_range"], "20000-20100");
        assert_eq!(json["endpoints"]["main"]["suspend_timeout"], "1h 30m");
        assert_eq!(
            json["endpoints"]["main"]["keep_warm"][0],
            "Sat-Sun 10:00-12:00 UTC"
        );
        let back: Config = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
    }
}
