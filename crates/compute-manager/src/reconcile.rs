//! What a restarted manager does with what a crashed one left behind.
//!
//! A manager killed with SIGKILL leaves its postmasters running (they are in their own
//! process groups) and perhaps an initdb scratch directory. On start, before serving anything,
//! the manager stops every postmaster it finds in an endpoint's PGDATA (fast shutdown, then
//! immediate, then SIGKILL), detaches pagefs mounts (their orphaned pagefs then flushes and
//! exits) and removes their local files (warm pool members, which hold nothing, exited when
//! their standard input closed with the manager), removes scratch and socket directories, and removes the
//! directories of endpoints no longer in the catalog (a delete that crashed half-way).
//! Stopping rather than adopting keeps one rule: a compute runs only as a child of the
//! manager that tracks it. The next wake starts it again, with crash recovery if needed.

use std::path::Path;
use std::time::Duration;

use lakebed_config::EndpointName;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ManagerError;
use crate::catalog::Catalog;
use crate::postgres::{EndpointDir, kill_postgres_in, remove_dir_if_exists};

/// Cleans up after a previous manager; see the module docs. Returns how many postmasters
/// were stopped.
pub async fn reconcile(
    data_dir: &Path,
    catalog: &Catalog,
    grace: Duration,
) -> Result<usize, ManagerError> {
    let template = data_dir.join("template");
    crate::storage::clear_stale(&template.join("pgdata"), &template.join("local"))?;
    let parent = EndpointDir::parent(data_dir);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(0);
    };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<EndpointName>().ok())
        else {
            continue;
        };
        let dir = EndpointDir::new(data_dir, &name);
        if crate::storage::is_mounted(&dir.pgdata()) {
            // On pagefs: everything acknowledged is in the page store, and the orphaned
            // pagefs may not reach it any more (a page store embedded in the dead manager),
            // so a graceful shutdown could hang on its fsyncs. Kill both; the next wake runs
            // crash recovery on a fresh mount with a newer generation.
            let mut pids = processes_with_arg(&dir.pgdata());
            for pid in crate::storage::pagefs_serving(&dir.pgdata()) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            for pid in pids {
                tracing::warn!(endpoint = %name, pid, "killing a compute process left by a previous manager");
                // Each leads its own process group; backends are each in their own and are
                // found by their working directory below.
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(Pid::from_raw(pid), grace).await;
                stopped += 1;
            }
        } else if let Some(pid) = live_postmaster(&dir.pgdata()) {
            tracing::warn!(endpoint = %name, pid, "stopping a compute left by a previous manager");
            stop_orphan(pid, grace).await;
            stopped += 1;
        }
        // Backends of a dead postmaster that did not exit with it (see `postgres::process`).
        let left = kill_postgres_in(&dir.pgdata(), grace).await;
        if left > 0 {
            tracing::warn!(endpoint = %name, processes = left, "killed backends left by a previous compute");
        }
        remove_dir_if_exists(&dir.run_dir())?;
        remove_dir_if_exists(&dir.root().join("pgdata.initdb"))?;
        crate::storage::clear_stale(&dir.pgdata(), &dir.local_dir())?;
        if matches!(
            catalog.endpoint(&name),
            Err(ManagerError::EndpointNotFound(_))
        ) {
            tracing::info!(endpoint = %name, "removing files of an endpoint that was deleted");
            remove_dir_if_exists(dir.root())?;
        }
    }
    Ok(stopped)
}

/// The pid in `pgdata/postmaster.pid` if that process is alive and is a postgres serving
/// this very directory (the pid file's second line; PostgreSQL docs §19.3 / `miscinit.c`).
fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let dir = lines.next()?.trim();
    if pid <= 0 || Path::new(dir) != pgdata {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("postgres")
        .then_some(pid)
}

/// Pids of processes with `path` as one of their arguments: the postgres processes
/// (`-D path`) and the pagefs (`--mountpoint path`) of one compute.
fn processes_with_arg(path: &Path) -> Vec<i32> {
    let want = path.as_os_str().as_encoded_bytes();
    crate::postgres::processes_where(|proc_dir| {
        std::fs::read(proc_dir.join("cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|a| a == want))
    })
}

/// Stops a postmaster that is not our child: we cannot wait() for it, so we watch /proc.
async fn stop_orphan(pid: i32, grace: Duration) {
    let pid = Pid::from_raw(pid);
    for signal in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGKILL] {
        if kill(pid, signal).is_err() {
            return; // already gone
        }
        wait_gone(pid, grace).await;
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
    }
}

/// Waits (at most `grace`) until `pid` is gone or a zombie: a signal is delivered
/// asynchronously, and the caller must not go on while the process still runs.
async fn wait_gone(pid: Pid, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
