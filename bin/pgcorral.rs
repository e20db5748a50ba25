//! pgcorral: the pooler daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgcorral::config::Config;
use pgcorral::supervisor::Supervisor;

#[derive(Parser)]
#[command(name = "pgcorral", version, about = "PostgreSQL connection pooler")]
struct Args {
    /// Configuration file (TOML).
    #[arg(
        short = 'c',
        long = "config",
        default_value = "/etc/pgcorral/pgcorral.toml"
    )]
    config: PathBuf,
    /// Host-based access rules (pg_hba.conf syntax).
    #[arg(short = 'a', long = "hba")]
    hba: Option<PathBuf>,
    /// User vault.
    #[arg(short = 'u', long = "users")]
    users: Option<PathBuf>,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over from a running pgcorral.
    #[arg(long)]
    upgrade: bool,
    /// Once listening, write the TCP port to this file (useful with
    /// `port = 0`); it appears whole, never half-written.
    #[arg(long = "port-file", value_name = "PATH")]
    port_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    pgcorral::process_title::init();
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgcorral: {e}");
            return ExitCode::from(1);
        }
    };
    if args.upgrade {
        eprintln!("pgcorral: --upgrade is not available in this version");
        return ExitCode::from(1);
    }
    let mut config = config;
    if let Some(hba) = args.hba {
        config.main.hba_file = Some(hba);
    }
    if let Some(users) = args.users {
        config.main.users_file = Some(users);
    }
    let credentials = match pgcorral::credentials::load(&config.main) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgcorral: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = pgcorral::pipeline::resolve(config.main.pipeline) {
        eprintln!("pgcorral: {}: {e}", args.config.display());
        return ExitCode::from(1);
    }
    let main = &config.main;
    if let Err(e) = pgcorral::logging::init(main.log_type, main.log_level, main.log_path.as_deref())
    {
        eprintln!("pgcorral: logging: {e}");
        return ExitCode::from(1);
    }
    for key in config.unimplemented_settings() {
        log::warn!("{key} is set but not acted on by this version");
    }
    if args.daemon {
        if let Err(e) = daemonize() {
            eprintln!("pgcorral: cannot run in the background: {e}");
            return ExitCode::from(1);
        }
    }
    let supervisor = match Supervisor::new(config, credentials) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            eprintln!("pgcorral: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &args.port_file {
        if let Err(e) = write_port_file(path, supervisor.port()) {
            log::error!("cannot write the port file {}: {e}", path.display());
            eprintln!(
                "pgcorral: cannot write the port file {}: {e}",
                path.display()
            );
            return ExitCode::from(1);
        }
    }
    pgcorral::process_title::set("pgcorral: supervisor");
    log::info!(
        "pgcorral {} started (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let status = supervisor.run();
    if let Some(path) = &args.port_file {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::from(status.clamp(0, 255) as u8)
}

/// Writes the port next to `path` and renames it into place, so whoever
/// polls for the file never reads a partial number. It is written after
/// the listeners are bound: connecting as soon as it exists cannot race.
fn write_port_file(path: &std::path::Path, port: u16) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Detaches from the terminal: the parent exits, the child leads a new
/// session with its standard streams on /dev/null.
fn daemonize() -> std::io::Result<()> {
    pgcorral::sys::process::detach()
}
