//! What the `lakebed` binary installs: the OTLP trace exporter (only when the standard
//! environment asks for it), the `tracing` layer that feeds it, and a JSON log format whose
//! lines carry the trace id.
//!
//! Configuration is the OpenTelemetry standard's, from the environment:
//!
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`: where to send
//!   spans, OTLP over gRPC, e.g. `http://127.0.0.1:4317` (a collector or agent; plaintext).
//!   Unset or empty: no exporter, no layer, no connection attempt.
//! - `OTEL_SERVICE_NAME`: the `service.name` resource attribute, default `lakebed`;
//!   `OTEL_RESOURCE_ATTRIBUTES` adds others.
//! - `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`: batching and export, as the
//!   SDK reads them.
//!
//! Spans are exported from a background thread in batches; [`Tracing::shutdown`] sends what
//! is left, so it must run before the process exits.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `service.name` when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "lakebed";

/// The environment variables that turn export on, most specific first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long [`Tracing::shutdown`] waits for the last spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the exporter could not be set up.
#[derive(Debug)]
pub struct ExportError {
    /// The variable whose value is unusable.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.reason)
    }
}

impl std::error::Error for ExportError {}

/// The installed trace export, to be shut down before the process exits.
#[derive(Debug, Default)]
#[must_use = "spans still queued are lost unless `shutdown` runs before exit"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// No export (the OTLP endpoint is not configured).
    pub fn disabled() -> Self {
        Self { provider: None }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans, if exporting. It takes
    /// Lakebed's own spans and events at `INFO` and above (targets `lakebed*`), whatever
    /// `RUST_LOG` says, so a quiet log does not thin out traces and dependencies' internals
    /// (HTTP/2, the exporter itself) never become spans.
    ///
    /// Entering and leaving a span costs it nothing: no busy/idle timing and no OpenTelemetry
    /// context switch per poll (children find their parent through `tracing`'s current span,
    /// and [`crate::inject`] reads a span's context directly). That matters for `session`,
    /// which is entered at every poll of a client's relay.
    pub fn layer<S>(&self) -> Option<impl Layer<S> + Send + Sync + 'static>
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let provider = self.provider.as_ref()?;
        let tracer = provider.tracer("lakebed");
        let ours = Targets::new()
            .with_target("lakebed", LevelFilter::INFO)
            .with_default(LevelFilter::OFF);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_threads(false)
                .with_filter(ours),
        )
    }

    /// Sends the spans still queued and stops the exporter (at most a few seconds). Runs on
    /// a blocking thread: the SDK waits synchronously for its export thread, which needs this
    /// runtime to drive the gRPC connection.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: flushing traces: {e}"),
            Err(e) => eprintln!("warning: flushing traces: {e}"),
        }
    }
}

/// The OTLP endpoint variable that is set (non-empty), if any.
pub fn configured_endpoint() -> Option<(&'static str, String)> {
    ENDPOINT_VARS.iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*var, v))
    })
}

/// Sets up the OTLP exporter if `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; else returns [`Tracing::disabled`] and touches
/// nothing. Must run inside the tokio runtime (the gRPC channel lives there); connects
/// lazily, so a collector that is down costs dropped spans, not a failed start.
///
/// # Errors
///
/// [`ExportError`] naming the variable: an `https://` endpoint (this build exports over
/// plaintext gRPC only: send to a local collector or agent) or one the exporter refuses.
pub fn init() -> Result<Tracing, ExportError> {
    let Some((variable, endpoint)) = configured_endpoint() else {
        return Ok(Tracing::disabled());
    };
    if endpoint.trim().starts_with("https://") {
        return Err(ExportError {
            variable,
            reason: format!(
                "{endpoint:?}: only plaintext OTLP/gRPC (http://) is supported; send to a local \
                 collector or agent"
            ),
        });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| ExportError {
            variable,
            reason: e.to_string(),
        })?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    Ok(Tracing {
        provider: Some(provider),
    })
}

/// A JSON event format that puts `"trace_id"` and `"span_id"` (hex) first in each line
/// logged inside a traced span, then everything the inner format writes.
///
/// A line has them only while traces are exported (the OpenTelemetry layer is what gives
/// spans their ids) and only inside a span; lines outside any span (start-up, shutdown) have
/// none. Needs the subscriber to be the global default (`init`, not `set_default`).
#[derive(Debug)]
pub struct TraceIdJson<F> {
    inner: F,
}

impl<F> TraceIdJson<F> {
    /// Wraps `inner`, which must write one JSON object per event.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIdJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            tracing::dispatcher::get_default(|dispatch| {
                span.scope().find_map(|s| {
                    use opentelemetry::trace::TraceContextExt;
                    let cx = tracing_opentelemetry::get_otel_context(&s.id(), dispatch)?;
                    let sc = cx.span().span_context().clone();
                    sc.is_valid().then_some((sc.trace_id(), sc.span_id()))
                })
            })
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        let comma = if rest.starts_with('}') { "" } else { "," };
        write!(
            writer,
            "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{comma}{rest}"
        )
    }
}
