//! Lakebed's traces: the W3C trace context across process boundaries, and (feature `export`)
//! the OTLP exporter and log setup the `lakebed` binary installs.
//!
//! The services instrument themselves with plain `tracing` spans. When the binary installs
//! the OpenTelemetry layer ([`export`], only if `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set), those spans become OpenTelemetry spans, and
//! the helpers here carry a span's context over HTTP and gRPC as the `traceparent` header
//! ([`inject`] on the client, [`set_parent`] on the server), so one client connection is one
//! trace across the proxy, the compute manager and the page store. Without the layer the
//! helpers do nothing and cost a failed downcast.
//!
//! Why OpenTelemetry (`opentelemetry`, `opentelemetry_sdk`, `opentelemetry-otlp`,
//! `tracing-opentelemetry`): it is the vendor-neutral standard; every tracing backend (Jaeger,
//! Tempo, Honeycomb, Datadog, an OpenTelemetry Collector) accepts OTLP, and W3C trace context
//! is what other services and proxies propagate. `tracing-opentelemetry` turns the `tracing`
//! spans the code already has into OpenTelemetry spans, so there is one instrumentation API,
//! not two.

use std::marker::PhantomData;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[cfg(feature = "export")]
pub mod export;

/// The W3C header that carries the trace id, the caller's span id and the sampled flag.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header that carries vendor-specific trace state alongside `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// Calls `set(name, value)` for each trace-context header (`traceparent`, and `tracestate`
/// when there is one) that makes a remote server's span a child of `span`. Calls nothing
/// when `span` is not part of a trace (no exporter installed, or a disabled span).
///
/// Header names are lower case, valid both as HTTP header names and as gRPC metadata keys.
pub fn inject(span: &Span, mut set: impl FnMut(&'static str, String)) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let mut setter = Setter(|key: &str, value: String| match key {
        TRACEPARENT => set(TRACEPARENT, value),
        TRACESTATE => set(TRACESTATE, value),
        _ => {}
    });
    TraceContextPropagator::new().inject_context(&cx, &mut setter);
}

/// Makes `span` a child of the remote span named by the trace-context headers that `get`
/// returns (by lower-case name), if there is a valid `traceparent`. Call it right after
/// creating `span`, before anything is logged in it or a child span is made: a started span
/// can no longer change its parent. Without a valid header, or without an exporter, `span`
/// stays as it was.
pub fn set_parent<'a>(span: &Span, get: impl Fn(&str) -> Option<&'a str>) {
    if span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Getter(get, PhantomData));
    if cx.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, where there is nothing to link.
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 lower-case hex digits, if it is part of a trace.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct Setter<F>(F);

impl<F: FnMut(&str, String)> Injector for Setter<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value);
    }
}

/// `'a` is the headers' lifetime; as a parameter of the type, it outlives any borrow of a
/// `Getter`, so `get` may return it.
struct Getter<'a, F>(F, PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Getter<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        // The W3C propagator asks for its two headers by name and never lists keys.
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A subscriber with the OpenTelemetry layer over a provider that exports nothing.
    fn traced() -> impl tracing::Subscriber + Send + Sync {
        let provider = SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
    }

    #[test]
    fn without_the_layer_nothing_is_injected_and_no_trace_id() {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("plain");
        let mut headers = Vec::new();
        inject(&span, |k, v| headers.push((k, v)));
        assert!(headers.is_empty(), "{headers:?}");
        assert_eq!(trace_id(&span), None);
    }

    #[test]
    fn a_child_made_from_injected_headers_shares_the_trace() {
        let _guard = tracing::subscriber::set_default(traced());
        let client = tracing::info_span!("client");
        let mut headers = HashMap::new();
        inject(&client, |k, v| {
            headers.insert(k, v);
        });
        let parent = headers
            .get(TRACEPARENT)
            .expect("a traceparent header")
            .clone();
        let trace = trace_id(&client).expect("the client span is traced");
        // version-traceid-spanid-flags
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(parts.len(), 4, "{parent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace);
        assert_eq!(parts[3], "01", "sampled");

        // A server span in another "process": a root span, parented by the headers.
        let server = tracing::info_span!(parent: None, "server");
        set_parent(&server, |k| headers.get(k).map(String::as_str));
        assert_eq!(trace_id(&server).as_deref(), Some(trace.as_str()));
        let server_cx = server.context();
        let server_parent_span_id = client.context().span().span_context().span_id();
        assert_eq!(parts[2], server_parent_span_id.to_string());
        assert_ne!(
            server_cx.span().span_context().span_id(),
            server_parent_span_id,
            "the server span is a span of its own"
        );
    }

    #[test]
    fn garbage_headers_leave_the_span_alone() {
        let _guard = tracing::subscriber::set_default(traced());
        let server = tracing::info_span!(parent: None, "server");
        set_parent(&server, |k| (k == TRACEPARENT).then_some("00-zz-yy-01"));
        let own = trace_id(&server).expect("a root span still has a trace");
        assert_eq!(own.len(), 32);
        assert_ne!(own, "0".repeat(32));
    }
}
