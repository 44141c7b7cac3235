//! A real `moto_server` (moto's AWS API emulator) on a loopback port, one per test.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lakebed_keys::AwsKms;
use lakebed_keys::aws_config::{BehaviorVersion, SdkConfig};
use lakebed_keys::aws_sdk_kms::config::{Credentials, Region, SharedCredentialsProvider};
use tempfile::TempDir;

/// How long `moto_server` may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `moto_server`, killed when dropped.
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    /// Holds the log file until the server is gone.
    _dir: TempDir,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free port and returns once it answers
    /// HTTP. Panics (never skips) if it is not installed or does not come up.
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().expect("temp dir");
        // Another process may take the port between our probe and moto's bind; moto then
        // exits, and we try another port.
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = File::create(dir.path().join("moto.log")).expect("moto log file");
            let spawned = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log fd"))
                .stderr(log)
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => panic!(
                    "can not run moto_server ({e}); the KMS tests need it on PATH: \
                     run scripts/install-deps.sh (or: python3 -m pip install 'moto[server]')"
                ),
            };
            match wait_ready(&mut child, addr) {
                Ready::Yes => {
                    return Moto {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                Ready::Exited => continue,
                Ready::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto_server on {addr} did not answer within {START_DEADLINE:?}; log:\n{}",
                        read_log(&dir)
                    );
                }
            }
        }
        panic!(
            "moto_server exited three times right after starting; log:\n{}",
            read_log(&dir)
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SDK configuration for this server with fixed fake credentials (`test`/`test`) and
    /// region `us-east-1`; reads nothing from the environment.
    pub fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint())
    }

    /// The provider under test.
    pub fn provider(&self) -> AwsKms {
        AwsKms::with_config(&self.sdk_config())
    }

    /// A raw SDK client, for what the customer does in their account (create, disable keys).
    pub fn admin(&self) -> lakebed_keys::aws_sdk_kms::Client {
        lakebed_keys::aws_sdk_kms::Client::new(&self.sdk_config())
    }
}

/// SDK configuration for a KMS at `endpoint` with fixed fake credentials (`test`/`test`)
/// and region `us-east-1`; reads nothing from the environment, so tests running in
/// parallel don't interfere.
pub fn sdk_config_for(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "lakebed-keys-tests",
        )))
        .endpoint_url(endpoint)
        .build()
}

enum Ready {
    Yes,
    Exited,
    TimedOut,
}

/// Polls until an HTTP request to `addr` gets an HTTP answer, or the process exits.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> Ready {
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Ready::Exited;
        }
        if answers_http(addr) {
            return Ready::Yes;
        }
        // Poll interval while the Python process starts (typically 0.3 to 1 s).
        std::thread::sleep(Duration::from_millis(20));
    }
    Ready::TimedOut
}

fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

fn read_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
