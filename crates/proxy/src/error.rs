//! Errors of the proxy, and what each one tells the client.
//!
//! Every error that can reach a client maps to a SQLSTATE (PostgreSQL docs, Appendix A) and a
//! message that is safe to show: no addresses, secrets or upstream bodies. Before the client
//! is authenticated, an unknown endpoint or role gets exactly the answer a wrong password
//! gets, so that nobody learns which endpoints exist.

use std::borrow::Cow;
use std::fmt;

/// A five-character SQLSTATE code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// 08P01 protocol_violation.
    pub const PROTOCOL_VIOLATION: Self = Self(*b"08P01");
    /// 08006 connection_failure (the connection to the compute was lost mid-session).
    pub const CONNECTION_FAILURE: Self = Self(*b"08006");
    /// 0A000 feature_not_supported (e.g. an unsupported protocol major version).
    pub const FEATURE_NOT_SUPPORTED: Self = Self(*b"0A000");
    /// 28000 invalid_authorization_specification (TLS required, no endpoint named, ...).
    pub const INVALID_AUTHORIZATION: Self = Self(*b"28000");
    /// 28P01 invalid_password.
    pub const INVALID_PASSWORD: Self = Self(*b"28P01");
    /// 53300 too_many_connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self(*b"53300");
    /// 57P03 cannot_connect_now: what Postgres says while starting; we say it while a
    /// compute cannot be started or reached.
    pub const CANNOT_CONNECT_NOW: Self = Self(*b"57P03");
    /// 57P05 idle_session_timeout.
    pub const IDLE_SESSION_TIMEOUT: Self = Self(*b"57P05");
    /// 25P03 idle_in_transaction_session_timeout.
    pub const IDLE_IN_TRANSACTION_TIMEOUT: Self = Self(*b"25P03");
    /// XX000 internal_error.
    pub const INTERNAL_ERROR: Self = Self(*b"XX000");

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can end a client connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client broke the wire protocol.
    #[error("protocol violation: {0}")]
    Protocol(Cow<'static, str>),
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The client did not use TLS and the proxy requires it.
    #[error("TLS is required: connect with sslmode=require (or verify-full)")]
    TlsRequired,
    /// The TLS handshake failed; nothing can be written to the client.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    /// No endpoint could be found in SNI, options, password or the default.
    #[error(
        "no endpoint named: connect to ENDPOINT.{domain} over TLS, or add options=endpoint=ENDPOINT \
         to the connection string (PGOPTIONS='endpoint=ENDPOINT'), or send the password as \
         endpoint=ENDPOINT;PASSWORD"
    )]
    NoEndpoint {
        /// The configured SNI domain, for the hint.
        domain: String,
    },
    /// SNI and `options` name different endpoints.
    #[error("the TLS server name names endpoint \"{sni}\" but options name \"{options}\"")]
    EndpointConflict {
        /// Endpoint from SNI.
        sni: String,
        /// Endpoint from options.
        options: String,
    },
    /// Something Postgres supports that the proxy does not carry (replication).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A name in the startup packet is malformed.
    #[error("{0}")]
    InvalidName(String),
    /// Wrong password, unknown role or unknown endpoint: one answer for all three.
    #[error("password authentication failed for user \"{user}\"")]
    AuthFailed {
        /// The user name the client sent.
        user: String,
    },
    /// SCRAM channel binding did not match (or a downgrade was attempted).
    #[error("SCRAM channel binding check failed")]
    ChannelBinding,
    /// Cleartext authentication was needed but is not allowed here.
    #[error(
        "password authentication with the endpoint=NAME;PASSWORD form needs TLS and \
         proxy.allow_cleartext; name the endpoint through SNI or options=endpoint=NAME instead"
    )]
    CleartextNotAllowed,
    /// Too many failed authentications from this address for this endpoint.
    #[error("too many failed authentication attempts; try again in a minute")]
    TooManyAuthFailures,
    /// An idle pooled connection was found closed at checkout; the pool opens another.
    /// Never reaches a client.
    #[error("pooled server connection was closed")]
    StaleConnection,
    /// No server connection came free (or could be opened) in time.
    #[error("no server connection available within {}s ({limit} in use)", waited.as_secs())]
    PoolTimeout {
        /// How long the client waited.
        waited: std::time::Duration,
        /// Which limit was reached, e.g. `pool_size 20` or `max_endpoint_connections 100`.
        limit: String,
    },
    /// A client sat idle past `client_idle_timeout`.
    #[error("terminating connection due to idle-session timeout")]
    ClientIdleTimeout,
    /// A client sat idle in a transaction past `idle_transaction_timeout`.
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransactionTimeout,
    /// The proxy is at `max_client_connections`.
    #[error("sorry, too many clients already")]
    TooManyConnections,
    /// The compute could not be started; `reason` is safe to show.
    #[error("endpoint \"{endpoint}\" cannot be woken: {reason}")]
    WakeFailed {
        /// The endpoint.
        endpoint: String,
        /// One line from the compute manager.
        reason: String,
    },
    /// The compute manager could not be reached or answered garbage.
    #[error("control plane request failed: {0}")]
    ControlPlane(String),
    /// The compute could not be reached or refused the proxy.
    #[error("could not connect to the compute of endpoint \"{endpoint}\": {detail}")]
    ComputeConnect {
        /// The endpoint.
        endpoint: String,
        /// Why (internal; not shown to the client).
        detail: String,
    },
    /// The connection to the compute ended under a session that had already been answered
    /// on it (the compute stopped or crashed mid-session), so nothing can be replayed.
    #[error("lost the connection to the compute of endpoint \"{endpoint}\": {detail}")]
    ComputeLost {
        /// The endpoint.
        endpoint: String,
        /// Why (internal; not shown to the client).
        detail: String,
    },
    /// The compute refused the login with its own `ErrorResponse` (say, database does not
    /// exist), passed to the client as it is.
    #[error("compute refused the session")]
    Upstream(bytes::Bytes),
    /// Reading from or writing to the client failed: the client is gone.
    #[error("client i/o: {0}")]
    ClientIo(#[source] std::io::Error),
}

