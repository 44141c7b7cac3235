//! A small harness for Lakebed's end-to-end tests (in `tests/`).
//!
//! Everything here drives real parts: Debian's PostgreSQL started by the real compute
//! manager, the real `lakebed` binary, and real clients (tokio-postgres, `psql`).
//!
//! - [`DataDir`]: a temporary data directory whose `Drop` SIGKILLs every postgres still
//!   serving a PGDATA under it, so a failing assertion never leaves a compute behind.
//! - [`open_manager`], [`create_endpoint`], [`wait_status`]: the compute manager as a
//!   library, with state changes awaited through [`Manager::subscribe`].
//! - [`LakebedUp`], [`lakebed`]: the binary, as `lakebed up` (killed on drop) and as CLI
//!   commands run to completion.
//! - [`PageServerProcess`]: `lakebed pageserver` on a free port, killed on drop.
//! - [`postmasters_serving`], [`pagefs_serving`], [`pagefs_under`], [`process_alive`]: what
//!   `/proc` says runs.
//! - [`Stack`] ([`stack`]): a `lakebed up` with the proxy and pool tests' helpers.
//! - [`clients`]: `psql`/`pgbench`, tokio-postgres (plain, rustls, watched), polling.
//! - [`wire`]: the wire protocol by hand, and [`RawClient`] that logs in with SCRAM.
//! - [`otlp`]: an OTLP/gRPC trace receiver that keeps the spans it is sent.
//! - [`Tmpfs`]: a small tmpfs to fill, for disk-full tests.
//!
//! Processes started here inherit no `LAKEBED_*` or `OTEL_*` variable from the test's
//! environment: a test sets what it needs.
//!
//! Every wait has a deadline ([`DEADLINE`]): a bug fails a test instead of hanging it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lakebed_compute_manager::compute::ComputeStatus;
use lakebed_compute_manager::{Manager, ManagerOptions};
use lakebed_config::{
    AutosuspendPolicy, Config, EndpointName, HumanDuration, PortRange, TenantName,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};

pub mod clients;
pub mod moto;
pub mod otlp;
pub mod prom;
pub mod stack;
pub mod tmpfs;
pub mod wire;

pub use clients::*;
pub use stack::Stack;
pub use tmpfs::Tmpfs;
pub use wire::*;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often the autosuspend monitor polls in tests.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The suspend timeout used by tests that exercise autosuspend.
pub const SUSPEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Monitor checks that cover a whole [`SUSPEND_TIMEOUT`] with margin: a compute still up
/// after this many more checks was not suspended by a timeout that had run out.
pub fn checks_past_timeout() -> u64 {
    SUSPEND_TIMEOUT
        .as_millis()
        .div_ceil(POLL_INTERVAL.as_millis()) as u64
        + 3
}

/// A new directory under the system temp dir named `prefix...`, removed when the guard
/// drops, and its canonical path (what mounts and `/proc` report).
pub(crate) fn canonical_tempdir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir");
    let path = dir
        .path()
        .canonicalize()
        .expect("canonicalize the temp dir");
    (dir, path)
}

/// A temporary Lakebed data directory. Dropping it kills (SIGKILL) every postgres process
/// of a compute under it (postmasters by their `-D`, backends by their working directory)
/// and every pagefs mounted under it, detaches their mounts, then removes it.
pub struct DataDir {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DataDir {
    /// Creates an empty data directory under the system temp dir.
    pub fn new() -> Self {
        let (dir, path) = canonical_tempdir("lakebed-test-");
        Self { path, _dir: dir }
    }

    /// The data directory (absolute, canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PGDATA of endpoint `name`.
    pub fn pgdata(&self, name: &str) -> PathBuf {
        self.path.join("endpoints").join(name).join("pgdata")
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        for pid in postmasters_under(&self.path) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // Backends each lead a session of their own, and outlive a killed postmaster if
        // stuck on a lock: found by their working directory, their PGDATA.
        let backends = lakebed_compute_manager::postgres::postgres_processes_in(|cwd| {
            cwd.starts_with(&self.path)
        });
        for pid in backends {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for pid in pagefs_under(&self.path) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if Path::new(target).starts_with(&self.path) {
                detach(Path::new(target));
            }
        }
    }
}

/// The command line of every process, as `(pid, argv)`. Zombies have an empty argv.
fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, argv))
        })
        .collect()
}

