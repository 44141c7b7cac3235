//! The client side of SCRAM-SHA-256 toward a compute, proving knowledge of a
//! [`ClientKey`] recovered from the client's own exchange (see the module docs of
//! [`crate::scram`]). No channel binding (`n,,`): the link to the compute is the proxy's
//! own TLS with a client certificate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq;

use super::{ClientKey, KEY_LEN, ScramError, ScramSecret, attr, hmac_sha256};

/// The gs2 header for "no channel binding", and its base64 (`c=biws`).
const GS2_HEADER: &str = "n,,";

/// A client exchange in progress, after client-first was sent.
#[derive(Debug)]
pub struct ClientExchange {
    nonce: String,
    bare: String,
}

/// Client-final sent; what checking server-final needs.
#[derive(Debug)]
pub struct AwaitingFinal {
    expected_signature: [u8; KEY_LEN],
}

impl ClientExchange {
    /// Starts an exchange; returns it and the client-first message to send.
    pub fn start() -> (Self, String) {
        let nonce = super::nonce();
        let bare = format!("n=,r={nonce}");
        let message = format!("{GS2_HEADER}{bare}");
        (Self { nonce, bare }, message)
    }

    /// Answers server-first with client-final, proving `key`. `secret` supplies the
    /// ServerKey used to check the compute's signature.
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`] if server-first is not well formed or its nonce does not
    /// extend ours.
    pub fn finish(
        self,
        server_first: &[u8],
        key: &ClientKey,
        secret: &ScramSecret,
    ) -> Result<(AwaitingFinal, String), ScramError> {
        let msg =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (nonce, rest) = attr(msg, 'r').ok_or(ScramError::Malformed("no nonce"))?;
        let (_salt, rest) = attr(rest, 's').ok_or(ScramError::Malformed("no salt"))?;
        let (_iterations, _) = attr(rest, 'i').ok_or(ScramError::Malformed("no iterations"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(GS2_HEADER));
        let auth_message = format!("{},{msg},{without_proof}", self.bare);
        let signature = hmac_sha256(&key.stored_key(), auth_message.as_bytes());
        let proof = key.xor(&signature);
        let expected_signature = hmac_sha256(&secret.server_key, auth_message.as_bytes());
        Ok((
            AwaitingFinal { expected_signature },
            format!("{without_proof},p={}", B64.encode(proof)),
        ))
    }
}

impl AwaitingFinal {
    /// Checks server-final (`v=` signature).
    ///
    /// # Errors
    ///
    /// [`ScramError::Malformed`], [`ScramError::BadServerSignature`].
    pub fn verify(self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (v, _) = attr(msg, 'v').ok_or(ScramError::Malformed("no server signature"))?;
        let given = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("signature is not base64"))?;
        if bool::from(given.ct_eq(&self.expected_signature)) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scram::server::ClientFirst;
    use crate::scram::tests::verifier;

    #[test]
    fn a_client_key_alone_passes_a_server_that_knows_the_verifier() {
        let secret = ScramSecret::parse(&verifier("pencil")).unwrap();
        let key = ClientKey::from_password(b"pencil", &secret).unwrap();
        let (client, first) = ClientExchange::start();
        let sf = ClientFirst::parse(first.as_bytes())
            .unwrap()
            .server_first(&secret, "srv");
        let (awaiting, fin) = client
            .finish(sf.message().as_bytes(), &key, &secret)
            .unwrap();
        let verified = sf.verify(fin.as_bytes(), &secret, None).unwrap();
        awaiting.verify(verified.server_final.as_bytes()).unwrap();
    }

    #[test]
    fn a_wrong_server_signature_or_nonce_is_refused() {
        let secret = ScramSecret::parse(&verifier("pencil")).unwrap();
        let key = ClientKey::from_password(b"pencil", &secret).unwrap();
        let (client, _) = ClientExchange::start();
        assert!(
            ClientExchange::start()
                .0
                .finish(b"r=other,s=c2FsdA==,i=4096", &key, &secret)
                .is_err()
        );
        let server_first = format!("r={}x,s=c2FsdA==,i=4096", client.nonce);
        let (awaiting, _) = client
            .finish(server_first.as_bytes(), &key, &secret)
            .unwrap();
        assert_eq!(
            awaiting
                .verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
                .unwrap_err(),
            ScramError::BadServerSignature
        );
    }
}
