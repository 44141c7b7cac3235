//! SQL the manager runs on a compute as the system role.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::USERS_ROLE;
use crate::catalog::RoleRecord;

/// Marks roles that Lakebed manages (`COMMENT ON ROLE`), so that a role deleted from the
/// catalog can be found and dropped on the compute, while roles users create stay untouched.
const MANAGED_MARK: &str = "managed by lakebed";

/// The `application_name` of the proxy's pooled server connections. An idle one is not a
/// client session: with transaction pooling, clients keep their proxy connections while the
/// compute is suspended, and the pool reconnects on their next transaction.
pub const POOLED_APPLICATION_NAME: &str = "lakebed-pool";

/// How long one monitoring query may take before the compute is treated as unreachable.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Quotes an identifier for SQL (PostgreSQL docs §4.1.1): double quotes, inner ones doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (PostgreSQL docs §4.1.2.1): single quotes, inner ones doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Idempotent setup, run at a boot that finds the compute not as it leaves it
/// ([`roles_in_place`]): the users' group role and its grants, and the removal of every way
/// out of the database that a non-superuser could have been given.
///
/// Computes of all tenants run as one OS user, so a role that can run programs or read and
/// write server files (`pg_execute_server_program`, `pg_read_server_files`,
/// `pg_write_server_files`; PostgreSQL docs §22.5) could read every other compute's data
/// directory. In PostgreSQL 15 `CREATEROLE` can grant those roles, so no catalog role has
/// it, and here any non-superuser loses `CREATEROLE` and membership in them.
pub async fn bootstrap(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{USERS_ROLE}') THEN
                     CREATE ROLE {USERS_ROLE} NOLOGIN;
                 END IF;
             END $$;
             GRANT ALL ON SCHEMA public TO {USERS_ROLE};
             GRANT ALL ON DATABASE postgres TO {USERS_ROLE};
             DO $$ DECLARE r record; BEGIN
                 FOR r IN SELECT rolname FROM pg_roles WHERE rolcreaterole AND NOT rolsuper LOOP
                     EXECUTE format('ALTER ROLE %I NOCREATEROLE', r.rolname);
                 END LOOP;
                 FOR r IN SELECT g.rolname AS granted, u.rolname AS member
                          FROM pg_auth_members m
                          JOIN pg_roles g ON g.oid = m.roleid
                          JOIN pg_roles u ON u.oid = m.member
                          WHERE g.rolname IN ('pg_execute_server_program',
                                              'pg_read_server_files', 'pg_write_server_files')
                            AND NOT u.rolsuper LOOP
                     EXECUTE format('REVOKE %I FROM %I', r.granted, r.member);
                 END LOOP;
             END $$;"
        ))
        .await
}

/// Makes the compute's login roles match the catalog: creates or updates every catalog role
/// with its SCRAM verifier, and drops managed roles that left the catalog (if a dropped role
/// still owns objects, it is left without login and password instead).
pub async fn sync_roles(
    client: &Client,
    roles: &[RoleRecord],
) -> Result<(), tokio_postgres::Error> {
    for role in roles {
        let name = role.name.as_str();
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await?
            .is_some();
        let verb = if exists { "ALTER" } else { "CREATE" };
        let ident = quote_ident(name);
        // The verifier is a literal here: ALTER ROLE takes no bind parameters. It was
        // validated as SCRAM-SHA-256$... (base64 and '$', ':'), and is quoted regardless.
        let mut sql = format!(
            "{verb} ROLE {ident} LOGIN CREATEDB NOCREATEROLE PASSWORD {};\n\
             COMMENT ON ROLE {ident} IS {};\n",
            quote_literal(role.verifier.as_str()),
            quote_literal(MANAGED_MARK),
        );
        if !exists {
            sql.push_str(&format!("GRANT {USERS_ROLE} TO {ident};\n"));
        }
        client.batch_execute(&sql).await?;
    }
    let managed = client
        .query(
            "SELECT r.rolname FROM pg_roles r
             JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
             WHERE d.description = $1",
            &[&MANAGED_MARK],
        )
        .await?;
    for row in managed {
        let name: String = row.get(0);
        if roles.iter().any(|r| r.name.as_str() == name) {
            continue;
        }
        let ident = quote_ident(&name);
        if let Err(e) = client.batch_execute(&format!("DROP ROLE {ident}")).await {
            tracing::info!(role = %name, error = %crate::error::sql_error_text(&e),
                "role owns objects; disabling login instead");
            client
                .batch_execute(&format!("ALTER ROLE {ident} NOLOGIN PASSWORD NULL"))
                .await?;
        }
    }
    Ok(())
}

