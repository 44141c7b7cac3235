//! The compute manager's HTTP API (axum), on loopback, behind an admin bearer token.
//!
//! All routes but `GET /v1/health` need `Authorization: Bearer <token>`; the token lives in
//! `<data_dir>/admin-token` (mode 0600). Bodies and answers are JSON. Errors are
//! `{"error": {"code": "<ErrorCode>", "message": "..."}}` with the matching HTTP status.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/health` | | `{"status":"ok"}` |
//! | GET | `/v1/endpoints` | | `[EndpointView]` |
//! | POST | `/v1/endpoints` | `{"name", "tenant"?, "suspend_timeout"?, "keep_warm"?, "pool_mode"?}` | 201 `EndpointView` |
//! | GET | `/v1/endpoints/{ep}` | | `EndpointView` |
//! | PATCH | `/v1/endpoints/{ep}` | `{"suspend_timeout"?, "keep_warm"?, "pool_mode"?}` | `EndpointView` |
//! | DELETE | `/v1/endpoints/{ep}` | | 204 |
//! | POST | `/v1/endpoints/{ep}/wake` | | `WakeOutcome` |
//! | POST | `/v1/endpoints/{ep}/suspend` | | `{"state"}` |
//! | GET | `/v1/endpoints/{ep}/roles` | | `[RoleView]` |
//! | POST | `/v1/endpoints/{ep}/roles` | `{"name", "verifier"?, "pool_mode"?}` | 201 `{"name", "password"?}` |
//! | POST | `/v1/endpoints/{ep}/roles/{role}/password` | `{"verifier"?}` | `{"name", "password"?}` |
//! | GET | `/v1/endpoints/{ep}/roles/{role}/secret` | | `{"verifier", "pool_mode"}` (for the proxy) |
//! | PATCH | `/v1/endpoints/{ep}/roles/{role}` | `{"pool_mode": "transaction" or null}` | 204 |
//! | DELETE | `/v1/endpoints/{ep}/roles/{role}` | | 204 |
//!
//! A `password` appears in an answer only when the manager generated it; it is shown that
//! once and stored nowhere (the catalog keeps the SCRAM verifier).
//!
//! A wake runs in a `wake` span (field `cold`) that continues the caller's trace when the
//! request carries a W3C `traceparent` header (the proxy sends one), so the boot steps'
//! spans are part of the client connection's trace.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lakebed_config::{
    AutosuspendPolicy, EndpointName, KeepWarmWindow, PoolMode, RoleName, SuspendTimeout, TenantName,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::manager::{EndpointView, RoleView, WakeOutcome};
use crate::verifier::Verifier;
use crate::{ErrorCode, Manager, ManagerError};

#[derive(Clone)]
struct AppState {
    manager: Manager,
    token: Arc<str>,
}

/// Builds the API router for `manager`, checking bearer tokens against `token`.
pub fn router(manager: Manager, token: &str) -> Router {
    let state = AppState {
        manager,
        token: token.into(),
    };
    let authed = Router::new()
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/v1/endpoints/{ep}",
            get(show_endpoint).patch(set_policy).delete(delete_endpoint),
        )
        .route("/v1/endpoints/{ep}/wake", post(wake))
        .route("/v1/endpoints/{ep}/suspend", post(suspend))
        .route(
            "/v1/endpoints/{ep}/roles",
            get(list_roles).post(create_role),
        )
        .route(
            "/v1/endpoints/{ep}/roles/{role}",
            axum::routing::delete(delete_role).patch(patch_role),
        )
        .route(
            "/v1/endpoints/{ep}/roles/{role}/password",
            post(set_password),
        )
        .route("/v1/endpoints/{ep}/roles/{role}/secret", get(role_secret))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{t}/keys", get(show_keys))
        .route("/v1/tenants/{t}/keys/rotate", post(rotate_keys))
        .route("/v1/tenants/{t}/keys/set-cmk", post(set_cmk))
        .route("/v1/tenants/{t}/keys/rekey", post(rekey))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .merge(authed)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .with_state(state)
}

/// Renders the process's metrics in the Prometheus text format.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the API on `listener` until [`Manager::shutdown`] begins; with `metrics`, also
/// `GET /metrics` (Prometheus text format, no token: it holds no secrets).
pub async fn serve(
    listener: tokio::net::TcpListener,
    manager: Manager,
    token: String,
    metrics: Option<RenderMetrics>,
) -> std::io::Result<()> {
    let closing = manager.closing().clone();
    let mut app = router(manager, &token);
    if let Some(render) = metrics {
        app = app.route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render(),
                    )
                }
            }),
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { closing.cancelled().await })
        .await
}

