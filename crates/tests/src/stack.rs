//! [`Stack`]: a running `lakebed up` on its own data directory, with what the proxy and
//! pooling tests ask of it — the CLI (`endpoint show/wake/suspend`, `pools`), tokio-postgres
//! settings and clients for the proxy, and client programs (`psql`, `pgbench`) pointed at it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tokio::time::timeout;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

use crate::clients::{POLL, ROLE, Watched, client_command, connect_watched};
use crate::{DEADLINE, DataDir, LakebedUp, lakebed};

/// A running `lakebed up` on its own data directory. Fields drop in order: `lakebed up`
/// first, then the data dir (which kills any compute left behind).
pub struct Stack {
    /// The running binary.
    pub up: LakebedUp,
    /// Its data directory.
    pub dir: DataDir,
    /// The password of role `lakebed` on `main`, from the banner.
    pub password: String,
}

impl Stack {
    /// Starts `lakebed up` on a fresh data directory (see [`LakebedUp::start`]).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts `lakebed up` on a fresh data directory with `env` (`LAKEBED_*` settings).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = DataDir::new();
        let up = LakebedUp::start_with(&dir, env).await;
        Self::of(up, dir)
    }

    /// A stack of a `lakebed up` already started on `dir` for the first time; panics if its
    /// banner printed no password.
    pub fn of(up: LakebedUp, dir: DataDir) -> Self {
        let password = up
            .password
            .clone()
            .expect("the first start prints the password of role lakebed");
        Self { up, dir, password }
    }

    /// Where the proxy listens; panics if the banner did not say.
    pub fn proxy(&self) -> SocketAddr {
        self.up
            .proxy_addr
            .expect("the banner names the proxy's address")
    }

    /// The development CA that signs the proxy's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// The internal CA that signs the computes' certificates.
    pub fn internal_ca(&self) -> PathBuf {
        self.dir.path().join("tls/internal-ca.pem")
    }

    /// Runs `lakebed ARGS`, asserting success; its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        lakebed(&self.dir, args).await.ok()
    }

    /// `lakebed endpoint show NAME --json`, asserting success.
    pub async fn show(&self, endpoint: &str) -> Value {
        lakebed(&self.dir, &["endpoint", "show", endpoint, "--json"])
            .await
            .json()
    }

    /// The compute's state (`suspended`, `active`, ...) and the endpoint's boot count, from
    /// [`Self::show`]; panics if either is missing.
    pub async fn state_and_boots(&self, endpoint: &str) -> (String, u64) {
        let ep = self.show(endpoint).await;
        let state = ep["compute"]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no compute.state: {ep:#}"))
            .to_owned();
        let boots = ep["boots"]
            .as_u64()
            .unwrap_or_else(|| panic!("no boots: {ep:#}"));
        (state, boots)
    }

    /// Edits the PGDATA of suspended `endpoint` in the page store as an operator holding
    /// the keys would: unwraps the tenant's DEKs with the local KMS provider's key file,
    /// mounts the timeline with a pagefs of the test's own, runs `edit` on the mount point,
    /// and unmounts (flushing).
    pub async fn edit_pgdata(&self, endpoint: &str, edit: impl FnOnce(&std::path::Path)) {
        use base64::Engine;
        use lakebed_keys::{EncryptionContext, KmsProvider, LocalKms, WrappedDek};
        let log = self.up.log_text();
        let addr = log
            .split("page store ready addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no page store address in the log:\n{log}"));
        let show = self.show(endpoint).await;
        let timeline = show["timeline"]
            .as_str()
            .expect("the endpoint's timeline")
            .to_owned();
        let tenant = show["tenant"]
            .as_str()
            .expect("the endpoint's tenant")
            .to_owned();
        let url = format!("http://{addr}");
        // The lineage: the timeline and the template it was branched from.
        let client = lakebed_pageserver_client::PageStoreClient::connect(
            lakebed_pageserver_client::ClientOptions::new(url.clone()),
        )
        .await
        .expect("connect to the page store");
        let info = client
            .describe_timeline(&timeline.parse().expect("a timeline id"))
            .await
            .expect("describe the timeline");
        let mut lineage = timeline.clone();
        if let Some((parent, _)) = info.parent {
            lineage.push_str(&format!(" {parent}"));
        }
        let kms = LocalKms::open(self.dir.path().join("keys/local-master.key")).expect("key file");
        let catalog =
            lakebed_compute_manager::catalog::Catalog::open(&self.dir.path().join("catalog.db"))
                .expect("the catalog");
        let ctx =
            EncryptionContext::for_tenant(&tenant, lakebed_compute_manager::tenant_keys::PURPOSE);
        let mut keys = format!("tenant {tenant}\nlineage {lineage}\n");
        for d in catalog
            .deks(&tenant.parse().expect("a tenant name"))
            .expect("the DEKs")
        {
            let wrapped = WrappedDek {
                ciphertext: d.wrapped,
                key_id: d.wrapped_by,
            };
            let dek = kms.decrypt(&wrapped, &ctx).await.expect("unwrap the DEK");
            let b64 = base64::engine::general_purpose::STANDARD.encode(dek.as_bytes());
            keys.push_str(&format!("dek {} {b64}\n", d.version));
        }
        keys.push_str("end\n");
        let mut fs = crate::PagefsProcess::start_with_keys(
            self.dir.path(),
            &format!("edit-{endpoint}"),
            &url,
            &timeline,
            &keys,
        )
        .await
        .unwrap_or_else(|log| panic!("pagefs of the edit did not mount:\n{log}"));
        edit(&fs.mountpoint);
        let status = fs.stop(nix::sys::signal::Signal::SIGTERM).await;
        assert!(status.success(), "pagefs of the edit: {status}");
    }

    /// `lakebed endpoint wake NAME`: the compute's address (panics if it printed none).
    pub async fn wake(&self, endpoint: &str) -> SocketAddr {
        let out = self.cli(&["endpoint", "wake", endpoint]).await;
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("wake printed {out:?}, not an address: {e}"))
    }

    /// `lakebed endpoint suspend NAME`, then waits (at most [`DEADLINE`]) until `endpoint
    /// show` says `suspended`; panics if it does not.
    pub async fn suspend(&self, endpoint: &str) {
        self.cli(&["endpoint", "suspend", endpoint]).await;
        let polled = timeout(DEADLINE, async {
            loop {
                let (state, _) = self.state_and_boots(endpoint).await;
                if state == "suspended" {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        assert!(
            polled.is_ok(),
            "{endpoint} not suspended within {DEADLINE:?}: {:#}",
            self.show(endpoint).await
        );
    }

    /// `lakebed pools --json`; panics if it is not a list.
    pub async fn pools(&self) -> Vec<Value> {
        let v = lakebed(&self.dir, &["pools", "--json"]).await.json();
        v.as_array()
            .unwrap_or_else(|| panic!("pools is not a list: {v:#}"))
            .clone()
    }

    /// The pool of role `lakebed` on `main` for database `db`, if there is one.
    pub async fn pool(&self, db: &str) -> Option<Value> {
        self.pools().await.into_iter().find(|p| {
            p["endpoint"] == "main" && p["role"] == ROLE && p["database"].as_str() == Some(db)
        })
    }

    /// tokio-postgres settings for the proxy as `user` with `password`, database `db`, no
    /// TLS (allowed on loopback), no endpoint named (the proxy's default, `main`, applies),
    /// a 30s connect timeout.
    pub fn config_as(&self, user: &str, password: &str, db: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(self.proxy().ip().to_string())
            .port(self.proxy().port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(30));
        cfg
    }

    /// [`Self::config_as`] as role `lakebed` with its password.
    pub fn config(&self, db: &str) -> Config {
        self.config_as(ROLE, &self.password, db)
    }

    /// tokio-postgres settings for the proxy: plain TCP to its address, as `user` with
    /// `password`, database `postgres`, no endpoint named, a 10s connect timeout.
    pub fn postgres_config(&self, user: &str, password: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(self.proxy().ip().to_string());
        self.login(&mut cfg, user, password);
        cfg
    }

    fn login(&self, cfg: &mut Config, user: &str, password: &str) {
        cfg.port(self.proxy().port())
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
    }

    /// [`Self::postgres_config`] as role `lakebed` with its password, over TLS (required)
    /// with the server name `host`, connecting to 127.0.0.1: `host` is what the certificate
    /// is checked against and what the proxy sees as SNI.
    pub fn tls_config(&self, host: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host(host)
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .ssl_mode(SslMode::Require);
        self.login(&mut cfg, ROLE, &self.password);
        cfg
    }

    /// Connects with `cfg` (no TLS), keeping the connection task (see [`connect_watched`]).
    pub async fn watched(&self, cfg: &Config) -> Result<Watched, tokio_postgres::Error> {
        connect_watched(cfg).await
    }

    /// A client of database `db` as role `lakebed`, its connection watched; panics if the
    /// login fails.
    pub async fn watched_client(&self, db: &str) -> Watched {
        connect_watched(&self.config(db))
            .await
            .unwrap_or_else(|e| panic!("connect to {db} through the proxy: {e:?}"))
    }

    /// A client of database `postgres` as role `lakebed`; panics if the login fails.
    pub async fn client(&self) -> Client {
        self.watched(&self.config("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect through the proxy: {e:?}"))
            .client
    }

    /// A client of database `template1`: a pool of its own, so it can watch
    /// `pg_stat_activity` while the pool of `postgres` is busy. Panics if the login fails.
    pub async fn observer(&self) -> Client {
        self.watched(&self.config("template1"))
            .await
            .unwrap_or_else(|e| panic!("connect the observer: {e:?}"))
            .client
    }

    /// A libpq connection string for the proxy as role `lakebed`, database `postgres`,
    /// followed by `extra` (which may override any of it).
    pub fn conninfo(&self, extra: &str) -> String {
        format!(
            "host={} port={} user={ROLE} dbname=postgres connect_timeout=10 {extra}",
            self.proxy().ip(),
            self.proxy().port()
        )
    }

    /// Runs a client program (`psql`, `pgbench`) to completion, with `PGPASSWORD` set to
    /// role `lakebed`'s password, no other `PG*` variable inherited, and `env` added; its
    /// output. Panics if it cannot run or takes over [`DEADLINE`].
    pub async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = client_command(program);
        cmd.args(args).env("PGPASSWORD", &self.password);
        for (k, v) in env {
            cmd.env(k, v);
        }
        timeout(DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("run {program}: {e} (install postgresql-client)"))
    }

    /// `psql -X -A -t -v ON_ERROR_STOP=1 -c SQL CONNINFO` (see [`Self::run`]): its output.
    pub async fn psql(&self, conninfo: &str, sql: &str, env: &[(&str, &str)]) -> Output {
        self.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                conninfo,
            ],
            env,
        )
        .await
    }

    /// Like [`Self::psql`], asserting success; its standard output, trimmed.
    pub async fn psql_ok(&self, conninfo: &str, sql: &str, env: &[(&str, &str)]) -> String {
        let out = self.psql(conninfo, sql, env).await;
        assert!(
            out.status.success(),
            "psql {conninfo:?} -c {sql:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
