//! Which endpoint a client wants, in this order (Neon's proxy does the same):
//!
//! 1. the first label of the TLS server name (SNI) under the configured domain
//!    (`main.db.example.com` with domain `db.example.com` → `main`);
//! 2. `endpoint=NAME` (or `endpoint%3DNAME`, for clients that cannot send `=`) among the
//!    `options` startup parameter; the rest of `options` (say `-c search_path=app`) goes on
//!    to the compute;
//! 3. a password of the form `endpoint=NAME;secret` (needs cleartext authentication);
//! 4. the configured default endpoint.
//!
//! SNI and options that name different endpoints are an error.

use lakebed_config::EndpointName;

use crate::error::ProxyError;

/// The endpoint named by SNI, if the server name is a single label under `domain`.
///
/// # Errors
///
/// [`ProxyError::InvalidName`] if that label is not a valid endpoint name.
pub fn from_sni(
    server_name: Option<&str>,
    domain: &str,
) -> Result<Option<EndpointName>, ProxyError> {
    let Some(name) = server_name else {
        return Ok(None);
    };
    let name = name.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    let Some(label) = name.strip_suffix(&domain).and_then(|l| l.strip_suffix('.')) else {
        return Ok(None);
    };
    if label.contains('.') {
        return Ok(None);
    }
    label
        .parse()
        .map(Some)
        .map_err(|e| ProxyError::InvalidName(format!("TLS server name: {e}")))
}

/// `options` split into the endpoint it names and the rest, to pass to the compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The endpoint named by `endpoint=NAME`, if any.
    pub endpoint: Option<EndpointName>,
    /// The other options, as sent (escapes kept), joined by single spaces.
    pub rest: String,
}

/// Splits `options` the way Postgres does (`pg_split_opts`: whitespace separates, a
/// backslash escapes the next character) and takes out `endpoint=NAME`.
///
/// # Errors
///
/// [`ProxyError::InvalidName`] for an invalid name; [`ProxyError::Protocol`] if two
/// different endpoints are named.
pub fn split_options(options: &str) -> Result<Options, ProxyError> {
    let mut endpoint: Option<EndpointName> = None;
    let mut rest = Vec::new();
    for token in tokens(options) {
        let value = token
            .strip_prefix("endpoint=")
            .or_else(|| token.strip_prefix("endpoint%3D"))
            .or_else(|| token.strip_prefix("endpoint%3d"));
        match value {
            Some(v) => {
                let name: EndpointName = v
                    .parse()
                    .map_err(|e| ProxyError::InvalidName(format!("options: {e}")))?;
                if endpoint.as_ref().is_some_and(|e| e != &name) {
                    return Err(ProxyError::Protocol(
                        "options name two different endpoints".into(),
                    ));
                }
                endpoint = Some(name);
            }
            None => rest.push(token),
        }
    }
    Ok(Options {
        endpoint,
        rest: rest.join(" "),
    })
}

/// Raw tokens of an options string: runs of non-whitespace, where `\` keeps the next
/// character (whitespace included) in the token.
fn tokens(options: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = options.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(bytes.len());
        if end > start {
            // Boundaries are ASCII whitespace or the ends, so they are char boundaries.
            out.push(&options[start..end]);
        }
    }
    out
}

/// A password of the form `endpoint=NAME;secret`: the endpoint and the secret.
/// `None` if the password does not start that way.
///
/// # Errors
///
/// [`ProxyError::InvalidName`] if it does but NAME is invalid.
pub fn from_password(password: &[u8]) -> Result<Option<(EndpointName, &[u8])>, ProxyError> {
    let Some(rest) = password.strip_prefix(b"endpoint=") else {
        return Ok(None);
    };
    let Some(semi) = rest.iter().position(|&b| b == b';') else {
        return Ok(None);
    };
    let name = std::str::from_utf8(&rest[..semi])
        .map_err(|_| ProxyError::InvalidName("password: endpoint name is not UTF-8".into()))?;
    let name = name
        .parse()
        .map_err(|e| ProxyError::InvalidName(format!("password: {e}")))?;
    Ok(Some((name, &rest[semi + 1..])))
}

/// Combines SNI and options; they must agree when both name one.
pub fn merge(
    sni: Option<EndpointName>,
    options: Option<EndpointName>,
) -> Result<Option<EndpointName>, ProxyError> {
    match (sni, options) {
        (Some(s), Some(o)) if s != o => Err(ProxyError::EndpointConflict {
            sni: s.to_string(),
            options: o.to_string(),
        }),
        (Some(s), _) => Ok(Some(s)),
        (None, o) => Ok(o),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(s: &str) -> EndpointName {
        s.parse().unwrap()
    }

    #[test]
    fn sni_first_label_under_the_domain() {
        let d = "db.example.com";
        assert_eq!(
            from_sni(Some("main.db.example.com"), d).unwrap(),
            Some(ep("main"))
        );
        assert_eq!(
            from_sni(Some("MAIN.DB.example.com"), d).unwrap(),
            Some(ep("main"))
        );
        assert_eq!(from_sni(Some("db.example.com"), d).unwrap(), None);
        assert_eq!(from_sni(Some("a.b.db.example.com"), d).unwrap(), None);
        assert_eq!(from_sni(Some("main.other.com"), d).unwrap(), None);
        assert_eq!(from_sni(Some("maindb.example.com"), d).unwrap(), None);
        assert_eq!(from_sni(None, d).unwrap(), None);
        assert!(from_sni(Some("-bad.db.example.com"), d).is_err());
    }

    #[test]
    fn options_lose_the_endpoint_and_keep_the_rest() {
        let o = split_options("-c search_path=app endpoint=main").unwrap();
        assert_eq!(o.endpoint, Some(ep("main")));
        assert_eq!(o.rest, "-c search_path=app");
        let o = split_options("endpoint%3Dmain --application_name=x\\ y").unwrap();
        assert_eq!(o.endpoint, Some(ep("main")));
        assert_eq!(o.rest, "--application_name=x\\ y");
        assert_eq!(
            split_options("").unwrap(),
            Options {
                endpoint: None,
                rest: String::new()
            }
        );
        assert!(split_options("endpoint=Main").is_err());
        assert!(split_options("endpoint=a endpoint=b").is_err());
        assert_eq!(
            split_options("endpoint=a endpoint=a").unwrap().endpoint,
            Some(ep("a"))
        );
        // A trailing backslash must not panic.
        assert_eq!(split_options("-c x=1\\").unwrap().rest, "-c x=1\\");
    }

    #[test]
    fn password_prefix() {
        let (e, secret) = from_password(b"endpoint=main;s3cret;x").unwrap().unwrap();
        assert_eq!(e, ep("main"));
        assert_eq!(secret, b"s3cret;x");
        assert_eq!(from_password(b"plain").unwrap(), None);
        assert_eq!(from_password(b"endpoint=main").unwrap(), None);
        assert!(from_password(b"endpoint=BAD;x").is_err());
    }

    #[test]
    fn sni_and_options_must_agree() {
        assert_eq!(merge(Some(ep("a")), Some(ep("a"))).unwrap(), Some(ep("a")));
        assert_eq!(merge(None, Some(ep("b"))).unwrap(), Some(ep("b")));
        assert!(matches!(
            merge(Some(ep("a")), Some(ep("b"))),
            Err(ProxyError::EndpointConflict { .. })
        ));
    }
}
