//! An in-test OTLP trace receiver: the collector side of OTLP/gRPC, built on the published
//! OTLP protobuf types (`opentelemetry-proto`), on a loopback port. It keeps every span it is
//! sent, flattened to [`ReceivedSpan`], and lets a test await the spans it expects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::DEADLINE;

/// One span as the receiver got it. Ids are lower-case hex; a root span's `parent_span_id`
/// is empty.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Attributes, values as text (`true`, `42`, `main`).
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver. Dropping it stops the server.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: watch::Receiver<Vec<ReceivedSpan>>,
    requests: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

struct Sink {
    spans: watch::Sender<Vec<ReceivedSpan>>,
    requests: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut got = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    got.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.send_modify(|spans| spans.extend(got));
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bind a loopback port for the OTLP receiver")
    }

    /// Starts a receiver on `addr`.
    ///
    /// # Errors
    ///
    /// The bind error (say, the port is in use).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (spans_tx, spans) = watch::channel(Vec::new());
        let requests = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            spans: spans_tx,
            requests: requests.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            spans,
            requests,
            _stop: stop,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.borrow().clone()
    }

    /// Waits (at most [`DEADLINE`]) until the spans received satisfy `done`, and returns
    /// them. Panics naming `what`, with the spans seen, if the deadline passes.
    pub async fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut rx = self.spans.clone();
        match timeout(DEADLINE, rx.wait_for(|spans| done(spans))).await {
            Ok(Ok(spans)) => spans.clone(),
            Ok(Err(_)) => panic!("the OTLP receiver stopped while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {DEADLINE:?}; spans received:\n{:#?}",
                self.spans()
            ),
        }
    }
}

/// `span`'s ancestors among `spans`, nearest first (up to the first parent that is not among
/// them).
pub fn ancestors<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut chain = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        let Some(p) = spans.iter().find(|s| s.span_id == parent) else {
            break;
        };
        chain.push(p);
        parent = p.parent_span_id.clone();
    }
    chain
}
