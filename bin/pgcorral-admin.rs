//! pgcorral-admin: creates the master key and manages the user vault.
//!
//! ```text
//! pgcorral-admin [-f USERS_FILE] [-k MASTER_KEY_FILE] master-key [--force]
//! pgcorral-admin [-f USERS_FILE] [-k MASTER_KEY_FILE] user add  -U NAME [-P PASSWORD]
//! pgcorral-admin [-f USERS_FILE] [-k MASTER_KEY_FILE] user edit -U NAME [-P PASSWORD]
//! pgcorral-admin [-f USERS_FILE] [-k MASTER_KEY_FILE] user del  -U NAME
//! pgcorral-admin [-f USERS_FILE] [-k MASTER_KEY_FILE] user ls
//! ```
//!
//! Without `-P` the password is asked for twice on the terminal (not
//! echoed), or read as one line from standard input when that is not a
//! terminal. Exit status 0 on success; otherwise 1 (2 for a usage error)
//! with a one-line message on standard error.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, Termios};
use pgcorral::vault::{master_key, users::MAX_PASSWORD_LEN, Users, VaultError};

/// Where the users file is unless `-f` says otherwise (pgagroal keeps its
/// own in /etc/pgagroal).
const DEFAULT_USERS_FILE: &str = "/etc/pgcorral/pgcorral_users.conf";

#[derive(Parser)]
#[command(
    name = "pgcorral-admin",
    version,
    about = "Manage the pgcorral master key and user vault"
)]
struct Cli {
    /// Users file
    #[arg(short = 'f', long = "file", value_name = "USERS_FILE", global = true)]
    file: Option<PathBuf>,
    /// Master key file [default: $HOME/.pgcorral/master.key]
    #[arg(
        short = 'k',
        long = "master-key",
        value_name = "MASTER_KEY_FILE",
        global = true
    )]
    master_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the master key (mode 0600)
    MasterKey {
        /// Replace an existing key (users files encrypted with it become unreadable)
        #[arg(long)]
        force: bool,
    },
    /// Manage users in the users file
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user
    Add {
        #[arg(short = 'U', long = "user", value_name = "NAME")]
        user: String,
        /// Password (prompted for, or read from standard input, when absent)
        #[arg(short = 'P', long = "password")]
        password: Option<String>,
    },
    /// Change a user's password
    Edit {
        #[arg(short = 'U', long = "user", value_name = "NAME")]
        user: String,
        /// Password (prompted for, or read from standard input, when absent)
        #[arg(short = 'P', long = "password")]
        password: Option<String>,
    },
    /// Remove a user
    #[command(visible_alias = "delete")]
    Del {
        #[arg(short = 'U', long = "user", value_name = "NAME")]
        user: String,
    },
    /// List the users
    #[command(visible_alias = "list")]
    Ls,
}

#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot read the password: {0}")]
    ReadPassword(#[source] io::Error),
    #[error("no password given on standard input")]
    NoPassword,
    #[error("the passwords do not match")]
    Mismatch,
    #[error("cannot write to standard output: {0}")]
    Output(#[source] io::Error),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message runs to the first blank line (the usage
            // follows); it is folded into one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!("pgcorral-admin: {message} (try --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcorral-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), AdminError> {
    let key_path = match cli.master_key {
        Some(p) => p,
        None => master_key::default_path()?,
    };
    let users_path = cli
        .file
        .unwrap_or_else(|| PathBuf::from(DEFAULT_USERS_FILE));
    match cli.command {
        Command::MasterKey { force } => {
            master_key::create(&key_path, force)?;
            eprintln!(
                "pgcorral-admin: master key written to {}",
                key_path.display()
            );
        }
        Command::User { action } => user(action, &key_path, &users_path)?,
    }
    Ok(())
}

fn user(action: UserAction, key_path: &Path, users_path: &Path) -> Result<(), AdminError> {
    let key = master_key::load(key_path)?;
    match action {
        UserAction::Add { user, password } => {
            let mut users = Users::load_or_new(users_path, &key)?;
            // Fail before prompting when the answer is already known.
            if users.contains(&user) {
                return Err(VaultError::UserExists(user).into());
            }
            let password = password_or_prompt(password)?;
            users.add(&user, &password)?;
            users.save(users_path)?;
        }
        UserAction::Edit { user, password } => {
            let mut users = Users::load(users_path, &key)?;
            if !users.contains(&user) {
                return Err(VaultError::NoSuchUser(user).into());
            }
            let password = password_or_prompt(password)?;
            users.edit(&user, &password)?;
            users.save(users_path)?;
        }
        UserAction::Del { user } => {
            let mut users = Users::load(users_path, &key)?;
            users.remove(&user)?;
            users.save(users_path)?;
        }
        UserAction::Ls => {
            let users = Users::load_or_new(users_path, &key)?;
            let mut out = io::stdout().lock();
            for name in users.list() {
                writeln!(out, "{name}").map_err(AdminError::Output)?;
            }
            out.flush().map_err(AdminError::Output)?;
        }
    }
    Ok(())
}

fn password_or_prompt(given: Option<String>) -> Result<String, AdminError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let first = prompt("Password: ")?;
        let second = prompt("Verify password: ")?;
        if first != second {
            return Err(AdminError::Mismatch);
        }
        Ok(first)
    } else {
        read_line(&mut stdin.lock())?.ok_or(AdminError::NoPassword)
    }
}

/// Reads one line (without its line ending), bounded so that a file piped
/// in by mistake is not slurped whole.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, AdminError> {
    let mut line = String::new();
    let n = r
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_line(&mut line)
        .map_err(AdminError::ReadPassword)?;
    if n == 0 {
        return Ok(None);
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(trimmed.to_owned()))
}

fn prompt(text: &str) -> Result<String, AdminError> {
    let mut err = io::stderr();
    let _ = write!(err, "{text}");
    let _ = err.flush();
    let line = {
        let _echo = EchoOff::new(io::stdin()).map_err(AdminError::ReadPassword)?;
        read_line(&mut io::stdin().lock())
    };
    // The user's Enter was not echoed either.
    let _ = writeln!(err);
    line?.ok_or(AdminError::NoPassword)
}

/// Turns terminal echo off until dropped.
struct EchoOff {
    stdin: io::Stdin,
    saved: Termios,
}

impl EchoOff {
    fn new(stdin: io::Stdin) -> io::Result<Self> {
        let saved = tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &quiet).map_err(io::Error::from)?;
        Ok(EchoOff { stdin, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // Nothing better to do if the terminal went away meanwhile.
        let _ = tcsetattr(self.stdin.as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_line_strips_line_endings_and_bounds_length() {
        let mut r = io::Cursor::new(b"secret\r\nnext\n".to_vec());
        assert_eq!(read_line(&mut r).unwrap().as_deref(), Some("secret"));
        let mut r = io::Cursor::new(b"no newline".to_vec());
        assert_eq!(read_line(&mut r).unwrap().as_deref(), Some("no newline"));
        let mut r = io::Cursor::new(Vec::new());
        assert_eq!(read_line(&mut r).unwrap(), None);
        let mut r = io::Cursor::new(vec![b'x'; 10_000]);
        let long = read_line(&mut r).unwrap().unwrap();
        assert_eq!(long.len(), MAX_PASSWORD_LEN + 2);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
