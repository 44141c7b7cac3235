//! Authenticating a client at the proxy, before any compute is woken.
//!
//! SCRAM-SHA-256, and SCRAM-SHA-256-PLUS with `tls-server-end-point` binding over TLS,
//! against the role's verifier from the compute manager. Cleartext only over TLS, only when
//! configured, and only for clients that name no endpoint otherwise (the
//! `endpoint=NAME;password` form). An unknown endpoint or role runs the same exchange against
//! a mock secret and fails the same way a wrong password does.

use std::net::IpAddr;
use std::sync::Arc;

use lakebed_config::{EndpointName, PoolMode, RoleName};

use crate::control::ControlPlane;
use crate::error::ProxyError;
use crate::pqproto::{self, MAX_AUTH_MESSAGE_LENGTH, be};
use crate::rate_limit::AuthFailureLimiter;
use crate::scram::server::{Binding, ClientFirst, TLS_SERVER_END_POINT};
use crate::scram::{self, ClientKey, KEY_LEN, ScramError, ScramSecret};
use crate::stream::{PqStream, ReadError, Stream};

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What authentication needs from the proxy.
pub struct AuthContext<'a> {
    /// The compute manager, for role secrets.
    pub control: &'a ControlPlane,
    /// The failure limiter.
    pub limiter: &'a AuthFailureLimiter,
    /// The client's address.
    pub peer: IpAddr,
    /// `tls-server-end-point` data when the client uses TLS.
    pub tls_end_point: Option<&'a [u8]>,
    /// Whether cleartext passwords may be asked for (and TLS is on).
    pub cleartext: bool,
    /// The default endpoint.
    pub default_endpoint: Option<&'a EndpointName>,
    /// The SNI domain, for the hint when no endpoint is named.
    pub domain: &'a str,
    /// Key for mock salts.
    pub mock_key: &'a [u8; KEY_LEN],
}

/// A client that proved its password.
#[derive(Debug)]
pub struct Authenticated {
    /// The endpoint it connects to.
    pub endpoint: EndpointName,
    /// Its role.
    pub role: RoleName,
    /// Its SCRAM ClientKey, to log in to the compute.
    pub client_key: ClientKey,
    /// The role's secret (ServerKey checks the compute).
    pub secret: Arc<ScramSecret>,
    /// How its server connections are pooled.
    pub pool_mode: PoolMode,
}

fn read_err(e: ReadError) -> ProxyError {
    match e {
        ReadError::BadLength(_) => {
            ProxyError::Protocol("invalid authentication message length".into())
        }
        ReadError::Eof => ProxyError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()),
        ReadError::Io(e) => ProxyError::ClientIo(e),
    }
}

async fn read_password_message(stream: &mut PqStream<Stream>) -> Result<bytes::Bytes, ProxyError> {
    let (tag, body) = stream
        .read_message(MAX_AUTH_MESSAGE_LENGTH)
        .await
        .map_err(read_err)?;
    if tag != b'p' {
        return Err(ProxyError::Protocol(
            format!("expected a password message, got '{}'", tag.escape_ascii()).into(),
        ));
    }
    Ok(body)
}

async fn send(stream: &mut PqStream<Stream>) -> Result<(), ProxyError> {
    stream.flush().await.map_err(ProxyError::ClientIo)
}

/// Authenticates `user` for `endpoint` (as routed so far; `None` = not named yet).
/// On success the client has received `AuthenticationSASLFinal` (for SCRAM) and
/// `AuthenticationOk`.
///
/// # Errors
///
/// [`ProxyError::AuthFailed`] for a wrong password, unknown role or unknown endpoint;
/// [`ProxyError::TooManyAuthFailures`]; [`ProxyError::NoEndpoint`]; protocol errors.
pub async fn authenticate(
    stream: &mut PqStream<Stream>,
    ctx: &AuthContext<'_>,
    endpoint: Option<EndpointName>,
    user: &str,
) -> Result<Authenticated, ProxyError> {
    let outcome = match endpoint {
        Some(ep) => scram_exchange(stream, ctx, ep, user).await,
        None if ctx.cleartext => cleartext(stream, ctx, user).await,
        None => match ctx.default_endpoint {
            Some(ep) => scram_exchange(stream, ctx, ep.clone(), user).await,
            None => Err(ProxyError::NoEndpoint {
                domain: ctx.domain.to_owned(),
            }),
        },
    }?;
    be::auth_ok(stream.out());
    send(stream).await?;
    Ok(outcome)
}

