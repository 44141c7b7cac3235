//! The server side of a SCRAM-SHA-256(-PLUS) exchange, as a client sees Postgres do it.
//!
//! ```text
//! client-first  = gs2-header client-first-bare
//! gs2-header    = ("n" | "y" | "p=" cb-name) "," [authzid] ","
//! server-first  = "r=" nonce "," "s=" salt "," "i=" iterations
//! client-final  = "c=" base64(gs2-header [cbind-data]) "," "r=" nonce "," "p=" proof
//! server-final  = "v=" base64(ServerSignature)
//! ```
//!
//! The exchange is three typed steps, [`ClientFirst::parse`] → [`ServerFirst`] →
//! [`ServerFirst::verify`], so that no step can be skipped or repeated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq;

use super::{ClientKey, KEY_LEN, ScramError, ScramSecret, attr, hmac_sha256};

/// The channel binding type Lakebed supports (RFC 5929 §4).
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// What the client said about channel binding in its gs2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// `n`: the client does not support channel binding.
    Unsupported,
    /// `y`: the client supports it but thinks the server does not.
    ClientSupported,
    /// `p=NAME`: the client binds to channel `NAME`.
    Required(String),
}

/// A parsed client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// Channel binding flag.
    pub binding: Binding,
    gs2_header: String,
    bare: String,
    nonce: String,
}

