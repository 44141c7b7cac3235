//! The proxy's client for the compute manager's HTTP API: role secrets (cached briefly)
//! and wakes. The proxy holds the admin bearer token. Requests carry the W3C `traceparent`
//! of the current span, so the manager's spans join the client connection's trace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lakebed_config::{EndpointName, PoolMode, RoleName};
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::{Instrument, field};

use crate::error::ProxyError;
use crate::scram::ScramSecret;

/// Where the compute manager's API is and how to authenticate to it.
#[derive(Clone)]
pub struct ControlPlaneOptions {
    /// Base URL, e.g. `http://127.0.0.1:6480`.
    pub base_url: String,
    /// The admin bearer token.
    pub token: String,
    /// How long a fetched role secret is reused.
    pub secret_ttl: Duration,
}

impl std::fmt::Debug for ControlPlaneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneOptions")
            .field("base_url", &self.base_url)
            .field("secret_ttl", &self.secret_ttl)
            .finish_non_exhaustive()
    }
}

type CacheKey = (EndpointName, RoleName);

/// What the proxy needs to know of a role: its SCRAM secret and how to pool it.
#[derive(Debug, Clone)]
pub struct RoleAuth {
    /// The role's SCRAM secret.
    pub secret: Arc<ScramSecret>,
    /// The role's pool mode (its own, else its endpoint's).
    pub pool_mode: PoolMode,
}

/// The compute manager, as the proxy sees it.
pub struct ControlPlane {
    opts: ControlPlaneOptions,
    http: reqwest::Client,
    secrets: Mutex<HashMap<CacheKey, (RoleAuth, Instant)>>,
}

#[derive(Deserialize)]
struct SecretAnswer {
    verifier: String,
    #[serde(default)]
    pool_mode: PoolMode,
}

#[derive(Deserialize)]
struct WakeAnswer {
    address: SocketAddr,
    /// Set when this wake started the compute (a cold start).
    #[serde(default)]
    cold_start_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl ControlPlane {
    /// A client for `opts`.
    pub fn new(opts: ControlPlaneOptions) -> Self {
        Self {
            opts,
            http: reqwest::Client::new(),
            secrets: Mutex::new(HashMap::new()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.opts.base_url.trim_end_matches('/'))
    }

    /// The SCRAM secret of `role` on `endpoint`; `Ok(None)` if either does not exist.
    /// Found secrets are cached for the configured TTL; absences are not, so a role
    /// created a moment ago can log in at once.
    ///
    /// # Errors
    ///
    /// [`ProxyError::ControlPlane`] if the manager is unreachable or answers garbage.
    pub async fn role_secret(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
    ) -> Result<Option<RoleAuth>, ProxyError> {
        let key = (endpoint.clone(), role.clone());
        if let Some((auth, at)) = self.lock().get(&key)
            && at.elapsed() < self.opts.secret_ttl
        {
            return Ok(Some(auth.clone()));
        }
        let resp = self
            .http
            .get(self.url(&format!("/v1/endpoints/{endpoint}/roles/{role}/secret")))
            .headers(trace_headers())
            .bearer_auth(&self.opts.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| ProxyError::ControlPlane(e.to_string()))?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => {
                return Err(ProxyError::ControlPlane(format!("secret lookup: HTTP {s}")));
            }
            _ => {}
        }
        let answer: SecretAnswer = resp
            .json()
            .await
            .map_err(|e| ProxyError::ControlPlane(format!("secret lookup: {e}")))?;
        let secret = Arc::new(ScramSecret::parse(&answer.verifier).ok_or_else(|| {
            ProxyError::ControlPlane("secret lookup: not a SCRAM-SHA-256 verifier".into())
        })?);
        let auth = RoleAuth {
            secret,
            pool_mode: answer.pool_mode,
        };
        self.lock().insert(key, (auth.clone(), Instant::now()));
        Ok(Some(auth))
    }

    /// Forgets a cached secret (the compute refused it: the password changed).
    pub fn invalidate(&self, endpoint: &EndpointName, role: &RoleName) {
        self.lock().remove(&(endpoint.clone(), role.clone()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (RoleAuth, Instant)>> {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the endpoint and returns its compute's address, waiting at most `timeout`.
    /// Traced as a `wake` span whose `cold` field says whether this wake started the
    /// compute; the manager's spans of the wake are its children.
    ///
    /// # Errors
    ///
    /// [`ProxyError::WakeFailed`] with the manager's reason (first line only: the log
    /// tail stays with the operator), or [`ProxyError::ControlPlane`].
    pub async fn wake(
        &self,
        endpoint: &EndpointName,
        timeout: Duration,
    ) -> Result<SocketAddr, ProxyError> {
        let span = tracing::info_span!("wake", cold = field::Empty);
        self.wake_in_span(endpoint, timeout).instrument(span).await
    }

    async fn wake_in_span(
        &self,
        endpoint: &EndpointName,
        timeout: Duration,
    ) -> Result<SocketAddr, ProxyError> {
        let resp = self
            .http
            .post(self.url(&format!("/v1/endpoints/{endpoint}/wake")))
            .headers(trace_headers())
            .bearer_auth(&self.opts.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ProxyError::WakeFailed {
                        endpoint: endpoint.to_string(),
                        reason: format!("compute not ready after {}s", timeout.as_secs()),
                    }
                } else {
                    ProxyError::ControlPlane(e.to_string())
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            let answer: WakeAnswer = resp
                .json()
                .await
                .map_err(|e| ProxyError::ControlPlane(format!("wake: {e}")))?;
            tracing::Span::current().record("cold", answer.cold_start_ms.is_some());
            return Ok(answer.address);
        }
        let body: Option<ErrorAnswer> = resp.json().await.ok();
        match body {
            Some(ErrorAnswer { error })
                if error.code != "internal" && error.code != "unauthorized" =>
            {
                Err(ProxyError::WakeFailed {
                    endpoint: endpoint.to_string(),
                    reason: error.message.lines().next().unwrap_or_default().to_owned(),
                })
            }
            _ => Err(ProxyError::ControlPlane(format!("wake: HTTP {status}"))),
        }
    }
}

/// The current span's trace-context headers (none if it is not traced), so the manager's
/// spans join the caller's trace.
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    lakebed_telemetry::inject(&tracing::Span::current(), |name, value| {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    });
    headers
}
