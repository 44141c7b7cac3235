//! The catalog: tenants, endpoints, roles, autosuspend policies and boot history.
//!
//! Stored in one SQLite file (`<data_dir>/catalog.db`) through rusqlite with SQLite bundled,
//! so every host gets the same engine. WAL journal with `synchronous=FULL`: a change is on disk
//! when the call returns, and a crash at any moment leaves either the old or the new state.
//! Each mutation is one statement or one transaction, so nothing is ever half-created.
//!
//! Roles are stored only as SCRAM-SHA-256 verifiers ([`Verifier`]), never as passwords.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lakebed_config::{AutosuspendPolicy, EndpointName, PoolMode, RoleName, TenantName};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::ManagerError;
use crate::steps::WakeSteps;
use crate::verifier::Verifier;

const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);
CREATE TABLE endpoints (
    name        TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    policy      TEXT NOT NULL,          -- AutosuspendPolicy as JSON
    created_at  TEXT NOT NULL
);
CREATE TABLE roles (
    endpoint    TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    verifier    TEXT NOT NULL,          -- SCRAM-SHA-256$..., never a password
    created_at  TEXT NOT NULL,
    PRIMARY KEY (endpoint, name)
);
CREATE TABLE boots (
    endpoint      TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
    boot          INTEGER NOT NULL,
    requested_at  TEXT NOT NULL,
    cold_start_ms INTEGER,              -- wake request to accepting connections; NULL if failed
    outcome       TEXT NOT NULL,        -- 'active' or 'failed'
    error         TEXT,
    PRIMARY KEY (endpoint, boot)
);
";

/// Version 1 to 2: pool modes per endpoint (default session) and per role (default: the
/// endpoint's).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE endpoints ADD COLUMN pool_mode TEXT NOT NULL DEFAULT 'session';
ALTER TABLE roles ADD COLUMN pool_mode TEXT;
";

/// Version 2 to 3: each endpoint's timeline in the page store, a fresh random id per
/// endpoint (so a deleted and re-created endpoint never sees the old one's data).
const MIGRATE_2_TO_3: &str = "
ALTER TABLE endpoints ADD COLUMN timeline TEXT;
UPDATE endpoints SET timeline = 'ep-' || lower(hex(randomblob(8))) WHERE timeline IS NULL;
";

/// Version 4 to 5: each boot's steps ([`WakeSteps`] as JSON), where its cold start went.
const MIGRATE_4_TO_5: &str = "
ALTER TABLE boots ADD COLUMN steps TEXT;
";

/// Version 3 to 4: each tenant's CMK (`kms_key_id`; NULL for tenants made before, whose
/// pages stay unsealed) and its data encryption keys, stored only wrapped by the CMK.
const MIGRATE_3_TO_4: &str = "
ALTER TABLE tenants ADD COLUMN kms_key_id TEXT;
ALTER TABLE tenants ADD COLUMN rotated_at TEXT;
CREATE TABLE deks (
    tenant        TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    wrapped       BLOB NOT NULL,          -- the DEK encrypted by the CMK, never in the clear
    wrapped_by    TEXT NOT NULL,          -- the CMK (ARN) that wrapped it
    created_at    TEXT NOT NULL,
    rewrapped_at  TEXT,
    PRIMARY KEY (tenant, version)
);
";

/// An endpoint as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointRecord {
    /// The endpoint's name.
    pub name: EndpointName,
    /// The tenant that owns it.
    pub tenant: TenantName,
    /// Its autosuspend policy.
    pub policy: AutosuspendPolicy,
    /// How the proxy pools its server connections (unless a role says otherwise).
    pub pool_mode: PoolMode,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its timeline in the page store: `ep-` and 16 random hex digits.
    pub timeline: String,
}

/// A tenant as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantRecord {
    /// Its name.
    pub name: TenantName,
    /// Its CMK (KMS key id, ARN or alias); `None` for tenants made before keys existed,
    /// whose pages are not sealed.
    pub kms_key_id: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its CMK was last rotated through Lakebed.
    pub rotated_at: Option<DateTime<Utc>>,
}

