//! Development TLS material: two certificate authorities and the certificates they sign,
//! made on first use under `<data_dir>/tls/` and reused afterwards.
//!
//! This is for development and `lakebed up` on one machine. In production the proxy's
//! certificate and key come from the configuration (`proxy.tls_cert`, `proxy.tls_key`) and
//! nothing here is used for clients.
//!
//! ```text
//! <data_dir>/tls/                   0700
//!     ca.pem, ca.key                "Lakebed development CA": clients trust ca.pem
//!                                   (sslmode=verify-full)
//!     proxy.pem, proxy.key          the proxy's server certificate, signed by the CA, for
//!                                   localhost, 127.0.0.1, ::1, <domain> and *.<domain>
//!     internal-ca.pem, .key         "Lakebed internal CA": trusted only by the proxy and computes
//!     compute.pem, compute.key      computes' server certificate (127.0.0.1, localhost)
//!     proxy-client.pem, .key        the proxy's client certificate (CN lakebed-proxy), which
//!                                   computes require (see the compute manager's `ComputeTls`)
//! ```
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, mode 0600; certificates are PEM, mode 0644. Every file
//! is written to a temporary name and renamed into place, so a crash never leaves half a file.
//!
//! A CA is reused while both its files exist. A leaf certificate is reused while it still
//! verifies (webpki) against its CA for its names and purpose for at least
//! [`RENEW_BEFORE`]; otherwise it is re-issued with the same key. So a new `domain`
//! re-issues `proxy.pem` alone, and deleting a CA's files re-issues everything it signed.
//! To start over, delete the `tls` directory.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf certificate is valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf that expires sooner than this is re-issued.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates are valid from this long before they are made, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The development CA's name; clients see it when they inspect the chain.
const CA_NAME: &str = "Lakebed development CA";
/// The internal CA's name.
const INTERNAL_CA_NAME: &str = "Lakebed internal CA";
/// The common name of the proxy's server certificate.
const PROXY_NAME: &str = "Lakebed proxy";
/// The common name of computes' server certificate.
const COMPUTE_NAME: &str = "Lakebed compute";
/// The common name of the proxy's client certificate.
const PROXY_CLIENT_NAME: &str = "lakebed-proxy";
/// The label that stands for any endpoint when checking that proxy.pem covers `*.<domain>`.
const ANY_LABEL: &str = "endpoint";

/// Where the TLS material is. Every path is under [`Pki::dir`] and exists once
/// [`ensure`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// `<data_dir>/tls`.
    pub dir: PathBuf,
    /// The development CA certificate (`ca.pem`) that clients trust.
    pub ca_cert: PathBuf,
    /// The proxy's server certificate (`proxy.pem`), signed by the development CA.
    pub proxy_cert: PathBuf,
    /// Its private key (`proxy.key`).
    pub proxy_key: PathBuf,
    /// The internal CA certificate (`internal-ca.pem`) that computes and the proxy trust.
    pub internal_ca_cert: PathBuf,
    /// Computes' server certificate (`compute.pem`), signed by the internal CA.
    pub compute_cert: PathBuf,
    /// Its private key (`compute.key`).
    pub compute_key: PathBuf,
    /// The proxy's client certificate (`proxy-client.pem`), signed by the internal CA.
    pub proxy_client_cert: PathBuf,
    /// Its private key (`proxy-client.key`).
    pub proxy_client_key: PathBuf,
}

