//! The `lakebed` binary end to end: `lakebed up` (crash and restart, SIGTERM), the
//! endpoint and role commands with their bad inputs, configuration errors, and the HTTP API.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use lakebed_tests::{
    DEADLINE, DataDir, LakebedUp, connect_via_proxy, lakebed, lakebed_with_stdin,
    postmasters_serving, postmasters_under, process_alive,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;

/// `lakebed endpoint wake NAME`: the address it prints.
async fn wake(dir: &DataDir, name: &str) -> SocketAddr {
    let out = lakebed(dir, &["endpoint", "wake", name]).await.ok();
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("wake printed {out:?}, not an address: {e}"))
}

/// Where `up`'s proxy listens (computes accept only the proxy).
fn proxy_of(up: &LakebedUp) -> SocketAddr {
    up.proxy_addr.expect("the banner names the proxy address")
}

/// `lakebed endpoint show NAME --json`.
async fn show(dir: &DataDir, name: &str) -> Value {
    lakebed(dir, &["endpoint", "show", name, "--json"])
        .await
        .json()
}

/// The postmaster pid that `endpoint show` reports for an active compute.
async fn compute_pid(dir: &DataDir, name: &str) -> u32 {
    let ep = show(dir, name).await;
    assert_eq!(ep["compute"]["state"], "active", "{ep:#}");
    let pid = ep["compute"]["pid"].as_u64().expect("compute.pid");
    u32::try_from(pid).expect("pid fits u32")
}

/// What `endpoint list --json` says that a bad command must not change: names and policies.
async fn endpoints_summary(dir: &DataDir) -> Vec<Value> {
    let list = lakebed(dir, &["endpoint", "list", "--json"]).await.json();
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| json!({"name": e["name"], "tenant": e["tenant"], "policy": e["policy"]}))
        .collect()
}

