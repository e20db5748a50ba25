//! pgcorral as the SCRAM client, logging in to PostgreSQL.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::{
    as_message, attribute, auth_message, check_salt, decode_b64, hmac_sha256, parse_iterations,
    random_nonce, validate_nonce, xor, ClientKey, Keys, ScramError, ScramVerifier, ServerKey,
    KEY_LEN, MAX_ITERATIONS, MAX_SERVER_ERROR_LEN,
};
use crate::auth::constant_time_eq;

enum Credential {
    Password(Zeroizing<Vec<u8>>),
    /// A ClientKey recovered from a client, with the verifier it matched
    /// (whose salt and iteration count the server must be using).
    Keys {
        client_key: ClientKey,
        verifier: ScramVerifier,
    },
}

enum ClientState {
    Initial,
    SentClientFirst,
    SentClientFinal { server_signature: [u8; KEY_LEN] },
    Failed,
}

/// pgcorral playing the client: logs in to PostgreSQL with a password, or
/// with a ClientKey a client proved (see [`ScramClient::with_client_key`]).
pub struct ScramClient {
    credential: Credential,
    user: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(password: &[u8]) -> Result<Self, ScramError> {
        Ok(Self::build(
            Credential::Password(Zeroizing::new(password.to_vec())),
            random_nonce()?,
        ))
    }

    /// A client with a fixed nonce, for reproducible exchanges (tests, test
    /// vectors). Never use a fixed nonce towards a real server.
    pub fn with_nonce(password: &[u8], nonce: &str) -> Result<Self, ScramError> {
        validate_nonce(nonce)?;
        Ok(Self::build(
            Credential::Password(Zeroizing::new(password.to_vec())),
            nonce.to_owned(),
        ))
    }

    /// Logs in with a ClientKey instead of a password (the key a client
    /// proved to [`ScramServer`] against `verifier`). The server must use the
    /// verifier's salt and iteration count, which holds when `verifier` is
    /// the server's own; otherwise [`ScramClient::server_first`] fails with
    /// [`ScramError::VerifierMismatch`] before anything is sent. The server's
    /// signature is checked with the verifier's ServerKey.
    pub fn with_client_key(
        client_key: ClientKey,
        verifier: &ScramVerifier,
    ) -> Result<Self, ScramError> {
        if !constant_time_eq(&client_key.stored_key(), &verifier.stored_key) {
            return Err(ScramError::VerifierMismatch);
        }
        Ok(Self::build(
            Credential::Keys {
                client_key,
                verifier: verifier.clone(),
            },
            random_nonce()?,
        ))
    }

    /// Puts `user` in the `n=` attribute. PostgreSQL ignores it (the user
    /// is the startup packet's), so pgcorral leaves it empty as libpq does;
    /// this exists for other SCRAM peers and the RFC test vector.
    pub fn set_user(&mut self, user: &str) {
        self.user = user.replace('=', "=3D").replace(',', "=2C");
    }

    fn build(credential: Credential, nonce: String) -> Self {
        ScramClient {
            credential,
            user: String::new(),
            nonce,
            state: ClientState::Initial,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.nonce)
    }

    /// The client-first-message, for SASLInitialResponse with mechanism
    /// [`SCRAM_SHA_256`]. pgcorral does not do channel binding ('n').
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = ClientState::SentClientFirst;
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// Takes the server-first-message (AuthenticationSASLContinue data) and
    /// returns the client-final-message (for SASLResponse).
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(
            std::mem::replace(&mut self.state, ClientState::Failed),
            ClientState::SentClientFirst
        ) {
            return Err(ScramError::OutOfOrder);
        }
        let server_first = as_message(msg, "server-first-message")?;
        let mut attrs = server_first.split(',');
        let (name, nonce) = attribute(attrs.next())?;
        match name {
            b'm' => return Err(ScramError::UnsupportedExtension),
            b'r' => {}
            _ => return Err(ScramError::Malformed("expected nonce")),
        }
        // The server must extend our nonce, not replace or merely echo it.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(self.nonce.as_str()) {
            return Err(ScramError::NonceMismatch);
        }
        validate_nonce(nonce)?;
        let (name, salt) = attribute(attrs.next())?;
        if name != b's' {
            return Err(ScramError::Malformed("expected salt"));
        }
        let salt = decode_b64(salt, "salt")?;
        check_salt(&salt)?;
        let (name, iterations) = attribute(attrs.next())?;
        if name != b'i' {
            return Err(ScramError::Malformed("expected iteration count"));
        }
        let iterations = parse_iterations(iterations, u64::from(MAX_ITERATIONS))?;
        for a in attrs {
            attribute(Some(a))?;
        }

        let keys = match &self.credential {
            Credential::Password(p) => Keys::from_password(p, &salt, iterations)?,
            Credential::Keys {
                client_key,
                verifier,
            } => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(ScramError::VerifierMismatch);
                }
                Keys {
                    client_key: client_key.clone(),
                    server_key: ServerKey(verifier.server_key),
                }
            }
        };

        let without_proof = format!("c=biws,r={nonce}");
        let am = auth_message(&self.client_first_bare(), server_first, &without_proof);
        let stored_key = keys.client_key.stored_key();
        let client_signature = hmac_sha256(&stored_key, &[&am]);
        let proof = xor(keys.client_key.as_bytes(), &client_signature);
        let server_signature = hmac_sha256(keys.server_key.as_bytes(), &[&am]);
        self.state = ClientState::SentClientFinal { server_signature };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (AuthenticationSASLFinal data). Only
    /// after this succeeds may AuthenticationOk be believed: a server that
    /// cannot sign does not hold the verifier.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentClientFinal { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = as_message(msg, "server-final-message")?;
        let mut attrs = msg.split(',');
        let (name, value) = attribute(attrs.next())?;
        match name {
            b'e' => {
                let text: String = value.chars().take(MAX_SERVER_ERROR_LEN).collect();
                return Err(ScramError::ServerError(text));
            }
            b'v' => {}
            _ => return Err(ScramError::Malformed("expected verifier")),
        }
        for a in attrs {
            attribute(Some(a))?;
        }
        let signature = decode_b64(value, "server signature")?;
        if constant_time_eq(&signature, server_signature) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "initial",
            ClientState::SentClientFirst => "sent client-first",
            ClientState::SentClientFinal { .. } => "sent client-final",
            ClientState::Failed => "failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
