//! pgcorral-cli: control of a running pgcorral. The command set is not
//! available in this version; the binary exists so packaging and scripts
//! can rely on it.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "pgcorral-cli {}: management commands are not available in this version",
        env!("CARGO_PKG_VERSION")
    );
    eprintln!("usage: pgcorral-cli [-h HOST -p PORT -U USER] COMMAND");
    ExitCode::from(2)
}