impl ProxyError {
    /// The SQLSTATE sent to the client; `None` when nothing can be written (client gone,
    /// or TLS never established).
    pub fn sqlstate(&self) -> Option<SqlState> {
        Some(match self {
            Self::Protocol(_) => SqlState::PROTOCOL_VIOLATION,
            Self::UnsupportedProtocol { .. } | Self::Unsupported(_) => {
                SqlState::FEATURE_NOT_SUPPORTED
            }
            Self::TlsRequired
            | Self::NoEndpoint { .. }
            | Self::EndpointConflict { .. }
            | Self::InvalidName(_)
            | Self::CleartextNotAllowed => SqlState::INVALID_AUTHORIZATION,
            Self::AuthFailed { .. } => SqlState::INVALID_PASSWORD,
            Self::ChannelBinding => SqlState::PROTOCOL_VIOLATION,
            Self::TooManyAuthFailures | Self::TooManyConnections | Self::PoolTimeout { .. } => {
                SqlState::TOO_MANY_CONNECTIONS
            }
            Self::ClientIdleTimeout => SqlState::IDLE_SESSION_TIMEOUT,
            Self::IdleInTransactionTimeout => SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
            Self::WakeFailed { .. }
            | Self::ComputeConnect { .. }
            | Self::ControlPlane(_)
            | Self::StaleConnection => SqlState::CANNOT_CONNECT_NOW,
            Self::ComputeLost { .. } => SqlState::CONNECTION_FAILURE,
            // Written as received, not rebuilt.
            Self::Upstream(_) => return None,
            Self::TlsHandshake(_) | Self::ClientIo(_) => return None,
        })
    }

