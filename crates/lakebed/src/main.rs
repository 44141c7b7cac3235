//! `lakebed`: the single binary.
//!
//! - `lakebed up` runs the whole stack in one process, with data in `./.lakebed`.
//! - `lakebed endpoint ...` and `lakebed role ...` administer it through the compute manager's
//!   HTTP API, with the admin token from the data directory.
//! - `lakebed pageserver` runs the page store alone (its own process, so computes on other
//!   hosts can reach it and tests can kill it).
//!
//! Why clap (derive): the standard for Rust CLIs; help, errors and `--flag=value` forms come
//! out as users of other tools expect. Why reqwest: a well-kept HTTP client on the same
//! hyper stack as axum, so the binary carries one HTTP implementation. Why OpenTelemetry for
//! traces (exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set): the vendor-neutral
//! standard every tracing backend accepts; see `lakebed-telemetry`.
//!
//! Why jemalloc (tikv-jemallocator) as the allocator: the page store allocates and frees
//! memtables, blocks and write requests of every size from many threads. Under glibc's
//! malloc, per-thread arenas kept what they once held: the page store stayed at about twice
//! its live memory after a load (776 MiB against about 400 at rest in `bench/`'s runs).
//! jemalloc gives freed memory back to the system after a short delay; Neon's pageserver and
//! proxy use it for the same reason. It is C, small, and builds in about a minute.

mod cli;
mod client;
mod commands;
mod logging;
mod metrics;
mod pki;
mod up;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if is_one_shot(&cli.command) {
        end_quietly_on_broken_pipe();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command that prints and exits ends quietly when its reader goes away (`lakebed status
/// | head -1`), as other command-line tools do: SIGPIPE gets its default action back. Rust
/// ignores it, which turned a closed pipe into a panic in `println!`. Servers keep ignoring
/// it: there a client that goes away is an error on its socket, not the end of the process.
#[allow(unsafe_code)] // the one audited exception: no safe API sets a signal's disposition
fn end_quietly_on_broken_pipe() {
    // SAFETY: called at the start of main, before any other thread exists and before any
    // handler is installed; SIG_DFL is a valid disposition for SIGPIPE.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
}

/// Whether `command` prints and exits (not `up`, `pageserver` serving, or `pagefs`).
fn is_one_shot(command: &cli::Command) -> bool {
    !matches!(
        command,
        cli::Command::Up | cli::Command::Pagefs(_) | cli::Command::Pageserver { action: None, .. }
    )
}
