//! One postmaster process: start it, wait until it accepts connections, stop it, and make
//! sure nothing of it outlives it.
//!
//! **Leftover backends.** Postgres's child processes each call `setsid()`, so they are not
//! in the postmaster's process group, and when the postmaster dies abruptly (SIGKILL, the
//! OOM killer) they are reparented to init. Most notice and exit; a backend waiting for a
//! lock that a crashed process held (one that PANICked when its fsync failed, say) waits
//! forever, keeping its client's session open and hung. Every process of a compute works in
//! its PGDATA (Postgres changes into its data directory at start), whatever its title (which
//! overwrites its argv and environment), so once the postmaster is gone
//! [`Postmaster::stop`] SIGKILLs every `postgres` process still working there
//! ([`kill_postgres_in`]). One compute at a time runs on a PGDATA.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use super::datadir::{TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, tail_lines};
use super::{EndpointDir, OsUser, PgInstall, SYSTEM_ROLE};

/// Postgres's `max_connections` for every compute. The proxy relays each client session to
/// its own backend, and Postgres's default of 100 (minus 3 slots reserved for superusers,
/// such as the manager's system role) would refuse the 98th concurrent client of an
/// endpoint with 53300. Each slot costs a few kilobytes of shared memory.
const MAX_CONNECTIONS: u32 = 128;

/// How often [`Postmaster::wait_ready`] reads `postmaster.pid`.
const READY_POLL: Duration = Duration::from_millis(2);

/// How often [`Postmaster::wait_ready`] tries to connect whatever `postmaster.pid` says.
const CONNECT_POLL: Duration = Duration::from_millis(100);

/// Whether `postmaster.pid` in `pgdata` says the postmaster accepts connections: its 8th
/// line (`LOCK_FILE_LINE_PM_STATUS`, PostgreSQL's `miscadmin.h`) reads `ready`.
fn pm_status_ready(pgdata: &Path) -> bool {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .is_ok_and(|text| text.lines().nth(7).map(str::trim) == Some("ready"))
}

/// Why a postmaster did not come up.
#[derive(Debug)]
pub enum StartError {
    /// Another process took the port between our probe and Postgres's bind; try another.
    PortTaken,
    /// It exited, or did not accept connections in time. `reason` is one line; `log_tail`
    /// the end of its log.
    Failed {
        /// What happened.
        reason: String,
        /// The end of the Postgres log.
        log_tail: String,
    },
}

/// A running postmaster, child of this process.
#[derive(Debug)]
pub struct Postmaster {
    child: Child,
    pid: u32,
    port: u16,
    run_dir: PathBuf,
    log_file: PathBuf,
    pgdata: PathBuf,
}

