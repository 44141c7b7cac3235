//! Prometheus metrics of `lakebed up`: `/metrics` on the compute manager's API and on the
//! proxy's API parse as the Prometheus text format (with `prometheus-parse`), and counters
//! move by exactly what a known workload does.

use lakebed_tests::prom::{get, scrape};
use lakebed_tests::{DataDir, LakebedUp, connect_via_proxy, lakebed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_a_known_workload_of_three_connections_and_one_wake() {
    let dir = DataDir::new();
    let up = LakebedUp::start(&dir).await;
    let proxy = up.proxy_addr.expect("the banner names the proxy");
    let password = up
        .password
        .clone()
        .expect("first start prints the password");
    let manager_metrics = format!("{}/metrics", up.api_url);
    let proxy_api =
        std::fs::read_to_string(dir.path().join("proxy-api-addr")).expect("proxy-api-addr");
    let proxy_metrics = format!("http://{}/metrics", proxy_api.trim());

    let before = scrape(&manager_metrics).await;
    assert_eq!(
        get(&before, "lakebed_computes", &[("state", "suspended")]),
        1.0
    );
    assert_eq!(
        get(
            &before,
            "lakebed_wake_requests_total",
            &[("outcome", "cold")]
        ),
        0.0
    );

    // Three connections, one after another: the first wakes the compute, cold.
    for i in 0..3i32 {
        let client = connect_via_proxy(proxy, "main", "lakebed", &password)
            .await
            .expect("connect through the proxy");
        let row = client
            .query_one("SELECT $1::int4", &[&i])
            .await
            .expect("query");
        assert_eq!(row.get::<_, i32>(0), i);
    }
    // One wrong password.
    let refused = connect_via_proxy(proxy, "main", "lakebed", "wrong").await;
    assert!(refused.is_err());

    let after = scrape(&manager_metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };
    assert_eq!(delta("lakebed_proxy_connections_accepted_total", &[]), 4.0);
    assert_eq!(
        delta(
            "lakebed_proxy_sessions_total",
            &[("route", "options"), ("tls", "false")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "lakebed_proxy_auth_failures_total",
            &[("reason", "password")]
        ),
        1.0
    );
    assert_eq!(
        delta("lakebed_wake_requests_total", &[("outcome", "cold")]),
        1.0
    );
    assert_eq!(get(&after, "lakebed_computes", &[("state", "active")]), 1.0);
    assert_eq!(
        get(&after, "lakebed_computes", &[("state", "suspended")]),
        0.0
    );
    // Closed clients leave the gauge when the proxy has seen them go: wait for that.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = scrape(&manager_metrics).await;
        if get(&now, "lakebed_proxy_connections_active", &[]) == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lakebed_proxy_connections_active never went back to 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The proxy's API serves the same registry, with the pool gauges filled in.
    let pools = scrape(&proxy_metrics).await;
    let pool = [
        ("database", "postgres"),
        ("endpoint", "main"),
        ("role", "lakebed"),
    ];
    assert!(get(&pools, "lakebed_pool_servers_idle", &pool) >= 1.0);
    assert_eq!(get(&pools, "lakebed_pool_clients_active", &pool), 0.0);
    assert_eq!(
        get(
            &pools,
            "lakebed_wake_requests_total",
            &[("outcome", "cold")]
        ),
        1.0
    );

    // `lakebed status` puts the same facts on one screen.
    let status = lakebed(&dir, &["status"]).await.ok();
    let main = status
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_else(|| panic!("no line for main in:\n{status}"));
    let cols: Vec<&str> = main.split_whitespace().collect();
    assert_eq!(cols[1], "active", "{main}");
    assert!(cols[2].starts_with("127.0.0.1:"), "{main}");
    assert_eq!(cols[cols.len() - 5], "1", "one boot: {main}");
    assert!(status.contains("page store: "), "{status}");

    // pagefs reports its cache once a second; the compute has read pages through it since
    // it booted, so the gauges and the status' hit ratio appear.
    let pagefs = tokio::time::timeout(lakebed_tests::DEADLINE, async {
        loop {
            let m = scrape(&manager_metrics).await;
            let pages = get(&m, "lakebed_pagefs_cache_pages", &[("endpoint", "main")]);
            let lookups = get(&m, "lakebed_pagefs_cache_hits", &[("endpoint", "main")])
                + get(&m, "lakebed_pagefs_cache_misses", &[("endpoint", "main")]);
            if pages > 0.0 && lookups > 0.0 {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("pagefs figures on /metrics");
    let fetches = get(&pagefs, "lakebed_pagefs_fetches", &[("endpoint", "main")]);
    assert!(fetches > 0.0);
    // The fetch latency histogram: its count is at least the fetches reported before it
    // (reports only grow), and its +Inf bucket equals its count.
    let text = reqwest::get(&manager_metrics)
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("read /metrics");
    assert!(
        text.contains("# TYPE lakebed_pagefs_fetch_seconds histogram"),
        "{text}"
    );
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    let count = value("lakebed_pagefs_fetch_seconds_count{endpoint=\"main\"}");
    assert!(count >= fetches, "{count} < {fetches}");
    assert_eq!(
        value("lakebed_pagefs_fetch_seconds_bucket{endpoint=\"main\",le=\"+Inf\"}"),
        count
    );
    let status = lakebed(&dir, &["status"]).await.ok();
    let main = status
        .lines()
        .find(|l| l.starts_with("main "))
        .unwrap_or_default();
    let hit = main.split_whitespace().last().unwrap_or_default();
    let ratio: f64 = hit
        .strip_suffix('%')
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no cache hit ratio in: {main}"));
    assert!((0.0..=100.0).contains(&ratio), "{main}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_span_fields_and_no_secrets() {
    let dir = DataDir::new();
    let up = LakebedUp::start_with(&dir, &[("LAKEBED_LOGGING__FORMAT", "json")]).await;
    let proxy = up.proxy_addr.expect("the banner names the proxy");
    let password = up
        .password
        .clone()
        .expect("first start prints the password");
    let client = connect_via_proxy(proxy, "main", "lakebed", &password)
        .await
        .expect("connect through the proxy");
    client.simple_query("SELECT 1").await.expect("query");
    drop(client);

    let log = up.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "session started")
        .unwrap_or_else(|| panic!("no 'session started' line in:\n{log}"));
    assert_eq!(started["span"]["ep"], "main", "{started}");
    assert_eq!(started["span"]["role"], "lakebed", "{started}");
    assert!(!log.contains(&password), "the password is in the log");
    let token = std::fs::read_to_string(dir.path().join("admin-token")).expect("admin-token");
    assert!(!log.contains(token.trim()), "the admin token is in the log");
}
