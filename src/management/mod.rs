//! The management socket: a Unix-domain stream socket at
//! `<unix_socket_dir>/.s.pgcorral.<port>` on which workers hand server
//! sockets to the supervisor (and get them back) with SCM_RIGHTS, and on
//! which `pgcorral-cli` sends administration commands (`command`).

pub mod client;
pub mod command;
pub mod disabled;
pub mod message;
pub mod remote;
pub mod reply;
pub mod server;
pub mod transfer;

use std::path::{Path, PathBuf};

pub fn socket_path(unix_socket_dir: &Path, port: u16) -> PathBuf {
    unix_socket_dir.join(format!(".s.pgcorral.{port}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("management socket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("management transfer: {0}")]
    Transfer(#[from] transfer::TransferError),
    #[error("malformed management message: {0}")]
    Malformed(&'static str),
    #[error("the supervisor refused: {0}")]
    Refused(String),
    #[error("the supervisor closed the management connection")]
    Closed,
    /// The supervisor had no descriptor for the connection: the request
    /// was not carried out, and may succeed later.
    #[error("{}", message::OUT_OF_DESCRIPTORS)]
    OutOfDescriptors,
    #[error(transparent)]
    Command(#[from] command::CommandError),
}