/// Looks up the secret; `(secret, real)` where `real` is false for a mock.
async fn secret_for(
    ctx: &AuthContext<'_>,
    endpoint: &EndpointName,
    user: &str,
) -> Result<(Arc<ScramSecret>, Option<(RoleName, PoolMode)>), ProxyError> {
    if !ctx.limiter.allows(ctx.peer, endpoint) {
        metrics::counter!("lakebed_proxy_auth_failures_total", "reason" => "rate_limited")
            .increment(1);
        return Err(ProxyError::TooManyAuthFailures);
    }
    if let Ok(role) = user.parse::<RoleName>()
        && let Some(auth) = ctx.control.role_secret(endpoint, &role).await?
    {
        return Ok((auth.secret, Some((role, auth.pool_mode))));
    }
    let mock = ScramSecret::mock(ctx.mock_key, &format!("{endpoint}/{user}"));
    Ok((Arc::new(mock), None))
}

fn failed(ctx: &AuthContext<'_>, endpoint: &EndpointName, user: &str) -> ProxyError {
    ctx.limiter.record_failure(ctx.peer, endpoint);
    metrics::counter!("lakebed_proxy_auth_failures_total", "reason" => "password").increment(1);
    ProxyError::AuthFailed {
        user: user.to_owned(),
    }
}

async fn scram_exchange(
    stream: &mut PqStream<Stream>,
    ctx: &AuthContext<'_>,
    endpoint: EndpointName,
    user: &str,
) -> Result<Authenticated, ProxyError> {
    let (secret, role) = secret_for(ctx, &endpoint, user).await?;
    let plus = ctx.tls_end_point.is_some();
    let mechanisms: &[&str] = if plus { &[SCRAM_PLUS, SCRAM] } else { &[SCRAM] };
    be::auth_sasl(stream.out(), mechanisms);
    send(stream).await?;

    let body = read_password_message(stream).await?;
    let initial = pqproto::parse_sasl_initial(&body)?;
    let first = ClientFirst::parse(initial.data).map_err(scram_err)?;
    match (initial.mechanism, &first.binding) {
        (SCRAM_PLUS, Binding::Required(name)) if plus && name == TLS_SERVER_END_POINT => {}
        (SCRAM_PLUS, _) if plus => return Err(ProxyError::ChannelBinding),
        // We offered PLUS over TLS; a client that says it supports binding but chose not
        // to is being downgraded by someone in the middle (RFC 5802 §6).
        (SCRAM, Binding::ClientSupported) if plus => return Err(ProxyError::ChannelBinding),
        (SCRAM, Binding::Required(_)) => return Err(ProxyError::ChannelBinding),
        (SCRAM, _) => {}
        _ => return Err(ProxyError::Protocol("unsupported SASL mechanism".into())),
    }
    let server_first = first.server_first(&secret, &scram::nonce());
    be::auth_sasl_continue(stream.out(), server_first.message().as_bytes());
    send(stream).await?;

    let body = read_password_message(stream).await?;
    match server_first.verify(&body, &secret, ctx.tls_end_point) {
        Ok(v) => match role {
            Some((role, pool_mode)) => {
                be::auth_sasl_final(stream.out(), v.server_final.as_bytes());
                Ok(Authenticated {
                    endpoint,
                    role,
                    client_key: v.client_key,
                    secret,
                    pool_mode,
                })
            }
            None => Err(failed(ctx, &endpoint, user)),
        },
        Err(ScramError::BadProof) => Err(failed(ctx, &endpoint, user)),
        Err(e) => Err(scram_err(e)),
    }
}

async fn cleartext(
    stream: &mut PqStream<Stream>,
    ctx: &AuthContext<'_>,
    user: &str,
) -> Result<Authenticated, ProxyError> {
    be::auth_cleartext(stream.out());
    send(stream).await?;
    let body = read_password_message(stream).await?;
    let password = pqproto::parse_password(&body)?;
    let (endpoint, password) = match crate::routing::from_password(password)? {
        Some((ep, secret)) => (ep, secret),
        None => match ctx.default_endpoint {
            Some(ep) => (ep.clone(), password),
            None => {
                return Err(ProxyError::NoEndpoint {
                    domain: ctx.domain.to_owned(),
                });
            }
        },
    };
    let (secret, role) = secret_for(ctx, &endpoint, user).await?;
    let password = password.to_vec();
    let check = secret.clone();
    // PBKDF2 with thousands of iterations: keep it off the async worker threads.
    let key = tokio::task::spawn_blocking(move || ClientKey::from_password(&password, &check))
        .await
        .ok()
        .flatten();
    match (key, role) {
        (Some(client_key), Some((role, pool_mode))) if client_key.matches(&secret) => {
            Ok(Authenticated {
                endpoint,
                role,
                client_key,
                secret,
                pool_mode,
            })
        }
        _ => Err(failed(ctx, &endpoint, user)),
    }
}

fn scram_err(e: ScramError) -> ProxyError {
    match e {
        ScramError::ChannelBinding => ProxyError::ChannelBinding,
        other => ProxyError::Protocol(other.to_string().into()),
    }
}
