//! pgcorral: a PostgreSQL connection pooler built on a forking supervisor,
//! a shared table of server-connection slots, and pluggable pipelines.

pub mod auth;
pub mod config;
pub mod credentials;
pub mod disabled;
pub mod fdio;
pub mod hash;
pub mod logging;
pub mod management;
pub mod pipeline;
pub mod pool;
pub mod pooled_sockets;
pub mod process_title;
pub mod protocol;
pub mod random;
pub mod segment;
pub mod server;
pub mod slot;
pub mod supervisor;
pub mod sys;
pub mod vault;
pub mod waiters;
pub mod worker;
