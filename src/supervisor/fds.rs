//! The supervisor's descriptor budget, and turning clients away.
//!
//! The supervisor holds its listeners, the management socket, one master
//! copy per pool slot (at `POOL_FD_BASE + i`) and, briefly, each client it
//! accepts and each worker's management connection. Workers inherit the
//! same limit and need a few each. The limit therefore bounds how many
//! clients can be served at once (`client_budget`), and a client beyond
//! it is refused at the door (`admit`) rather than failing later.
//!
//! Running out must still never leave a connection waiting in a
//! listener's backlog: the listeners are edge-triggered, so an `accept`
//! that fails with EMFILE would not be retried until the next connection
//! arrives. Every listener accepts through `Reserve::accept`: one
//! descriptor is kept in reserve and given up to take the pending
//! connection, which is then refused; and whatever could not be taken off
//! a backlog is tried again at the supervisor's next tick.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::config::MainConfig;
use crate::pooled_sockets::POOL_FD_BASE;
use crate::protocol::ErrorResponse;
use crate::sys;

/// SQLSTATE of every refusal here: PostgreSQL's `too_many_connections`.
pub const TOO_MANY: &str = crate::protocol::sqlstate::TOO_MANY_CONNECTIONS;

/// Descriptors beyond the pool range: standard streams, log file, signal
/// and poll descriptors, listeners, the reserve, clients being forked,
/// workers' management connections in flight.
const FIXED: u64 = 64;

/// What the supervisor holds whatever the number of clients: everything
/// below the pool range, the range itself, and `FIXED`.
fn overhead(main: &MainConfig) -> u64 {
    POOL_FD_BASE as u64 + main.max_connections as u64 + FIXED
}

/// What the configuration needs open at once in the supervisor: the pool
/// range starts at `POOL_FD_BASE`, and each live client may hold a
/// management connection to it for one request.
pub fn need(main: &MainConfig) -> u64 {
    overhead(main) + main.max_clients as u64
}

/// How many clients a soft descriptor limit of `soft` leaves room for:
/// each may hold a management connection in the supervisor at once.
pub fn client_budget(main: &MainConfig, soft: u64) -> usize {
    usize::try_from(soft.saturating_sub(overhead(main))).unwrap_or(usize::MAX)
}

/// Whether one more client (or remote management session) may start while
/// `live` are being served: within `max_clients` and within what the
/// descriptor limit leaves room for. The error is the reason, for the log.
pub fn admit(main: &MainConfig, live: usize) -> Result<(), String> {
    let cap = main.max_clients;
    if live >= cap {
        return Err(format!("max_clients ({cap}) reached"));
    }
    // Read each time: the limit can be changed from outside (prlimit).
    if let Ok((soft, _)) = sys::limits::nofile() {
        let budget = client_budget(main, soft);
        if live >= budget {
            return Err(format!(
                "the descriptor limit ({soft}) leaves room for {budget} clients"
            ));
        }
    }
    Ok(())
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
             and max_clients need: at most {} clients at once, the others are refused \
             with {TOO_MANY}",
            client_budget(main, soft)
        ),
        Err(e) => log::warn!("cannot read or raise the descriptor limit: {e}"),
    }
}

/// What one call of `Reserve::accept` took off a listener's backlog.
#[derive(Debug)]
pub enum Accepted<T> {
    /// A connection to serve.
    Serve(T),
    /// A connection taken with the reserve descriptor: answer it with a
    /// refusal and drop it. The next call takes the reserve back.
    Refuse(T),
    /// Nothing more now: the backlog is empty, or what is left in it is
    /// tried again at the next tick (`retry_due`).
    Done,
}

/// One spare descriptor, on /dev/null, to give up when `accept` finds none.
pub struct Reserve {
    spare: Option<File>,
    /// Whether the current run of EMFILE/ENFILE has been logged.
    logged: bool,
    /// A backlog was left with connections in it: accept again at the
    /// next tick, as no new readiness may come for them.
    retry: bool,
}

impl Reserve {
    pub fn new() -> io::Result<Self> {
        Ok(Reserve {
            spare: Some(File::open("/dev/null")?),
            logged: false,
            retry: false,
        })
    }

