//! The supervisor's descriptor budget, and turning clients away.
//!
//! The supervisor holds its listeners, the management socket, one master
//! copy per pool slot (at `POOL_FD_BASE + i`) and, briefly, each client it
//! accepts and each worker's management connection. Workers inherit the
//! same limit and need a few each. Running out must never leave a client
//! waiting in a listener's backlog: with edge-triggered listeners an
//! `accept` that fails with EMFILE would not be retried until the next
//! client arrives. So one descriptor is kept in reserve and given up to
//! accept the pending client, which is then refused.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::config::MainConfig;
use crate::pooled_sockets::POOL_FD_BASE;
use crate::protocol::ErrorResponse;
use crate::sys;

/// SQLSTATE of every refusal here: PostgreSQL's `too_many_connections`.
pub const TOO_MANY: &str = "53300";

/// Descriptors beyond the pool range: standard streams, log file, signal
/// and poll descriptors, listeners, the reserve, clients being forked,
/// workers' management connections in flight.
const FIXED: u64 = 64;

/// What the configuration needs open at once in the supervisor: the pool
/// range starts at `POOL_FD_BASE`, and each live client may hold a
/// management connection to it for one request; each worker, idle ones
/// included (at most `max_clients` in all), has a channel.
pub fn need(main: &MainConfig) -> u64 {
    POOL_FD_BASE as u64 + main.max_connections as u64 + FIXED + 2 * main.max_clients as u64
}

/// Raises the limit to the hard one and says whether it covers `need`.
pub fn raise_and_report(main: &MainConfig) {
    let need = need(main);
    match sys::limits::raise_nofile() {
        Ok((soft, _)) if soft >= need => {
            log::info!("descriptor limit {soft}; the configuration needs up to {need}")
        }
        Ok((soft, hard)) => log::warn!(
            "descriptor limit {soft} (hard {hard}) is below the {need} that max_connections \
             and max_clients need; clients beyond it are refused with {TOO_MANY}"
        ),
        Err(e) => log::warn!("cannot read or raise the descriptor limit: {e}"),
    }
}

/// One spare descriptor, on /dev/null, to give up when `accept` finds none.
pub struct Reserve {
    spare: Option<File>,
    /// Whether the current run of EMFILE/ENFILE has been logged.
    logged: bool,
}

impl Reserve {
    pub fn new() -> io::Result<Self> {
        Ok(Reserve {
            spare: Some(File::open("/dev/null")?),
            logged: false,
        })
    }

    /// Frees the spare so that one `accept` can succeed; true if there was
    /// one. Logs once per run of failures.
    pub fn release(&mut self, e: &io::Error) -> bool {
        if !self.logged {
            log::warn!("out of descriptors ({e}): refusing new clients with {TOO_MANY}");
            self.logged = true;
        }
        self.spare.take().is_some()
    }

    /// Takes the spare back after a release.
    pub fn restore(&mut self) {
        if self.spare.is_none() {
            self.spare = File::open("/dev/null").ok();
        }
    }

    /// A client was accepted normally: the shortage is over.
    pub fn accepted(&mut self) {
        if self.logged && self.spare.is_some() {
            log::info!("descriptors available again");
            self.logged = false;
        }
    }
}

/// Whether `accept` failed for want of descriptors.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Answers a client pgcorral will not serve with a FATAL ErrorResponse and
/// closes it, without ever waiting. The startup packet that is already
/// there is read first: closing a TCP socket with unread data sends a
/// reset, which may overtake the error on its way to the client.
pub fn refuse(client: OwnedFd, code: &str, message: &str) {
    let mut out = Vec::new();
    ErrorResponse::fatal(code, message).encode(&mut out);
    let fd = client.as_fd();
    let mut sink = [0u8; 1024];
    for _ in 0..8 {
        match sys::io::recv_nowait(fd, &mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    // A fresh socket's send buffer holds these few bytes; if not, the
    // client sees its connection closed, which is still an answer.
    let _ = sys::io::send_nowait(fd, &out);
    let _ = sys::sock::shutdown(fd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_refused_client_reads_a_fatal_53300_then_the_end() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        refuse(ours.into(), TOO_MANY, "sorry, too many clients already");
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        assert_eq!(got[0], b'E');
        let e = ErrorResponse::parse(&got[5..]).unwrap();
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "53300");
        assert_eq!(e.message, "sorry, too many clients already");
    }

    #[test]
    fn the_reserve_is_given_up_once_and_taken_back() {
        let mut r = Reserve::new().unwrap();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_descriptors(&e));
        assert!(r.release(&e));
        assert!(!r.release(&e), "nothing left to give up before restore");
        r.restore();
        assert!(r.release(&e));
    }

    #[test]
    fn the_need_counts_the_pool_the_clients_and_the_workers() {
        let main = MainConfig {
            max_connections: 100,
            max_clients: 1000,
            ..MainConfig::default()
        };
        assert_eq!(need(&main), 64 + 100 + FIXED + 2 * 1000);
    }
}
