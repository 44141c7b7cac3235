//! A client's session state in a pool: its startup parameters plus the `SET`s it ran, applied
//! to every server connection it is lent, so that one client's `SET` never reaches another.
//!
//! Settings are applied with `RESET ALL` followed by `set_config(name, value, false)` (for
//! startup parameters, which are plain values) and the client's own `SET` statements
//! verbatim, in one simple query; it runs only when the connection's applied state differs
//! from the client's ([`SessionState::fingerprint`]), so clients with equal settings share
//! connections with no extra round trip.
//!
//! Tracked `SET`s: a simple query or unnamed extended-protocol statement that is one `SET`
//! or `RESET` (not `SET LOCAL` / `SET TRANSACTION`). A `SET` hidden in a multi-statement
//! string or a function is not tracked (as in PgBouncer's transaction mode).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::pool::protocol::Message;
use crate::pqproto::StartupParams;

/// Startup parameters that are not settings, or that the pool handles itself.
const NOT_SETTINGS: &[&str] = &[
    "user",
    "database",
    "options",
    "replication",
    "application_name",
];

/// A client's settings, as SQL to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SessionState {
    /// Startup parameters and `-c` options: name → value.
    startup: BTreeMap<String, String>,
    /// `SET` statements the client ran, by setting name (lowercase), in order of first use.
    sets: Vec<(String, String)>,
}

/// A change a client asked for, confirmed when the server answers `SET` / `RESET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SET name ...`: the statement to replay.
    Set {
        /// The setting, lowercase.
        name: String,
        /// The whole statement.
        statement: String,
    },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
}

impl SessionState {
    /// The state a client starts with: its startup parameters (less the ones in
    /// [`NOT_SETTINGS`]) and the `-c name=value` / `--name=value` items of its `options`
    /// (already stripped of `endpoint=`). With `application_name`, also that (session
    /// pooling, where an idle client must count as a session for autosuspend).
    pub fn from_startup(params: &StartupParams, options: &str, application_name: bool) -> Self {
        let mut startup = BTreeMap::new();
        for (k, v) in params.iter() {
            if !NOT_SETTINGS.contains(&k) && !k.starts_with("_pq_.") {
                startup.insert(k.to_owned(), v.to_owned());
            }
        }
        if application_name {
            startup.insert(
                "application_name".to_owned(),
                params.get("application_name").unwrap_or("").to_owned(),
            );
        }
        for (k, v) in option_settings(options) {
            startup.insert(k, v);
        }
        Self {
            startup,
            sets: Vec::new(),
        }
    }

    /// A number that is equal for equal states.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// The fingerprint of a fresh connection's state (nothing applied).
    pub fn empty_fingerprint() -> u64 {
        Self::default().fingerprint()
    }

    /// The simple query that turns any session into this one.
    pub fn apply_sql(&self) -> String {
        let mut sql = String::from("RESET ALL;");
        if !self.startup.is_empty() {
            let calls: Vec<String> = self
                .startup
                .iter()
                .map(|(k, v)| {
                    format!(
                        "pg_catalog.set_config({}, {}, false)",
                        literal(k),
                        literal(v)
                    )
                })
                .collect();
            sql.push_str(&format!(" SELECT {};", calls.join(", ")));
        }
        for (_, statement) in &self.sets {
            sql.push(' ');
            sql.push_str(statement.trim_end_matches(';'));
            sql.push(';');
        }
        sql
    }

    /// Applies a confirmed change.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Set { name, statement } => match self.sets.iter_mut().find(|(n, _)| *n == name)
            {
                Some(entry) => entry.1 = statement,
                None => self.sets.push((name, statement)),
            },
            Change::Reset(name) => self.sets.retain(|(n, _)| *n != name),
            Change::ResetAll => self.sets.clear(),
        }
    }
}