    /// The one decision for every listener: takes the next connection off
    /// a backlog with `accept` (a non-blocking accept), giving up the
    /// spare descriptor when there is none left. `what` names the
    /// listener in the log. Call until it returns `Done`.
    pub fn accept<T>(
        &mut self,
        what: &str,
        mut accept: impl FnMut() -> io::Result<T>,
    ) -> Accepted<T> {
        // A connection refused on the spare has been dropped by now.
        self.restore();
        loop {
            match accept() {
                Ok(conn) => {
                    self.accepted();
                    return Accepted::Serve(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Done,
                // This connection is gone (or the call was interrupted);
                // the next may be fine.
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || matches!(
                            e.raw_os_error(),
                            Some(libc::ECONNABORTED) | Some(libc::EPROTO)
                        ) => {}
                Err(e) if out_of_descriptors(&e) => {
                    if !self.release(&e) {
                        return Accepted::Done;
                    }
                    return match accept() {
                        Ok(conn) => Accepted::Refuse(conn),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Done,
                        Err(_) => {
                            self.retry = true;
                            Accepted::Done
                        }
                    };
                }
                // ENOBUFS, ENOMEM and the like: the kernel is short of
                // memory, which a moment may cure.
                Err(e) => {
                    log::warn!("{what}: accept: {e}; trying again in a moment");
                    self.retry = true;
                    return Accepted::Done;
                }
            }
        }
    }

    /// Whether some backlog was left non-empty since the last call: the
    /// supervisor accepts on every listener again.
    pub fn retry_due(&mut self) -> bool {
        std::mem::take(&mut self.retry)
    }

    /// Frees the spare so that one `accept` can succeed; true if there was
    /// one. Logs once per run of failures. Without a spare (it could not
    /// be taken back yet) the backlog is tried again at the next tick.
    pub fn release(&mut self, e: &io::Error) -> bool {
        if !self.logged {
            log::warn!("out of descriptors ({e}): refusing new connections with {TOO_MANY}");
            self.logged = true;
        }
        let had = self.spare.take().is_some();
        if !had {
            self.retry = true;
        }
        had
    }

    /// Takes the spare back after a release.
    pub fn restore(&mut self) {
        if self.spare.is_none() {
            self.spare = File::open("/dev/null").ok();
        }
    }

    /// A connection was accepted normally: the shortage is over.
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
    fn the_need_counts_the_pool_and_the_clients() {
        let main = MainConfig {
            max_connections: 100,
            max_clients: 1000,
            ..MainConfig::default()
        };
        assert_eq!(need(&main), 64 + 100 + FIXED + 1000);
        assert_eq!(client_budget(&main, need(&main)), 1000);
        assert_eq!(client_budget(&main, 256), 256 - 64 - 100 - FIXED as usize);
        assert_eq!(client_budget(&main, 100), 0, "not even the pool fits");
    }

    #[test]
    fn max_clients_is_the_first_bound() {
        let main = MainConfig {
            max_clients: 3,
            ..MainConfig::default()
        };
        assert!(admit(&main, 2).is_ok());
        assert_eq!(admit(&main, 3).unwrap_err(), "max_clients (3) reached");
    }

    fn err(code: i32) -> io::Result<u8> {
        Err(io::Error::from_raw_os_error(code))
    }

    /// An accept that answers `results` in turn, then EAGAIN.
    fn accepts(results: Vec<io::Result<u8>>) -> impl FnMut() -> io::Result<u8> {
        let mut results = results.into_iter();
        move || results.next().unwrap_or_else(|| err(libc::EAGAIN))
    }

    #[test]
    fn out_of_descriptors_takes_the_connection_with_the_spare_to_refuse_it() {
        let mut r = Reserve::new().unwrap();
        let mut next = accepts(vec![err(libc::EMFILE), Ok(1), Ok(2)]);
        assert!(matches!(r.accept("test", &mut next), Accepted::Refuse(1)));
        // The next call takes the spare back before accepting.
        assert!(matches!(r.accept("test", &mut next), Accepted::Serve(2)));
        assert!(matches!(r.accept("test", &mut next), Accepted::Done));
        assert!(!r.retry_due(), "the backlog was emptied");
        assert!(r.release(&io::Error::from_raw_os_error(libc::EMFILE)));
    }

    #[test]
    fn a_backlog_left_without_a_spare_is_retried_at_the_tick() {
        let mut r = Reserve::new().unwrap();
        let e = io::Error::from_raw_os_error(libc::ENFILE);
        assert!(r.release(&e));
        assert!(!r.release(&e), "nothing left to give up");
        assert!(
            r.retry_due(),
            "the connection left in the backlog is tried again"
        );
        assert!(!r.retry_due(), "once");
    }

    #[test]
    fn a_vanished_connection_is_skipped_and_a_short_kernel_is_retried_later() {
        let mut r = Reserve::new().unwrap();
        let mut next = accepts(vec![err(libc::ECONNABORTED), err(libc::EINTR), Ok(3)]);
        assert!(matches!(r.accept("test", &mut next), Accepted::Serve(3)));
        assert!(!r.retry_due());
        let mut next = accepts(vec![err(libc::ENOBUFS), Ok(4)]);
        assert!(matches!(r.accept("test", &mut next), Accepted::Done));
        assert!(r.retry_due());
        assert!(matches!(r.accept("test", &mut next), Accepted::Serve(4)));
    }
}
