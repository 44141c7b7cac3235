//! Customer-managed keys: each tenant's data encryption keys (DEKs), stored only wrapped by
//! the tenant's CMK in KMS, unwrapped at wake and handed to that compute's pagefs, which
//! seals every page and namespace record before it reaches the page store.
//!
//! - **Create:** a tenant names its CMK; `GenerateDataKey` makes DEK version 1, stored
//!   wrapped in the catalog with the CMK's ARN.
//! - **Wake:** `DescribeKey` (a disabled or deleted key refuses the wake with a message
//!   naming the key's state), then `Decrypt` of every DEK version. The DEKs go to pagefs over
//!   its standard input and are zeroized here right after.
//! - **Rotate:** new key material for the CMK (`RotateKeyOnDemand`), then `ReEncrypt` of
//!   every wrapped DEK. No page is rewritten and nothing stops.
//! - **Set CMK:** `ReEncrypt` of every wrapped DEK under another CMK; the old one may then be
//!   disabled.
//! - **Rekey:** a new DEK version; computes seal new writes under it from their next wake
//!   (older versions stay for reading).
//! - **Revocation:** a monitor asks KMS for the state of each tenant's CMK that has running
//!   computes every `check_interval`; when it is no longer enabled, those computes are
//!   stopped (their per-boot keys and caches die with pagefs) and wakes are refused. A KMS
//!   that cannot be reached is not a revocation: computes keep running, and it is logged.
//!
//! Every operation is appended to the audit log ([`lakebed_keys::AuditLog`]); no key
//! material is ever logged, audited or put in an error.
//!
//! The encryption context of every DEK names the tenant and the purpose
//! (`lakebed:tenant`, `lakebed:purpose` = `pagestore-dek`), so a wrapped DEK presented for
//! another tenant does not unwrap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lakebed_config::TenantName;
use lakebed_keys::{
    AuditEvent, AuditLog, AuditOperation, Dek, EncryptionContext, KmsError, KmsProvider,
    RotateOutcome, WrappedDek,
};
use lakebed_pageserver_client::pagefs::launch::AssignedKeys;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::ManagerError;
use crate::catalog::{Catalog, TenantRecord};

/// The encryption context's purpose (`lakebed:purpose`) of every DEK.
pub const PURPOSE: &str = "pagestore-dek";

/// How the manager reaches KMS.
#[derive(Clone)]
pub struct KeyOptions {
    /// The KMS (AWS KMS or the local development provider).
    pub provider: Arc<dyn KmsProvider>,
    /// Where audit lines are appended.
    pub audit_log: PathBuf,
    /// How often the state of CMKs with running computes is checked.
    pub check_interval: Duration,
    /// The CMK of tenants created without one (`lakebed up`'s `default` tenant too).
    pub default_key_id: Option<String>,
}

impl std::fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOptions")
            .field("provider", &self.provider.name())
            .field("audit_log", &self.audit_log)
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

/// A tenant's DEKs in the clear, for one compute's pagefs. Zeroized on drop.
pub(crate) struct UnwrappedKeys {
    pub(crate) tenant: String,
    pub(crate) deks: Vec<(u32, Dek)>,
}

impl UnwrappedKeys {
    /// The keys pagefs is handed for a mount on `lineage` (its own timeline first): the
    /// DEK bytes copied into buffers zeroized on drop.
    pub(crate) fn pagefs_keys(&self, lineage: &[&str]) -> AssignedKeys {
        AssignedKeys {
            tenant: self.tenant.clone(),
            lineage: lineage.iter().map(|t| (*t).to_owned()).collect(),
            deks: self
                .deks
                .iter()
                .map(|(version, dek)| (*version, Zeroizing::new(*dek.as_bytes())))
                .collect(),
        }
    }
}

/// What `lakebed keys show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct KeysView {
    /// Tenant.
    pub tenant: String,
    /// The KMS provider (`aws-kms`, `local`).
    pub provider: String,
    /// The tenant's CMK as configured.
    pub kms_key_id: Option<String>,
    /// Its canonical id (ARN), state and rotation setting, as KMS reports them now.
    pub key: Option<KeyView>,
    /// The wrapped DEK versions.
    pub deks: Vec<DekView>,
    /// When the CMK was last rotated through Lakebed.
    pub rotated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Re-seals under the newest DEK version, per running compute of the tenant.
    pub reseal: Vec<ResealView>,
}

