//! Background validation tests idle connections with the server layer's
//! probe; the supervisor's helpers only orchestrate it (see `upkeep`).

pub use crate::server::probe::{probe, ProbeError};
