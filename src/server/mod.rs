//! The server-connection layer: everything pgcorral says to PostgreSQL on a
//! connection outside a client's traffic. Opening one (`connect`), filling
//! a slot with it (`fill`), testing an idle one (`probe`), and bringing its
//! session in line (`session`: parameter sync and reset; `settings_follow`:
//! a client's settings read, reset and set again); what it logs in
//! with (`settings`). Workers and the
//! supervisor's helpers orchestrate these; neither implements them.

pub mod connect;
pub mod fill;
pub mod params;
pub mod probe;
pub mod session;
pub mod settings;
pub mod settings_follow;

use std::time::Duration;

pub use connect::{connect, Login, ServerConnection, ServerError};
pub use fill::{fill_slot, FillError};

/// How long to wait for PostgreSQL during start-up or a maintenance query:
/// `authentication_timeout`, at least a second, 10 s when it is 0.
pub fn wait_limit(authentication_timeout: Duration) -> Duration {
    if authentication_timeout.is_zero() {
        Duration::from_secs(10)
    } else {
        authentication_timeout.max(Duration::from_secs(1))
    }
}