/// One running compute's re-seal after a rekey.
#[derive(Debug, Clone, Serialize)]
pub struct ResealView {
    /// The endpoint.
    pub endpoint: String,
    /// Its progress.
    #[serde(flatten)]
    pub status: crate::storage::ResealStatus,
}

/// A CMK as KMS describes it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    /// ARN (AWS) or `local`.
    pub arn: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, ...
    pub state: String,
    /// Automatic rotation, if KMS said.
    pub rotation_enabled: Option<bool>,
}

/// One wrapped DEK version.
#[derive(Debug, Clone, Serialize)]
pub struct DekView {
    /// Version.
    pub version: u32,
    /// The CMK that wraps it now.
    pub wrapped_by: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was last re-wrapped.
    pub rewrapped_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The manager's side of the key hierarchy.
pub(crate) struct TenantKeys {
    provider: Arc<dyn KmsProvider>,
    audit: AuditLog,
    pub(crate) check_interval: Duration,
}

fn kms_failed(tenant: &str, operation: &'static str, e: &KmsError) -> ManagerError {
    match e {
        KmsError::KeyNotUsable { key_id, state } => ManagerError::KeyUnavailable {
            tenant: tenant.to_owned(),
            key_id: key_id.clone(),
            state: state.to_string(),
        },
        other => ManagerError::KmsFailed {
            tenant: tenant.to_owned(),
            operation,
            reason: other.to_string(),
        },
    }
}

impl TenantKeys {
    pub(crate) fn open(opts: &KeyOptions) -> Result<Self, ManagerError> {
        let audit = AuditLog::open(&opts.audit_log).map_err(|e| {
            ManagerError::InvalidInput(format!("keys audit log {}: {e}", opts.audit_log.display()))
        })?;
        Ok(Self {
            provider: opts.provider.clone(),
            audit,
            check_interval: opts.check_interval,
        })
    }

    /// Appends `event` to the audit log and counts it in `lakebed_kms_operations_total`.
    fn record(&self, event: AuditEvent) {
        if let Ok(v) = serde_json::to_value(&event) {
            let label = |k: &str| v[k].as_str().unwrap_or("unknown").to_owned();
            metrics::counter!(
                "lakebed_kms_operations_total",
                "operation" => label("operation"),
                "outcome" => label("outcome")
            )
            .increment(1);
        }
        if let Err(e) = self.audit.record(&event) {
            tracing::error!(error = %e, "could not append to the keys audit log");
        }
    }

    fn context(tenant: &str) -> EncryptionContext {
        EncryptionContext::for_tenant(tenant, PURPOSE)
    }

    /// Refuses a tenant whose CMK is not enabled (recording that a revocation was seen).
    ///
    /// # Errors
    ///
    /// [`ManagerError::KeyUnavailable`], [`ManagerError::KmsFailed`].
    pub(crate) async fn check(&self, tenant: &TenantRecord) -> Result<(), ManagerError> {
        let Some(key_id) = &tenant.kms_key_id else {
            return Ok(());
        };
        let name = tenant.name.as_str();
        let info = self
            .provider
            .describe_key(key_id)
            .await
            .map_err(|e| match e {
                // The tenant's own key gone: as good as revoked.
                KmsError::NotFound { key_id } => ManagerError::KeyUnavailable {
                    tenant: name.to_owned(),
                    key_id,
                    state: "not found".into(),
                },
                e => kms_failed(name, "DescribeKey", &e),
            })
            .inspect_err(|e| {
                if matches!(e, ManagerError::KeyUnavailable { .. }) {
                    self.record(AuditEvent::failed(
                        name,
                        key_id,
                        AuditOperation::RevocationSeen,
                        e.to_string(),
                    ));
                }
            })?;
        if info.state.is_usable() {
            return Ok(());
        }
        let e = ManagerError::KeyUnavailable {
            tenant: name.to_owned(),
            key_id: info.key_id.clone(),
            state: info.state.to_string(),
        };
        self.record(AuditEvent::failed(
            name,
            &info.key_id,
            AuditOperation::RevocationSeen,
            e.to_string(),
        ));
        Err(e)
    }