/// One version of a tenant's data encryption key, as stored: wrapped only.
#[derive(Debug, Clone, PartialEq)]
pub struct DekRecord {
    /// The version (1, 2, ...); the highest seals new writes.
    pub version: u32,
    /// The DEK encrypted by the CMK (KMS ciphertext blob).
    pub wrapped: Vec<u8>,
    /// The CMK (ARN) that wrapped it.
    pub wrapped_by: String,
    /// When the version was made.
    pub created_at: DateTime<Utc>,
    /// When it was last re-wrapped (rotate, set-cmk).
    pub rewrapped_at: Option<DateTime<Utc>>,
}

/// A role as the catalog holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRecord {
    /// The role's name.
    pub name: RoleName,
    /// Its SCRAM-SHA-256 verifier.
    pub verifier: Verifier,
    /// Its own pool mode, overriding the endpoint's.
    pub pool_mode: Option<PoolMode>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// One boot of an endpoint's compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootRecord {
    /// 1 for the endpoint's first boot, then counting up.
    pub boot: u64,
    /// When the wake that started it was requested.
    pub requested_at: DateTime<Utc>,
    /// Cold start: wake request to Postgres accepting connections, in milliseconds.
    /// `None` when the boot failed.
    pub cold_start_ms: Option<u64>,
    /// `"active"` or `"failed"`.
    pub outcome: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Where the time of the wake went: every step for a boot that came up, those before
    /// the failure for one that did not (boots recorded before this field existed have
    /// none).
    pub steps: Option<WakeSteps>,
}

