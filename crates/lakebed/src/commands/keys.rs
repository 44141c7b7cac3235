//! `lakebed tenant ...` and `lakebed keys ...`: tenants and their customer-managed keys,
//! through the compute manager's API.

use anyhow::Result;
use reqwest::Method;
use serde_json::json;

use super::print_json;
use crate::cli::{KeysCommand, TenantCommand};
use crate::client::ApiClient;

pub async fn tenant(api: &ApiClient, cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Create { name, kms_key_id } => {
            let body = json!({ "name": name, "kms_key_id": kms_key_id });
            let t = api.call(Method::POST, "/v1/tenants", Some(body)).await?;
            println!(
                "created tenant {} (KMS key {}, DEK version 1)",
                t["name"].as_str().unwrap_or(&name),
                t["kms_key_id"].as_str().unwrap_or("-")
            );
        }
        TenantCommand::List { json } => {
            let list = api.call(Method::GET, "/v1/tenants", None).await?;
            if json {
                return print_json(&list);
            }
            println!("{:<24} KMS KEY", "TENANT");
            for t in list.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {}",
                    t["name"].as_str().unwrap_or("?"),
                    t["kms_key_id"].as_str().unwrap_or("- (not sealed)")
                );
            }
        }
    }
    Ok(())
}

pub async fn keys(api: &ApiClient, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Show { tenant, json } => {
            let v = api
                .call(Method::GET, &format!("/v1/tenants/{tenant}/keys"), None)
                .await?;
            if json {
                return print_json(&v);
            }
            println!("tenant     {}", v["tenant"].as_str().unwrap_or(&tenant));
            println!("provider   {}", v["provider"].as_str().unwrap_or("?"));
            println!(
                "CMK        {}",
                v["kms_key_id"].as_str().unwrap_or("- (pages not sealed)")
            );
            if let Some(key) = v["key"].as_object() {
                println!("  ARN      {}", key["arn"].as_str().unwrap_or("?"));
                println!("  state    {}", key["state"].as_str().unwrap_or("?"));
                println!(
                    "  rotation {}",
                    match key["rotation_enabled"].as_bool() {
                        Some(true) => "automatic",
                        Some(false) => "off",
                        None => "unknown",
                    }
                );
            }
            println!("rotated    {}", v["rotated_at"].as_str().unwrap_or("never"));
            for r in v["reseal"].as_array().into_iter().flatten() {
                println!(
                    "re-seal    {}: {} of {} values re-sealed{}",
                    r["endpoint"].as_str().unwrap_or("?"),
                    r["resealed"],
                    r["scanned"],
                    if r["done"].as_bool() == Some(true) {
                        ", done"
                    } else {
                        ", running"
                    }
                );
            }
            for d in v["deks"].as_array().into_iter().flatten() {
                println!(
                    "DEK v{:<4} wrapped by {} (created {}{})",
                    d["version"],
                    d["wrapped_by"].as_str().unwrap_or("?"),
                    d["created_at"].as_str().unwrap_or("?"),
                    d["rewrapped_at"]
                        .as_str()
                        .map(|t| format!(", re-wrapped {t}"))
                        .unwrap_or_default()
                );
            }
        }
        KeysCommand::Rotate { tenant } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/keys/rotate"),
                    None,
                )
                .await?;
            println!(
                "rotated the key of {tenant} ({}); {} DEK version(s) re-wrapped, no page rewritten",
                v["rotation"].as_str().unwrap_or("?"),
                v["dek_versions_rewrapped"]
            );
        }
        KeysCommand::SetCmk { tenant, kms_key_id } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/keys/set-cmk"),
                    Some(json!({ "kms_key_id": kms_key_id })),
                )
                .await?;
            println!(
                "{tenant} now uses {}; {} DEK version(s) re-wrapped",
                v["to"].as_str().unwrap_or(&kms_key_id),
                v["dek_versions_rewrapped"]
            );
        }
        KeysCommand::Rekey { tenant } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/keys/rekey"),
                    None,
                )
                .await?;
            println!(
                "{tenant}: DEK version {} made; from their next wake computes seal new writes under it and re-seal older pages in the background (see `lakebed keys show {tenant}`)",
                v["dek_version"]
            );
        }
    }
    Ok(())
}
