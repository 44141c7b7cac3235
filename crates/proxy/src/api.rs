//! The proxy's small HTTP API, behind the same admin bearer token as the compute manager's:
//! `GET /v1/pools` (what `lakebed pools` prints) and `GET /v1/health`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::pool::{PoolView, Pools};

#[derive(Clone)]
struct ApiState {
    pools: Arc<Pools>,
    token: Arc<str>,
}

/// Renders the process's metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the API on `listener` until `shutdown`; with `metrics`, also `GET /metrics`
/// (Prometheus text format, no token), after updating the pool gauges.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pools: Arc<Pools>,
    token: String,
    shutdown: CancellationToken,
    metrics: Option<RenderMetrics>,
) -> std::io::Result<()> {
    let s_pools = pools.clone();
    let state = ApiState {
        pools,
        token: token.into(),
    };
    let app = Router::new()
        .route("/v1/pools", get(pools_view))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route(
            "/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "not_found", "message": "no such API route"}})),
            )
        })
        .with_state(state);
    let app = match metrics {
        Some(render) => {
            let pools = s_pools;
            app.route(
                "/metrics",
                get(move || {
                    let (render, pools) = (render.clone(), pools.clone());
                    async move {
                        pools.record_gauges();
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            render(),
                        )
                    }
                }),
            )
        }
        None => app,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn pools_view(State(s): State<ApiState>) -> Json<Vec<PoolView>> {
    Json(s.pools.views())
}

async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok =
        given.is_some_and(|g| bool::from(subtle::ConstantTimeEq::ct_eq(g, s.token.as_bytes())));
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}})),
        )
            .into_response()
    }
}