/// The catalog handle. Cheap calls; each takes a mutex around one SQLite connection.
pub struct Catalog {
    conn: Mutex<Connection>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`, with mode 0600.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Catalog`] if the file cannot be opened, is not a Lakebed catalog, or has
    /// a newer schema than this binary knows.
    pub fn open(path: &Path) -> Result<Self, ManagerError> {
        let conn = Connection::open(path)?;
        set_private(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0..=4 => {
                let tx = conn.unchecked_transaction()?;
                if version == 0 {
                    tx.execute_batch(SCHEMA)?;
                }
                if version <= 1 {
                    tx.execute_batch(MIGRATE_1_TO_2)?;
                }
                if version <= 2 {
                    tx.execute_batch(MIGRATE_2_TO_3)?;
                }
                if version <= 3 {
                    tx.execute_batch(MIGRATE_3_TO_4)?;
                }
                tx.execute_batch(MIGRATE_4_TO_5)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            SCHEMA_VERSION => {}
            newer => {
                return Err(ManagerError::InvalidInput(format!(
                    "{}: catalog schema version {newer} is newer than this binary's ({SCHEMA_VERSION})",
                    path.display()
                )));
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (it rolls back an open
        // transaction on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the tenant if it does not exist, with CMK `kms_key_id` (`None`: its pages are
    /// not sealed). Returns whether it was created.
    pub fn ensure_tenant(
        &self,
        name: &TenantName,
        kms_key_id: Option<&str>,
    ) -> Result<bool, ManagerError> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO tenants (name, created_at, kms_key_id) VALUES (?1, ?2, ?3)",
            params![name.as_str(), now(), kms_key_id],
        )?;
        Ok(n == 1)
    }

    /// Creates a tenant whose data is sealed under CMK `kms_key_id`, with its first DEK
    /// (version 1, wrapped by `wrapped_by`), in one transaction.
    ///
    /// # Errors
    ///
    /// [`ManagerError::TenantExists`].
    pub fn create_tenant(
        &self,
        name: &TenantName,
        kms_key_id: &str,
        first_dek: &[u8],
        wrapped_by: &str,
    ) -> Result<TenantRecord, ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO tenants (name, created_at, kms_key_id) VALUES (?1, ?2, ?3)",
            params![name.as_str(), now(), kms_key_id],
        )?;
        if inserted == 0 {
            return Err(ManagerError::TenantExists(name.to_string()));
        }
        tx.execute(
            "INSERT INTO deks (tenant, version, wrapped, wrapped_by, created_at) VALUES (?1, 1, ?2, ?3, ?4)",
            params![name.as_str(), first_dek, wrapped_by, now()],
        )?;
        tx.commit()?;
        drop(conn);
        self.tenant(name)
    }

    /// One tenant.
    ///
    /// # Errors
    ///
    /// [`ManagerError::TenantNotFound`].
    pub fn tenant(&self, name: &TenantName) -> Result<TenantRecord, ManagerError> {
        self.conn()
            .query_row(
                "SELECT name, kms_key_id, created_at, rotated_at FROM tenants WHERE name = ?1",
                [name.as_str()],
                tenant_row,
            )
            .optional()?
            .ok_or_else(|| ManagerError::TenantNotFound(name.to_string()))
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, kms_key_id, created_at, rotated_at FROM tenants ORDER BY name",
        )?;
        let rows = stmt.query_map([], tenant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A tenant's wrapped DEKs, oldest version first.
    pub fn deks(&self, tenant: &TenantName) -> Result<Vec<DekRecord>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, wrapped, wrapped_by, created_at, rewrapped_at FROM deks \
             WHERE tenant = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([tenant.as_str()], |r| {
            Ok(DekRecord {
                version: r.get(0)?,
                wrapped: r.get(1)?,
                wrapped_by: r.get(2)?,
                created_at: time_col(r, 3)?,
                rewrapped_at: r
                    .get::<_, Option<String>>(4)?
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds DEK `version` for `tenant` (a rekey), wrapped by `wrapped_by`.
    pub fn add_dek(
        &self,
        tenant: &TenantName,
        version: u32,
        wrapped: &[u8],
        wrapped_by: &str,
    ) -> Result<(), ManagerError> {
        self.conn().execute(
            "INSERT INTO deks (tenant, version, wrapped, wrapped_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant.as_str(), version, wrapped, wrapped_by, now()],
        )?;
        Ok(())
    }

    /// Replaces every wrapped DEK of `tenant` with its re-wrapping `(version, wrapped,
    /// wrapped_by)` and sets the tenant's CMK to `kms_key_id`, in one transaction; with
    /// `rotated`, records the time as its last rotation.
    pub fn rewrap_deks(
        &self,
        tenant: &TenantName,
        kms_key_id: &str,
        rewrapped: &[(u32, Vec<u8>, String)],
        rotated: bool,
    ) -> Result<(), ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let at = now();
        for (version, wrapped, by) in rewrapped {
            tx.execute(
                "UPDATE deks SET wrapped = ?3, wrapped_by = ?4, rewrapped_at = ?5 \
                 WHERE tenant = ?1 AND version = ?2",
                params![tenant.as_str(), version, wrapped, by, at],
            )?;
        }
        tx.execute(
            "UPDATE tenants SET kms_key_id = ?2 WHERE name = ?1",
            params![tenant.as_str(), kms_key_id],
        )?;
        if rotated {
            tx.execute(
                "UPDATE tenants SET rotated_at = ?2 WHERE name = ?1",
                params![tenant.as_str(), at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Creates an endpoint owned by `tenant`.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointExists`], [`ManagerError::TenantNotFound`].
    pub fn create_endpoint(
        &self,
        name: &EndpointName,
        tenant: &TenantName,
        policy: &AutosuspendPolicy,
    ) -> Result<EndpointRecord, ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let tenant_exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE name = ?1)",
            [tenant.as_str()],
            |r| r.get(0),
        )?;
        if !tenant_exists {
            return Err(ManagerError::TenantNotFound(tenant.to_string()));
        }
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO endpoints (name, tenant, policy, created_at, timeline) \
             VALUES (?1, ?2, ?3, ?4, 'ep-' || lower(hex(randomblob(8))))",
            params![name.as_str(), tenant.as_str(), policy_json(policy), now()],
        )?;
        if inserted == 0 {
            return Err(ManagerError::EndpointExists(name.to_string()));
        }
        tx.commit()?;
        drop(conn);
        self.endpoint(name)
    }

    /// Reads one endpoint.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`].
    pub fn endpoint(&self, name: &EndpointName) -> Result<EndpointRecord, ManagerError> {
        self.conn()
            .query_row(
                "SELECT name, tenant, policy, created_at, pool_mode, timeline FROM endpoints WHERE name = ?1",
                [name.as_str()],
                endpoint_row,
            )
            .optional()?
            .ok_or_else(|| ManagerError::EndpointNotFound(name.to_string()))
    }

    /// All endpoints, by name.
    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, tenant, policy, created_at, pool_mode, timeline FROM endpoints ORDER BY name",
        )?;
        let rows = stmt.query_map([], endpoint_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces an endpoint's autosuspend policy.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`].
    pub fn set_policy(
        &self,
        name: &EndpointName,
        policy: &AutosuspendPolicy,
    ) -> Result<EndpointRecord, ManagerError> {
        let n = self.conn().execute(
            "UPDATE endpoints SET policy = ?2 WHERE name = ?1",
            params![name.as_str(), policy_json(policy)],
        )?;
        if n == 0 {
            return Err(ManagerError::EndpointNotFound(name.to_string()));
        }
        self.endpoint(name)
    }

    /// Sets an endpoint's pool mode.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`].
    pub fn set_pool_mode(&self, name: &EndpointName, mode: PoolMode) -> Result<(), ManagerError> {
        let n = self.conn().execute(
            "UPDATE endpoints SET pool_mode = ?2 WHERE name = ?1",
            params![name.as_str(), mode.to_string()],
        )?;
        if n == 0 {
            return Err(ManagerError::EndpointNotFound(name.to_string()));
        }
        Ok(())
    }

    /// Sets (or, with `None`, clears) a role's own pool mode.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`], [`ManagerError::RoleNotFound`].
    pub fn set_role_pool_mode(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        mode: Option<PoolMode>,
    ) -> Result<(), ManagerError> {
        let conn = self.conn();
        ensure_endpoint(&conn, endpoint)?;
        let n = conn.execute(
            "UPDATE roles SET pool_mode = ?3 WHERE endpoint = ?1 AND name = ?2",
            params![
                endpoint.as_str(),
                role.as_str(),
                mode.map(|m| m.to_string())
            ],
        )?;
        if n == 0 {
            return Err(ManagerError::RoleNotFound {
                endpoint: endpoint.to_string(),
                role: role.to_string(),
            });
        }
        Ok(())
    }

    /// Deletes an endpoint with its roles and boot history.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`].
    pub fn delete_endpoint(&self, name: &EndpointName) -> Result<(), ManagerError> {
        let n = self
            .conn()
            .execute("DELETE FROM endpoints WHERE name = ?1", [name.as_str()])?;
        if n == 0 {
            return Err(ManagerError::EndpointNotFound(name.to_string()));
        }
        Ok(())
    }

    /// Adds a role to an endpoint.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`], [`ManagerError::RoleExists`].
    pub fn create_role(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        verifier: &Verifier,
    ) -> Result<(), ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        ensure_endpoint(&tx, endpoint)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO roles (endpoint, name, verifier, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![endpoint.as_str(), role.as_str(), verifier.as_str(), now()],
        )?;
        if n == 0 {
            return Err(ManagerError::RoleExists {
                endpoint: endpoint.to_string(),
                role: role.to_string(),
            });
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a role's verifier (a password reset).
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`], [`ManagerError::RoleNotFound`].
    pub fn set_role_verifier(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
        verifier: &Verifier,
    ) -> Result<(), ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        ensure_endpoint(&tx, endpoint)?;
        let n = tx.execute(
            "UPDATE roles SET verifier = ?3 WHERE endpoint = ?1 AND name = ?2",
            params![endpoint.as_str(), role.as_str(), verifier.as_str()],
        )?;
        if n == 0 {
            return Err(ManagerError::RoleNotFound {
                endpoint: endpoint.to_string(),
                role: role.to_string(),
            });
        }
        tx.commit()?;
        Ok(())
    }

    /// The roles of an endpoint, by name.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`].
    pub fn roles(&self, endpoint: &EndpointName) -> Result<Vec<RoleRecord>, ManagerError> {
        let conn = self.conn();
        ensure_endpoint(&conn, endpoint)?;
        let mut stmt = conn.prepare(
            "SELECT name, verifier, created_at, pool_mode FROM roles WHERE endpoint = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([endpoint.as_str()], |r| {
            Ok(RoleRecord {
                name: parse_col(r, 0)?,
                verifier: Verifier::parse(&r.get::<_, String>(1)?)
                    .map_err(|e| conversion_error(1, e))?,
                created_at: time_col(r, 2)?,
                pool_mode: pool_mode_col(r, 3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a role from an endpoint.
    ///
    /// # Errors
    ///
    /// [`ManagerError::EndpointNotFound`], [`ManagerError::RoleNotFound`].
    pub fn delete_role(
        &self,
        endpoint: &EndpointName,
        role: &RoleName,
    ) -> Result<(), ManagerError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        ensure_endpoint(&tx, endpoint)?;
        let n = tx.execute(
            "DELETE FROM roles WHERE endpoint = ?1 AND name = ?2",
            params![endpoint.as_str(), role.as_str()],
        )?;
        if n == 0 {
            return Err(ManagerError::RoleNotFound {
                endpoint: endpoint.to_string(),
                role: role.to_string(),
            });
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends a boot to the endpoint's history and returns its number: its cold start if
    /// it came up, why not if it did not, and the steps it went through (those before the
    /// failure, for a failed one).
    pub fn record_boot(
        &self,
        endpoint: &EndpointName,
        requested_at: DateTime<Utc>,
        outcome: Result<Duration, &str>,
        steps: &WakeSteps,
    ) -> Result<u64, ManagerError> {
        let (cold_start, error) = match outcome {
            Ok(cold_start) => (Some(cold_start), None),
            Err(error) => (None, Some(error)),
        };
        let steps = serde_json::to_string(steps).ok();
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let boot: u64 = tx.query_row(
            "SELECT COALESCE(MAX(boot), 0) + 1 FROM boots WHERE endpoint = ?1",
            [endpoint.as_str()],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO boots (endpoint, boot, requested_at, cold_start_ms, outcome, error, steps)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                endpoint.as_str(),
                boot,
                requested_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                cold_start.map(|d| d.as_millis() as u64),
                if error.is_none() { "active" } else { "failed" },
                error,
                steps,
            ],
        )?;
        tx.commit()?;
        Ok(boot)
    }

    /// The most recent boots of an endpoint, newest first, at most `limit`.
    pub fn boots(
        &self,
        endpoint: &EndpointName,
        limit: u32,
    ) -> Result<Vec<BootRecord>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT boot, requested_at, cold_start_ms, outcome, error, steps FROM boots
             WHERE endpoint = ?1 ORDER BY boot DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![endpoint.as_str(), limit], |r| {
            Ok(BootRecord {
                boot: r.get(0)?,
                requested_at: time_col(r, 1)?,
                cold_start_ms: r.get(2)?,
                outcome: r.get(3)?,
                error: r.get(4)?,
                steps: r
                    .get::<_, Option<String>>(5)?
                    .and_then(|json| serde_json::from_str(&json).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many boots (successful or not) the endpoint has had.
    pub fn boot_count(&self, endpoint: &EndpointName) -> Result<u64, ManagerError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM boots WHERE endpoint = ?1 AND outcome = 'active'",
            [endpoint.as_str()],
            |r| r.get(0),
        )?)
    }
}

fn ensure_endpoint(conn: &Connection, endpoint: &EndpointName) -> Result<(), ManagerError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM endpoints WHERE name = ?1)",
        [endpoint.as_str()],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(ManagerError::EndpointNotFound(endpoint.to_string()))
    }
}

fn tenant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TenantRecord> {
    Ok(TenantRecord {
        name: parse_col(r, 0)?,
        kms_key_id: r.get(1)?,
        created_at: time_col(r, 2)?,
        rotated_at: r
            .get::<_, Option<String>>(3)?
            .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
    })
}

fn endpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointRecord> {
    let policy: String = r.get(2)?;
    Ok(EndpointRecord {
        name: parse_col(r, 0)?,
        tenant: parse_col(r, 1)?,
        policy: serde_json::from_str(&policy).map_err(|e| conversion_error(2, e))?,
        created_at: time_col(r, 3)?,
        pool_mode: pool_mode_col(r, 4)?.unwrap_or_default(),
        timeline: r.get(5)?,
    })
}

fn parse_col<T>(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    r.get::<_, String>(idx)?
        .parse()
        .map_err(|e| conversion_error(idx, e))
}

fn pool_mode_col(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<PoolMode>> {
    r.get::<_, Option<String>>(idx)?
        .map(|m| {
            m.parse()
                .map_err(|e: String| conversion_error(idx, std::io::Error::other(e)))
        })
        .transpose()
}

fn time_col(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = r.get(idx)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| conversion_error(idx, e))
}

fn conversion_error(
    idx: usize,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn policy_json(policy: &AutosuspendPolicy) -> String {
    serde_json::to_string(policy).expect("a policy always serializes")
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn set_private(path: &Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(ManagerError::io(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lakebed_config::SuspendTimeout;

    fn names() -> (TenantName, EndpointName, RoleName) {
        (
            "default".parse().unwrap(),
            "main".parse().unwrap(),
            "app".parse().unwrap(),
        )
    }

    #[test]
    fn endpoints_roles_and_boots_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let (t, e, r) = names();
        let policy = AutosuspendPolicy {
            suspend_timeout: SuspendTimeout::After(Duration::from_secs(7)),
            keep_warm: vec!["Mon-Fri 08:00-18:00 Europe/Berlin".parse().unwrap()],
        };
        let v = Verifier::from_password("pw");
        let steps = WakeSteps {
            mount_ms: 40,
            postgres_start_ms: 70,
            ..WakeSteps::default()
        };
        let failed = WakeSteps {
            mount_ms: 40,
            ..WakeSteps::default()
        };
        {
            let c = Catalog::open(&path).unwrap();
            assert!(c.ensure_tenant(&t, None).unwrap());
            assert!(!c.ensure_tenant(&t, None).unwrap());
            c.create_endpoint(&e, &t, &policy).unwrap();
            c.create_role(&e, &r, &v).unwrap();
            assert_eq!(
                c.record_boot(&e, Utc::now(), Ok(Duration::from_millis(812)), &steps)
                    .unwrap(),
                1
            );
            assert_eq!(
                c.record_boot(&e, Utc::now(), Err("boom"), &failed).unwrap(),
                2
            );
        }
        let c = Catalog::open(&path).unwrap();
        let ep = c.endpoint(&e).unwrap();
        assert_eq!(ep.policy, policy);
        assert_eq!(ep.tenant, t);
        let roles = c.roles(&e).unwrap();
        assert_eq!(roles.len(), 1);
        assert_eq!(roles[0].verifier, v);
        let boots = c.boots(&e, 10).unwrap();
        assert_eq!(boots[0].outcome, "failed");
        assert_eq!(boots[1].cold_start_ms, Some(812));
        assert_eq!(boots[1].steps.as_ref(), Some(&steps));
        assert_eq!(boots[0].steps, Some(failed), "the steps before the failure");
        assert_eq!(c.boot_count(&e).unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn duplicates_and_unknowns_are_errors_that_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let (t, e, r) = names();
        let policy = AutosuspendPolicy::default();
        assert!(matches!(
            c.create_endpoint(&e, &t, &policy),
            Err(ManagerError::TenantNotFound(_))
        ));
        assert!(c.endpoints().unwrap().is_empty());
        c.ensure_tenant(&t, None).unwrap();
        c.create_endpoint(&e, &t, &policy).unwrap();
        assert!(matches!(
            c.create_endpoint(&e, &t, &policy),
            Err(ManagerError::EndpointExists(_))
        ));
        let v = Verifier::from_password("x");
        c.create_role(&e, &r, &v).unwrap();
        assert!(matches!(
            c.create_role(&e, &r, &v),
            Err(ManagerError::RoleExists { .. })
        ));
        let other: EndpointName = "other".parse().unwrap();
        assert!(matches!(
            c.roles(&other),
            Err(ManagerError::EndpointNotFound(_))
        ));
        assert!(matches!(
            c.delete_role(&e, &"nobody".parse().unwrap()),
            Err(ManagerError::RoleNotFound { .. })
        ));
        c.delete_endpoint(&e).unwrap();
        assert!(matches!(
            c.endpoint(&e),
            Err(ManagerError::EndpointNotFound(_))
        ));
        // The cascade removed the role, so a new endpoint of that name starts clean.
        c.create_endpoint(&e, &t, &policy).unwrap();
        assert!(c.roles(&e).unwrap().is_empty());
    }
}
