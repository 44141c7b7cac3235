//! TLS with rustls: the proxy's server side for clients, its client side for computes, and
//! the `tls-server-end-point` channel binding (RFC 5929 §4.1) that SCRAM-SHA-256-PLUS uses.
//!
//! Why rustls: memory-safe, well-kept, and the same library for both directions; its
//! aws-lc-rs provider also gives us the SHA-256/HMAC/PBKDF2 that SCRAM needs.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol name of Postgres (PostgreSQL 17, `sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let err = |reason: String| TlsConfigError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsConfigError::Pem {
        path: path.display().to_string(),
        reason: format!("cannot read private key: {e}"),
    })
}

/// The proxy's TLS server: configuration and the channel-binding data of its certificate.
#[derive(Clone)]
pub struct TlsServer {
    /// rustls configuration, with ALPN `postgresql`.
    pub config: Arc<ServerConfig>,
    /// `tls-server-end-point` data: the hash of the leaf certificate.
    pub end_point: Vec<u8>,
}

impl TlsServer {
    /// Loads a PEM certificate chain and key.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] naming the file and the reason.
    pub fn load(cert: &Path, key_path: &Path) -> Result<Self, TlsConfigError> {
        let chain = certs(cert)?;
        let end_point = tls_server_end_point(&chain[0]);
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key(key_path)?)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            end_point,
        })
    }
}

/// TLS client configuration for connections to computes: trusts only `ca` and presents the
/// proxy's client certificate, which computes require (see the compute manager's
/// `postgres::datadir` docs).
pub fn compute_client_config(
    ca: &Path,
    cert: &Path,
    key_path: &Path,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, key(key_path)?)?;
    Ok(Arc::new(config))
}

/// The `tls-server-end-point` channel binding data of a certificate (RFC 5929 §4.1): its
/// hash under the hash function of its signature algorithm, with MD5 and SHA-1 replaced
/// by SHA-256. This is what libpq computes for `channel_binding=require`.
pub fn tls_server_end_point(cert: &CertificateDer<'_>) -> Vec<u8> {
    let alg = match signature_hash(cert.as_ref()) {
        Some(SigHash::Sha384) => &digest::SHA384,
        Some(SigHash::Sha512) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(alg, cert.as_ref()).as_ref().to_vec()
}

#[derive(Debug, PartialEq, Eq)]
enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// Reads `Certificate.signatureAlgorithm` (RFC 5280 §4.1.1.2) from DER, just enough to
/// pick the hash; `None` if the structure is not as expected or the algorithm unknown.
fn signature_hash(der: &[u8]) -> Option<SigHash> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE, ... }
    let (cert, _) = der_element(der, 0x30)?;
    let (_tbs, rest) = der_element(cert, 0x30)?;
    let (alg, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(alg, 0x06)?;
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    match oid {
        [p @ .., 11] if p == PKCS1 => Some(SigHash::Sha256),
        [p @ .., 12] if p == PKCS1 => Some(SigHash::Sha384),
        [p @ .., 13] if p == PKCS1 => Some(SigHash::Sha512),
        [p @ .., 2] if p == ECDSA => Some(SigHash::Sha256),
        [p @ .., 3] if p == ECDSA => Some(SigHash::Sha384),
        [p @ .., 4] if p == ECDSA => Some(SigHash::Sha512),
        _ => None,
    }
}

/// Splits one DER element with tag `tag` off `input`: (contents, rest).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of SEQUENCE { SEQUENCE {}, SEQUENCE { OID oid } }.
    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        let mut der = vec![0x30, body.len() as u8];
        der.extend_from_slice(&body);
        der
    }

    #[test]
    fn picks_the_hash_of_the_signature_algorithm() {
        let ecdsa256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let rsa384 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 12];
        let sha1_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 5];
        assert_eq!(signature_hash(&fake_cert(&ecdsa256)), Some(SigHash::Sha256));
        assert_eq!(signature_hash(&fake_cert(&rsa384)), Some(SigHash::Sha384));
        assert_eq!(signature_hash(&fake_cert(&sha1_rsa)), None);
        assert_eq!(
            tls_server_end_point(&CertificateDer::from(fake_cert(&rsa384))).len(),
            48
        );
        assert_eq!(
            tls_server_end_point(&CertificateDer::from(fake_cert(&sha1_rsa))).len(),
            32
        );
    }

    #[test]
    fn malformed_der_is_not_a_panic() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x05, 0x30],
        ] {
            assert_eq!(signature_hash(der), None);
        }
    }
}
