//! `lakebed endpoint ...`

use anyhow::Result;
use lakebed_compute_manager::steps::WakeSteps;
use reqwest::Method;
use serde_json::{Value, json};

use super::print_json;
use crate::cli::{EndpointCommand, PolicyArgs};
use crate::client::ApiClient;

pub async fn run(api: &ApiClient, cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Create {
            name,
            tenant,
            policy,
        } => {
            let mut body = policy_body(&policy, false);
            body["name"] = json!(name);
            body["tenant"] = json!(tenant);
            let view = api.call(Method::POST, "/v1/endpoints", Some(body)).await?;
            println!(
                "created endpoint {} ({})",
                view["name"].as_str().unwrap_or(&name),
                describe_policy(&view["policy"])
            );
        }
        EndpointCommand::List { json } => {
            let list = api.call(Method::GET, "/v1/endpoints", None).await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<24} {:<10} {:<22} {:>12}  POLICY",
                "ENDPOINT", "STATE", "ADDRESS", "COLD START"
            );
            for ep in list.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {:<22} {:>12}  {}",
                    ep["name"].as_str().unwrap_or("?"),
                    ep["compute"]["state"].as_str().unwrap_or("?"),
                    ep["compute"]["address"].as_str().unwrap_or("-"),
                    ms(&ep["last_cold_start_ms"]),
                    describe_policy(&ep["policy"]),
                );
            }
        }
        EndpointCommand::Show { name, json } => {
            let ep = api
                .call(Method::GET, &format!("/v1/endpoints/{name}"), None)
                .await?;
            if json {
                return print_json(&ep);
            }
            show(&ep);
        }
        EndpointCommand::Set {
            name,
            policy,
            no_keep_warm,
        } => {
            let body = policy_body(&policy, no_keep_warm);
            let ep = api
                .call(Method::PATCH, &format!("/v1/endpoints/{name}"), Some(body))
                .await?;
            println!("endpoint {name}: {}", describe_policy(&ep["policy"]));
        }
        EndpointCommand::Wake { name, json } => {
            let out = api
                .call(Method::POST, &format!("/v1/endpoints/{name}/wake"), None)
                .await?;
            if json {
                return print_json(&out);
            }
            let addr = out["address"].as_str().unwrap_or("?");
            println!("{addr}");
            match out["cold_start_ms"].as_u64() {
                Some(ms) => eprintln!("endpoint {name} woken in {ms} ms"),
                None => eprintln!("endpoint {name} was already active"),
            }
            eprintln!(
                "clients connect through the proxy (see `lakebed up`); the compute accepts only the proxy"
            );
        }
        EndpointCommand::Suspend { name } => {
            let out = api
                .call(Method::POST, &format!("/v1/endpoints/{name}/suspend"), None)
                .await?;
            println!("endpoint {name}: {}", out["state"].as_str().unwrap_or("?"));
        }
        EndpointCommand::Delete { name } => {
            api.call(Method::DELETE, &format!("/v1/endpoints/{name}"), None)
                .await?;
            println!("deleted endpoint {name}");
        }
    }
    Ok(())
}

fn policy_body(policy: &PolicyArgs, no_keep_warm: bool) -> Value {
    let mut body = json!({});
    if let Some(t) = &policy.suspend_timeout {
        body["suspend_timeout"] = json!(t);
    }
    if let Some(mode) = &policy.pool_mode {
        body["pool_mode"] = json!(mode);
    }
    if no_keep_warm {
        body["keep_warm"] = json!([]);
    } else if !policy.keep_warm.is_empty() {
        body["keep_warm"] = json!(policy.keep_warm);
    }
    body
}

fn describe_policy(policy: &Value) -> String {
    let timeout = policy["suspend_timeout"].as_str().unwrap_or("?");
    let mut text = if timeout == "never" {
        "never suspended".to_owned()
    } else {
        format!("suspend after {timeout} idle")
    };
    let windows: Vec<&str> = policy["keep_warm"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !windows.is_empty() {
        text.push_str(&format!("; keep warm {}", windows.join(", ")));
    }
    text
}

fn ms(v: &Value) -> String {
    v.as_u64()
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "-".into())
}

/// The steps of the newest boot that recorded them, marked when that boot failed: a step
/// it never reached shows 0 ms, which must not read as a fast one.
fn last_boot_steps(boot: &Value) -> Option<String> {
    let steps = serde_json::from_value::<WakeSteps>(boot["steps"].clone()).ok()?;
    let mut line = steps.summary();
    if boot["outcome"].as_str() != Some("active") {
        let why = boot["error"].as_str().unwrap_or("no reason recorded");
        line = format!("boot {} FAILED: {why}; steps so far: {line}", boot["boot"]);
    }
    Some(line)
}

fn show(ep: &Value) {
    let c = &ep["compute"];
    let row = |k: &str, v: String| println!("{k:<16} {v}");
    row("endpoint", ep["name"].as_str().unwrap_or("?").into());
    row("tenant", ep["tenant"].as_str().unwrap_or("?").into());
    row(
        "state",
        format!(
            "{} (since {})",
            c["state"].as_str().unwrap_or("?"),
            c["since"].as_str().unwrap_or("?")
        ),
    );
    if let Some(addr) = c["address"].as_str() {
        row("address", addr.into());
    }
    if let Some(pid) = c["pid"].as_u64() {
        row("pid", pid.to_string());
    }
    row("policy", describe_policy(&ep["policy"]));
    row("pool mode", ep["pool_mode"].as_str().unwrap_or("?").into());
    row("last cold start", ms(&ep["last_cold_start_ms"]));
    if let Some(line) = ep["recent_boots"]
        .as_array()
        .and_then(|boots| boots.iter().find(|b| b.get("steps").is_some()))
        .and_then(last_boot_steps)
    {
        row("  steps", line);
    }
    if let Some(p) = ep["pagefs"]["prewarm"].as_object() {
        row(
            "prewarm",
            format!(
                "{} of {} pages fetched ({} into the page cache), {} skipped ({})",
                p["fetched"],
                p["listed"],
                p["in_page_cache"].as_u64().unwrap_or(0),
                p["skipped"],
                match (p["done"] == true, p["stopped"].as_str()) {
                    (true, Some(why)) => format!("stopped: {why}"),
                    (true, None) => "done".to_owned(),
                    (false, _) => "running".to_owned(),
                }
            ),
        );
    }
    row("boots", ep["boots"].to_string());
    if let Some(last) = c["autosuspend"]["last"].as_object() {
        row(
            "autosuspend",
            format!(
                "{} (check {})",
                Value::Object(last.clone()),
                c["autosuspend"]["checks"]
            ),
        );
    }
    if let Some(reason) = c["failure"]["reason"].as_str() {
        row("failure", reason.into());
        if let Some(tail) = c["failure"]["log_tail"].as_str().filter(|t| !t.is_empty()) {
            println!("--- postgres log (tail) ---\n{tail}");
        }
    }
}
