//! Log setup for the long-running commands (`up`, `pageserver`): `tracing` to standard
//! error, as text (coloured on a terminal) or JSON lines (`[logging] format = "json"`), levels
//! from `RUST_LOG` (default `info`). No secret is ever a field of a span or event.

use lakebed_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