/// Makes sure the development TLS material exists under `<data_dir>/tls/` and returns its
/// paths. Idempotent: files that are still good are reused byte for byte (see the module
/// docs for what is re-issued and when).
///
/// `domain` is the proxy's domain (such as `lakebed.localhost`); `proxy.pem` covers it and
/// every name one label below it, so `main.lakebed.localhost` verifies.
///
/// # Errors
///
/// - `domain` is not a valid DNS name;
/// - a file cannot be read or written (the directory is created if missing);
/// - an existing key or certificate does not parse, or a freshly issued certificate does not
///   verify against its CA (for example `ca.pem` and `ca.key` do not match). Delete the
///   `tls` directory to start over.
pub fn ensure(data_dir: &Path, domain: &str) -> anyhow::Result<Pki> {
    let domain = domain.trim_end_matches('.');
    if domain.is_empty()
        || domain.starts_with("*.")
        || !matches!(ServerName::try_from(domain), Ok(ServerName::DnsName(_)))
    {
        bail!("invalid proxy domain {domain:?}: expected a DNS name such as lakebed.localhost");
    }
    let dir = data_dir.join("tls");
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;

    let ca = Ca::ensure(&dir, "ca", CA_NAME)?;
    let internal = Ca::ensure(&dir, "internal-ca", INTERNAL_CA_NAME)?;
    let loopback = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let mut proxy_names = loopback.to_vec();
    proxy_names.extend([domain.to_owned(), format!("*.{domain}")]);
    ca.ensure_leaf(&dir, "proxy", &Purpose::Server(PROXY_NAME, proxy_names))?;
    let compute_names = vec!["127.0.0.1".into(), "localhost".into()];
    internal.ensure_leaf(
        &dir,
        "compute",
        &Purpose::Server(COMPUTE_NAME, compute_names),
    )?;
    internal.ensure_leaf(&dir, "proxy-client", &Purpose::Client(PROXY_CLIENT_NAME))?;

    Ok(Pki {
        ca_cert: dir.join("ca.pem"),
        proxy_cert: dir.join("proxy.pem"),
        proxy_key: dir.join("proxy.key"),
        internal_ca_cert: dir.join("internal-ca.pem"),
        compute_cert: dir.join("compute.pem"),
        compute_key: dir.join("compute.key"),
        proxy_client_cert: dir.join("proxy-client.pem"),
        proxy_client_key: dir.join("proxy-client.key"),
        dir,
    })
}

/// What a leaf certificate is for.
enum Purpose<'a> {
    /// A TLS server with this common name and these subject alternative names (DNS names,
    /// IP addresses, `*.` wildcards).
    Server(&'a str, Vec<String>),
    /// A TLS client, with this common name.
    Client(&'a str),
}

/// A CA: its certificate and what signs with its key.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `<stem>.pem` and `<stem>.key` from `dir`, or makes a new self-signed CA named
    /// `name` if either is missing.
    fn ensure(dir: &Path, stem: &str, name: &str) -> anyhow::Result<Self> {
        let (cert_path, key_path) = paths(dir, stem);
        let key = match (cert_path.exists(), read_key(&key_path)?) {
            (true, Some(key)) => key,
            _ => {
                let key = KeyPair::generate().context("cannot generate a key")?;
                let cert = ca_params(name, CA_VALIDITY)
                    .self_signed(&key)
                    .with_context(|| format!("cannot make {}", cert_path.display()))?;
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
                key
            }
        };
        Ok(Self {
            cert: read_cert(&cert_path)?,
            // Same subject and key-identifier method as the certificate, so what it signs
            // names this CA as issuer.
            issuer: Issuer::new(ca_params(name, CA_VALIDITY), key),
        })
    }

    /// Makes sure `<stem>.pem` is a certificate for `purpose`, signed by this CA, and valid
    /// for at least [`RENEW_BEFORE`]; re-issues it (keeping `<stem>.key` if it exists)
    /// otherwise.
    fn ensure_leaf(&self, dir: &Path, stem: &str, purpose: &Purpose<'_>) -> anyhow::Result<()> {
        let (cert_path, key_path) = paths(dir, stem);
        let renew_at = UnixTime::since_unix_epoch(
            Duration::from_secs(UnixTime::now().as_secs()) + RENEW_BEFORE,
        );
        let key = read_key(&key_path)?;
        if key.is_some() && cert_path.exists() {
            let cert = read_cert(&cert_path)?;
            if self.verify(&cert, purpose, renew_at).is_ok() {
                return Ok(());
            }
        }
        let key = match key {
            Some(key) => key,
            None => {
                let key = KeyPair::generate().context("cannot generate a key")?;
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
        };
        let cert = leaf_params(purpose)?
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot issue {}", cert_path.display()))?;
        self.verify(cert.der(), purpose, UnixTime::now())
            .with_context(|| {
                format!(
                    "the certificate issued for {} does not verify against its CA; delete {} to \
                     start over",
                    cert_path.display(),
                    dir.display()
                )
            })?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
    }

    /// Checks with webpki that `cert` chains to this CA at `at`, for `purpose` (every name
    /// of a server certificate; `*.` stands for any one label).
    fn verify(
        &self,
        cert: &CertificateDer<'_>,
        purpose: &Purpose<'_>,
        at: UnixTime,
    ) -> Result<(), webpki::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&self.cert)?;
        let leaf = EndEntityCert::try_from(cert)?;
        let usage = match purpose {
            Purpose::Server(..) => KeyUsage::server_auth(),
            Purpose::Client(_) => KeyUsage::client_auth(),
        };
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            usage,
            None,
            None,
        )?;
        if let Purpose::Server(_, names) = purpose {
            for name in names {
                let probe = match name.strip_prefix("*.") {
                    Some(parent) => format!("{ANY_LABEL}.{parent}"),
                    None => name.clone(),
                };
                let probe =
                    ServerName::try_from(probe.as_str()).map_err(|_| webpki::Error::BadDer)?;
                leaf.verify_is_valid_for_subject_name(&probe)?;
            }
        }
        Ok(())
    }
}