/// Names in a JSON array of objects with a `name`.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_keeps_catalog_and_stops_orphaned_postmaster() {
    let dir = DataDir::new();
    let first = LakebedUp::start(&dir).await;
    let password = first
        .password
        .clone()
        .expect("first start prints a password");

    wake(&dir, "main").await;
    let old_pid = compute_pid(&dir, "main").await;
    let client = connect_via_proxy(proxy_of(&first), "main", "lakebed", &password)
        .await
        .expect("log in as lakebed");
    client
        .batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('survives');")
        .await
        .expect("write a row");
    drop(client);

    let mut first = first;
    first.signal(Signal::SIGKILL);
    first.wait().await;
    drop(first);
    assert!(
        process_alive(old_pid),
        "a killed manager leaves its compute running"
    );

    // By the time the banner is printed, reconciliation has run.
    let second = LakebedUp::start(&dir).await;
    assert!(
        !process_alive(old_pid),
        "the orphaned postmaster {old_pid} still runs after restart"
    );
    assert!(postmasters_serving(&dir.pgdata("main")).is_empty());
    assert_eq!(second.password, None, "the password is printed only once");

    let endpoints = lakebed(&dir, &["endpoint", "list", "--json"]).await.json();
    assert_eq!(names(&endpoints), ["main"]);
    let roles = lakebed(&dir, &["role", "list", "--json"]).await.json();
    assert_eq!(names(&roles), ["lakebed"]);

    wake(&dir, "main").await;
    let new_pid = compute_pid(&dir, "main").await;
    assert_ne!(new_pid, old_pid);
    let client = connect_via_proxy(proxy_of(&second), "main", "lakebed", &password)
        .await
        .expect("log in with the first banner's password");
    let row = client
        .query_one("SELECT body FROM notes", &[])
        .await
        .expect("read the row back");
    assert_eq!(row.get::<_, String>(0), "survives");
    drop(client);

    let mut second = second;
    second.signal(Signal::SIGTERM);
    assert!(second.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_suspends_every_compute_and_exits_zero() {
    let dir = DataDir::new();
    let mut up = LakebedUp::start(&dir).await;
    wake(&dir, "main").await;
    let pid = compute_pid(&dir, "main").await;
    assert_eq!(postmasters_serving(&dir.pgdata("main")), vec![pid]);

    up.signal(Signal::SIGTERM);
    let status = up.wait().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!process_alive(pid), "postmaster {pid} outlived lakebed up");
    assert!(postmasters_under(dir.path()).is_empty());
    let mut rest = Vec::new();
    while let Some(line) = up.next_line().await {
        rest.push(line);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains("every compute is suspended")),
        "{rest:?}"
    );
    assert!(!dir.path().join("api-addr").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_and_role_commands_round_trip() {
    let dir = DataDir::new();
    // The proxy caches a role's verifier for proxy.auth_cache_ttl (10s by default); a deleted
    // role is refused once that runs out. With no cache, at once.
    let mut up = LakebedUp::start_with(&dir, &[("LAKEBED_PROXY__AUTH_CACHE_TTL", "0s")]).await;

    let created = lakebed(
        &dir,
        &[
            "endpoint",
            "create",
            "app",
            "--suspend-timeout",
            "90s",
            "--keep-warm",
            "Mon-Fri 08:00-18:00 Europe/Berlin",
        ],
    )
    .await
    .ok();
    assert!(created.contains("created endpoint app"), "{created}");

    let list = lakebed(&dir, &["endpoint", "list", "--json"]).await.json();
    assert_eq!(names(&list), ["app", "main"]);

    let ep = show(&dir, "app").await;
    assert_eq!(ep["compute"]["state"], "suspended");
    assert_eq!(ep["tenant"], "default");
    assert_eq!(ep["boots"], 0);
    assert_eq!(
        ep["policy"],
        json!({"suspend_timeout": "1m 30s", "keep_warm": ["Mon-Fri 08:00-18:00 Europe/Berlin"]})
    );

    lakebed(
        &dir,
        &[
            "endpoint",
            "set",
            "app",
            "--suspend-timeout",
            "never",
            "--no-keep-warm",
        ],
    )
    .await
    .ok();
    let ep = show(&dir, "app").await;
    assert_eq!(
        ep["policy"],
        json!({"suspend_timeout": "never", "keep_warm": []})
    );

    let out = lakebed_with_stdin(
        &dir,
        &[
            "role",
            "create",
            "alice",
            "--endpoint",
            "app",
            "--password-stdin",
        ],
        "correct horse battery\n",
    )
    .await
    .ok();
    assert!(
        !out.contains("password:"),
        "no password is generated: {out}"
    );
    let roles = lakebed(&dir, &["role", "list", "--endpoint", "app", "--json"])
        .await
        .json();
    assert_eq!(names(&roles), ["alice"]);

    let address = wake(&dir, "app").await;
    let ep = show(&dir, "app").await;
    assert_eq!(ep["compute"]["state"], "active");
    assert_eq!(ep["compute"]["address"], address.to_string());
    assert_eq!(ep["boots"], 1);
    assert!(ep["last_cold_start_ms"].is_u64(), "{ep:#}");
    let psql = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("SELECT current_user")
        .arg(format!(
            "host={} port={} dbname=postgres user=alice options='endpoint=app' \
             sslmode=disable connect_timeout=10",
            proxy_of(&up).ip(),
            proxy_of(&up).port()
        ))
        .env("PGPASSWORD", "correct horse battery")
        .kill_on_drop(true)
        .output();
    let psql = tokio::time::timeout(DEADLINE, psql)
        .await
        .expect("psql finishes")
        .expect("run psql");
    assert!(psql.status.success(), "psql: {psql:?}");
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "alice");

    lakebed(&dir, &["role", "delete", "alice", "--endpoint", "app"])
        .await
        .ok();
    let roles = lakebed(&dir, &["role", "list", "--endpoint", "app", "--json"])
        .await
        .json();
    assert_eq!(names(&roles), Vec::<&str>::new());
    let refused = connect_via_proxy(proxy_of(&up), "app", "alice", "correct horse battery")
        .await
        .expect_err("a deleted role cannot log in");
    assert_eq!(
        refused.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "{refused}"
    );

    let app_dir = dir.path().join("endpoints/app");
    assert!(app_dir.is_dir());
    lakebed(&dir, &["endpoint", "delete", "app"]).await.ok();
    assert!(!app_dir.exists(), "{} is left", app_dir.display());
    assert!(postmasters_serving(&dir.pgdata("app")).is_empty());
    let list = lakebed(&dir, &["endpoint", "list", "--json"]).await.json();
    assert_eq!(names(&list), ["main"]);

    up.signal(Signal::SIGTERM);
    assert!(up.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoint_commands_fail_clearly_and_change_nothing() {
    let dir = DataDir::new();
    let mut up = LakebedUp::start(&dir).await;
    let before = endpoints_summary(&dir).await;
    assert_eq!(before.len(), 1, "{before:?}");

    let cases: [(&[&str], &str); 7] = [
        (&["endpoint", "show", "nope"], "does not exist"),
        (&["endpoint", "wake", "nope"], "does not exist"),
        (&["endpoint", "create", "main"], "already exists"),
        (
            &["endpoint", "create", "Bad_Name"],
            "only lowercase letters, digits and '-' are allowed",
        ),
        (
            &["endpoint", "create", "x1", "--suspend-timeout", "5 parsecs"],
            "\"5 parsecs\" is not a duration",
        ),
        (
            &["endpoint", "create", "x2", "--keep-warm", "Mon-Fri 8-18"],
            "is not a keep-warm window",
        ),
        (
            &["endpoint", "set", "main", "--suspend-timeout", "5 parsecs"],
            "is not a duration",
        ),
    ];
    for (args, message) in cases {
        let stderr = lakebed(&dir, args).await.err();
        assert!(
            stderr.contains(message),
            "lakebed {args:?}: stderr {stderr:?} lacks {message:?}"
        );
        assert_eq!(
            endpoints_summary(&dir).await,
            before,
            "lakebed {args:?} changed the catalog"
        );
    }
    for name in ["nope", "Bad_Name", "x1", "x2"] {
        assert!(!dir.path().join("endpoints").join(name).exists());
    }
    // Role names Postgres refuses to create are refused here, before they could keep the
    // endpoint from waking.
    for reserved in ["public", "none"] {
        let stderr = lakebed_with_stdin(
            &dir,
            &[
                "role",
                "create",
                reserved,
                "--endpoint",
                "main",
                "--password-stdin",
            ],
            "pw\n",
        )
        .await
        .err();
        assert!(
            stderr.contains(&format!(
                "role name \"{reserved}\" is reserved by PostgreSQL"
            )),
            "{stderr:?}"
        );
    }
    let roles = lakebed(&dir, &["role", "list", "--endpoint", "main", "--json"])
        .await
        .json();
    assert_eq!(roles.as_array().map(Vec::len), Some(1), "{roles:#}");

    // Output into a pipe closed early: the command ends quietly, no panic.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --data-dir '{}' endpoint show main | true",
            lakebed_tests::lakebed_bin().display(),
            dir.path().display()
        ))
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    up.signal(Signal::SIGTERM);
    assert!(up.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_in_config_file_names_file_key_and_value() {
    let dir = DataDir::new();
    let file = dir.path().join("lakebed.toml");
    std::fs::write(&file, "[endpoints.main]\nsuspend_timeout = \"5 parsecs\"\n")
        .expect("write the config");
    let file_arg = file.to_str().expect("utf-8 path");

    let stderr = lakebed(&dir, &["--config", file_arg, "endpoint", "list"])
        .await
        .err();
    let expected =
        format!("{file_arg}: endpoints.main.suspend_timeout: \"5 parsecs\" is not a duration");
    assert!(stderr.contains(&expected), "{stderr:?} lacks {expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_bearer_token_and_answers_errors_as_json() {
    let dir = DataDir::new();
    let mut up = LakebedUp::start(&dir).await;
    let token_file = dir.path().join("admin-token");
    let mode = std::fs::metadata(&token_file)
        .expect("admin-token exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    let token = std::fs::read_to_string(&token_file).expect("read admin-token");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", up.api_url);

    /// Status and JSON body of a response.
    async fn answer(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.expect("a JSON body");
        (status, body)
    }

    let (status, body) = answer(
        http.get(url("/v1/endpoints"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let (status, body) = answer(
        http.get(url("/v1/endpoints"))
            .bearer_auth("wrong-token")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let (status, body) = answer(
        http.get(url("/v1/endpoints"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["main"]);

    let (status, body) = answer(
        http.post(url("/v1/endpoints"))
            .bearer_auth(token.trim())
            .header("content-type", "application/json")
            .body("{\"name\": \"half")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input", "{body}");

    let (status, body) = answer(
        http.get(url("/v1/no-such-route"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    assert_eq!(
        names(&lakebed(&dir, &["endpoint", "list", "--json"]).await.json()),
        ["main"]
    );

    up.signal(Signal::SIGTERM);
    assert!(up.wait().await.success());
}