    /// Text that is safe for the client.
    pub fn client_message(&self) -> Cow<'static, str> {
        match self {
            Self::TlsHandshake(_) | Self::ClientIo(_) | Self::Upstream(_) => {
                "internal error".into()
            }
            Self::ControlPlane(_) => {
                "cannot wake the endpoint now: control plane unavailable; retry shortly".into()
            }
            Self::ComputeConnect { endpoint, .. } => format!(
                "could not connect to the compute of endpoint \"{endpoint}\"; retry shortly"
            )
            .into(),
            Self::ComputeLost { endpoint, .. } => format!(
                "lost the connection to the compute of endpoint \"{endpoint}\" (it stopped or \
                 crashed); reconnect to retry"
            )
            .into(),
            other => other.to_string().into(),
        }
    }

    /// The bytes that tell the client about this error: a FATAL `ErrorResponse` with the
    /// SQLSTATE and safe message, or the compute's own `ErrorResponse` as received for
    /// [`ProxyError::Upstream`]. `None` when nothing can be sent.
    pub fn to_wire(&self) -> Option<Vec<u8>> {
        if let Self::Upstream(raw) = self {
            return (!raw.is_empty()).then(|| raw.to_vec());
        }
        let code = self.sqlstate()?;
        let mut out = Vec::new();
        crate::pqproto::be::fatal(&mut out, code, &self.client_message());
        Some(out)
    }

    /// The same error, for another client (errors of opening a pooled connection reach
    /// every client waiting for it). I/O sources become their text.
    pub fn replicate(&self) -> Self {
        match self {
            Self::WakeFailed { endpoint, reason } => Self::WakeFailed {
                endpoint: endpoint.clone(),
                reason: reason.clone(),
            },
            Self::ControlPlane(d) => Self::ControlPlane(d.clone()),
            Self::AuthFailed { user } => Self::AuthFailed { user: user.clone() },
            Self::Upstream(raw) => Self::Upstream(raw.clone()),
            Self::ComputeConnect { endpoint, detail } => Self::ComputeConnect {
                endpoint: endpoint.clone(),
                detail: detail.clone(),
            },
            Self::ComputeLost { endpoint, detail } => Self::ComputeLost {
                endpoint: endpoint.clone(),
                detail: detail.clone(),
            },
            other => Self::ControlPlane(other.to_string()),
        }
    }

    /// Whether the failure is the client's doing (logged at info, not warn).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::ControlPlane(_)
                | Self::ComputeConnect { .. }
                | Self::ComputeLost { .. }
                | Self::WakeFailed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<ProxyError> {
        let io = || std::io::Error::other("secret-detail 10.0.0.7");
        vec![
            ProxyError::Protocol("x".into()),
            ProxyError::UnsupportedProtocol { major: 4, minor: 0 },
            ProxyError::TlsRequired,
            ProxyError::Unsupported("x"),
            ProxyError::TlsHandshake(io()),
            ProxyError::NoEndpoint { domain: "d".into() },
            ProxyError::EndpointConflict {
                sni: "a".into(),
                options: "b".into(),
            },
            ProxyError::InvalidName("n".into()),
            ProxyError::AuthFailed { user: "u".into() },
            ProxyError::ChannelBinding,
            ProxyError::CleartextNotAllowed,
            ProxyError::TooManyAuthFailures,
            ProxyError::TooManyConnections,
            ProxyError::PoolTimeout {
                waited: std::time::Duration::from_secs(1),
                limit: "pool_size 1".into(),
            },
            ProxyError::ClientIdleTimeout,
            ProxyError::StaleConnection,
            ProxyError::IdleInTransactionTimeout,
            ProxyError::WakeFailed {
                endpoint: "e".into(),
                reason: "r".into(),
            },
            ProxyError::ControlPlane("secret-detail 10.0.0.7".into()),
            ProxyError::ComputeConnect {
                endpoint: "e".into(),
                detail: "secret-detail 10.0.0.7".into(),
            },
            ProxyError::ComputeLost {
                endpoint: "e".into(),
                detail: "secret-detail 10.0.0.7".into(),
            },
            ProxyError::Upstream(bytes::Bytes::new()),
            ProxyError::ClientIo(io()),
        ]
    }

    #[test]
    fn each_error_has_a_code_or_is_unwritable_and_hides_internals() {
        for e in every_variant() {
            match e.sqlstate() {
                Some(code) => assert_eq!(code.as_str().len(), 5, "{e:?}"),
                None => assert!(matches!(
                    e,
                    ProxyError::TlsHandshake(_) | ProxyError::ClientIo(_) | ProxyError::Upstream(_)
                )),
            }
            assert!(
                !e.client_message().contains("secret-detail"),
                "{e:?} leaks its source"
            );
        }
    }

    #[test]
    fn unknown_endpoint_and_wrong_password_look_the_same() {
        let e = ProxyError::AuthFailed { user: "app".into() };
        assert_eq!(e.sqlstate(), Some(SqlState::INVALID_PASSWORD));
        assert_eq!(
            e.client_message(),
            "password authentication failed for user \"app\""
        );
    }
}