/// Pids of postgres processes started with `-D <dir>` where `<dir>` satisfies `pred`.
fn postgres_with_datadir(pred: impl Fn(&Path) -> bool) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, argv)| {
            argv.first().is_some_and(|a| a.ends_with("/postgres"))
                && argv
                    .windows(2)
                    .any(|w| w[0] == "-D" && pred(Path::new(&w[1])))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Pids of the postmasters serving exactly `pgdata` (found by their `-D` argument).
pub fn postmasters_serving(pgdata: &Path) -> Vec<u32> {
    postgres_with_datadir(|d| d == pgdata)
}

/// Pids of the postmasters serving any PGDATA under `data_dir`.
pub fn postmasters_under(data_dir: &Path) -> Vec<u32> {
    postgres_with_datadir(|d| d.starts_with(data_dir))
}

/// The pid of the `lakebed pagefs` mounted on `mountpoint`, if one runs: found by its
/// `--mountpoint` argument, or (handed its mount as an assignment, as the compute manager
/// does) by its working directory, the mount point's parent.
pub fn pagefs_serving(mountpoint: &Path) -> Option<u32> {
    lakebed_compute_manager::storage::pagefs_serving(mountpoint)
        .first()
        .map(|pid| *pid as u32)
}

/// Pids of the `lakebed pagefs` processes of `data_dir`: mounted under it (by argument), or
/// working in it (warm pool members, and pagefs handed their mount as an assignment).
pub fn pagefs_under(data_dir: &Path) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(pid, argv)| {
            argv.iter().any(|a| a == "pagefs")
                && (argv
                    .windows(2)
                    .any(|w| w[0] == "--mountpoint" && Path::new(&w[1]).starts_with(data_dir))
                    || std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(data_dir)))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether `pid` is a live process (present in `/proc` and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Manager options for `data_dir` with test settings: the configuration's defaults, but
/// automatic ports and a [`POLL_INTERVAL`] monitor poll.
pub fn manager_options(data_dir: &Path) -> ManagerOptions {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.compute.port_range = PortRange::Auto;
    config.manager.activity_poll_interval = HumanDuration(POLL_INTERVAL);
    ManagerOptions::from_config(&config)
}

/// Opens a compute manager on `dir` with test settings: automatic ports, a 100ms monitor
/// poll, default binaries and OS user. `adjust` may change the options first.
pub async fn open_manager(dir: &DataDir, adjust: impl FnOnce(&mut ManagerOptions)) -> Manager {
    let mut opts = manager_options(dir.path());
    adjust(&mut opts);
    Manager::open(opts).await.expect("open the compute manager")
}

/// Creates tenant `default` (if needed) and endpoint `name` with `policy`; returns its name.
pub fn create_endpoint(manager: &Manager, name: &str, policy: AutosuspendPolicy) -> EndpointName {
    let tenant: TenantName = "default".parse().expect("tenant name");
    manager
        .catalog()
        .ensure_tenant(&tenant, None)
        .expect("create tenant default");
    let name: EndpointName = name.parse().expect("endpoint name");
    manager
        .create_endpoint(&name, &tenant, &policy)
        .expect("create the endpoint");
    name
}

/// An autosuspend policy: `suspend_timeout` and keep-warm windows, parsed from text.
pub fn policy(suspend_timeout: &str, keep_warm: &[&str]) -> AutosuspendPolicy {
    AutosuspendPolicy {
        suspend_timeout: suspend_timeout.parse().expect("suspend timeout"),
        keep_warm: keep_warm
            .iter()
            .map(|w| w.parse().expect("keep-warm window"))
            .collect(),
    }
}

/// Waits (at most [`DEADLINE`]) until the status satisfies `pred`, and returns it. Panics
/// naming `what` and showing the last status if the deadline passes.
pub async fn wait_status(
    rx: &mut watch::Receiver<ComputeStatus>,
    what: &str,
    pred: impl FnMut(&ComputeStatus) -> bool,
) -> ComputeStatus {
    let seen = timeout(DEADLINE, rx.wait_for(pred))
        .await
        .map(|r| r.map(|s| s.clone()));
    match seen {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => panic!("status channel closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {DEADLINE:?} waiting for {what}; last status: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Connects to a compute over TCP with a password, as `user`, to database `postgres`.
pub async fn connect(
    address: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_with(client_config(address, user, password)).await
}

/// Connects through the proxy at `proxy` to `endpoint` (named in the `options` startup
/// parameter), without TLS (the proxy allows that on loopback), as `user`.
pub async fn connect_via_proxy(
    proxy: SocketAddr,
    endpoint: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = client_config(proxy, user, password);
    cfg.options(format!("endpoint={endpoint}"));
    connect_with(cfg).await
}

/// tokio-postgres settings for `address` as `user` with `password`, database `postgres`,
/// no TLS setting of its own, a 10s connect timeout.
pub fn client_config(address: SocketAddr, user: &str, password: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(address.ip().to_string())
        .port(address.port())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10));
    cfg
}

async fn connect_with(cfg: tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The `lakebed` binary: `$TEST_LAKEBED_BIN`, else `<target>/debug/lakebed` of this
/// workspace. Panics with what to do if it is missing.
pub fn lakebed_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TEST_LAKEBED_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/lakebed");
    assert!(
        bin.is_file(),
        "the lakebed binary is missing at {}: run `cargo build -p lakebed` first; scripts/test \
         does (or set TEST_LAKEBED_BIN)",
        bin.display()
    );
    bin
}

/// A `lakebed` command with `--data-dir dir`, run in `dir` (so no stray `./lakebed.toml` is
/// read), with no `LAKEBED_*` or `OTEL_*` variable inherited from the test's environment.
fn lakebed_command(dir: &DataDir) -> Command {
    let mut cmd = Command::new(lakebed_bin());
    cmd.arg("--data-dir").arg(dir.path());
    cmd.current_dir(dir.path());
    clean_env(&mut cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Removes the `LAKEBED_*` and `OTEL_*` variables of the test's environment from `cmd`'s.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("LAKEBED_") || key_text.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
}

/// What a finished `lakebed` command did.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Standard output, after asserting the command succeeded.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "lakebed failed: {self:#?}");
        self.stdout
    }

    /// Standard output parsed as JSON, after asserting the command succeeded.
    pub fn json(self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Standard error, after asserting the command failed with exit code 1.
    pub fn err(self) -> String {
        assert_eq!(self.code, Some(1), "lakebed should have failed: {self:#?}");
        self.stderr
    }
}

/// Runs `lakebed --data-dir dir ARGS` to completion (at most [`DEADLINE`]).
pub async fn lakebed(dir: &DataDir, args: &[&str]) -> CliOutput {
    lakebed_with_stdin(dir, args, "").await
}

/// Runs `lakebed --data-dir dir ARGS` (see [`lakebed`]) with `env` added to its
/// environment and no standard input; its output. Panics if it cannot run or takes over
/// [`DEADLINE`].
pub async fn lakebed_env(dir: &DataDir, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = lakebed_command(dir);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("lakebed {args:?} did not finish within {DEADLINE:?}"))
        .expect("run lakebed");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `lakebed --data-dir dir ARGS` with `stdin` as its standard input.
pub async fn lakebed_with_stdin(dir: &DataDir, args: &[&str], stdin: &str) -> CliOutput {
    let mut cmd = lakebed_command(dir);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lakebed");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write lakebed's stdin");
    drop(input);
    let out = timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("lakebed {args:?} did not finish within {DEADLINE:?}"))
        .expect("wait for lakebed");
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `lakebed up`. Dropping it SIGKILLs the process (the [`DataDir`], dropped
/// after it, kills the computes).
pub struct LakebedUp {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// The API's base URL, from the banner, e.g. `http://127.0.0.1:41234`.
    pub api_url: String,
    /// The generated password of role `lakebed`, printed only at the first start.
    pub password: Option<String>,
    /// Where the proxy listens, from the banner.
    pub proxy_addr: Option<SocketAddr>,
}

impl LakebedUp {
    /// Starts `lakebed up` on `dir` with the API (and proxy) on free loopback ports and waits (at most
    /// [`DEADLINE`]) for its banner. Its log (stderr) goes to a file beside `dir`.
    pub async fn start(dir: &DataDir) -> Self {
        Self::start_with(dir, &[]).await
    }

    /// As [`Self::start`], with extra `LAKEBED_*` settings in the environment.
    pub async fn start_with(dir: &DataDir, env: &[(&str, &str)]) -> Self {
        let log = dir.path().with_extension(format!(
            "up-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let mut child = lakebed_command(dir)
            .arg("up")
            .env("LAKEBED_MANAGER__LISTEN", "127.0.0.1:0")
            // So parallel tests (and a developer's own stack) never fight over port 6432.
            .env("LAKEBED_PROXY__LISTEN", "127.0.0.1:0")
            .env("LAKEBED_PROXY__API_LISTEN", "127.0.0.1:0")
            .env("LAKEBED_PAGESERVER__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn lakebed up");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut up = Self {
            child,
            stdout,
            log,
            api_url: String::new(),
            password: None,
            proxy_addr: None,
        };
        up.read_banner().await;
        up
    }

    /// Reads banner lines up to its last (`Ctrl-C suspends ...`), noting the API and proxy
    /// addresses and the password.
    async fn read_banner(&mut self) {
        let mut banner = String::new();
        while let Some(line) = self.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.trim_start().strip_prefix("API") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                self.api_url = url.to_owned();
            }
            if let Some(rest) = line.trim_start().strip_prefix("proxy ") {
                self.proxy_addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line
                .trim_start()
                .strip_prefix("role       lakebed, password ")
            {
                self.password = Some(rest.trim().to_owned());
            }
            if line.starts_with("Ctrl-C suspends") {
                assert!(
                    self.api_url.starts_with("http://127.0.0.1:"),
                    "no API address in the banner:\n{banner}"
                );
                return;
            }
        }
        panic!(
            "lakebed up ended before printing its banner; stdout:\n{banner}\nlog:\n{}",
            self.log_text()
        );
    }

    /// The next line of standard output (at most [`DEADLINE`]); `None` at its end.
    pub async fn next_line(&mut self) -> Option<String> {
        match timeout(DEADLINE, self.stdout.next_line()).await {
            Ok(line) => line.expect("read lakebed up's stdout"),
            Err(_) => panic!(
                "lakebed up printed nothing for {DEADLINE:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("lakebed up is running")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal lakebed up");
    }

    /// Waits (at most [`DEADLINE`]) for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        match timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.expect("wait for lakebed up"),
            Err(_) => panic!(
                "lakebed up did not exit within {DEADLINE:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// What `lakebed up` logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LakebedUp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("--- lakebed up log ---\n{}", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `lakebed pageserver` (the page store as its own process). Dropping it SIGKILLs
/// the process and, if the thread is panicking, prints its log.
pub struct PageServerProcess {
    child: Child,
    /// The address it listens on, from its `pageserver listening on ADDR` line.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, from its `pageserver metrics on ADDR` line, if it does.
    pub metrics_addr: Option<SocketAddr>,
    log: PathBuf,
}

/// Page store client options for tests: the [`DEADLINE`] as the retry budget and short
/// backoffs, so a test notices a restarted page store quickly.
pub fn client_options(url: String) -> lakebed_pageserver_client::ClientOptions {
    let mut o = lakebed_pageserver_client::ClientOptions::new(url);
    o.total_timeout = DEADLINE;
    o.initial_backoff = Duration::from_millis(20);
    o.max_backoff = Duration::from_millis(200);
    o
}

impl PageServerProcess {
    /// Starts `lakebed --data-dir DIR pageserver --listen LISTEN [extra]` and waits (at most
    /// [`DEADLINE`]) for `pageserver listening on ADDR`.
    pub async fn start(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_with(dir, listen, extra, &[]).await
    }

    /// As [`Self::start`], with `env` added to the process's environment.
    pub async fn start_with(
        dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!(
            "pageserver-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        let mut cmd = Command::new(lakebed_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["pageserver", "--listen", listen])
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the log file"))
            .kill_on_drop(true);
        clean_env(&mut cmd);
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn lakebed pageserver");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut metrics_addr = None;
        let addr = timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read pageserver's stdout") {
                if let Some(addr) = line.strip_prefix("pageserver metrics on ") {
                    metrics_addr = Some(addr.trim().parse::<SocketAddr>().expect("an address"));
                }
                if let Some(addr) = line.strip_prefix("pageserver listening on ") {
                    return Some(addr.trim().parse::<SocketAddr>().expect("an address"));
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("no address within {DEADLINE:?}"));
        let Some(addr) = addr else {
            let _ = child.wait().await;
            panic!(
                "lakebed pageserver exited before listening; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr,
            metrics_addr,
            log,
        }
    }

    /// What it logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this page store with [`client_options`].
    pub async fn client(&self) -> lakebed_pageserver_client::PageStoreClient {
        lakebed_pageserver_client::PageStoreClient::connect(client_options(self.url()))
            .await
            .expect("connect to the page server")
    }

    /// Sends `signal` and waits (at most [`DEADLINE`]) for the process to exit.
    pub async fn stop(mut self, signal: Signal) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        kill(Pid::from_raw(pid), signal).expect("signal the page server");
        timeout(DEADLINE, self.child.wait())
            .await
            .expect("the page server exits")
            .expect("wait for the page server")
    }
}

impl Drop for PageServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- pageserver log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A running `lakebed pagefs` (one compute's PGDATA over FUSE). Dropping it SIGKILLs the
/// process and detaches the mount.
pub struct PagefsProcess {
    child: Child,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The local (cache and scratch) directory.
    pub local_dir: PathBuf,
    /// The generation it acquired.
    pub generation: u32,
    log: PathBuf,
}

impl PagefsProcess {
    /// Mounts `timeline` of the page store at `url` on `<dir>/<name>/mnt` (cache in
    /// `<dir>/<name>/local`), files owned by root, with `extra` arguments; waits for `ready`.
    pub async fn start(dir: &Path, name: &str, url: &str, timeline: &str, extra: &[&str]) -> Self {
        Self::start_inner(dir, name, url, timeline, extra, None)
            .await
            .unwrap_or_else(|log| panic!("lakebed pagefs did not get ready; log:\n{log}"))
    }

    /// As [`Self::start`], with `--keys-from-stdin` and `keys` written to its standard input
    /// (the lines the compute manager sends). `Err` carries pagefs's log if it did not mount.
    pub async fn start_with_keys(
        dir: &Path,
        name: &str,
        url: &str,
        timeline: &str,
        keys: &str,
    ) -> Result<Self, String> {
        Self::start_inner(dir, name, url, timeline, &["--keys-from-stdin"], Some(keys)).await
    }

    async fn start_inner(
        dir: &Path,
        name: &str,
        url: &str,
        timeline: &str,
        extra: &[&str],
        stdin: Option<&str>,
    ) -> Result<Self, String> {
        let base = dir.join(name);
        let mountpoint = base.join("mnt");
        let local_dir = base.join("local");
        std::fs::create_dir_all(&mountpoint).expect("create the mount point");
        let log = base.join("pagefs.log");
        let mut cmd = Command::new(lakebed_bin());
        cmd.arg("pagefs")
            .arg("--mountpoint")
            .arg(&mountpoint)
            .args(["--pageserver", url, "--timeline", timeline])
            .arg("--local-dir")
            .arg(&local_dir)
            .args(["--uid", "0", "--gid", "0"])
            .args(extra)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the log file"))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn lakebed pagefs");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(text.as_bytes())
                .await
                .expect("write pagefs's keys");
        }
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let ready = timeout(DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("pagefs not ready within {DEADLINE:?}"))
            .expect("read pagefs's stdout");
        let Some(generation) = ready
            .as_deref()
            .and_then(|l| l.strip_prefix("ready "))
            .and_then(|g| g.split_whitespace().next()?.parse().ok())
        else {
            let _ = child.wait().await;
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        };
        // Keep draining stdout (the stats lines) so pagefs never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            mountpoint,
            local_dir,
            generation,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends `signal` and waits (at most [`DEADLINE`]) for the process to exit.
    pub async fn stop(&mut self, signal: Signal) -> std::process::ExitStatus {
        let pid = self.pid() as i32;
        kill(Pid::from_raw(pid), signal).expect("signal pagefs");
        let status = timeout(DEADLINE, self.child.wait())
            .await
            .expect("pagefs exits")
            .expect("wait for pagefs");
        detach(&self.mountpoint);
        status
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub use lakebed_compute_manager::storage::{detach, is_mounted};

/// Every regular file under `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack` (a byte scan for plaintext markers).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Drop for PagefsProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        detach(&self.mountpoint);
        if std::thread::panicking() {
            eprintln!("--- pagefs log ---\n{}", self.log_text());
        }
    }
}