/// An API error: a code and a message, sent as JSON with the code's HTTP status.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            ErrorCode::InvalidInput,
            format!("request body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (status, body).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), state.token.as_bytes()) => next.run(req).await,
        _ => ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong bearer token (see <data_dir>/admin-token)",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn endpoint_name(text: &str) -> ApiResult<EndpointName> {
    text.parse::<EndpointName>()
        .map_err(|e| ManagerError::from(e).into())
}

fn tenant_name(text: &str) -> ApiResult<TenantName> {
    text.parse::<TenantName>()
        .map_err(|e| ManagerError::from(e).into())
}

fn role_name(text: &str) -> ApiResult<RoleName> {
    text.parse::<RoleName>()
        .map_err(|e| ManagerError::from(e).into())
}

fn invalid(text: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, text.to_string())
}

/// Policy fields as they arrive in a body; `None` leaves a field as it was.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyPatch {
    suspend_timeout: Option<String>,
    keep_warm: Option<Vec<String>>,
    pool_mode: Option<String>,
}

fn pool_mode(text: Option<&str>) -> ApiResult<Option<PoolMode>> {
    text.map(|m| {
        m.parse::<PoolMode>()
            .map_err(|e| invalid(format!("pool_mode: {e}")))
    })
    .transpose()
}

impl PolicyPatch {
    fn apply(self, mut policy: AutosuspendPolicy) -> ApiResult<AutosuspendPolicy> {
        if let Some(t) = self.suspend_timeout {
            policy.suspend_timeout = t
                .parse::<SuspendTimeout>()
                .map_err(|e| invalid(format!("suspend_timeout: {e}")))?;
        }
        if let Some(windows) = self.keep_warm {
            policy.keep_warm = windows
                .iter()
                .map(|w| w.parse::<KeepWarmWindow>())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("keep_warm: {e}")))?;
        }
        Ok(policy)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    name: String,
    tenant: Option<String>,
    suspend_timeout: Option<String>,
    keep_warm: Option<Vec<String>>,
    pool_mode: Option<String>,
}

async fn list_endpoints(State(s): State<AppState>) -> ApiResult<Json<Vec<EndpointView>>> {
    Ok(Json(s.manager.list()?))
}

async fn create_endpoint(
    State(s): State<AppState>,
    body: Result<Json<CreateEndpoint>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<EndpointView>)> {
    let Json(body) = body?;
    let name = endpoint_name(&body.name)?;
    let tenant: TenantName = body
        .tenant
        .as_deref()
        .unwrap_or("default")
        .parse()
        .map_err(|e| ApiError::from(ManagerError::from(e)))?;
    let mode = pool_mode(body.pool_mode.as_deref())?;
    let policy = PolicyPatch {
        suspend_timeout: body.suspend_timeout,
        keep_warm: body.keep_warm,
        pool_mode: None,
    }
    .apply(AutosuspendPolicy::default())?;
    s.manager.create_endpoint(&name, &tenant, &policy)?;
    if let Some(mode) = mode {
        s.manager.set_pool_mode(&name, mode)?;
    }
    Ok((StatusCode::CREATED, Json(s.manager.show(&name)?)))
}

async fn show_endpoint(
    State(s): State<AppState>,
    Path(ep): Path<String>,
) -> ApiResult<Json<EndpointView>> {
    Ok(Json(s.manager.show(&endpoint_name(&ep)?)?))
}

async fn set_policy(
    State(s): State<AppState>,
    Path(ep): Path<String>,
    body: Result<Json<PolicyPatch>, JsonRejection>,
) -> ApiResult<Json<EndpointView>> {
    let Json(patch) = body?;
    let name = endpoint_name(&ep)?;
    let mode = pool_mode(patch.pool_mode.as_deref())?;
    let current = s.manager.catalog().endpoint(&name)?.policy;
    let policy = patch.apply(current)?;
    s.manager.set_policy(&name, &policy)?;
    if let Some(mode) = mode {
        s.manager.set_pool_mode(&name, mode)?;
    }
    Ok(Json(s.manager.show(&name)?))
}

