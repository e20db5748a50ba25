//! pgcorral-admin: master key and user vault. The commands are not
//! available in this version; the binary exists so packaging and scripts
//! can rely on it.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "pgcorral-admin {}: vault commands are not available in this version",
        env!("CARGO_PKG_VERSION")
    );
    eprintln!("usage: pgcorral-admin master-key | user add|edit|del|ls");
    ExitCode::from(2)
}
