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
