//! The Postgres wire protocol, version 3.0, as far as the proxy decodes it: the startup
//! phase and authentication (PostgreSQL docs §55.2 "Message Flow" and §55.7 "Message
//! Formats"). After authentication the proxy relays bytes without decoding them.
//!
//! Parsers take byte slices and return errors, never panic, and cap every length the peer
//! controls. Builders append to a `Vec<u8>`.

use std::borrow::Cow;

use crate::error::{ProxyError, SqlState};

/// Longest startup packet accepted, as Postgres's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;
/// Longest message accepted from a client during authentication (password or SASL).
pub const MAX_AUTH_MESSAGE_LENGTH: usize = 8_192;
/// Longest message accepted from a compute during its startup phase.
pub const MAX_COMPUTE_STARTUP_MESSAGE_LENGTH: usize = 1 << 20;

/// `SSLRequest` code (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol major version 3, as the high 16 bits of the startup code.
pub const PROTOCOL_MAJOR: u16 = 3;
/// The newest protocol minor version the proxy speaks.
pub const PROTOCOL_MINOR: u16 = 0;

fn violation(what: &'static str) -> ProxyError {
    ProxyError::Protocol(Cow::Borrowed(what))
}

/// A cancel key: the (pid, secret) pair of `BackendKeyData` and `CancelRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id (for the proxy's own keys: a random number).
    pub pid: i32,
    /// Secret key.
    pub secret: i32,
}

/// The startup parameters of a `StartupMessage`, in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams(Vec<(String, String)>);

impl StartupParams {
    /// The value of `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    /// All parameters.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`: answer `S` and start TLS, or `N`.
    SslRequest,
    /// `GSSENCRequest`: the proxy answers `N`.
    GssEncRequest,
    /// `CancelRequest` for the given key.
    Cancel(CancelKey),
    /// `StartupMessage` for protocol 3.`minor`.
    Startup {
        /// Requested minor version.
        minor: u16,
        /// Parameters (user, database, options, ...), `_pq_.` ones included.
        params: StartupParams,
    },
}

/// Checks the length word of a startup packet (which counts itself).
///
/// # Errors
///
/// [`ProxyError::Protocol`] if it is below 8 or above [`MAX_STARTUP_PACKET_LENGTH`].
pub fn startup_length(len: u32) -> Result<usize, ProxyError> {
    let len = len as usize;
    if !(8..=MAX_STARTUP_PACKET_LENGTH).contains(&len) {
        return Err(violation("invalid length of startup packet"));
    }
    Ok(len)
}

/// Parses a startup packet's body: everything after the length word.
///
/// # Errors
///
/// [`ProxyError::Protocol`] for malformed packets; [`ProxyError::UnsupportedProtocol`]
/// for a major version other than 3.
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, ProxyError> {
    let (code, rest) = split_u32(body).ok_or_else(|| violation("startup packet too short"))?;
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(violation("SSLRequest with a body")),
        CANCEL_REQUEST_CODE => {
            let (pid, rest) = split_u32(rest).ok_or_else(|| violation("short CancelRequest"))?;
            let (secret, rest) = split_u32(rest).ok_or_else(|| violation("short CancelRequest"))?;
            if !rest.is_empty() {
                return Err(violation("long CancelRequest"));
            }
            Ok(StartupPacket::Cancel(CancelKey {
                pid: pid as i32,
                secret: secret as i32,
            }))
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != PROTOCOL_MAJOR {
                return Err(ProxyError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

fn parse_params(mut body: &[u8]) -> Result<StartupParams, ProxyError> {
    let mut params = Vec::new();
    loop {
        let (key, rest) =
            split_cstr(body).ok_or_else(|| violation("unterminated startup parameter"))?;
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(violation("bytes after the startup parameters"));
            }
            return Ok(StartupParams(params));
        }
        let (value, rest) =
            split_cstr(rest).ok_or_else(|| violation("startup parameter without a value"))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| violation("startup parameter name is not UTF-8"))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| violation("startup parameter value is not UTF-8"))?;
        params.push((key, value));
        body = rest;
    }
}

/// Splits a NUL-terminated string off the front of `bytes`.
pub fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// A `SASLInitialResponse` (PostgreSQL docs §55.7): mechanism and the client-first message.
#[derive(Debug, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// The client-first message.
    pub data: &'a [u8],
}

/// Parses the body of a `p` message sent as `SASLInitialResponse`.
pub fn parse_sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, ProxyError> {
    let (mech, rest) =
        split_cstr(body).ok_or_else(|| violation("malformed SASLInitialResponse"))?;
    let mechanism = std::str::from_utf8(mech).map_err(|_| violation("malformed SASL mechanism"))?;
    let (len, data) = split_u32(rest).ok_or_else(|| violation("malformed SASLInitialResponse"))?;
    if len as i32 == -1 || len as usize != data.len() {
        return Err(violation("malformed SASLInitialResponse length"));
    }
    Ok(SaslInitial { mechanism, data })
}

