//! pgcorral-cli: control of a running pgcorral over its management socket,
//! `<unix_socket_dir>/.s.pgcorral.<port>`. The commands and their output
//! are documented in doc/CLI.md.
//!
//! Exit status: 0 success; 1 the command failed or pgcorral refused it;
//! 2 usage error; 3 pgcorral is not running (or its socket cannot be
//! reached); 4 no usable answer (time-out, broken reply).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use pgcorral::config::Config;
use pgcorral::management::client::ManagementClient;
use pgcorral::management::command::{AdminCommand, CommandRequest, Format};
use pgcorral::management::reply::Envelope;
use pgcorral::management::{self, ManagementError};
use zeroize::Zeroizing;

const DEFAULT_CONFIG: &str = "/etc/pgcorral/pgcorral.toml";
const DEFAULT_SOCKET_DIR: &str = "/tmp";
const DEFAULT_PORT: u16 = 2345;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_RUNNING: u8 = 3;
const EXIT_NO_ANSWER: u8 = 4;

#[derive(Parser)]
#[command(
    name = "pgcorral-cli",
    version,
    about = "Control a running pgcorral",
    disable_help_flag = true
)]
struct Args {
    /// Print help.
    #[arg(long, action = ArgAction::Help, global = true)]
    help: Option<bool>,
    /// pgcorral's configuration file: the socket directory and port are
    /// read from it.
    #[arg(short = 'c', long = "config", conflicts_with_all = ["socket_dir", "port"])]
    config: Option<PathBuf>,
    /// Directory of the management socket (`unix_socket_dir`).
    #[arg(short = 's', long = "socket-dir")]
    socket_dir: Option<PathBuf>,
    /// pgcorral's port (names the socket).
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,
    /// Remote management host (with -p the management port and -U).
    #[arg(short = 'h', long = "host")]
    host: Option<String>,
    /// Remote management user; the password comes from PGCORRAL_PASSWORD or standard input.
    #[arg(short = 'U', long = "user")]
    user: Option<String>,
    /// Output format.
    #[arg(short = 'F', long = "format", value_enum, default_value = "text")]
    format: OutputFormat,
    /// Seconds to wait for an answer.
    #[arg(long = "timeout", default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Is pgcorral running?
    Ping,
    /// Totals of the pool; `details` lists every slot.
    Status {
        #[arg(value_parser = ["details"])]
        details: Option<String>,
    },
    /// Close pooled connections: [gracefully|idle|all] [DB].
    Flush {
        #[arg(num_args = 0..=2)]
        words: Vec<String>,
    },
    /// Let new clients of a database (default: all) in again.
    Enable { database: Option<String> },
    /// Refuse new clients of a database (default: all).
    Disable { database: Option<String> },
    /// Stop pgcorral: gracefully (default), immediate, or cancel a graceful
    /// shutdown.
    Shutdown {
        #[arg(value_parser = ["gracefully", "immediate", "cancel"])]
        mode: Option<String>,
    },
    /// Make SERVER the primary; idle connections to the old one are closed.
    #[command(name = "switch-to")]
    SwitchTo { server: String },
    /// Configuration: reload, get KEY, set KEY VALUE, ls.
    Conf {
        #[command(subcommand)]
        action: ConfAction,
    },
    /// Reset: prometheus, or server NAME.
    Clear {
        #[command(subcommand)]
        what: ClearWhat,
    },
}

#[derive(Subcommand)]
enum ConfAction {
    /// Re-read the configuration file.
    Reload,
    /// Show one key.
    Get { key: String },
    /// Change a reloadable key until the next reload or restart.
    Set { key: String, value: String },
    /// List every key.
    Ls,
}

#[derive(Subcommand)]
enum ClearWhat {
    /// Reset the metrics.
    Prometheus,
    /// Reset a server's failed state.
    Server { name: String },
}

impl Command {
    fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = Vec::new();
        let mut push = |s: &str| w.push(s.to_string());
        match self {
            Command::Ping => push("ping"),
            Command::Status { details } => {
                push("status");
                if let Some(d) = details {
                    push(d);
                }
            }
            Command::Flush { words } => {
                push("flush");
                for x in words {
                    push(x);
                }
            }
            Command::Enable { database } | Command::Disable { database } => {
                push(if matches!(self, Command::Enable { .. }) {
                    "enable"
                } else {
                    "disable"
                });
                if let Some(d) = database {
                    push(d);
                }
            }
            Command::Shutdown { mode } => {
                push("shutdown");
                if let Some(m) = mode {
                    push(m);
                }
            }
            Command::SwitchTo { server } => {
                push("switch-to");
                push(server);
            }
            Command::Conf { action } => {
                push("conf");
                match action {
                    ConfAction::Reload => push("reload"),
                    ConfAction::Ls => push("ls"),
                    ConfAction::Get { key } => {
                        push("get");
                        push(key);
                    }
                    ConfAction::Set { key, value } => {
                        push("set");
                        push(key);
                        push(value);
                    }
                }
            }
            Command::Clear { what } => {
                push("clear");
                match what {
                    ClearWhat::Prometheus => push("prometheus"),
                    ClearWhat::Server { name } => {
                        push("server");
                        push(name);
                    }
                }
            }
        }
        w
    }
}