impl ClientFirst {
    /// Parses a client-first message.
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`]; authzid and mandatory extensions are refused, as
    /// Postgres refuses them.
    pub fn parse(msg: &[u8]) -> Result<Self, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let binding = match flag {
            "n" => Binding::Unsupported,
            "y" => Binding::ClientSupported,
            _ => Binding::Required(
                flag.strip_prefix("p=")
                    .filter(|n| !n.is_empty())
                    .ok_or(ScramError::Malformed("bad channel binding flag"))?
                    .to_owned(),
            ),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        // The user name is ignored, as Postgres ignores it: the startup packet's counts.
        let (_user, rest) = attr(bare, 'n').ok_or(ScramError::Malformed("no user name"))?;
        let (nonce, extensions) = attr(rest, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        if !extensions.is_empty()
            && !extensions
                .split(',')
                .all(|e| e.as_bytes().get(1) == Some(&b'='))
        {
            return Err(ScramError::Malformed("bad extension"));
        }
        if nonce.is_empty()
            || !nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        Ok(Self {
            binding,
            gs2_header: msg[..msg.len() - bare.len()].to_owned(),
            bare: bare.to_owned(),
            nonce: nonce.to_owned(),
        })
    }

    /// Answers with server-first, appending `server_nonce` to the client's nonce.
    pub fn server_first(self, secret: &ScramSecret, server_nonce: &str) -> ServerFirst {
        let nonce = format!("{}{server_nonce}", self.nonce);
        let message = format!("r={nonce},s={},i={}", secret.salt_b64, secret.iterations);
        ServerFirst {
            client_first: self,
            nonce,
            message,
        }
    }
}

/// The server-first message sent, with what verifying client-final needs.
#[derive(Debug)]
pub struct ServerFirst {
    client_first: ClientFirst,
    nonce: String,
    message: String,
}

/// The result of a verified proof.
#[derive(Debug)]
pub struct Verified {
    /// The client's key, for logging in to the compute.
    pub client_key: ClientKey,
    /// The server-final message to send.
    pub server_final: String,
}

impl ServerFirst {
    /// The server-first message to send.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Verifies client-final. `cbind_data` is the channel's `tls-server-end-point` data
    /// when the connection is TLS.
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`], [`ScramError::ChannelBinding`] (also when a `p=` client
    /// binds to a type other than `tls-server-end-point` or there is no TLS), and
    /// [`ScramError::BadProof`].
    pub fn verify(
        &self,
        client_final: &[u8],
        secret: &ScramSecret,
        cbind_data: Option<&[u8]>,
    ) -> Result<Verified, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cbind_b64, rest) =
            attr(msg, 'c').ok_or(ScramError::Malformed("no channel binding"))?;
        let (nonce, rest) = attr(rest, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        let proof_at = msg.rfind(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let without_proof = &msg[..proof_at];
        let proof_b64 = &msg[proof_at + 3..];
        if rest.is_empty() || !rest.ends_with(proof_b64) {
            return Err(ScramError::Malformed("proof must come last"));
        }

        let mut expected = self.client_first.gs2_header.as_bytes().to_vec();
        match &self.client_first.binding {
            Binding::Required(name) => match (name.as_str(), cbind_data) {
                (TLS_SERVER_END_POINT, Some(data)) => expected.extend_from_slice(data),
                _ => return Err(ScramError::ChannelBinding),
            },
            Binding::Unsupported | Binding::ClientSupported => {}
        }
        let given = B64
            .decode(cbind_b64)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if !bool::from(given.ct_eq(&expected)) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof: [u8; KEY_LEN] = B64
            .decode(proof_b64)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;

        let auth_message = format!(
            "{},{},{}",
            self.client_first.bare, self.message, without_proof
        );
        let signature = hmac_sha256(&secret.stored_key, auth_message.as_bytes());
        let client_key = ClientKey(std::array::from_fn(|i| proof[i] ^ signature[i]));
        if !client_key.matches(secret) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac_sha256(&secret.server_key, auth_message.as_bytes());
        Ok(Verified {
            client_key,
            server_final: format!("v={}", B64.encode(server_signature)),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scram::tests::verifier;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a whole exchange against postgres-protocol's client (what tokio-postgres uses).
    fn exchange(
        password: &str,
        client_pw: &str,
        cb: ChannelBinding,
        server_cb: Option<&[u8]>,
    ) -> Result<Verified, ScramError> {
        exchange_with(
            &ScramSecret::parse(&verifier(password)).unwrap(),
            client_pw,
            cb,
            server_cb,
        )
    }

    fn exchange_with(
        secret: &ScramSecret,
        client_pw: &str,
        cb: ChannelBinding,
        server_cb: Option<&[u8]>,
    ) -> Result<Verified, ScramError> {
        let mut client = ScramSha256::new(client_pw.as_bytes(), cb);
        let first = ClientFirst::parse(client.message()).unwrap();
        let sf = first.server_first(secret, &crate::scram::nonce());
        client.update(sf.message().as_bytes()).unwrap();
        let verified = sf.verify(client.message(), secret, server_cb)?;
        client.finish(verified.server_final.as_bytes()).unwrap();
        Ok(verified)
    }

    #[test]
    fn right_password_verifies_and_client_accepts_server_final() {
        let secret = ScramSecret::parse(&verifier("pencil")).unwrap();
        let v = exchange_with(&secret, "pencil", ChannelBinding::unsupported(), None).unwrap();
        // The recovered ClientKey is the one the password derives.
        assert!(v.client_key.matches(&secret));
        let derived = ClientKey::from_password(b"pencil", &secret).unwrap();
        assert_eq!(v.client_key.0, derived.0);
    }

    #[test]
    fn wrong_password_is_bad_proof() {
        assert_eq!(
            exchange("pencil", "pen", ChannelBinding::unsupported(), None).unwrap_err(),
            ScramError::BadProof
        );
    }

    #[test]
    fn channel_binding_must_match_the_tls_end_point() {
        let data = [9u8; 32];
        assert!(
            exchange(
                "pw",
                "pw",
                ChannelBinding::tls_server_end_point(data.to_vec()),
                Some(&data)
            )
            .is_ok()
        );
        assert_eq!(
            exchange(
                "pw",
                "pw",
                ChannelBinding::tls_server_end_point(data.to_vec()),
                Some(&[1u8; 32])
            )
            .unwrap_err(),
            ScramError::ChannelBinding
        );
        assert_eq!(
            exchange(
                "pw",
                "pw",
                ChannelBinding::tls_server_end_point(data.to_vec()),
                None
            )
            .unwrap_err(),
            ScramError::ChannelBinding
        );
    }

    #[test]
    fn malformed_client_first_messages_are_errors() {
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"x,,n=,r=abc",
            b"p=,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a,b",
            b"n,,n=,r=\xff",
        ] {
            assert!(
                ClientFirst::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let cf = ClientFirst::parse(b"p=tls-server-end-point,,n=,r=abc").unwrap();
        assert_eq!(cf.binding, Binding::Required(TLS_SERVER_END_POINT.into()));
    }

    #[test]
    fn malformed_client_final_messages_are_errors() {
        let secret = ScramSecret::parse(&verifier("pw")).unwrap();
        let sf = ClientFirst::parse(b"n,,n=,r=abc")
            .unwrap()
            .server_first(&secret, "XYZ");
        for bad in [
            &b""[..],
            b"c=biws",
            b"c=biws,r=abcXYZ",
            b"c=!!,r=abcXYZ,p=AAAA",
            b"c=biws,r=other,p=AAAA",
            b"c=biws,r=abcXYZ,p=short",
            b"p=AAAA,c=biws,r=abcXYZ",
        ] {
            assert!(
                matches!(sf.verify(bad, &secret, None), Err(ScramError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // 'y' then binding data that doesn't match the header.
        assert_eq!(
            sf.verify(
                b"c=eSws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                &secret,
                None
            )
            .unwrap_err(),
            ScramError::ChannelBinding
        );
    }
}
