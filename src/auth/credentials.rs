//! What authentication needs, loaded by the supervisor at start-up
//! (`crate::credentials::load`) and inherited by every worker: hba rules,
//! vault passwords and SCRAM verifiers. Passwords are kept in memory that is
//! wiped when it is dropped.

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::hba::Hba;
use super::scram::{ScramError, ScramVerifier};

/// Loaded by the supervisor before it forks, so workers inherit it.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub hba: Option<Hba>,
    /// Vault: passwords pgcorral uses towards PostgreSQL.
    pub server_passwords: HashMap<String, Zeroizing<String>>,
    /// Frontend vault: passwords clients give pgcorral, when different.
    pub client_passwords: HashMap<String, Zeroizing<String>>,
    /// SCRAM verifiers of the passwords clients give, made once at load:
    /// deriving one costs thousands of PBKDF2 rounds.
    pub client_verifiers: HashMap<String, ScramVerifier>,
    /// Remote management: administrators' verifiers (admins_file).
    pub admin_verifiers: HashMap<String, ScramVerifier>,
}

impl Credentials {
    /// The password a vault user gives pgcorral.
    pub fn client_password<'a>(&'a self, user: &str) -> Option<&'a str> {
        self.client_passwords
            .get(user)
            .or_else(|| self.server_passwords.get(user))
            .map(|p| p.as_str())
    }

    /// Builds the verifiers for every vault user.
    pub fn with_verifiers(mut self) -> Result<Self, ScramError> {
        let mut verifiers = HashMap::new();
        for user in self.server_passwords.keys() {
            if let Some(pw) = self.client_password(user) {
                verifiers.insert(user.clone(), ScramVerifier::generate(pw.as_bytes())?);
            }
        }
        self.client_verifiers = verifiers;
        Ok(self)
    }
}