    /// Creates `name` with CMK `key_id` and its first DEK.
    pub(crate) async fn create_tenant(
        &self,
        catalog: &Catalog,
        name: &TenantName,
        key_id: &str,
    ) -> Result<TenantRecord, ManagerError> {
        let tenant = name.as_str();
        if catalog.tenant(name).is_ok() {
            return Err(ManagerError::TenantExists(tenant.to_owned()));
        }
        let (dek, wrapped) = self
            .provider
            .generate_data_key(key_id, &Self::context(tenant))
            .await
            .inspect_err(|e| {
                self.record(AuditEvent::error(
                    tenant,
                    key_id,
                    AuditOperation::GenerateDataKey,
                    e,
                ))
            })
            .map_err(|e| kms_failed(tenant, "GenerateDataKey", &e))?;
        drop(dek);
        self.record(
            AuditEvent::ok(tenant, &wrapped.key_id, AuditOperation::GenerateDataKey)
                .with_detail(serde_json::json!({ "dek_version": 1 })),
        );
        catalog.create_tenant(name, key_id, &wrapped.ciphertext, &wrapped.key_id)
    }

    /// Unwraps every DEK version of `tenant` (none for a tenant without a CMK).
    pub(crate) async fn unwrap(
        &self,
        catalog: &Catalog,
        tenant: &TenantRecord,
    ) -> Result<Option<UnwrappedKeys>, ManagerError> {
        let Some(key_id) = &tenant.kms_key_id else {
            return Ok(None);
        };
        self.check(tenant).await?;
        let name = tenant.name.as_str();
        let ctx = Self::context(name);
        let mut deks = Vec::new();
        for record in catalog.deks(&tenant.name)? {
            let wrapped = WrappedDek {
                ciphertext: record.wrapped,
                key_id: record.wrapped_by,
            };
            match self.provider.decrypt(&wrapped, &ctx).await {
                Ok(dek) => deks.push((record.version, dek)),
                Err(e) => {
                    self.record(AuditEvent::error(name, key_id, AuditOperation::Unwrap, &e));
                    return Err(kms_failed(name, "Decrypt", &e));
                }
            }
        }
        if deks.is_empty() {
            return Err(ManagerError::KmsFailed {
                tenant: name.to_owned(),
                operation: "Decrypt",
                reason: "the tenant has no data encryption key".into(),
            });
        }
        self.record(
            AuditEvent::ok(name, key_id, AuditOperation::Unwrap)
                .with_detail(serde_json::json!({ "dek_versions": deks.len() })),
        );
        Ok(Some(UnwrappedKeys {
            tenant: name.to_owned(),
            deks,
        }))
    }

    /// Re-wraps every DEK of `tenant` under `destination` (`ReEncrypt`) and makes it the
    /// tenant's CMK; with `rotate`, first gives the current CMK new key material.
    pub(crate) async fn rewrap(
        &self,
        catalog: &Catalog,
        tenant: &TenantName,
        destination: Option<&str>,
    ) -> Result<serde_json::Value, ManagerError> {
        let record = catalog.tenant(tenant)?;
        let name = tenant.as_str();
        let Some(current) = record.kms_key_id.clone() else {
            return Err(ManagerError::InvalidInput(format!(
                "tenant \"{name}\" has no KMS key: its data is not sealed"
            )));
        };
        let operation = if destination.is_some() {
            AuditOperation::SetCmk
        } else {
            AuditOperation::Rotate
        };
        let target = destination.unwrap_or(&current).to_owned();
        let fail = |e: &KmsError, what: &'static str| {
            self.record(AuditEvent::error(name, &target, operation, e));
            kms_failed(name, what, e)
        };
        let mut rotated = None;
        if destination.is_none() {
            rotated = Some(
                self.provider
                    .rotate_key_material(&current)
                    .await
                    .map_err(|e| fail(&e, "RotateKeyOnDemand"))?,
            );
        }
        let ctx = Self::context(name);
        let mut rewrapped = Vec::new();
        for d in catalog.deks(tenant)? {
            let wrapped = WrappedDek {
                ciphertext: d.wrapped,
                key_id: d.wrapped_by,
            };
            let new = self
                .provider
                .re_encrypt(&wrapped, &ctx, &target)
                .await
                .map_err(|e| fail(&e, "ReEncrypt"))?;
            rewrapped.push((d.version, new.ciphertext, new.key_id));
        }
        catalog.rewrap_deks(tenant, &target, &rewrapped, destination.is_none())?;
        let detail = serde_json::json!({
            "from": current,
            "to": target,
            "dek_versions_rewrapped": rewrapped.len(),
            "rotation": rotated.map(|r| match r {
                RotateOutcome::RotatedOnDemand => "rotated_on_demand",
                RotateOutcome::AutomaticRotationEnabled => "automatic_rotation_enabled",
            }),
        });
        self.record(AuditEvent::ok(name, &target, operation).with_detail(detail.clone()));
        Ok(detail)
    }