/// Parses the body of a `p` message sent as `PasswordMessage`.
pub fn parse_password(body: &[u8]) -> Result<&[u8], ProxyError> {
    match split_cstr(body) {
        Some((pw, [])) => Ok(pw),
        _ => Err(violation("malformed password message")),
    }
}

/// Appends one typed message: tag, length (counting itself), body.
pub fn put_message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Builders for messages the proxy sends.
pub mod be {
    use super::*;

    fn auth(out: &mut Vec<u8>, code: u32, extra: &[u8]) {
        put_message(out, b'R', |b| {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(extra);
        });
    }

    /// `AuthenticationOk`.
    pub fn auth_ok(out: &mut Vec<u8>) {
        auth(out, 0, &[]);
    }

    /// `AuthenticationCleartextPassword`.
    pub fn auth_cleartext(out: &mut Vec<u8>) {
        auth(out, 3, &[]);
    }

    /// `AuthenticationSASL` offering `mechanisms`.
    pub fn auth_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
        let mut list = Vec::new();
        for m in mechanisms {
            put_cstr(&mut list, m);
        }
        list.push(0);
        auth(out, 10, &list);
    }

    /// `AuthenticationSASLContinue` with the server-first message.
    pub fn auth_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
        auth(out, 11, data);
    }

    /// `AuthenticationSASLFinal` with the server-final message.
    pub fn auth_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
        auth(out, 12, data);
    }

    /// `BackendKeyData`.
    pub fn backend_key_data(out: &mut Vec<u8>, key: CancelKey) {
        put_message(out, b'K', |b| {
            b.extend_from_slice(&key.pid.to_be_bytes());
            b.extend_from_slice(&key.secret.to_be_bytes());
        });
    }

    /// `NegotiateProtocolVersion`: the newest minor version we support and the `_pq_.`
    /// options we did not recognise (PostgreSQL docs §55.2.1).
    pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest_minor: u16, unrecognized: &[&str]) {
        put_message(out, b'v', |b| {
            b.extend_from_slice(
                &(((PROTOCOL_MAJOR as u32) << 16) | newest_minor as u32).to_be_bytes(),
            );
            b.extend_from_slice(&(unrecognized.len() as u32).to_be_bytes());
            for o in unrecognized {
                put_cstr(b, o);
            }
        });
    }

    /// `ErrorResponse` with severity FATAL (the connection ends after it).
    pub fn fatal(out: &mut Vec<u8>, code: SqlState, message: &str) {
        put_message(out, b'E', |b| {
            for (field, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', code.as_str()),
                (b'M', message),
            ] {
                b.push(field);
                put_cstr(b, value);
            }
            b.push(0);
        });
    }
}

/// Builders for messages the proxy sends to a compute (as a client).
pub mod fe {
    use super::*;

    /// An untyped startup packet: length, code, body.
    fn startup_packet(out: &mut Vec<u8>, code: u32, body: &[u8]) {
        out.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
    }

    /// `SSLRequest`.
    pub fn ssl_request(out: &mut Vec<u8>) {
        startup_packet(out, SSL_REQUEST_CODE, &[]);
    }

    /// `CancelRequest`.
    pub fn cancel_request(out: &mut Vec<u8>, key: CancelKey) {
        let mut body = Vec::with_capacity(8);
        body.extend_from_slice(&key.pid.to_be_bytes());
        body.extend_from_slice(&key.secret.to_be_bytes());
        startup_packet(out, CANCEL_REQUEST_CODE, &body);
    }

    /// `StartupMessage` for protocol 3.0.
    pub fn startup(out: &mut Vec<u8>, params: &StartupParams) {
        let mut body = Vec::new();
        for (k, v) in params.iter() {
            put_cstr(&mut body, k);
            put_cstr(&mut body, v);
        }
        body.push(0);
        startup_packet(out, (PROTOCOL_MAJOR as u32) << 16, &body);
    }

    /// `SASLInitialResponse`.
    pub fn sasl_initial(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
        put_message(out, b'p', |b| {
            put_cstr(b, mechanism);
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
        });
    }

    /// `SASLResponse`.
    pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
        put_message(out, b'p', |b| b.extend_from_slice(data));
    }
}

/// An `ErrorResponse` (whole message, tag first) with its severity raised to FATAL, for
/// errors that end a connection during startup. Other messages come back unchanged.
pub fn as_fatal(raw: &[u8]) -> Vec<u8> {
    let Some((b'E', rest)) = raw.split_first() else {
        return raw.to_vec();
    };
    let Some(body) = rest.get(4..) else {
        return raw.to_vec();
    };
    let mut out = Vec::with_capacity(raw.len() + 8);
    put_message(&mut out, b'E', |b| {
        for (kind, value) in error_fields(body) {
            b.push(kind);
            let value = if (kind == b'S' || kind == b'V') && value == "ERROR" {
                "FATAL"
            } else {
                &value
            };
            put_cstr(b, value);
        }
        b.push(0);
    });
    out
}

