//! Computes with `ComputeTls`, against real PostgreSQL: only a client presenting a certificate
//! signed by the configured CA, over TLS, with the right SCRAM password, logs in.
//!
//! The certificates are made here with rcgen (the `lakebed` binary's `pki` module is not a
//! library); rustls (through tokio-postgres-rustls) is the client.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lakebed_compute_manager::ComputeTls;
use lakebed_config::RoleName;
use lakebed_tests::{
    DataDir, client_config, connect, create_endpoint, open_manager, policy, postmasters_serving,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A CA made for the test.
struct TestCa {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate a CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf with `eku` for `names` (SANs; may be empty) and common name `cn`.
    fn issue(&self, cn: &str, names: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            pem: cert.pem(),
            cert: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// A leaf certificate and its key, as DER and PEM.
struct Leaf {
    cert: CertificateDer<'static>,
    pem: String,
    key: PrivatePkcs8KeyDer<'static>,
    key_pem: String,
}

impl Leaf {
    fn identity(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        (
            self.cert.clone(),
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
    }
}

/// A rustls client config trusting `ca`, presenting `identity` if given.
fn tls(
    ca: &CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> MakeRustlsConnect {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default TLS versions")
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    MakeRustlsConnect::new(config)
}

/// Connects over TLS (required) to `address` as `user`, and runs the connection.
async fn connect_tls(
    address: SocketAddr,
    user: &str,
    password: &str,
    tls: MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = client_config(address, user, password);
    cfg.ssl_mode(SslMode::Require);
    let (client, conn) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test certificate file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_with_tls_accepts_only_clients_with_a_certificate_from_its_ca() {
    let ca = TestCa::new("test internal CA");
    let server = ca.issue(
        "compute",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let proxy = ca.issue("lakebed-proxy", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let other_ca = TestCa::new("some other CA");
    let stranger = other_ca.issue("lakebed-proxy", &[], ExtendedKeyUsagePurpose::ClientAuth);

    let certs = tempfile::tempdir().expect("temp dir for certificates");
    let compute_tls = ComputeTls {
        ca_cert: write(certs.path(), "ca.pem", &ca.pem),
        server_cert: write(certs.path(), "server.pem", &server.pem),
        server_key: write(certs.path(), "server.key", &server.key_pem),
    };
    let dir = DataDir::new();
    let manager = open_manager(&dir, |o| o.compute_tls = Some(compute_tls)).await;
    let ep = create_endpoint(&manager, "main", policy("5m", &[]));
    let role: RoleName = "app".parse().expect("role name");
    let password = manager
        .create_role(&ep, &role, None)
        .await
        .expect("create role")
        .expect("a generated password");
    let address = manager.wake(&ep).await.expect("wake").address;

    // The files are in the compute's local run directory (never in PGDATA, which lives in
    // the page store), private to the compute's OS user.
    let pgdata = dir.pgdata("main");
    let run = pgdata.with_file_name("run");
    let compute_uid = std::fs::metadata(&pgdata).expect("PGDATA").uid();
    for name in ["lakebed-ca.pem", "lakebed-server.pem", "lakebed-server.key"] {
        let meta = std::fs::metadata(run.join(name)).expect("TLS file in the run directory");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        assert_eq!(meta.uid(), compute_uid, "{name}");
        assert!(!pgdata.join(name).exists(), "{name} must not be in PGDATA");
    }
    assert_eq!(
        std::fs::read(run.join("lakebed-server.key")).expect("key copy"),
        server.key_pem.as_bytes()
    );

    // 1. No TLS: no pg_hba.conf line matches.
    let plain = connect(address, "app", &password)
        .await
        .expect_err("a plain connection must be refused");
    assert_eq!(
        plain.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{plain}"
    );

    // 2. TLS without a client certificate: clientcert=verify-ca refuses it.
    let anonymous = connect_tls(address, "app", &password, tls(&ca.cert, None))
        .await
        .expect_err("TLS without a client certificate must be refused");
    assert_eq!(
        anonymous.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{anonymous}"
    );
    assert_eq!(
        anonymous.as_db_error().map(|e| e.message()),
        Some("connection requires a valid client certificate")
    );

    // 3. TLS with the proxy's certificate and the right password: in.
    let client = connect_tls(
        address,
        "app",
        &password,
        tls(&ca.cert, Some(proxy.identity())),
    )
    .await
    .expect("the proxy's certificate and the password log in");
    let row = client
        .query_one(
            "SELECT 1, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query over TLS");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(row.get::<_, bool>(1), "the session is encrypted");
    assert_eq!(row.get::<_, String>(2), "/CN=lakebed-proxy");

    // 3b. The certificate alone is not enough: SCRAM still decides.
    let wrong = connect_tls(
        address,
        "app",
        "not-the-password",
        tls(&ca.cert, Some(proxy.identity())),
    )
    .await
    .expect_err("a wrong password must be refused even with the certificate");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong}");

    // 3c. The system role stays Unix-socket only, certificate or not.
    let system = connect_tls(
        address,
        "lakebed_system",
        "x",
        tls(&ca.cert, Some(proxy.identity())),
    )
    .await
    .expect_err("the system role must not log in over TCP");
    assert_eq!(
        system.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{system}"
    );

    // 4. A client certificate from another CA: the TLS handshake itself fails, before any
    // SQL-level answer.
    let foreign = connect_tls(
        address,
        "app",
        &password,
        tls(&ca.cert, Some(stranger.identity())),
    )
    .await
    .expect_err("a certificate from another CA must be refused");
    assert_eq!(foreign.code(), None, "{foreign}");
    assert!(
        format!("{foreign:?}").contains("AlertReceived(UnknownCA)"),
        "{foreign:?}"
    );

    drop(client);
    manager.shutdown().await;
    assert!(postmasters_serving(&pgdata).is_empty());
}
