//! The supervisor: one single-threaded process that owns the listeners, the
//! shared segment and the master copies of pooled sockets, hands each
//! client to a worker (`spares`), and keeps the pool tidy. It never starts a thread or an
//! async runtime, because it forks.

pub mod commands;
pub mod fds;
pub mod listeners;
pub mod prefill;
pub mod reload;
pub mod requests;
pub mod signals;
mod spares;
pub mod spawn;
pub mod upkeep;
pub mod validation;
mod watch;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use crate::auth::Credentials;
use crate::config::Config;
use crate::management;
use crate::management::server::Connection;
use crate::pooled_sockets::{self, PooledSockets};
use crate::random::{self, RandomError};
use crate::segment::{Segment, SegmentError};
use crate::worker::{Context, Peer};
use fds::Accepted;

const SIGNALS: Token = Token(0);
const MANAGEMENT: Token = Token(1);
const UNIX: Token = Token(2);
const REMOTE: Token = Token(3);
const TCP_FIRST: usize = 10;
const CONNECTION_FIRST: usize = 1000;
/// Idle pooled sockets (`watch.rs`): slot `i` is `WATCH_FIRST + i`. The
/// management connections' counter, starting at `CONNECTION_FIRST`, would
/// need centuries of connections to get here.
const WATCH_FIRST: usize = usize::MAX / 2;
/// Workers' channels (`spares.rs`): worker `pid` is `WORKER_FIRST + pid`.
/// Pids stay below 2^22, far from both neighbours.
const WORKER_FIRST: usize = usize::MAX / 4;
/// How often the pool is swept even when nothing happens.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Listen(#[from] listeners::ListenError),
    #[error("descriptor setup: {0}")]
    Descriptors(#[source] io::Error),
    #[error("signal setup: {0}")]
    Signals(#[source] nix::Error),
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
    #[error("statement-name key: {0}")]
    Random(#[from] RandomError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    /// Not accepting; exits once the last worker is gone.
    Graceful,
}

pub struct Supervisor {
    config: Config,
    segment: Segment,
    sockets: PooledSockets,
    poll: Poll,
    signals: signals::Signals,
    tcp: Vec<TcpListener>,
    /// The port actually listened on (differs from the configured one only
    /// when that is 0).
    port: u16,
    unix: Option<UnixListener>,
    unix_path: PathBuf,
    management: UnixListener,
    management_path: PathBuf,
    /// Remote management listener (`management` port), if configured.
    remote: Option<TcpListener>,
    connections: HashMap<Token, Connection>,
    next_connection: usize,
    /// Every child that serves or may serve a client: workers, idle ones
    /// included, and remote management helpers.
    workers: HashSet<i32>,
    spares: spares::Spares,
    mode: Mode,
    credentials: Credentials,
    statement_key: [u64; 2],
    upkeep: upkeep::Upkeep,
    admin: commands::Admin,
    reserve: fds::Reserve,
}

impl Supervisor {
    pub fn new(config: Config, credentials: Credentials) -> Result<Self, SupervisorError> {
        let statement_key = random_key()?;
        let main = &config.main;
        fds::raise_and_report(main);
        pooled_sockets::ensure_fd_limit(main.max_connections)
            .map_err(SupervisorError::Descriptors)?;
        let limit_sizes: Vec<u32> = config
            .limits
            .iter()
            .map(|l| l.max_size.min(u32::MAX as usize) as u32)
            .collect();
        let segment = Segment::create(main.max_connections, &limit_sizes)?;
        segment.switch_primary(config.primary_index());
        let mut sockets =
            PooledSockets::new(main.max_connections).map_err(SupervisorError::Descriptors)?;
        let signals = signals::Signals::new().map_err(SupervisorError::Signals)?;
        let poll = Poll::new().map_err(SupervisorError::Poll)?;

        let mut tcp = listeners::tcp(&main.host, main.port)?;
        // With `port = 0` the sockets are named after the port the kernel
        // chose, so clients find them under the number that is logged.
        let port = listeners::bound_port(&tcp).unwrap_or(main.port);
        let unix_path = listeners::unix_socket_path(&main.unix_socket_dir, port);
        let mut unix = listeners::unix(&unix_path)?;
        let management_path = management::socket_path(&main.unix_socket_dir, port);
        let mut management = listeners::unix(&management_path)?;

        sockets.set_watcher(poll.registry().try_clone().map_err(SupervisorError::Poll)?);
        let reg = poll.registry();
        let sig_fd = signals.raw_fd();
        reg.register(&mut SourceFd(&sig_fd), SIGNALS, Interest::READABLE)
            .map_err(SupervisorError::Poll)?;
        reg.register(&mut management, MANAGEMENT, Interest::READABLE)
            .map_err(SupervisorError::Poll)?;
        let mut remote = match main.management {
            0 => None,
            port => listeners::tcp(&main.host, port)?.into_iter().next(),
        };
        if let Some(l) = remote.as_mut() {
            reg.register(l, REMOTE, Interest::READABLE)
                .map_err(SupervisorError::Poll)?;
            if let Ok(a) = l.local_addr() {
                log::info!("remote management on {a}");
            }
        }
        reg.register(&mut unix, UNIX, Interest::READABLE)
            .map_err(SupervisorError::Poll)?;
        for (i, l) in tcp.iter_mut().enumerate() {
            reg.register(l, Token(TCP_FIRST + i), Interest::READABLE)
                .map_err(SupervisorError::Poll)?;
        }
        for l in &tcp {
            if let Ok(a) = l.local_addr() {
                log::info!("listening on {a}");
            }
        }
        log::info!("listening on {}", unix_path.display());
        let upkeep = upkeep::Upkeep::new(&config);
        let reserve = fds::Reserve::new().map_err(SupervisorError::Descriptors)?;
        Ok(Supervisor {
            config,
            segment,
            sockets,
            poll,
            signals,
            tcp,
            port,
            unix: Some(unix),
            unix_path,
            management,
            management_path,
            remote,
            connections: HashMap::new(),
            next_connection: CONNECTION_FIRST,
            workers: HashSet::new(),
            spares: spares::Spares::default(),
            mode: Mode::Running,
            credentials,
            statement_key,
            upkeep,
            admin: commands::Admin::new(),
            reserve,
        })
    }

    /// The TCP port clients connect to, once the listeners are up.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until shut down; returns the process exit status.
    pub fn run(mut self) -> i32 {
        let mut events = Events::with_capacity(128);
        let mut last_sweep = Instant::now();
        self.upkeep();
        self.tend_spares();
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("event loop: {e}");
                    self.shutdown_now();
                    return 1;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => {
                        for sig in self.signals.drain() {
                            if let Some(status) = self.on_signal(sig) {
                                return status;
                            }
                        }
                    }
                    MANAGEMENT => self.accept_management(),
                    REMOTE => self.accept_remote(),
                    UNIX => self.accept_unix(),
                    Token(t) if (TCP_FIRST..CONNECTION_FIRST).contains(&t) => {
                        self.accept_tcp(t - TCP_FIRST)
                    }
                    Token(t) if t >= WATCH_FIRST => self.on_pooled_readable(t - WATCH_FIRST),
                    Token(t) if t >= WORKER_FIRST => {
                        self.on_worker_readable((t - WORKER_FIRST) as i32)
                    }
                    token => self.on_management_readable(token),
                }
            }
            if last_sweep.elapsed() >= TICK {
                let main = &self.config.main;
                if let Some(old) =
                    crate::logging::rotate_if_due(main.log_rotation_size, main.log_rotation_age)
                {
                    log::info!("log rotated; the previous lines are in {}", old.display());
                    self.workers_outdated();
                }
                self.sweep();
                self.upkeep();
                self.watch_idle();
                self.admin_tick();
                if self.reserve.retry_due() {
                    self.accept_everywhere();
                }
                last_sweep = Instant::now();
            }
            self.tend_spares();
            if self.mode == Mode::Graceful && self.workers.is_empty() {
                log::info!("graceful shutdown: the last client left");
                self.close_pool();
                return 0;
            }
        }
    }

    fn on_signal(&mut self, sig: Signal) -> Option<i32> {
        match sig {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGALRM => {
                log::info!("{sig}: shutting down now");
                self.shutdown_now();
                return Some(0);
            }
            Signal::SIGTRAP => self.start_graceful(),
            Signal::SIGHUP => {
                // The outcome is logged; nobody waits for an answer.
                let _ = self.reload_config("SIGHUP");
            }
            other => log::debug!("{other} ignored"),
        }
        None
    }

    fn context(&self) -> Context<'_> {
        Context {
            config: &self.config,
            segment: &self.segment,
            sockets: &self.sockets,
            management_path: &self.management_path,
            credentials: &self.credentials,
            statement_key: self.statement_key,
        }
    }

    fn accept_tcp(&mut self, index: usize) {
        loop {
            let Some(listener) = self.tcp.get(index) else {
                return;
            };
            match self.reserve.accept("clients", || listener.accept()) {
                Accepted::Serve((stream, addr)) => {
                    self.spawn(stream.into(), Peer { addr: Some(addr) })
                }
                Accepted::Refuse((stream, _)) => refuse_client(stream.into()),
                Accepted::Done => return,
            }
        }
    }

    fn accept_remote(&mut self) {
        loop {
            let Some(listener) = &self.remote else {
                return;
            };
            let (stream, addr) = match self
                .reserve
                .accept("remote management", || listener.accept())
            {
                Accepted::Serve(c) => c,
                Accepted::Refuse((stream, _)) => {
                    refuse_client(stream.into());
                    continue;
                }
                Accepted::Done => return,
            };
            let peer = addr.to_string();
            if let Err(why) = fds::admit(&self.config.main, self.clients()) {
                log::warn!("remote management from {peer}: refused, {why}");
                refuse_client(stream.into());
                continue;
            }
            match spawn::spawn_admin(&self.context(), stream.into(), &peer) {
                Ok(pid) => {
                    self.workers.insert(pid);
                }
                Err(e) => log::error!("{peer}: cannot fork a management helper: {e}"),
            }
        }
    }

    /// Accepts on every listener again: after a shortage, connections may
    /// be waiting in a backlog for which no readiness will come.
    fn accept_everywhere(&mut self) {
        self.accept_management();
        self.accept_remote();
        self.accept_unix();
        for i in 0..self.tcp.len() {
            self.accept_tcp(i);
        }
    }

    fn accept_unix(&mut self) {
        loop {
            let Some(listener) = &self.unix else {
                return;
            };
            match self.reserve.accept("clients", || listener.accept()) {
                Accepted::Serve((stream, _)) => self.spawn(stream.into(), Peer { addr: None }),
                Accepted::Refuse((stream, _)) => refuse_client(stream.into()),
                Accepted::Done => return,
            }
        }
    }

    fn spawn(&mut self, client: OwnedFd, peer: Peer) {
        if let Err(why) = fds::admit(&self.config.main, self.clients()) {
            log::warn!("{peer}: refused, {why}");
            refuse_client(client);
            return;
        }
        self.hand_off(client, peer);
    }

    /// Stops accepting clients: the listeners close, so new connections are
    /// refused rather than left waiting in a backlog.
    fn close_listeners(&mut self) {
        for mut l in self.tcp.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.unix.take() {
            let _ = self.poll.registry().deregister(&mut l);
            let _ = std::fs::remove_file(&self.unix_path);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.management_path);
        if self.unix.is_some() {
            let _ = std::fs::remove_file(&self.unix_path);
        }
    }
}

/// A fresh key for the prepared-statement name hash. Without random
/// numbers the supervisor does not start: names a client could predict
/// would let it collide with another client's statements.
/// The answer to a client pgcorral cannot take now, as PostgreSQL gives it.
fn refuse_client(client: OwnedFd) {
    fds::refuse(client, fds::TOO_MANY, "sorry, too many clients already");
}

fn random_key() -> Result<[u64; 2], RandomError> {
    Ok([random::u64()?, random::u64()?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_key_is_random_or_start_up_fails() {
        let (a, b) = (random_key().unwrap(), random_key().unwrap());
        assert_ne!(a, b);
        let e = SupervisorError::from(random::failure());
        assert!(e
            .to_string()
            .starts_with("statement-name key: no random numbers available"));
    }
}
