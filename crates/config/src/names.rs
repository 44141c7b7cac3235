//! Validated names: endpoints, tenants and Postgres roles.
//!
//! A name is checked once, when it is parsed (`str::parse`, or serde when a config file or
//! API body is read), so code holding an [`EndpointName`] never has to check it again.
//!
//! - Endpoint and tenant names are DNS-label shaped, because they end up in host names
//!   (SNI routing) and directory names: 1 to 63 characters from `a-z`, `0-9` and `-`, not
//!   starting or ending with `-`.
//! - Role names follow unquoted Postgres identifiers: 1 to 63 bytes of `[a-z_][a-z0-9_]*`
//!   (63 is Postgres' `NAMEDATALEN - 1`). Names starting with `pg_` are reserved by
//!   Postgres, names starting with `lakebed_` by Lakebed itself.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest allowed name: 63 characters (endpoint, tenant) or bytes (role).
const MAX_LEN: usize = 63;

/// Role-name prefixes that users may not take.
const RESERVED_ROLE_PREFIXES: [&str; 2] = ["pg_", "lakebed_"];

/// Role names PostgreSQL refuses to create ("role name ... is reserved": `public` stands for
/// every role in `GRANT`, `none` for no role).
const RESERVED_ROLE_NAMES: [&str; 2] = ["public", "none"];

/// Why a string is not a valid [`EndpointName`], [`TenantName`] or [`RoleName`].
///
/// Every message starts with the kind of name and the rejected input, then says what is
/// allowed, for example
/// `endpoint name "Main-DB": only lowercase letters, digits and '-' are allowed (found 'M')`.
/// `kind` is `"endpoint"`, `"tenant"` or `"role"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or longer than 63 characters (endpoint, tenant) or bytes (role).
    #[error("{kind} name {name:?}: must be 1 to 63 {unit}")]
    Length {
        /// `"endpoint"`, `"tenant"` or `"role"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
        /// `"characters"` or `"bytes"`.
        unit: &'static str,
    },
    /// Contains a character outside the allowed set.
    #[error("{kind} name {name:?}: only {allowed} are allowed (found {found:?})")]
    InvalidChar {
        /// `"endpoint"`, `"tenant"` or `"role"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
        /// The allowed set in words, e.g. `lowercase letters, digits and '-'`.
        allowed: &'static str,
        /// The first character that is not allowed.
        found: char,
    },
    /// An endpoint or tenant name that starts or ends with `-`.
    #[error("{kind} name {name:?}: must not start or end with '-'")]
    EdgeHyphen {
        /// `"endpoint"` or `"tenant"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
    },
    /// A role name that starts with a digit.
    #[error("{kind} name {name:?}: must start with a lowercase letter or '_' (found {found:?})")]
    InvalidStart {
        /// `"role"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
        /// The first character.
        found: char,
    },
    /// A role name with a reserved prefix (`pg_`, `lakebed_`).
    #[error("{kind} name {name:?}: names starting with \"pg_\" or \"lakebed_\" are reserved")]
    Reserved {
        /// `"role"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
    },
    /// A role name PostgreSQL reserves (`public`, `none`).
    #[error("{kind} name {name:?} is reserved by PostgreSQL")]
    ReservedName {
        /// `"role"`.
        kind: &'static str,
        /// The rejected input.
        name: String,
    },
}