impl Postmaster {
    /// Starts `postgres` on `dir`'s PGDATA as `user`, listening on 127.0.0.1:`port` and on a
    /// Unix socket in `dir`'s run directory, with stderr going to `dir`'s log file. Returns once
    /// the process is spawned; call [`Self::wait_ready`] next.
    ///
    /// With `tls`, Postgres runs with `ssl=on` and the certificate, key and client CA that
    /// [`EndpointDir::install_tls`] copied into PGDATA.
    ///
    /// The postmaster gets its own process group, so a Ctrl-C at the terminal reaches only
    /// Lakebed, which then shuts computes down in order.
    pub fn spawn(
        install: &PgInstall,
        user: &OsUser,
        dir: &EndpointDir,
        cluster_name: &str,
        port: u16,
        tls: bool,
    ) -> std::io::Result<Self> {
        let log_file = dir.log_file();
        // Postgres logs statements with errors: the log is as private as the data.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_file)?;
        std::fs::set_permissions(
            &log_file,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )?;
        let run_dir = dir.run_dir();
        let mut cmd = Command::new(install.bin("postgres"));
        cmd.arg("-D")
            .arg(dir.pgdata())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={port}")])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", run_dir.display()))
            .args(["-c", "unix_socket_permissions=0700"])
            .args(["-c", "password_encryption=scram-sha-256"])
            .args(["-c", &format!("max_connections={MAX_CONNECTIONS}")])
            .args(["-c", &format!("cluster_name={cluster_name}")]);
        if tls {
            cmd.args(["-c", "ssl=on"]);
            for (setting, file) in [
                ("ssl_cert_file", TLS_CERT_FILE),
                ("ssl_key_file", TLS_KEY_FILE),
                ("ssl_ca_file", TLS_CA_FILE),
            ] {
                cmd.arg("-c")
                    .arg(format!("{setting}={}", run_dir.join(file).display()));
            }
        }
        cmd.current_dir(dir.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        user.apply(&mut cmd);
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or_default();
        Ok(Self {
            child,
            pid,
            port,
            run_dir,
            log_file,
            pgdata: dir.pgdata(),
        })
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where clients reach it over TCP.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Connection settings for the system role over the private Unix socket.
    pub fn system_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.run_dir)
            .port(self.port)
            .user(SYSTEM_ROLE)
            .dbname("postgres")
            .application_name("lakebed-compute-manager")
            .connect_timeout(Duration::from_secs(5));
        cfg
    }

    /// Connects as the system role, spawning the connection task.
    pub async fn connect_system(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.system_config().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "system connection to compute ended");
            }
        });
        Ok(client)
    }

    /// Waits until the postmaster accepts connections from the system role, and returns that
    /// connection. Returns early if the process exits.
    ///
    /// Readiness is read from `postmaster.pid`, whose status line Postgres sets to `ready`
    /// once it accepts connections (as `pg_ctl start` waits for it): cheap to poll every
    /// [`READY_POLL`], where each refused connection attempt would cost a forked backend.
    /// A connection is tried when it says `ready`, and every [`CONNECT_POLL`] regardless.
    ///
    /// # Errors
    ///
    /// [`StartError::PortTaken`] if Postgres could not bind its port; otherwise
    /// [`StartError::Failed`] with the log tail, if it exited or `deadline` passed.
    pub async fn wait_ready(
        &mut self,
        deadline: Duration,
    ) -> Result<tokio_postgres::Client, StartError> {
        let give_up = Instant::now() + deadline;
        let mut last_try: Option<Instant> = None;
        loop {
            if let Some(status) = self.try_exited() {
                let log_tail = self.log_tail();
                if log_tail.contains("could not bind")
                    || log_tail.contains("Address already in use")
                {
                    return Err(StartError::PortTaken);
                }
                return Err(StartError::Failed {
                    reason: format!("postgres exited with {status} while starting"),
                    log_tail,
                });
            }
            // Off the async workers, as every file operation on a pagefs PGDATA.
            let pgdata = self.pgdata.clone();
            let due = last_try.is_none_or(|t| t.elapsed() >= CONNECT_POLL)
                || Instant::now() >= give_up
                || tokio::task::spawn_blocking(move || pm_status_ready(&pgdata))
                    .await
                    .unwrap_or(false);
            if due {
                last_try = Some(Instant::now());
                match self.connect_system().await {
                    Ok(client) => return Ok(client),
                    Err(e) if Instant::now() >= give_up => {
                        return Err(StartError::Failed {
                            reason: format!(
                                "postgres did not accept connections within {deadline:?} (last error: {e})"
                            ),
                            log_tail: self.log_tail(),
                        });
                    }
                    Err(_) => {}
                }
            }
            // Wait for the next look, but wake at once if the process exits meanwhile.
            let _ = timeout(READY_POLL, self.child.wait()).await;
        }
    }

    /// The exit status, if the postmaster has exited. Never blocks.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the postmaster: fast shutdown (SIGINT: abort sessions, shutdown checkpoint), then
    /// immediate shutdown (SIGQUIT) after `grace`, then SIGKILL after another `grace`.
    /// Returns once the process is gone (reaped) and so is every process of this compute
    /// it left behind (see the module docs), which are killed.
    pub async fn stop(&mut self, grace: Duration) -> ExitStatus {
        let status = self.stop_postmaster(grace).await;
        let left = kill_postgres_in(&self.pgdata, grace).await;
        if left > 0 {
            tracing::warn!(
                pid = self.pid,
                processes = left,
                "killed backends the postmaster left behind"
            );
        }
        status
    }

    async fn stop_postmaster(&mut self, grace: Duration) -> ExitStatus {
        for signal in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGKILL] {
            if let Some(status) = self.try_exited() {
                return status;
            }
            if let Err(e) = kill(Pid::from_raw(self.pid as i32), signal) {
                tracing::debug!(pid = self.pid, %signal, error = %e, "signal not delivered");
            }
            if let Ok(Ok(status)) = timeout(grace, self.child.wait()).await {
                return status;
            }
            tracing::warn!(pid = self.pid, %signal, "postmaster still running after {grace:?}");
        }
        // SIGKILL cannot be ignored; the process is gone once the kernel reaps it.
        loop {
            if let Ok(status) = self.child.wait().await {
                return status;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of this boot's log.
    pub fn log_tail(&self) -> String {
        read_log_tail(&self.log_file)
    }
}

/// Pids of the running processes whose `/proc/PID` directory satisfies `pred` (an empty
/// list when `/proc` cannot be read). The one walk of `/proc` the manager does.
pub fn processes_where(pred: impl Fn(&Path) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            pred(&e.path()).then_some(pid)
        })
        .collect()
}

/// Pids of the `postgres` processes (by their command name) whose working directory
/// satisfies `pred`. Reading another user's takes root, as the manager is when computes run
/// as another OS user.
pub fn postgres_processes_in(pred: impl Fn(&Path) -> bool) -> Vec<i32> {
    processes_where(|proc_dir| {
        let is_postgres = std::fs::read_to_string(proc_dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end() == "postgres");
        is_postgres && std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| pred(&cwd))
    })
}

/// SIGKILLs every `postgres` process working in `pgdata` (see the module docs), and waits
/// (at most `grace`) until they are gone. Returns how many there were.
pub async fn kill_postgres_in(pgdata: &Path, grace: Duration) -> usize {
    let pids = postgres_processes_in(|cwd| cwd == pgdata);
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&pid| alive(pid)) {
        sleep(Duration::from_millis(10)).await;
    }
    pids.len()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The last 20 lines of a log file (at most its last 16 KiB), or an empty string.
pub(crate) fn read_log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    tail_lines(&String::from_utf8_lossy(&buf), 20)
}
