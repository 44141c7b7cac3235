//! Log and trace setup for the long-running commands (`up`, `pageserver`): `tracing` to
//! standard error, as text (coloured on a terminal) or JSON lines (`[logging] format =
//! "json"`), levels from `RUST_LOG` (default `info`). No secret is ever a field of a span or
//! event.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, spans are also exported over OTLP/gRPC ([`lakebed_telemetry::export`]), and each
//! JSON line logged inside a traced span starts with its `trace_id` and `span_id`. Without
//! the variable there is no exporter and no trace id.

use anyhow::{Context, Result};
use lakebed_config::LogFormat;
use lakebed_telemetry::export::{TraceIdJson, Tracing};
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber, and the trace exporter if the environment asks for one.
/// The caller runs [`Tracing::shutdown`] before exiting, so no span is lost.
///
/// # Errors
///
/// An unusable `OTEL_EXPORTER_OTLP_*` setting, naming the variable.
pub fn init(format: LogFormat, default_filter: &str) -> Result<Tracing> {
    let tracing = lakebed_telemetry::export::init().context("traces")?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(TraceIdJson::new(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ))
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(tracing.layer())
        .init();
    Ok(tracing)
}
