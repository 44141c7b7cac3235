//! The CLI's client for the compute manager's HTTP API.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use serde_json::Value;

/// File in the data dir holding the admin bearer token (mode 0600).
pub const TOKEN_FILE: &str = "admin-token";
/// File in the data dir where `lakebed up` writes its API address while it runs.
pub const ADDR_FILE: &str = "api-addr";
/// File in the data dir where `lakebed up` writes the proxy's HTTP API address.
pub const PROXY_ADDR_FILE: &str = "proxy-api-addr";
/// File in the data dir where `lakebed up` (or `lakebed pageserver`) writes the page
/// store's gRPC address while it serves one.
pub const PAGESERVER_ADDR_FILE: &str = "pageserver-addr";

/// An authenticated API client.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// Builds a client for `base` (e.g. `http://127.0.0.1:6480`) with the token from
    /// `data_dir`.
    pub fn new(base: String, data_dir: &Path) -> Result<Self> {
        let token_path = data_dir.join(TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "cannot read the admin token at {}: is `lakebed up` running with this --data-dir?",
                    token_path.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        })
    }

    /// Sends a request and returns the JSON answer (`Value::Null` for 204).
    ///
    /// # Errors
    ///
    /// The API's error message for non-2xx answers; a hint when the API is unreachable.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the Lakebed API at {}: {e}; is `lakebed up` running?",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the API's answer")?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).context("the API's answer is not JSON");
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}: {text}"));
        bail!("{message}")
    }
}
