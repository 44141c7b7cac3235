//! SCRAM-SHA-256 verifiers, the only form in which the catalog keeps a role's secret.
//!
//! A verifier is what PostgreSQL stores in `pg_authid.rolpassword` (PostgreSQL docs §21.5,
//! "Password Authentication"; RFC 5802 §3, RFC 7677):
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, salt and keys base64.
//! It lets a server check a client's proof without ever holding the password.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::ManagerError;

/// Most PBKDF2 iterations a verifier may ask for. Clients pay them at every login, and the
/// proxy pays them for cleartext logins; PostgreSQL's default is 4096.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// A syntactically valid SCRAM-SHA-256 verifier.
///
/// `Debug` prints only the iteration count: a verifier is not a password, but an offline
/// guessing attack starts from it, so it stays out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier(String);

impl Verifier {
    /// Hashes `password` into a new verifier with a random salt and 4096 iterations
    /// (PostgreSQL's default `scram_iterations`), via `postgres-protocol`.
    pub fn from_password(password: &str) -> Self {
        Self(postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
    }

    /// Checks the shape of a verifier given by a client of the API.
    ///
    /// # Errors
    ///
    /// [`ManagerError::InvalidInput`] naming the part that is wrong (never echoing the input).
    pub fn parse(text: &str) -> Result<Self, ManagerError> {
        let bad = |why: &str| {
            ManagerError::InvalidInput(format!(
                "verifier is not SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>: {why}"
            ))
        };
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or_else(|| bad("missing '$'"))?;
        let (iterations, salt) = params.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| bad("iterations is not a number"))?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(bad("iterations must be between 1 and 1000000"));
        }
        let (stored, server) = keys.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        if !is_base64(salt) || salt.is_empty() {
            return Err(bad("salt is not base64"));
        }
        // 32-byte SHA-256 keys are 44 base64 characters.
        if !is_base64(stored) || stored.len() != 44 || !is_base64(server) || server.len() != 44 {
            return Err(bad("StoredKey and ServerKey must be 32 bytes in base64"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The verifier text, as PostgreSQL's `ALTER ROLE ... PASSWORD` takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(SCRAM-SHA-256, [REDACTED])")
    }
}

fn is_base64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// Makes a random password of 24 letters and digits (about 142 bits).
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_verifier_parses() {
        let v = Verifier::from_password("hunter2");
        assert!(v.as_str().starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(Verifier::parse(v.as_str()).ok(), Some(v));
    }

    #[test]
    fn malformed_verifiers_are_refused() {
        for bad in [
            "",
            "md5abcdef",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$x:c2FsdA==$a:b",
            "SCRAM-SHA-256$0:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SCRAM-SHA-256$4096:c2FsdA==$short:short",
            "SCRAM-SHA-256$4294967295:c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "SCRAM-SHA-256$4096:sa'lt$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn debug_hides_the_keys() {
        let v = Verifier::from_password("pw");
        assert!(!format!("{v:?}").contains(&v.as_str()[20..]));
    }

    #[test]
    fn passwords_are_24_alphanumerics_and_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
