//! Traces and page store metrics: `lakebed up` exports one trace per client connection to an
//! OTLP/gRPC receiver (across the proxy -> compute manager HTTP call), exports nothing when no
//! OTLP endpoint is configured, and `lakebed pageserver` continues a client's trace over gRPC
//! and counts its requests on `/metrics`.

use bytes::Bytes;
use lakebed_pageserver_client::{ClientOptions, PageStoreClient, RpcError, TimelineId, WriteBatch};
use lakebed_tests::otlp::{OtlpReceiver, ReceivedSpan, ancestors};
use lakebed_tests::prom::{get, scrape, scrape_all};
use lakebed_tests::{Stack, connect_tls, tls};
use nix::sys::signal::Signal;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The one span named `name` in `spans` whose attributes include `attrs`; panics if there is
/// not exactly one.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, attrs: &[(&str, &str)]) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == name && attrs.iter().all(|(k, v)| s.attr(k) == Some(*v)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one {name} span with {attrs:?}; spans:\n{spans:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cold_start_connection_is_one_trace_from_the_proxy_into_the_compute_manager() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let s = Stack::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "lakebed-under-test"),
        ("LAKEBED_LOGGING__FORMAT", "json"),
    ])
    .await;

    // One client over TLS (SNI names the endpoint); the compute is suspended: a cold start.
    let client = connect_tls(&s.tls_config("main.lakebed.localhost"), tls(&s.ca()))
        .await
        .expect("connect through the proxy");
    let rows = client.simple_query("SELECT 1").await.expect("query");
    assert!(!rows.is_empty());
    drop(client);

    // `conn` ends last (when the proxy sees the client go); the rest ended before it.
    let needed = [
        "conn",
        "accept",
        "tls",
        "auth",
        "wake",
        "connect_compute",
        "session",
        "postgres_start",
        "apply_roles",
        "mount",
        "pagefs_mount",
    ];
    let spans = receiver
        .wait_for("the connection's spans", |spans| {
            needed.iter().all(|n| spans.iter().any(|s| s.name == *n))
                && spans.iter().filter(|s| s.name == "pagefs_mount").count() >= 2
                && spans.iter().filter(|s| s.name == "wake").count() >= 2
        })
        .await;

    let conn = one(&spans, "conn", &[("ep", "main"), ("role", "lakebed")]);
    assert!(
        conn.parent_span_id.is_empty(),
        "conn is the root: {conn:#?}"
    );
    let trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == conn.trace_id)
        .cloned()
        .collect();
    // Outside it only work no client asked for: pagefs's background flushes and page
    // fetches (FUSE requests carry no trace context), and the page store calls they make.
    for span in spans.iter().filter(|s| s.trace_id != conn.trace_id) {
        assert!(
            ["pagefs_flush", "pagefs_fetch"].contains(&span.name.as_str())
                || span.name.starts_with("pagestore."),
            "a span outside the connection's trace: {span:#?}"
        );
    }
    for span in &trace {
        assert_eq!(span.service, "lakebed-under-test", "{span:#?}");
    }
    // Proxy side: each step is a child of conn (tls inside accept).
    for name in ["accept", "auth", "connect_compute", "session"] {
        let span = one(&trace, name, &[]);
        assert_eq!(span.parent_span_id, conn.span_id, "{name}: {span:#?}");
    }
    let tls_span = one(&trace, "tls", &[]);
    assert_eq!(
        tls_span.parent_span_id,
        one(&trace, "accept", &[]).span_id,
        "tls is inside accept"
    );
    let proxy_wake = trace
        .iter()
        .find(|s| s.name == "wake" && s.parent_span_id == conn.span_id)
        .unwrap_or_else(|| panic!("no wake span under conn:\n{trace:#?}"));
    assert_eq!(proxy_wake.attr("cold"), Some("true"), "{proxy_wake:#?}");

    // Manager side, over HTTP: its wake span is a child of the proxy's, and the boot steps
    // are inside it.
    let manager_wake = trace
        .iter()
        .find(|s| s.name == "wake" && s.parent_span_id == proxy_wake.span_id)
        .unwrap_or_else(|| panic!("no manager wake span under the proxy's:\n{trace:#?}"));
    assert_eq!(manager_wake.attr("endpoint"), Some("main"));
    assert_eq!(manager_wake.attr("cold"), Some("true"));
    for name in ["postgres_start", "apply_roles"] {
        let step = one(&trace, name, &[]);
        let chain: Vec<&str> = ancestors(&trace, step)
            .iter()
            .map(|s| s.span_id.as_str())
            .collect();
        assert_eq!(
            chain.first().copied(),
            Some(manager_wake.span_id.as_str()),
            "{name} runs in the manager's wake"
        );
        assert!(
            chain.contains(&proxy_wake.span_id.as_str())
                && chain.last() == Some(&conn.span_id.as_str()),
            "{name}'s parents reach the proxy's wake and the conn root: {chain:?}"
        );
    }

    // The pagefs process continues the trace: its mount is inside the manager's mount step,
    // and its page store calls (acquire, the namespace scan) inside that.
    // (The first wake also builds the template timeline, with a pagefs of its own, inside
    // the `timeline` step.)
    let mount = one(&trace, "mount", &[]);
    let pagefs_mount = trace
        .iter()
        .find(|s| s.name == "pagefs_mount" && s.parent_span_id == mount.span_id)
        .unwrap_or_else(|| panic!("no pagefs_mount under mount:\n{trace:#?}"));
    assert!(
        trace
            .iter()
            .any(|s| s.name == "pagestore.acquire" && s.parent_span_id == pagefs_mount.span_id),
        "no pagestore.acquire under pagefs_mount:\n{trace:#?}"
    );

    // JSON log lines inside the trace carry its id, on both sides of the HTTP call.
    let log = s.up.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for message in ["session started", "compute active"] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"));
        assert_eq!(line["trace_id"], conn.trace_id.as_str(), "{line}");
    }
    let first = lines
        .first()
        .expect("a first line (start-up, outside any span)");
    assert!(
        first.get("trace_id").is_none() && first.get("span").is_none(),
        "a line outside any span has no trace id: {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_nothing_is_exported_and_connections_work() {
    // On the default OTLP port if it is free, so an exporter set up by default (which sends
    // to localhost:4317) would reach it; else on any port.
    let receiver = match OtlpReceiver::start_on("127.0.0.1:4317".parse().expect("addr")).await {
        Ok(r) => r,
        Err(_) => OtlpReceiver::start().await,
    };
    let mut s = Stack::start_with(&[("LAKEBED_LOGGING__FORMAT", "json")]).await;
    let client = s.client().await;
    let row = client.query_one("SELECT 41 + 1", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(client);

    // A clean stop would flush any exporter: once the process is gone, nothing is pending.
    s.up.signal(Signal::SIGTERM);
    let status = s.up.wait().await;
    assert!(status.success(), "lakebed up exits cleanly: {status:?}");
    assert_eq!(receiver.requests(), 0, "spans: {:#?}", receiver.spans());
    let log = s.up.log_text();
    assert!(
        log.contains("session started"),
        "the connection was logged:\n{log}"
    );
    assert!(
        !log.contains("trace_id"),
        "no trace ids without export:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_at_sigterm_are_sent_before_lakebed_up_exits() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    // A batch delay far longer than the test: only the shutdown flush can send the spans.
    let mut s = Stack::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ])
    .await;
    let client = s.client().await;
    client.simple_query("SELECT 1").await.expect("query");
    drop(client);
    // The connection's spans end once the proxy has seen the client go; stopping the proxy
    // waits for no client, so wait for that first (the active-connections gauge).
    let metrics = format!("{}/metrics", s.up.api_url);
    let deadline = tokio::time::Instant::now() + lakebed_tests::DEADLINE;
    loop {
        let now = scrape(&metrics).await;
        if get(&now, "lakebed_proxy_connections_accepted_total", &[]) == 1.0
            && get(&now, "lakebed_proxy_connections_active", &[]) == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never saw the client go"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Only the pagefs that built the template timeline has exited (and flushed) so far.
    let early = receiver.spans();
    assert!(
        early.iter().all(|s| s.name.starts_with("pagefs_")),
        "nothing of lakebed up is sent before the batch delay: {early:#?}"
    );

    s.up.signal(Signal::SIGTERM);
    let status = s.up.wait().await;
    assert!(status.success(), "lakebed up exits cleanly: {status:?}");
    let spans = receiver.spans();
    let conn = one(&spans, "conn", &[("ep", "main")]);
    assert!(
        spans
            .iter()
            .any(|s| s.name == "session" && s.parent_span_id == conn.span_id),
        "the whole connection arrived: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pageserver_metrics_count_requests_by_rpc_and_outcome_and_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ps = lakebed_tests::PageServerProcess::start(
        dir.path(),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let metrics_url = format!(
        "http://{}/metrics",
        ps.metrics_addr
            .expect("the page server prints its metrics address")
    );
    let before = scrape(&metrics_url).await;

    let client = PageStoreClient::connect(ClientOptions::new(ps.url()))
        .await
        .expect("connect to the page store");
    let id: TimelineId = "tl-metrics".parse().expect("timeline id");
    client.create_timeline(&id, None).await.expect("create");
    let generation = client.acquire(&id).await.expect("acquire");
    // Three writes: 3 + 5, 3 + 5 and 3 + 1000 key and value bytes.
    let value = Bytes::from(vec![7u8; 1000]);
    for (key, value) in [
        (&b"k-1"[..], Bytes::from_static(b"hello")),
        (&b"k-2"[..], Bytes::from_static(b"world")),
        (&b"k-3"[..], value.clone()),
    ] {
        client
            .write(&id, generation, WriteBatch::new().put(key.to_vec(), value))
            .await
            .expect("write");
    }
    // Two reads: 5 + 1000 value bytes, then 5 (a missing key answers nothing).
    let keys = |ks: &[&str]| -> Vec<Bytes> {
        ks.iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect()
    };
    client
        .read(&id, keys(&["k-1", "k-3"]), None)
        .await
        .expect("read");
    client
        .read(&id, keys(&["k-2", "nope"]), None)
        .await
        .expect("read");
    // One read of a timeline that does not exist.
    let missing: TimelineId = "tl-missing".parse().expect("timeline id");
    let err = client
        .read(&missing, keys(&["k-1"]), None)
        .await
        .expect_err("no such timeline");
    assert!(matches!(err, RpcError::NotFound { .. }), "{err:?}");

    let (after, samples) = scrape_all(&metrics_url).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };
    let requests = "lakebed_pagestore_requests_total";
    assert_eq!(
        delta(requests, &[("rpc", "create_timeline"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        delta(requests, &[("rpc", "acquire"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(delta(requests, &[("rpc", "write"), ("outcome", "ok")]), 3.0);
    assert_eq!(delta(requests, &[("rpc", "read"), ("outcome", "ok")]), 2.0);
    assert_eq!(
        delta(requests, &[("rpc", "read"), ("outcome", "not_found")]),
        1.0
    );
    assert_eq!(
        delta("lakebed_pagestore_bytes_written_total", &[]),
        (3 + 5 + 3 + 5 + 3 + 1000) as f64
    );
    assert_eq!(
        delta("lakebed_pagestore_bytes_read_total", &[]),
        (5 + 1000 + 5) as f64
    );
    // The latency histogram: one observation per write, in buckets (not a summary).
    assert_eq!(
        delta(
            "lakebed_pagestore_request_duration_seconds_count",
            &[("rpc", "write")]
        ),
        3.0
    );
    let histogram = samples
        .iter()
        .find(|s| {
            s.metric == "lakebed_pagestore_request_duration_seconds"
                && s.labels.get("rpc") == Some("read")
        })
        .expect("a histogram of read latencies");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    let all = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .expect("a +Inf bucket");
    assert_eq!(all.count, 3.0, "two reads and one refused read");
    assert!(buckets.len() > 5, "real buckets: {buckets:?}");
}

#[tokio::test]
async fn a_page_store_call_continues_the_callers_trace_over_grpc() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let dir = tempfile::tempdir().expect("temp dir");
    let ps = lakebed_tests::PageServerProcess::start_with(
        dir.path(),
        "127.0.0.1:0",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    // This test is the caller: a subscriber with the OpenTelemetry layer (nothing exported
    // from here), on this thread (a current-thread runtime polls everything here).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let caller = tracing::info_span!("caller");
    let caller_cx = caller.context();
    let caller_ids = caller_cx.span().span_context().clone();
    assert!(caller_ids.is_valid());

    let client = PageStoreClient::connect(ClientOptions::new(ps.url()))
        .await
        .expect("connect to the page store");
    let id: TimelineId = "tl-traced".parse().expect("timeline id");
    async {
        client.create_timeline(&id, None).await.expect("create");
        let generation = client.acquire(&id).await.expect("acquire");
        client
            .write(&id, generation, WriteBatch::new().put(&b"k"[..], &b"v"[..]))
            .await
            .expect("write");
    }
    .instrument(caller.clone())
    .await;
    // An untraced call: no trace context is sent, so its span is a root of its own.
    client.describe_timeline(&id).await.expect("describe");

    let spans = receiver
        .wait_for("the page store's spans", |spans| {
            [
                "pagestore.create_timeline",
                "pagestore.acquire",
                "pagestore.write",
                "pagestore.describe_timeline",
            ]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
        })
        .await;
    for name in [
        "pagestore.create_timeline",
        "pagestore.acquire",
        "pagestore.write",
    ] {
        let span = one(&spans, name, &[("timeline", "tl-traced")]);
        assert_eq!(
            span.trace_id,
            caller_ids.trace_id().to_string(),
            "{span:#?}"
        );
        assert_eq!(
            span.parent_span_id,
            caller_ids.span_id().to_string(),
            "{name} is a child of the caller's span"
        );
        assert_eq!(span.service, "lakebed", "the default service name");
    }
    let describe = one(&spans, "pagestore.describe_timeline", &[]);
    assert!(describe.parent_span_id.is_empty(), "{describe:#?}");
    assert_ne!(describe.trace_id, caller_ids.trace_id().to_string());
}
