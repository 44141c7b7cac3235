//! `lakebed role ...`
//!
//! With `--password-stdin` the SCRAM verifier is computed here and only the verifier goes to
//! the API: the password never leaves this process.

use anyhow::Result;
use lakebed_compute_manager::verifier::Verifier;
use reqwest::Method;
use serde_json::{Value, json};

use super::{print_json, read_password_stdin};
use crate::cli::RoleCommand;
use crate::client::ApiClient;

pub async fn run(api: &ApiClient, cmd: RoleCommand) -> Result<()> {
    match cmd {
        RoleCommand::Create {
            name,
            endpoint,
            password_stdin,
            pool_mode,
        } => {
            let mut body = secret_body(password_stdin)?;
            body["name"] = json!(name);
            if let Some(mode) = pool_mode {
                body["pool_mode"] = json!(mode);
            }
            let out = api
                .call(
                    Method::POST,
                    &format!("/v1/endpoints/{endpoint}/roles"),
                    Some(body),
                )
                .await?;
            println!("created role {name} on endpoint {endpoint}");
            print_generated(&out);
        }
        RoleCommand::Password {
            name,
            endpoint,
            password_stdin,
        } => {
            let body = secret_body(password_stdin)?;
            let out = api
                .call(
                    Method::POST,
                    &format!("/v1/endpoints/{endpoint}/roles/{name}/password"),
                    Some(body),
                )
                .await?;
            println!("new password set for role {name} on endpoint {endpoint}");
            print_generated(&out);
        }
        RoleCommand::Set {
            name,
            endpoint,
            pool_mode,
        } => {
            let mode = if pool_mode == "endpoint" {
                Value::Null
            } else {
                json!(pool_mode)
            };
            api.call(
                Method::PATCH,
                &format!("/v1/endpoints/{endpoint}/roles/{name}"),
                Some(json!({ "pool_mode": mode })),
            )
            .await?;
            println!("role {name} on endpoint {endpoint}: pool mode {pool_mode}");
        }
        RoleCommand::List { endpoint, json } => {
            let roles = api
                .call(
                    Method::GET,
                    &format!("/v1/endpoints/{endpoint}/roles"),
                    None,
                )
                .await?;
            if json {
                return print_json(&roles);
            }
            println!("{:<32} {:<12} CREATED", "ROLE", "POOL MODE");
            for r in roles.as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<12} {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["pool_mode"].as_str().unwrap_or("(endpoint)"),
                    r["created_at"].as_str().unwrap_or("?")
                );
            }
        }
        RoleCommand::Delete { name, endpoint } => {
            api.call(
                Method::DELETE,
                &format!("/v1/endpoints/{endpoint}/roles/{name}"),
                None,
            )
            .await?;
            println!("deleted role {name} from endpoint {endpoint}");
        }
    }
    Ok(())
}

fn secret_body(password_stdin: bool) -> Result<Value> {
    Ok(if password_stdin {
        let password = read_password_stdin()?;
        json!({ "verifier": Verifier::from_password(&password).as_str() })
    } else {
        json!({})
    })
}

fn print_generated(out: &Value) {
    if let Some(password) = out["password"].as_str() {
        println!("password: {password}");
        println!("(shown once; Lakebed keeps only a SCRAM verifier)");
    }
}
