//! The Lakebed proxy: the one address every Postgres client connects to.
//!
//! For each connection ([`session`]): the startup phase with TLS ([`handshake`]), routing to
//! an endpoint ([`routing`]), SCRAM authentication at the proxy against the catalog's
//! verifier ([`auth`], [`scram`]) — **no compute is woken before the client has proved its
//! password** — then a wake through the compute manager ([`control`]), a login to the compute
//! with the client's recovered SCRAM key ([`compute`]), and a byte relay. Cancel requests are
//! mapped and forwarded ([`cancel`]). Errors reach clients as `ErrorResponse`s with SQLSTATEs
//! ([`error`]).
//!
//! The proxy talks to the compute manager only over its HTTP API, so it can run on another
//! host.
//!
//! Each client connection is one trace (spans listed in [`session`]); the `traceparent`
//! header carries it to the compute manager ([`control`]). Why OpenTelemetry, through
//! `lakebed-telemetry`: the vendor-neutral standard every tracing backend accepts, fed by the
//! `tracing` spans the code already has.

pub mod api;
pub mod auth;
pub mod cancel;
pub mod compute;
pub mod control;
pub mod error;
pub mod handshake;
pub mod pool;
pub mod pqproto;
pub mod rate_limit;
pub mod routing;
pub mod scram;
pub mod session;
pub mod stream;
pub mod tls;

pub use error::{ProxyError, SqlState};
pub use session::{Proxy, ProxyOptions};