/// Whether the compute already is as [`bootstrap`] and [`sync_roles`] would leave it for
/// `roles`: the users' group role with its grants, no non-superuser with `CREATEROLE` or a
/// server-file role, and exactly the catalog's roles managed, each with its verifier, login,
/// `CREATEDB`, the managed mark and membership in the group. One read-only query: a boot
/// that finds everything in place writes nothing (a write costs it a commit on the page
/// store), and one that finds anything off (the catalog changed while the compute slept,
/// or a role changed its own password) runs the setup.
pub async fn roles_in_place(
    client: &Client,
    roles: &[RoleRecord],
) -> Result<bool, tokio_postgres::Error> {
    let sweep_clean: bool = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = '{USERS_ROLE}')
                   AND has_schema_privilege('{USERS_ROLE}', 'public', 'CREATE')
                   AND has_schema_privilege('{USERS_ROLE}', 'public', 'USAGE')
                   AND has_database_privilege('{USERS_ROLE}', 'postgres', 'CREATE')
                   AND NOT EXISTS (SELECT FROM pg_roles WHERE rolcreaterole AND NOT rolsuper)
                   AND NOT EXISTS (
                     SELECT FROM pg_auth_members m
                     JOIN pg_roles g ON g.oid = m.roleid
                     JOIN pg_roles u ON u.oid = m.member
                     WHERE g.rolname IN ('pg_execute_server_program',
                                         'pg_read_server_files', 'pg_write_server_files')
                       AND NOT u.rolsuper)"
            ),
            &[],
        )
        .await?
        .get(0);
    if !sweep_clean {
        return Ok(false);
    }
    // Every managed role (and every catalog role, managed or not) as the compute has it.
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let rows = client
        .query(
            &format!(
                "SELECT a.rolname::text, a.rolpassword, a.rolcanlogin AND a.rolcreatedb
                        AND NOT a.rolcreaterole AND NOT a.rolsuper
                        AND pg_has_role(a.oid, '{USERS_ROLE}', 'MEMBER'),
                        d.description IS NOT DISTINCT FROM $1
                 FROM pg_authid a
                 LEFT JOIN pg_shdescription d
                   ON d.objoid = a.oid AND d.classoid = 'pg_authid'::regclass
                 WHERE a.rolname = ANY($2) OR d.description = $1"
            ),
            &[&MANAGED_MARK, &names],
        )
        .await?;
    let in_place = rows.len() == roles.len()
        && rows.iter().all(|row| {
            let (name, verifier): (String, Option<String>) = (row.get(0), row.get(1));
            let (attributes, marked): (bool, bool) = (row.get(2), row.get(3));
            attributes
                && marked
                && roles.iter().any(|r| {
                    r.name.as_str() == name && verifier.as_deref() == Some(r.verifier.as_str())
                })
        });
    Ok(in_place)
}

/// What `pg_stat_activity` shows on a compute, less the manager's own connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// Client backends (sessions), whatever their state, less idle pooled connections.
    pub sessions: i64,
    /// Of those, running a query now.
    pub running: i64,
    /// Of those, idle inside a transaction.
    pub idle_in_transaction: i64,
    /// Running autovacuum workers.
    pub autovacuum: i64,
    /// WAL senders (replication).
    pub walsenders: i64,
}

impl Activity {
    /// Whether anything on the compute blocks a suspend: any client session (an idle or
    /// idle-in-transaction one included), autovacuum worker or WAL sender.
    pub fn blocks_suspend(&self) -> bool {
        self.sessions > 0 || self.autovacuum > 0 || self.walsenders > 0
    }
}

/// Reads the compute's activity from `pg_stat_activity` (PostgreSQL docs §28.2.3).
pub async fn activity(client: &Client) -> Result<Activity, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT
                 count(*) FILTER (WHERE backend_type = 'client backend'
                                  AND NOT (application_name = $1 AND state = 'idle')),
                 count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active'),
                 count(*) FILTER (WHERE backend_type = 'client backend'
                                  AND state IN ('idle in transaction', 'idle in transaction (aborted)')),
                 count(*) FILTER (WHERE backend_type = 'autovacuum worker'),
                 count(*) FILTER (WHERE backend_type = 'walsender')
             FROM pg_stat_activity
             WHERE pid <> pg_backend_pid()",
            &[&POOLED_APPLICATION_NAME],
        )
        .await?;
    Ok(Activity {
        sessions: row.get(0),
        running: row.get(1),
        idle_in_transaction: row.get(2),
        autovacuum: row.get(3),
        walsenders: row.get(4),
    })
}

/// Runs `CHECKPOINT`, so that the shutdown checkpoint that follows has little to write.
pub async fn checkpoint(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("CHECKPOINT").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
