//! Loading what authentication needs at start-up, before the first fork:
//! the hba rules and the decrypted vault passwords, which every worker then
//! inherits. A problem with any file stops start-up with a message naming it.
//! Passwords are kept in memory that is wiped when it is dropped.

use std::collections::HashMap;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::auth::hba::{Hba, HbaError};
use crate::auth::{Credentials, ScramVerifier};
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