/// Checks the DNS-label rules shared by endpoint and tenant names.
fn check_label(kind: &'static str, name: &str) -> Result<(), NameError> {
    let len = name.chars().count();
    if len == 0 || len > MAX_LEN {
        return Err(NameError::Length {
            kind,
            name: name.to_owned(),
            unit: "characters",
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::InvalidChar {
            kind,
            name: name.to_owned(),
            allowed: "lowercase letters, digits and '-'",
            found,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks the unquoted-identifier rules for role names.
fn check_role(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_LEN {
        return Err(NameError::Length {
            kind,
            name: name.to_owned(),
            unit: "bytes",
        });
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if let Some(found) = name.chars().find(|c| !allowed(*c)) {
        return Err(NameError::InvalidChar {
            kind,
            name: name.to_owned(),
            allowed: "lowercase letters, digits and '_'",
            found,
        });
    }
    if let Some(found) = name.chars().next().filter(char::is_ascii_digit) {
        return Err(NameError::InvalidStart {
            kind,
            name: name.to_owned(),
            found,
        });
    }
    if RESERVED_ROLE_NAMES.contains(&name) {
        return Err(NameError::ReservedName {
            kind,
            name: name.to_owned(),
        });
    }
    if RESERVED_ROLE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(NameError::Reserved {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Defines a string newtype that can only hold names accepted by `$check`.
macro_rules! name_type {
    ($(#[$meta:meta])* $ty:ident, $kind:literal, $check:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;

            /// Validates `s`; see the type's documentation for the rules.
            fn from_str(s: &str) -> Result<Self, NameError> {
                $check($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of an endpoint: what clients put in the host name (SNI) or the `endpoint`
    /// connection option, and the key of an `[endpoints.NAME]` table.
    ///
    /// 1 to 63 characters, only `a-z`, `0-9` and `-`, not starting or ending with `-`
    /// (a DNS label). Parse with `str::parse`; invalid input gives a [`NameError`].
    /// Serializes as a plain string; deserializing validates, with the [`NameError`]
    /// text as the error message.
    ///
    /// ```
    /// let name: lakebed_config::EndpointName = "main-db".parse().unwrap();
    /// assert_eq!(name.as_str(), "main-db");
    /// assert!("Main-DB".parse::<lakebed_config::EndpointName>().is_err());
    /// ```
    EndpointName,
    "endpoint",
    check_label
);

name_type!(
    /// The name of a tenant (the owner of endpoints).
    ///
    /// Same rules as [`EndpointName`]: 1 to 63 characters, only `a-z`, `0-9` and `-`,
    /// not starting or ending with `-`. Invalid input gives a [`NameError`]; serde as a
    /// plain, validated string.
    TenantName,
    "tenant",
    check_label
);

name_type!(
    /// A Postgres role (user) name, as given in the startup message.
    ///
    /// 1 to 63 bytes matching `[a-z_][a-z0-9_]*` (an unquoted Postgres identifier).
    /// Names starting with `pg_` (reserved by Postgres) or `lakebed_` (used by Lakebed's
    /// own roles) are rejected with [`NameError::Reserved`], `public` and `none` (which
    /// Postgres refuses to create) with [`NameError::ReservedName`]. Serde as a plain,
    /// validated string.
    RoleName,
    "role",
    check_role
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoint_names_valid() {
        for ok in [
            "a",
            "main",
            "main-db",
            "ep-quiet-river-42",
            "0",
            "a1-b2",
            &"x".repeat(63),
        ] {
            let name: EndpointName = ok.parse().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(name.as_str(), ok);
            assert_eq!(name.to_string(), ok);
            assert_eq!(name.as_ref(), ok);
        }
    }

    #[test]
    fn endpoint_names_invalid() {
        let long = "x".repeat(64);
        let long_msg = format!("endpoint name \"{long}\": must be 1 to 63 characters");
        let cases: [(&str, &str); 8] = [
            ("", "endpoint name \"\": must be 1 to 63 characters"),
            (&long, &long_msg),
            (
                "Main-DB",
                "endpoint name \"Main-DB\": only lowercase letters, digits and '-' are allowed (found 'M')",
            ),
            (
                "main_db",
                "endpoint name \"main_db\": only lowercase letters, digits and '-' are allowed (found '_')",
            ),
            (
                "main.db",
                "endpoint name \"main.db\": only lowercase letters, digits and '-' are allowed (found '.')",
            ),
            (
                "café",
                "endpoint name \"café\": only lowercase letters, digits and '-' are allowed (found 'é')",
            ),
            (
                "-main",
                "endpoint name \"-main\": must not start or end with '-'",
            ),
            (
                "main-",
                "endpoint name \"main-\": must not start or end with '-'",
            ),
        ];
        for (input, want) in cases {
            let err = input.parse::<EndpointName>().unwrap_err();
            assert_eq!(err.to_string(), want, "input {input:?}");
        }
    }

    #[test]
    fn tenant_names_use_label_rules() {
        assert_eq!("acme-1".parse::<TenantName>().unwrap().as_str(), "acme-1");
        assert_eq!(
            "Acme".parse::<TenantName>().unwrap_err().to_string(),
            "tenant name \"Acme\": only lowercase letters, digits and '-' are allowed (found 'A')"
        );
        assert_eq!(
            "acme-".parse::<TenantName>().unwrap_err().to_string(),
            "tenant name \"acme-\": must not start or end with '-'"
        );
    }

    #[test]
    fn role_names_valid() {
        for ok in [
            "app",
            "_app",
            "app_1",
            "a",
            "pg",
            "pgx_user",
            "lakebed",
            &"r".repeat(63),
        ] {
            let name: RoleName = ok.parse().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(name.as_str(), ok);
        }
    }

    #[test]
    fn role_names_invalid() {
        let long = "r".repeat(64);
        let long_msg = format!("role name \"{long}\": must be 1 to 63 bytes");
        let cases: [(&str, &str); 9] = [
            ("", "role name \"\": must be 1 to 63 bytes"),
            (&long, &long_msg),
            (
                "1app",
                "role name \"1app\": must start with a lowercase letter or '_' (found '1')",
            ),
            (
                "app-user",
                "role name \"app-user\": only lowercase letters, digits and '_' are allowed (found '-')",
            ),
            (
                "App",
                "role name \"App\": only lowercase letters, digits and '_' are allowed (found 'A')",
            ),
            (
                "pg_x",
                "role name \"pg_x\": names starting with \"pg_\" or \"lakebed_\" are reserved",
            ),
            (
                "lakebed_admin",
                "role name \"lakebed_admin\": names starting with \"pg_\" or \"lakebed_\" are reserved",
            ),
            ("public", "role name \"public\" is reserved by PostgreSQL"),
            ("none", "role name \"none\" is reserved by PostgreSQL"),
        ];
        for (input, want) in cases {
            let err = input.parse::<RoleName>().unwrap_err();
            assert_eq!(err.to_string(), want, "input {input:?}");
        }
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let name: EndpointName = "main".parse().unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"main\"");
        let back: EndpointName = serde_json::from_str("\"main\"").unwrap();
        assert_eq!(back, name);

        let err = serde_json::from_str::<RoleName>("\"pg_monitor\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("role name \"pg_monitor\": names starting with \"pg_\""),
            "{err}"
        );
        assert!(serde_json::from_str::<TenantName>("\"\"").is_err());
    }

    #[test]
    fn ordering_is_by_string() {
        let a: EndpointName = "alpha".parse().unwrap();
        let b: EndpointName = "beta".parse().unwrap();
        assert!(a < b);
    }
}
