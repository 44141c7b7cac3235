//! Connection pooling settings: the pool mode of an endpoint or role, the `[proxy.pool]`
//! table, and timeouts that can be switched off.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{FromStrVisitor, HumanDuration, parse_duration};

/// How the proxy lends server connections to a client (PgBouncer's `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PoolMode {
    /// A server connection for the client's whole session, reset (`DISCARD ALL`) and
    /// returned to the pool when the client leaves. The default.
    #[default]
    Session,
    /// A server connection per transaction, returned at `ReadyForQuery` with status `I`.
    Transaction,
}

impl FromStr for PoolMode {
    type Err = String;

    /// `session` or `transaction` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            _ => Err(format!(
                "{s:?} is not a pool mode (use \"session\" or \"transaction\")"
            )),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        })
    }
}

impl Serialize for PoolMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PoolMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new("\"session\" or \"transaction\""))
    }
}

/// A timeout that may be off: `"off"` or a duration such as `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Timeout {
    /// No limit.
    #[default]
    Off,
    /// This limit (more than zero).
    After(Duration),
}

impl Timeout {
    /// The limit, if on.
    pub fn get(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::After(d) => Some(d),
        }
    }
}

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") || t == "0" {
            return Ok(Self::Off);
        }
        match parse_duration(t) {
            Ok(d) if d.is_zero() => Ok(Self::Off),
            Ok(d) => Ok(Self::After(d)),
            Err(e) => Err(format!("{e}, or \"off\"")),
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::After(d) => HumanDuration(*d).fmt(f),
        }
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(
            "a duration such as \"30s\", or \"off\"",
        ))
    }
}

/// Server connection pools (`[proxy.pool]`), one per (endpoint, role, database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Server connections per pool at most. Default 100, near what a compute accepts
    /// (`max_connections` 128), so that session pooling serves as many clients as a direct
    /// connection would and makes the rest wait instead of failing.
    pub pool_size: u32,
    /// Server connections per endpoint at most, across all its pools (roles, databases);
    /// a pool that needs one when the endpoint is at this limit closes an idle one of
    /// another pool, or waits. Default 100 (computes take 128).
    pub max_endpoint_connections: u32,
    /// Idle server connections kept open. Default 0: a warm pool keeps its compute awake.
    pub min_idle: u32,
    /// An idle server connection is closed after this. Default `10m`.
    pub server_idle_timeout: Timeout,
    /// A server connection is closed once this old (when idle). Default `1h`.
    pub server_lifetime: Timeout,
    /// How long a client waits for a server connection (including a cold start) before it
    /// gets 53300. Default `120s`.
    pub acquire_timeout: HumanDuration,
    /// A client with no transaction open that sends nothing for this long is disconnected
    /// (57P05). Default `off`.
    pub client_idle_timeout: Timeout,
    /// A client idle inside a transaction this long is disconnected and its transaction
    /// rolled back (25P03). Default `off`, as Postgres's `idle_in_transaction_session_timeout`.
    pub idle_transaction_timeout: Timeout,
    /// A query running longer is cancelled (57014). Default `off`, as `statement_timeout`.
    pub query_timeout: Timeout,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            pool_size: 100,
            max_endpoint_connections: 100,
            min_idle: 0,
            server_idle_timeout: Timeout::After(Duration::from_secs(600)),
            server_lifetime: Timeout::After(Duration::from_secs(3600)),
            acquire_timeout: HumanDuration(Duration::from_secs(120)),
            client_idle_timeout: Timeout::Off,
            idle_transaction_timeout: Timeout::Off,
            query_timeout: Timeout::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn modes_and_timeouts_parse() {
        assert_eq!(
            "Transaction".parse::<PoolMode>().unwrap(),
            PoolMode::Transaction
        );
        assert!("statement".parse::<PoolMode>().is_err());
        assert_eq!("off".parse::<Timeout>().unwrap(), Timeout::Off);
        assert_eq!("0s".parse::<Timeout>().unwrap(), Timeout::Off);
        assert_eq!(
            "30s".parse::<Timeout>().unwrap().get(),
            Some(Duration::from_secs(30))
        );
        assert!(
            "soon"
                .parse::<Timeout>()
                .unwrap_err()
                .contains("is not a duration")
        );
        assert_eq!(
            Timeout::After(Duration::from_secs(90)).to_string(),
            "1m 30s"
        );
    }
}
