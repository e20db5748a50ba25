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
    pgcorral::process_title::set("pgcorral: supervisor");
    log::info!(
        "pgcorral {} started (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    ExitCode::from(supervisor.run().clamp(0, 255) as u8)
}

/// Detaches from the terminal: the parent exits, the child leads a new
/// session with its standard streams on /dev/null.
fn daemonize() -> std::io::Result<()> {
    pgcorral::sys::process::detach()
}
