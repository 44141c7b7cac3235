//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it (PostgreSQL docs §55.3.1
//! "SCRAM-SHA-256 Authentication"; `src/backend/libpq/auth-scram.c`).
//!
//! The proxy is the SCRAM server for clients ([`server`]) and a SCRAM client toward computes
//! ([`client`]). The key fact that joins them: a successful client proof reveals the
//! `ClientKey` (`proof XOR HMAC(StoredKey, AuthMessage)`), and `ClientKey` is all a SCRAM
//! client needs to prove itself to the compute, which holds the same verifier. So the proxy
//! logs in to the compute as the user without ever learning the password.
//!
//! Why our own exchange: libraries implement either the client side with a password
//! (postgres-protocol) or a whole server without exposing `ClientKey` (pgwire). The crypto
//! comes from aws-lc-rs; only message handling is ours, and it is tested with bytes here.

pub mod client;
pub mod server;

use std::fmt;

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of SHA-256 keys and signatures.
pub const KEY_LEN: usize = 32;

/// Errors of a SCRAM exchange.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the grammar of RFC 5802 §7.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding data does not match, or a downgrade was attempted.
    #[error("SCRAM channel binding check failed")]
    ChannelBinding,
    /// The proof is wrong: wrong password (or unknown user).
    #[error("SCRAM proof does not verify")]
    BadProof,
    /// The server's signature is wrong (a compute that does not know the verifier).
    #[error("SCRAM server signature does not verify")]
    BadServerSignature,
}

/// A role's SCRAM-SHA-256 secret, parsed from a verifier
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, ZeroizeOnDrop)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    #[zeroize(skip)]
    pub iterations: u32,
    /// The salt as base64, as it goes into server-first.
    #[zeroize(skip)]
    pub salt_b64: String,
    /// `StoredKey = H(ClientKey)`.
    pub stored_key: [u8; KEY_LEN],
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Parses a verifier; `None` if it is not SCRAM-SHA-256 with 32-byte keys.
    pub fn parse(verifier: &str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt_b64) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        // Bounded like the catalog bounds it: cleartext logins run PBKDF2 at the proxy.
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&i| (1..=1_000_000).contains(&i))?;
        B64.decode(salt_b64).ok().filter(|s| !s.is_empty())?;
        Some(Self {
            iterations,
            salt_b64: salt_b64.to_owned(),
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// A secret no password matches, for roles or endpoints that do not exist, so that the
    /// exchange looks like a real one. The salt is derived from `seed` (endpoint and role)
    /// under a per-process key, so asking twice gives the same salt, as Postgres's
    /// `scram_mock_salt` does.
    pub fn mock(process_key: &[u8; KEY_LEN], seed: &str) -> Self {
        let salt = hmac_sha256(process_key, seed.as_bytes());
        let mut random = [0u8; KEY_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut random[..]);
        Self {
            iterations: 4096,
            salt_b64: B64.encode(&salt[..16]),
            stored_key: random,
            server_key: random,
        }
    }
}

/// `ClientKey = HMAC(SaltedPassword, "Client Key")`: what a SCRAM client proves knowledge of.
/// Zeroized on drop; `Debug` shows nothing.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ClientKey([u8; KEY_LEN]);

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey([REDACTED])")
    }
}

impl ClientKey {
    /// Derives the key from a cleartext password (PBKDF2-HMAC-SHA-256, RFC 5802 §3).
    /// Costs `iterations` HMACs: run it off the async threads.
    pub fn from_password(password: &[u8], secret: &ScramSecret) -> Option<Self> {
        let salt = B64.decode(&secret.salt_b64).ok()?;
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(secret.iterations)?,
            &salt,
            password,
            &mut salted,
        );
        let key = Self(hmac_sha256(&salted, b"Client Key"));
        salted.zeroize();
        Some(key)
    }

    /// `StoredKey = H(ClientKey)`.
    pub fn stored_key(&self) -> [u8; KEY_LEN] {
        sha256(&self.0)
    }

    /// Whether this key matches the secret's StoredKey (constant time).
    pub fn matches(&self, secret: &ScramSecret) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.stored_key().ct_eq(&secret.stored_key))
    }

    /// `proof = ClientKey XOR ClientSignature`.
    fn xor(&self, signature: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        std::array::from_fn(|i| self.0[i] ^ signature[i])
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// A random nonce: 18 bytes in base64 (24 printable characters, none of them ',').
pub fn nonce() -> String {
    let mut bytes = [0u8; 18];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    B64.encode(bytes)
}

/// Splits `attr=value` off the front of a comma-separated SCRAM message.
fn attr(msg: &str, name: char) -> Option<(&str, &str)> {
    let (head, rest) = msg.split_once(',').unwrap_or((msg, ""));
    let value = head.strip_prefix(name)?.strip_prefix('=')?;
    Some((value, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A verifier for `password`, made by an independent implementation (postgres-protocol,
    /// the one tokio-postgres uses), with a random salt.
    pub fn verifier(password: &str) -> String {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    }

    #[test]
    fn parses_verifiers_and_refuses_junk() {
        let s = ScramSecret::parse(&verifier("pencil")).unwrap();
        assert_eq!(s.iterations, 4096);
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$0:c2FsdA==$a:b",
            "SCRAM-SHA-256$4096:!!$a:b",
            "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=",
        ] {
            assert!(ScramSecret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn client_key_from_the_right_password_matches() {
        let s = ScramSecret::parse(&verifier("pencil")).unwrap();
        assert!(ClientKey::from_password(b"pencil", &s).unwrap().matches(&s));
        assert!(!ClientKey::from_password(b"pen", &s).unwrap().matches(&s));
    }

    #[test]
    fn mock_secrets_have_stable_salts_and_match_nothing() {
        let key = [7u8; KEY_LEN];
        let a = ScramSecret::mock(&key, "main/app");
        let b = ScramSecret::mock(&key, "main/app");
        assert_eq!(a.salt_b64, b.salt_b64);
        assert_ne!(a.salt_b64, ScramSecret::mock(&key, "main/other").salt_b64);
        assert!(!ClientKey::from_password(b"", &a).unwrap().matches(&a));
    }

    #[test]
    fn debug_output_hides_keys() {
        let v = verifier("pencil");
        let s = ScramSecret::parse(&v).unwrap();
        assert!(!format!("{s:?}").contains(&v[40..50]));
        let k = ClientKey::from_password(b"pencil", &s).unwrap();
        assert_eq!(format!("{k:?}"), "ClientKey([REDACTED])");
    }
}