/// `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// Parameters of a CA certificate named `name`. Deterministic but for dates and serial, so
/// that an [`Issuer`] built from them matches a certificate made earlier.
fn ca_params(name: &str, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity);
    params
}

/// Parameters of a leaf certificate for `purpose`.
fn leaf_params(purpose: &Purpose<'_>) -> anyhow::Result<CertificateParams> {
    let mut params = match purpose {
        Purpose::Server(name, names) => {
            let mut params = CertificateParams::new(names.clone())
                .context("invalid subject alternative name")?;
            params.distinguished_name = distinguished_name(name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
        }
        Purpose::Client(name) => {
            let mut params = CertificateParams::default();
            params.distinguished_name = distinguished_name(name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
        }
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Lakebed");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from [`BACKDATE`] ago for `validity`, with a random serial number (a re-issued
/// certificate keeps its key, so the default serial, a hash of the key, would repeat).
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Reads a PEM private key; `None` if the file does not exist.
fn read_key(path: &Path) -> anyhow::Result<Option<KeyPair>> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    KeyPair::from_pem(&pem)
        .map(Some)
        .with_context(|| format!("{} is not a PEM private key", path.display()))
}

/// Reads the first certificate of a PEM file.
fn read_cert(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM certificate from {}", path.display()))
}

/// Writes `bytes` to `path` with `mode`: to a temporary file beside it first, then renamed
/// over it, then the directory synced.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let name = path.file_name().context("a file path has a name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::process::Command;

    use super::*;

    const FILES: [&str; 10] = [
        "ca.pem",
        "ca.key",
        "proxy.pem",
        "proxy.key",
        "internal-ca.pem",
        "internal-ca.key",
        "compute.pem",
        "compute.key",
        "proxy-client.pem",
        "proxy-client.key",
    ];

    fn contents(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
        FILES
            .iter()
            .map(|f| (*f, std::fs::read(dir.join(f)).unwrap()))
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Verifies `cert` against `ca` with webpki, as rustls would.
    fn verifies(ca: &Path, cert: &Path, usage: KeyUsage, name: Option<&str>) -> anyhow::Result<()> {
        let ca = read_cert(ca)?;
        let cert = read_cert(cert)?;
        let anchor = webpki::anchor_from_trusted_cert(&ca)?;
        let leaf = EndEntityCert::try_from(&cert)?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
        if let Some(name) = name {
            leaf.verify_is_valid_for_subject_name(&ServerName::try_from(name)?)?;
        }
        Ok(())
    }

    #[test]
    fn creates_files_with_private_modes() {
        let data = tempfile::tempdir().unwrap();
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        assert_eq!(pki.dir, data.path().join("tls"));
        assert_eq!(mode(&pki.dir), 0o700);
        for file in FILES {
            let want = if file.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(&pki.dir.join(file)), want, "{file}");
        }
        let mut names: Vec<String> = std::fs::read_dir(&pki.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
        want.sort();
        assert_eq!(names, want, "no temporary file is left behind");
        for path in [
            &pki.ca_cert,
            &pki.proxy_cert,
            &pki.proxy_key,
            &pki.internal_ca_cert,
            &pki.compute_cert,
            &pki.compute_key,
            &pki.proxy_client_cert,
            &pki.proxy_client_key,
        ] {
            assert!(path.is_file(), "{}", path.display());
        }
    }

    #[test]
    fn second_call_reuses_everything() {
        let data = tempfile::tempdir().unwrap();
        let first = ensure(data.path(), "lakebed.localhost").unwrap();
        let before = contents(&first.dir);
        let second = ensure(data.path(), "lakebed.localhost").unwrap();
        assert_eq!(first, second);
        assert_eq!(before, contents(&second.dir));
    }

    #[test]
    fn new_domain_reissues_only_proxy_pem() {
        let data = tempfile::tempdir().unwrap();
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        let before = contents(&pki.dir);
        ensure(data.path(), "db.example.com").unwrap();
        let after = contents(&pki.dir);
        for file in FILES {
            assert_eq!(before[file] == after[file], file != "proxy.pem", "{file}");
        }
        let server = KeyUsage::server_auth();
        verifies(
            &pki.ca_cert,
            &pki.proxy_cert,
            server,
            Some("main.db.example.com"),
        )
        .unwrap();
        verifies(
            &pki.ca_cert,
            &pki.proxy_cert,
            server,
            Some("db.example.com"),
        )
        .unwrap();
        assert!(
            verifies(
                &pki.ca_cert,
                &pki.proxy_cert,
                server,
                Some("main.lakebed.localhost")
            )
            .is_err()
        );
    }

    #[test]
    fn missing_ca_reissues_what_it_signed() {
        let data = tempfile::tempdir().unwrap();
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        let before = contents(&pki.dir);
        std::fs::remove_file(pki.dir.join("internal-ca.key")).unwrap();
        ensure(data.path(), "lakebed.localhost").unwrap();
        let after = contents(&pki.dir);
        for file in FILES {
            let changed = matches!(
                file,
                "internal-ca.pem" | "internal-ca.key" | "compute.pem" | "proxy-client.pem"
            );
            assert_eq!(before[file] != after[file], changed, "{file}");
        }
        let client = KeyUsage::client_auth();
        verifies(&pki.internal_ca_cert, &pki.proxy_client_cert, client, None).unwrap();
    }

    #[test]
    fn certificates_chain_to_their_ca() {
        let data = tempfile::tempdir().unwrap();
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        let server = KeyUsage::server_auth();
        for name in [
            "main.lakebed.localhost",
            "lakebed.localhost",
            "localhost",
            "127.0.0.1",
            "::1",
        ] {
            verifies(&pki.ca_cert, &pki.proxy_cert, server, Some(name)).unwrap();
        }
        // Not two labels below the domain, and not by the other CA.
        assert!(
            verifies(
                &pki.ca_cert,
                &pki.proxy_cert,
                server,
                Some("a.b.lakebed.localhost")
            )
            .is_err()
        );
        assert!(verifies(&pki.internal_ca_cert, &pki.proxy_cert, server, None).is_err());

        for name in ["127.0.0.1", "localhost"] {
            verifies(&pki.internal_ca_cert, &pki.compute_cert, server, Some(name)).unwrap();
        }
        assert!(verifies(&pki.ca_cert, &pki.compute_cert, server, None).is_err());

        let client = KeyUsage::client_auth();
        verifies(&pki.internal_ca_cert, &pki.proxy_client_cert, client, None).unwrap();
        assert!(verifies(&pki.internal_ca_cert, &pki.proxy_client_cert, server, None).is_err());
        assert!(verifies(&pki.ca_cert, &pki.proxy_client_cert, client, None).is_err());
    }

    /// OpenSSL, which PostgreSQL uses, accepts the chains too (a second implementation).
    #[test]
    fn openssl_verifies_the_chains() {
        let data = tempfile::tempdir().unwrap();
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        let openssl = |args: &[&str], ca: &Path, cert: &Path| {
            Command::new("openssl")
                .arg("verify")
                .args(args)
                .arg("-CAfile")
                .arg(ca)
                .arg(cert)
                .output()
                .expect("run openssl (Debian: apt-get install openssl)")
        };
        let cases: [(&[&str], &Path, &Path, bool); 4] = [
            (
                &["-purpose", "sslclient"],
                &pki.internal_ca_cert,
                &pki.proxy_client_cert,
                true,
            ),
            (
                &["-purpose", "sslserver"],
                &pki.internal_ca_cert,
                &pki.compute_cert,
                true,
            ),
            (
                &[
                    "-purpose",
                    "sslserver",
                    "-verify_hostname",
                    "main.lakebed.localhost",
                ],
                &pki.ca_cert,
                &pki.proxy_cert,
                true,
            ),
            (&[], &pki.ca_cert, &pki.proxy_client_cert, false),
        ];
        for (args, ca, cert, ok) in cases {
            let out = openssl(args, ca, cert);
            assert_eq!(
                out.status.success(),
                ok,
                "{args:?} {}: {out:?}",
                cert.display()
            );
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let data = tempfile::tempdir().unwrap();
        for domain in ["", "*.lakebed.localhost", "not a name", "127.0.0.1"] {
            assert!(ensure(data.path(), domain).is_err(), "{domain:?}");
        }
        let pki = ensure(data.path(), "lakebed.localhost").unwrap();
        std::fs::write(&pki.proxy_key, "garbage").unwrap();
        let err = ensure(data.path(), "lakebed.localhost").unwrap_err();
        assert!(format!("{err:#}").contains("proxy.key"), "{err:#}");
    }
}
