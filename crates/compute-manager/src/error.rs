//! One error type for the manager, with a stable machine-readable code for the API.

use std::io;
use std::path::PathBuf;

use lakebed_config::NameError;

/// A stable, machine-readable error code, sent as `error.code` in API responses.
///
/// Codes never change meaning once published; clients (the CLI, the proxy) match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The named endpoint is not in the catalog. HTTP 404.
    EndpointNotFound,
    /// An endpoint with that name already exists. HTTP 409.
    EndpointExists,
    /// The named role does not exist on that endpoint. HTTP 404.
    RoleNotFound,
    /// A role with that name already exists on that endpoint. HTTP 409.
    RoleExists,
    /// The named tenant is not in the catalog. HTTP 404.
    TenantNotFound,
    /// A tenant with that name already exists. HTTP 409.
    TenantExists,
    /// The tenant's CMK cannot be used (disabled, pending deletion, not found): nothing of
    /// the tenant can be read or started. HTTP 503; the proxy answers 57P03.
    KeyUnavailable,
    /// The KMS could not be reached or refused the call for another reason. HTTP 503.
    KmsFailed,
    /// A name, duration, window or body field is malformed. HTTP 400.
    InvalidInput,
    /// The bearer token is missing or wrong. HTTP 401.
    Unauthorized,
    /// No such API route. HTTP 404.
    NotFound,
    /// The route exists but not with that method. HTTP 405.
    MethodNotAllowed,
    /// The compute could not be started (see the message and log tail). HTTP 503.
    ComputeStartFailed,
    /// No free TCP port was found for a compute. HTTP 503.
    NoFreePort,
    /// The PostgreSQL server binaries are missing. HTTP 500.
    PostgresNotFound,
    /// The manager is shutting down. HTTP 503.
    ShuttingDown,
    /// Anything else; the message says what. HTTP 500.
    Internal,
}

/// Errors from the compute manager.
///
/// Messages are written for the operator who typed the command. None of them contains a
/// password or verifier.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The endpoint is not in the catalog.
    #[error("endpoint \"{0}\" does not exist")]
    EndpointNotFound(String),
    /// An endpoint with that name already exists.
    #[error("endpoint \"{0}\" already exists")]
    EndpointExists(String),
    /// The role does not exist on the endpoint.
    #[error("role \"{role}\" does not exist on endpoint \"{endpoint}\"")]
    RoleNotFound {
        /// Endpoint name.
        endpoint: String,
        /// Role name.
        role: String,
    },
    /// The role already exists on the endpoint.
    #[error("role \"{role}\" already exists on endpoint \"{endpoint}\"")]
    RoleExists {
        /// Endpoint name.
        endpoint: String,
        /// Role name.
        role: String,
    },
    /// The tenant is not in the catalog.
    #[error("tenant \"{0}\" does not exist")]
    TenantNotFound(String),
    /// A tenant with that name already exists.
    #[error("tenant \"{0}\" already exists")]
    TenantExists(String),
    /// The tenant's CMK is in a state that forbids its use. The message names the key and
    /// its state, never key material.
    #[error(
        "the key of tenant \"{tenant}\" ({key_id}) is {state}: its data cannot be read until the key is enabled again"
    )]
    KeyUnavailable {
        /// Tenant.
        tenant: String,
        /// The CMK's id or ARN.
        key_id: String,
        /// Its state, as KMS names it (e.g. `Disabled`, `PendingDeletion`).
        state: String,
    },
    /// A KMS call failed for another reason (unreachable, access denied, bad ciphertext).
    #[error("KMS ({operation}) for tenant \"{tenant}\": {reason}")]
    KmsFailed {
        /// Tenant.
        tenant: String,
        /// What was being done.
        operation: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A name failed validation.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// Any other malformed input; the text says what and why.
    #[error("{0}")]
    InvalidInput(String),
    /// Every port in the configured range is taken.
    #[error("no free port for a compute in {range}; widen compute.port_range or free a port")]
    NoFreePort {
        /// The range searched, as configured (`auto` or `LOW-HIGH`).
        range: String,
    },
    /// The PostgreSQL server binaries were not found.
    #[error(
        "PostgreSQL server binaries not found ({searched}); install them with \
         `apt-get install postgresql` or set compute.pg_bin_dir"
    )]
    PostgresNotFound {
        /// What was searched, for the message.
        searched: String,
    },
    /// The OS user that computes run as does not exist.
    #[error(
        "OS user \"{0}\" (compute.os_user) does not exist; Debian's postgresql package \
         creates \"postgres\", or set compute.os_user"
    )]
    NoSuchOsUser(String),
    /// The compute did not come up. `log_tail` holds the end of its Postgres log.
    #[error("compute for endpoint \"{endpoint}\" failed to start: {reason}{}", tail_suffix(.log_tail))]
    StartFailed {
        /// Endpoint name.
        endpoint: String,
        /// What went wrong, in one line.
        reason: String,
        /// Last lines of the Postgres log of this boot (may be empty).
        log_tail: String,
    },
    /// The catalog database failed.
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A SQL command on a compute failed (role sync, checkpoint).
    #[error(
        "on the compute of endpoint \"{endpoint}\": {}",
        sql_error_text(source)
    )]
    ComputeSql {
        /// Endpoint name.
        endpoint: String,
        /// The error from tokio-postgres.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The manager is shutting down and takes no new work.
    #[error("the compute manager is shutting down")]
    ShuttingDown,
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- postgres log (tail) ---\n{}", tail.trim_end())
    }
}

impl ManagerError {
    /// The stable code for API clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::EndpointNotFound(_) => ErrorCode::EndpointNotFound,
            Self::EndpointExists(_) => ErrorCode::EndpointExists,
            Self::RoleNotFound { .. } => ErrorCode::RoleNotFound,
            Self::RoleExists { .. } => ErrorCode::RoleExists,
            Self::TenantNotFound(_) => ErrorCode::TenantNotFound,
            Self::TenantExists(_) => ErrorCode::TenantExists,
            Self::KeyUnavailable { .. } => ErrorCode::KeyUnavailable,
            Self::KmsFailed { .. } => ErrorCode::KmsFailed,
            Self::InvalidName(_) | Self::InvalidInput(_) => ErrorCode::InvalidInput,
            Self::NoFreePort { .. } => ErrorCode::NoFreePort,
            Self::PostgresNotFound { .. } | Self::NoSuchOsUser(_) => ErrorCode::PostgresNotFound,
            Self::StartFailed { .. } => ErrorCode::ComputeStartFailed,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::Catalog(_) | Self::Io { .. } | Self::ComputeSql { .. } => ErrorCode::Internal,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::EndpointNotFound | Self::RoleNotFound | Self::TenantNotFound | Self::NotFound => {
                404
            }
            Self::EndpointExists | Self::RoleExists | Self::TenantExists => 409,
            Self::InvalidInput => 400,
            Self::Unauthorized => 401,
            Self::MethodNotAllowed => 405,
            Self::ComputeStartFailed
            | Self::NoFreePort
            | Self::ShuttingDown
            | Self::KeyUnavailable
            | Self::KmsFailed => 503,
            Self::PostgresNotFound | Self::Internal => 500,
        }
    }
}

/// A tokio-postgres error as one line: the server's severity, SQLSTATE and message when it
/// sent an ErrorResponse (its `Display` alone says only "db error"), else the error and its
/// cause.
pub fn sql_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
