//! pgcorral as the SCRAM server, checking a client.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{
    as_message, attribute, auth_message, decode_b64, hmac_sha256, random_nonce, recover_client_key,
    validate_nonce, ClientKey, ScramError, ScramVerifier, DEFAULT_ITERATIONS, KEY_LEN, SALT_LEN,
};

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// pgcorral playing the server: checks a client's password against a
/// verifier. One exchange per value; any error ends it.
pub struct ScramServer {
    verifier: ScramVerifier,
    nonce_suffix: Option<String>,
    /// Set for an unknown user: the exchange runs to the end and then fails
    /// exactly as a wrong password does.
    doomed: bool,
    state: ServerState,
}

impl ScramServer {
    pub fn new(verifier: &ScramVerifier) -> Self {
        ScramServer {
            verifier: verifier.clone(),
            nonce_suffix: None,
            doomed: false,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Like [`ScramServer::new`] with a fixed server nonce part, for
    /// reproducible exchanges (tests, test vectors). Never use a fixed
    /// nonce towards real clients.
    pub fn with_nonce_suffix(verifier: &ScramVerifier, suffix: &str) -> Result<Self, ScramError> {
        validate_nonce(suffix)?;
        let mut s = Self::new(verifier);
        s.nonce_suffix = Some(suffix.to_owned());
        Ok(s)
    }

    /// An exchange for a user pgcorral does not know, indistinguishable from
    /// a known user's until it fails with [`ScramError::InvalidProof`]. The
    /// salt is derived from `user` and `secret`, so repeated attempts for
    /// one name see one salt, as they would for a real user; `secret` must
    /// therefore be the same in every worker (a random value made once at
    /// start-up) and unknown to clients.
    pub fn mock(user: &str, secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"pgcorral mock salt\0");
        h.update(secret);
        h.update(user.as_bytes());
        let digest: [u8; KEY_LEN] = h.finalize().into();
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..SALT_LEN].to_vec(),
            stored_key: [0; KEY_LEN],
            server_key: [0; KEY_LEN],
        };
        let mut s = Self::new(&verifier);
        s.doomed = true;
        s
    }

    /// Takes the client-first-message (the SASLInitialResponse data) and
    /// returns the server-first-message (for AuthenticationSASLContinue).
    ///
    /// The user name in `n=` is ignored, as PostgreSQL does: the user is the
    /// one from the startup packet.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            self.state = ServerState::Done;
            return Err(ScramError::OutOfOrder);
        }
        self.state = ServerState::Done;
        let msg = as_message(msg, "client-first-message")?;
        let (gs2_header, bare) = split_gs2_header(msg)?;
        let client_nonce = parse_client_first_bare(bare)?;

        let suffix = match &self.nonce_suffix {
            Some(s) => s.clone(),
            None => random_nonce()?,
        };
        let nonce = format!("{client_nonce}{suffix}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal {
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(out)
    }

    /// Takes the client-final-message (SASLResponse data). On success returns
    /// the server-final-message (`v=…`, for AuthenticationSASLFinal) and the
    /// ClientKey the client proved it holds.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<(Vec<u8>, ClientKey), ScramError> {
        let ServerState::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = as_message(msg, "client-final-message")?;
        let final_msg = parse_client_final(msg)?;

        let binding = decode_b64(final_msg.channel_binding, "channel binding")?;
        // With 'n' or 'y' there is no binding data: c= is the header itself.
        if binding != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if final_msg.nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = decode_b64(final_msg.proof, "client proof")?;
        if proof.len() != KEY_LEN {
            return Err(ScramError::Malformed("client proof length"));
        }

        let am = auth_message(&client_first_bare, &server_first, final_msg.without_proof);
        let client_key = recover_client_key(&am, &proof, &self.verifier.stored_key);
        match client_key {
            Some(key) if !self.doomed => {
                let signature = hmac_sha256(&self.verifier.server_key, &[&am]);
                let out = format!("v={}", B64.encode(signature)).into_bytes();
                Ok((out, key))
            }
            _ => Err(ScramError::InvalidProof),
        }
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "awaiting client-first",
            ServerState::AwaitingClientFinal { .. } => "awaiting client-final",
            ServerState::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("verifier", &self.verifier)
            .field("state", &state)
            .finish()
    }
}

/// Splits `gs2-header` (`n,,` / `y,,`) from client-first-message-bare.
fn split_gs2_header(msg: &str) -> Result<(&str, &str), ScramError> {
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    match flag {
        // 'y': the client could bind but believes we cannot. That is true
        // (pgcorral never offers SCRAM-SHA-256-PLUS), so it is no downgrade.
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("channel binding flag")),
    }
    let authzid = parts
        .next()
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    if authzid.starts_with("a=") {
        return Err(ScramError::AuthzidUnsupported);
    } else if !authzid.is_empty() {
        return Err(ScramError::Malformed("authorization identity"));
    }
    let bare = parts
        .next()
        .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
    Ok((&msg[..msg.len() - bare.len()], bare))
}

/// Returns the client nonce.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attrs = bare.split(',');
    let (name, _user) = attribute(attrs.next())?;
    match name {
        b'm' => return Err(ScramError::UnsupportedExtension),
        b'n' => {}
        _ => return Err(ScramError::Malformed("expected user name")),
    }
    let (name, nonce) = attribute(attrs.next())?;
    if name != b'r' {
        return Err(ScramError::Malformed("expected nonce"));
    }
    validate_nonce(nonce)?;
    // Optional extensions: only their shape is checked.
    for a in attrs {
        attribute(Some(a))?;
    }
    Ok(nonce)
}

struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    without_proof: &'a str,
    proof: &'a str,
}

fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, ScramError> {
    // The proof is the last attribute; everything before it is signed.
    let at = msg
        .rfind(",p=")
        .ok_or(ScramError::Malformed("missing proof"))?;
    let without_proof = &msg[..at];
    let proof = &msg[at + 3..];
    if proof.contains(',') {
        return Err(ScramError::Malformed("attributes after proof"));
    }
    let mut attrs = without_proof.split(',');
    let (name, channel_binding) = attribute(attrs.next())?;
    if name != b'c' {
        return Err(ScramError::Malformed("expected channel binding"));
    }
    let (name, nonce) = attribute(attrs.next())?;
    if name != b'r' {
        return Err(ScramError::Malformed("expected nonce"));
    }
    for a in attrs {
        if attribute(Some(a))?.0 == b'p' {
            return Err(ScramError::Malformed("duplicate proof"));
        }
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}
