//! Integration tests of `lakebed-keys`: the AWS provider against a real `moto_server`, the
//! local provider against real files, the audit log. No mocks.
//!
//! Run: `cargo test -p lakebed-keys` (needs `moto_server` on PATH: scripts/install-deps.sh).

#![allow(clippy::unwrap_used, missing_docs)]

mod audit;
mod aws;
mod local;
#[path = "../../../tests/src/moto.rs"]
mod moto;