/// The `SET`/`RESET` a query text is, if it is exactly one.
pub fn change_of(query: &str) -> Option<Change> {
    let text = query.trim().trim_end_matches(';').trim();
    if text.is_empty() || text.contains(';') {
        return None;
    }
    let words: Vec<String> = text
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    match words.first().map(String::as_str)? {
        "set" => {
            let mut name = words.get(1)?.clone();
            if name == "session" {
                name = words.get(2)?.clone();
            }
            if matches!(name.as_str(), "local" | "transaction" | "constraints") {
                return None;
            }
            let name = name
                .split(['=', '\''])
                .next()
                .unwrap_or_default()
                .to_owned();
            Some(Change::Set {
                name,
                statement: text.to_owned(),
            })
        }
        "reset" => match words.get(1)?.as_str() {
            "all" => Some(Change::ResetAll),
            name => Some(Change::Reset(name.to_owned())),
        },
        _ => None,
    }
}

/// The query text of a simple `Query` or of a `Parse` (after its statement name).
pub fn query_text(msg: &Message) -> Option<&str> {
    let body = match msg.tag {
        b'Q' => &msg.body[..],
        b'P' => crate::pqproto::split_cstr(&msg.body)?.1,
        _ => return None,
    };
    let (text, _) = crate::pqproto::split_cstr(body)?;
    std::str::from_utf8(text).ok()
}

/// `-c name=value` and `--name=value` items of an options string (backslash escapes).
fn option_settings(options: &str) -> Vec<(String, String)> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let mut out = Vec::new();
    let mut it = tokens.into_iter();
    while let Some(t) = it.next() {
        let item = if t == "-c" {
            it.next()
        } else if let Some(rest) = t.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            t.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = item.as_deref().and_then(|i| i.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_and_options_become_settings() {
        let mut p = StartupParams::default();
        p.set("user", "app".into());
        p.set("DateStyle", "ISO, MDY".into());
        p.set("application_name", "psql".into());
        let s = SessionState::from_startup(&p, "-c search_path=app --work-mem=8MB", false);
        let sql = s.apply_sql();
        assert!(sql.starts_with("RESET ALL;"));
        assert!(sql.contains("set_config('DateStyle', 'ISO, MDY', false)"));
        assert!(sql.contains("set_config('search_path', 'app', false)"));
        assert!(sql.contains("set_config('work_mem', '8MB', false)"));
        assert!(
            !sql.contains("psql"),
            "transaction pooling leaves application_name to the pool"
        );
        assert!(
            SessionState::from_startup(&p, "", true)
                .apply_sql()
                .contains("'application_name', 'psql'")
        );
    }

    #[test]
    fn set_and_reset_are_recognised() {
        assert_eq!(
            change_of("SET search_path = app;"),
            Some(Change::Set {
                name: "search_path".into(),
                statement: "SET search_path = app".into()
            })
        );
        assert!(
            matches!(change_of("set session TimeZone to 'UTC'"), Some(Change::Set { name, .. }) if name == "timezone")
        );
        assert_eq!(change_of("SET LOCAL x = 1"), None);
        assert_eq!(
            change_of("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(change_of("SET a = 1; SELECT 1"), None);
        assert_eq!(change_of("reset ALL"), Some(Change::ResetAll));
        assert_eq!(
            change_of("RESET search_path"),
            Some(Change::Reset("search_path".into()))
        );
        assert_eq!(change_of("SELECT 1"), None);
    }

    #[test]
    fn fingerprints_follow_changes() {
        let mut s = SessionState::default();
        assert_eq!(s.fingerprint(), SessionState::empty_fingerprint());
        s.apply(change_of("SET search_path = app").unwrap_or(Change::ResetAll));
        let f = s.fingerprint();
        assert_ne!(f, SessionState::empty_fingerprint());
        assert!(s.apply_sql().ends_with("SET search_path = app;"));
        s.apply(Change::Reset("search_path".into()));
        assert_eq!(s.fingerprint(), SessionState::empty_fingerprint());
    }
}