    /// A new DEK version for `tenant`; returns it.
    pub(crate) async fn rekey(
        &self,
        catalog: &Catalog,
        tenant: &TenantName,
    ) -> Result<u32, ManagerError> {
        let record = catalog.tenant(tenant)?;
        let name = tenant.as_str();
        let Some(key_id) = record.kms_key_id else {
            return Err(ManagerError::InvalidInput(format!(
                "tenant \"{name}\" has no KMS key: its data is not sealed"
            )));
        };
        let next = catalog
            .deks(tenant)?
            .iter()
            .map(|d| d.version)
            .max()
            .unwrap_or(0)
            + 1;
        let (dek, wrapped) = self
            .provider
            .generate_data_key(&key_id, &Self::context(name))
            .await
            .inspect_err(|e| {
                self.record(AuditEvent::error(name, &key_id, AuditOperation::Rekey, e))
            })
            .map_err(|e| kms_failed(name, "GenerateDataKey", &e))?;
        drop(dek);
        catalog.add_dek(tenant, next, &wrapped.ciphertext, &wrapped.key_id)?;
        self.record(
            AuditEvent::ok(name, &wrapped.key_id, AuditOperation::Rekey)
                .with_detail(serde_json::json!({ "dek_version": next })),
        );
        Ok(next)
    }

    /// The tenant's keys as KMS and the catalog know them.
    pub(crate) async fn show(
        &self,
        catalog: &Catalog,
        tenant: &TenantName,
    ) -> Result<KeysView, ManagerError> {
        let record = catalog.tenant(tenant)?;
        let key = match &record.kms_key_id {
            Some(id) => Some(match self.provider.describe_key(id).await {
                Ok(info) => KeyView {
                    arn: info.key_id,
                    state: info.state.to_string(),
                    rotation_enabled: info.rotation_enabled,
                },
                Err(KmsError::NotFound { key_id }) => KeyView {
                    arn: key_id,
                    state: "not found".into(),
                    rotation_enabled: None,
                },
                Err(e) => return Err(kms_failed(tenant.as_str(), "DescribeKey", &e)),
            }),
            None => None,
        };
        Ok(KeysView {
            tenant: tenant.to_string(),
            provider: self.provider.name().to_owned(),
            kms_key_id: record.kms_key_id,
            key,
            deks: catalog
                .deks(tenant)?
                .into_iter()
                .map(|d| DekView {
                    version: d.version,
                    wrapped_by: d.wrapped_by,
                    created_at: d.created_at,
                    rewrapped_at: d.rewrapped_at,
                })
                .collect(),
            rotated_at: record.rotated_at,
            reseal: Vec::new(),
        })
    }

    /// Records that a compute finished re-sealing its timeline under the newest DEK.
    pub(crate) fn record_reseal(
        &self,
        tenant: &TenantRecord,
        endpoint: &str,
        status: crate::storage::ResealStatus,
    ) {
        let key_id = tenant.kms_key_id.as_deref().unwrap_or("-");
        self.record(
            AuditEvent::ok(tenant.name.as_str(), key_id, AuditOperation::Rekey).with_detail(
                serde_json::json!({
                    "endpoint": endpoint,
                    "reseal": "done",
                    "scanned": status.scanned,
                    "resealed": status.resealed,
                }),
            ),
        );
    }

    /// Records that a compute was stopped because its tenant's key was revoked.
    pub(crate) fn record_stop(&self, tenant: &str, key_id: &str, endpoint: &str) {
        self.record(
            AuditEvent::ok(tenant, key_id, AuditOperation::ComputeStopped)
                .with_detail(serde_json::json!({ "endpoint": endpoint })),
        );
    }
}