/// Prints a failure (one line on stderr; in JSON mode also the envelope on
/// stdout) and returns the exit status.
fn fail(format: Format, command: &str, reason: &str, status: u8) -> ExitCode {
    let line = reason.lines().next().unwrap_or("").trim();
    eprintln!("pgcorral-cli: {line}");
    if format == Format::Json {
        match Envelope::failure(command, line).to_json() {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("pgcorral-cli: cannot encode the failure: {e}"),
        }
    }
    ExitCode::from(status)
}

/// The `"error"` string of a JSON envelope, on one line.
fn json_error(json: &str) -> Option<String> {
    let envelope: Envelope = serde_json::from_str(json.trim_end()).ok()?;
    envelope.error.map(|e| e.replace(['\n', '\r'], " "))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = match args.format {
        OutputFormat::Text => Format::Text,
        OutputFormat::Json => Format::Json,
    };
    let words = args.command.words();
    let command = match AdminCommand::parse(&words) {
        Ok(c) => c,
        Err(e) => return fail(format, &words.join(" "), &e.to_string(), EXIT_USAGE),
    };
    let name = command.name();
    let timeout = Duration::from_secs(args.timeout.max(1));
    if let Some(host) = &args.host {
        let (Some(user), Some(port)) = (&args.user, args.port) else {
            return fail(
                format,
                name,
                "remote management needs -h HOST -p PORT -U USER",
                EXIT_USAGE,
            );
        };
        // The password comes from PGCORRAL_PASSWORD or the first line of
        // standard input, so that it never appears in a process list.
        let password = match std::env::var("PGCORRAL_PASSWORD") {
            Ok(p) => Zeroizing::new(p),
            Err(_) => {
                let mut line = Zeroizing::new(String::new());
                if std::io::stdin().read_line(&mut line).is_err() {
                    return fail(
                        format,
                        name,
                        "no password (set PGCORRAL_PASSWORD)",
                        EXIT_USAGE,
                    );
                }
                Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string())
            }
        };
        let client = match management::remote::login(host, port, user, &password, timeout) {
            Ok(c) => c,
            Err(e) => return fail(format, name, &format!("{host}:{port}: {e}"), EXIT_FAILED),
        };
        return run_command(client, format, words, name, timeout);
    }

    let (dir, port) = match (&args.config, &args.socket_dir, args.port) {
        (Some(path), _, _) => match Config::load(path) {
            Ok(c) => (c.main.unix_socket_dir, c.main.port),
            Err(e) => return fail(format, name, &e.to_string(), EXIT_USAGE),
        },
        (None, None, None) if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            match Config::load(std::path::Path::new(DEFAULT_CONFIG)) {
                Ok(c) => (c.main.unix_socket_dir, c.main.port),
                Err(e) => return fail(format, name, &e.to_string(), EXIT_USAGE),
            }
        }
        (None, dir, port) => (
            dir.clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR)),
            port.unwrap_or(DEFAULT_PORT),
        ),
    };
    if port == 0 {
        // Only the running daemon knows the port it was given.
        let message = "the configuration says port = 0 (chosen at start-up): \
                       give -s DIR -p PORT with the port pgcorral listens on";
        return fail(format, name, message, EXIT_USAGE);
    }
    let path = management::socket_path(&dir, port);

    let client = match ManagementClient::connect(&path) {
        Ok(c) => c,
        Err(ManagementError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return fail(
                format,
                name,
                &format!(
                    "pgcorral is not running: nothing answers on {}",
                    path.display()
                ),
                EXIT_NOT_RUNNING,
            )
        }
        Err(e) => {
            return fail(
                format,
                name,
                &format!("cannot connect to {}: {e}", path.display()),
                EXIT_NOT_RUNNING,
            )
        }
    };
    run_command(client, format, words, name, timeout)
}

fn run_command(
    mut client: ManagementClient,
    format: Format,
    words: Vec<String>,
    name: &str,
    timeout: Duration,
) -> ExitCode {
    if let Err(e) = client.set_timeout(Some(timeout)) {
        return fail(format, name, &e.to_string(), EXIT_NO_ANSWER);
    }
    let req = CommandRequest {
        format,
        args: words,
    };
    match client.command(&req) {
        Ok((true, text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((false, text)) => {
            if format == Format::Json {
                print!("{text}");
                // The JSON envelope holds the reason; stderr gets it too.
                let reason = json_error(&text);
                eprintln!(
                    "pgcorral-cli: {}",
                    reason.as_deref().unwrap_or("the command failed")
                );
            } else {
                eprintln!(
                    "pgcorral-cli: {}",
                    text.lines().next().unwrap_or("the command failed")
                );
            }
            ExitCode::from(EXIT_FAILED)
        }
        Err(ManagementError::Refused(reason)) => fail(
            format,
            name,
            &format!("pgcorral refused: {reason}"),
            EXIT_FAILED,
        ),
        Err(ManagementError::Closed) => fail(
            format,
            name,
            "pgcorral closed the connection without an answer",
            EXIT_NO_ANSWER,
        ),
        Err(e) => fail(format, name, &format!("no answer: {e}"), EXIT_NO_ANSWER),
    }
}
