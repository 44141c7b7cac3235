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

mod cli;
mod client;
mod commands;
mod logging;
mod metrics;
mod pki;
mod up;

use std::process::ExitCode;

use clap::Parser;

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
