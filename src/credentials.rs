//! Loading what authentication needs at start-up, before the first fork:
//! the hba rules and the decrypted vault passwords, which every worker then
//! inherits. A problem with any file stops start-up with a message naming it.
//! Passwords are kept in memory that is wiped when it is dropped.

use std::collections::HashMap;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::auth::hba::{Hba, HbaError};
use crate::auth::{ScramError, ScramVerifier};
use crate::config::MainConfig;
use crate::vault::master_key;
use crate::vault::users::Users;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Hba(#[from] HbaError),
    #[error("{path}: {message}")]
    Vault { path: PathBuf, message: String },
}

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

pub fn load(main: &MainConfig) -> Result<Credentials, CredentialsError> {
    let hba = match &main.hba_file {
        Some(path) => Some(Hba::load(path)?),
        None => None,
    };
    let server_passwords = load_users(main, main.users_file.as_ref())?;
    let client_passwords = load_users(main, main.frontend_users_file.as_ref())?;
    let mut admin_verifiers = std::collections::HashMap::new();
    for (user, password) in load_users(main, main.admins_file.as_ref())? {
        let v =
            ScramVerifier::generate(password.as_bytes()).map_err(|e| CredentialsError::Vault {
                path: main.admins_file.clone().unwrap_or_default(),
                message: e.to_string(),
            })?;
        admin_verifiers.insert(user, v);
    }
    Credentials {
        hba,
        server_passwords,
        client_passwords,
        client_verifiers: Default::default(),
        admin_verifiers,
    }
    .with_verifiers()
    .map_err(|e| CredentialsError::Vault {
        path: main.users_file.clone().unwrap_or_default(),
        message: e.to_string(),
    })
}

fn load_users(
    main: &MainConfig,
    path: Option<&PathBuf>,
) -> Result<HashMap<String, Zeroizing<String>>, CredentialsError> {
    let Some(path) = path else {
        return Ok(HashMap::new());
    };
    let key_path = match &main.master_key_file {
        Some(p) => p.clone(),
        None => master_key::default_path().map_err(|e| vault_error(path, e))?,
    };
    // `load` refuses a key file readable by group or others.
    let key = master_key::load(&key_path).map_err(|e| vault_error(&key_path, e))?;
    let users = Users::load(path, &key).map_err(|e| vault_error(path, e))?;
    Ok(users
        .list()
        .into_iter()
        .filter_map(|u| {
            users
                .password(u)
                .map(|p| (u.to_string(), Zeroizing::new(p.to_string())))
        })
        .collect())
}

fn vault_error(path: &std::path::Path, e: VaultError) -> CredentialsError {
    CredentialsError::Vault {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