async fn delete_endpoint(
    State(s): State<AppState>,
    Path(ep): Path<String>,
) -> ApiResult<StatusCode> {
    s.manager.delete_endpoint(&endpoint_name(&ep)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wake(
    State(s): State<AppState>,
    Path(ep): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<WakeOutcome>> {
    let span = tracing::info_span!("wake", endpoint = %ep, cold = tracing::field::Empty);
    lakebed_telemetry::set_parent(&span, |name| {
        headers.get(name).and_then(|v| v.to_str().ok())
    });
    let name = endpoint_name(&ep)?;
    let woken = s.manager.wake(&name).instrument(span.clone()).await?;
    span.record("cold", woken.cold_start_ms.is_some());
    Ok(Json(woken))
}

async fn suspend(
    State(s): State<AppState>,
    Path(ep): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let state = s.manager.suspend(&endpoint_name(&ep)?).await?;
    Ok(Json(json!({ "state": state })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRole {
    name: String,
    verifier: Option<String>,
    pool_mode: Option<String>,
}

/// `PATCH /v1/endpoints/{ep}/roles/{role}`: `pool_mode` a mode, or `null` for the endpoint's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePatch {
    pool_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    verifier: Option<String>,
}

/// The answer to a role create or password reset.
#[derive(Debug, Serialize)]
struct RoleSecret {
    name: RoleName,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

async fn list_roles(
    State(s): State<AppState>,
    Path(ep): Path<String>,
) -> ApiResult<Json<Vec<RoleView>>> {
    Ok(Json(s.manager.roles(&endpoint_name(&ep)?)?))
}

async fn create_role(
    State(s): State<AppState>,
    Path(ep): Path<String>,
    body: Result<Json<CreateRole>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RoleSecret>)> {
    let Json(body) = body?;
    let ep = endpoint_name(&ep)?;
    let name = role_name(&body.name)?;
    let verifier = body.verifier.as_deref().map(Verifier::parse).transpose()?;
    let mode = pool_mode(body.pool_mode.as_deref())?;
    let password = s.manager.create_role(&ep, &name, verifier).await?;
    if mode.is_some() {
        s.manager.set_role_pool_mode(&ep, &name, mode)?;
    }
    Ok((StatusCode::CREATED, Json(RoleSecret { name, password })))
}

async fn set_password(
    State(s): State<AppState>,
    Path((ep, role)): Path<(String, String)>,
    body: Result<Json<SetPassword>, JsonRejection>,
) -> ApiResult<Json<RoleSecret>> {
    let Json(body) = body?;
    let ep = endpoint_name(&ep)?;
    let name = role_name(&role)?;
    let verifier = body.verifier.as_deref().map(Verifier::parse).transpose()?;
    let password = s.manager.set_role_password(&ep, &name, verifier).await?;
    Ok(Json(RoleSecret { name, password }))
}

async fn role_secret(
    State(s): State<AppState>,
    Path((ep, role)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let (verifier, mode) = s
        .manager
        .role_verifier(&endpoint_name(&ep)?, &role_name(&role)?)?;
    Ok(Json(
        json!({ "verifier": verifier.as_str(), "pool_mode": mode }),
    ))
}

async fn patch_role(
    State(s): State<AppState>,
    Path((ep, role)): Path<(String, String)>,
    body: Result<Json<RolePatch>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(body) = body?;
    let mode = pool_mode(body.pool_mode.as_deref())?;
    s.manager
        .set_role_pool_mode(&endpoint_name(&ep)?, &role_name(&role)?, mode)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_role(
    State(s): State<AppState>,
    Path((ep, role)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.manager
        .delete_role(&endpoint_name(&ep)?, &role_name(&role)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    /// The CMK (key id, ARN or alias); default: `keys.default_kms_key_id`.
    kms_key_id: Option<String>,
}

/// Body of `POST /v1/tenants/{t}/keys/set-cmk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCmk {
    kms_key_id: String,
}

async fn list_tenants(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<crate::catalog::TenantRecord>>> {
    Ok(Json(s.manager.catalog().tenants()?))
}

async fn create_tenant(
    State(s): State<AppState>,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<crate::catalog::TenantRecord>)> {
    let Json(body) = body?;
    let name = tenant_name(&body.name)?;
    let record = s
        .manager
        .create_tenant(&name, body.kms_key_id.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn show_keys(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<Json<crate::KeysView>> {
    Ok(Json(s.manager.keys_show(&tenant_name(&t)?).await?))
}

async fn rotate_keys(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(s.manager.keys_rotate(&tenant_name(&t)?).await?))
}

async fn set_cmk(
    State(s): State<AppState>,
    Path(t): Path<String>,
    body: Result<Json<SetCmk>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(body) = body?;
    Ok(Json(
        s.manager
            .keys_set_cmk(&tenant_name(&t)?, &body.kms_key_id)
            .await?,
    ))
}

async fn rekey(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let version = s.manager.keys_rekey(&tenant_name(&t)?).await?;
    Ok(Json(json!({
        "dek_version": version,
        "note": "computes seal new writes under it from their next wake"
    })))
}