/// Reads the fields of an `ErrorResponse` body: (field type, value) pairs.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, tail)) = split_cstr(tail) else {
            break;
        };
        fields.push((kind, String::from_utf8_lossy(value).into_owned()));
        rest = tail;
    }
    fields
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn startup_body(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
        let mut b = (((3u32) << 16) | minor as u32).to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_startup_ssl_gss_and_cancel() {
        let p = parse_startup(&startup_body(&[("user", "app"), ("database", "db")], 0)).unwrap();
        let StartupPacket::Startup { minor: 0, params } = p else {
            panic!("{p:?}")
        };
        assert_eq!(params.get("user"), Some("app"));
        assert_eq!(params.get("database"), Some("db"));
        assert_eq!(
            parse_startup(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse_startup(&cancel).unwrap(),
            StartupPacket::Cancel(CancelKey { pid: 7, secret: -9 })
        );
    }

    #[test]
    fn rejects_malformed_startup_packets() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0, 3],
            // unterminated parameter list
            b"\x00\x03\x00\x00user\x00app".to_vec(),
            // key without value
            b"\x00\x03\x00\x00user\x00\x00\x00".to_vec()[..9].to_vec(),
            // bytes after the terminator
            b"\x00\x03\x00\x00user\x00app\x00\x00junk".to_vec(),
            // SSLRequest with a body
            [SSL_REQUEST_CODE.to_be_bytes().as_slice(), b"x"].concat(),
            // short cancel
            [CANCEL_REQUEST_CODE.to_be_bytes().as_slice(), &[0, 0, 0, 1]].concat(),
            // invalid UTF-8
            b"\x00\x03\x00\x00user\x00\xff\x00\x00".to_vec(),
        ];
        for body in cases {
            assert!(
                matches!(parse_startup(&body), Err(ProxyError::Protocol(_))),
                "{body:?}"
            );
        }
        assert!(matches!(
            parse_startup(
                &startup_body(&[], 0)[..0]
                    .iter()
                    .copied()
                    .chain((2u32 << 16).to_be_bytes())
                    .chain([0])
                    .collect::<Vec<_>>()
            ),
            Err(ProxyError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
    }

    #[test]
    fn startup_length_bounds() {
        assert!(startup_length(7).is_err());
        assert!(startup_length(8).is_ok());
        assert!(startup_length(10_000).is_ok());
        assert!(startup_length(10_001).is_err());
        assert!(startup_length(u32::MAX).is_err());
    }

    #[test]
    fn sasl_initial_and_password() {
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"abc");
        assert_eq!(
            parse_sasl_initial(&b).unwrap(),
            SaslInitial {
                mechanism: "SCRAM-SHA-256",
                data: b"abc"
            }
        );
        let mut bad = b"SCRAM-SHA-256\0".to_vec();
        bad.extend_from_slice(&9u32.to_be_bytes());
        bad.extend_from_slice(b"abc");
        assert!(parse_sasl_initial(&bad).is_err());
        assert!(parse_sasl_initial(b"no-nul").is_err());
        assert_eq!(parse_password(b"pw\0").unwrap(), b"pw");
        assert!(parse_password(b"pw").is_err());
        assert!(parse_password(b"pw\0x").is_err());
    }

    #[test]
    fn errors_become_fatal() {
        let mut err = Vec::new();
        put_message(&mut err, b'E', |b| {
            b.extend_from_slice(b"SERROR\0VERROR\0C42704\0Mbad\0\0")
        });
        let fatal = as_fatal(&err);
        let fields = error_fields(&fatal[5..]);
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'V', "FATAL".into())));
        assert!(fields.contains(&(b'C', "42704".into())));
        assert_eq!(
            u32::from_be_bytes(fatal[1..5].try_into().unwrap()) as usize,
            fatal.len() - 1
        );
        assert_eq!(as_fatal(b"Zjunk"), b"Zjunk");
    }

    #[test]
    fn builds_messages_with_right_lengths() {
        let mut out = Vec::new();
        be::fatal(&mut out, SqlState::INVALID_PASSWORD, "nope");
        assert_eq!(out[0], b'E');
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        let fields = error_fields(&out[5..]);
        assert!(fields.contains(&(b'C', "28P01".into())));
        assert!(fields.contains(&(b'M', "nope".into())));

        let mut out = Vec::new();
        be::negotiate_protocol_version(&mut out, 0, &["_pq_.x"]);
        assert_eq!(&out[5..9], &(3u32 << 16).to_be_bytes());
        assert_eq!(&out[9..13], &1u32.to_be_bytes());
        assert_eq!(&out[13..], b"_pq_.x\0");
    }
}
