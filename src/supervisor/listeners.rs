//! The client listeners: TCP on `host:port` and a Unix-domain socket
//! `.s.PGSQL.<port>` in `unix_socket_dir`, like PostgreSQL's own.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use mio::net::{TcpListener, UnixListener};

pub fn unix_socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot resolve listen address {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
}

/// Binds every address `host` resolves to. With `port` 0 the kernel picks a
/// port for the first address and the others are bound to that same port,
/// so one number names all of them (and the Unix socket named after it).
pub fn tcp(host: &str, port: u16) -> Result<Vec<TcpListener>, ListenError> {
    let addrs: Vec<SocketAddr> = if host == "*" {
        vec![SocketAddr::from(([0, 0, 0, 0], port))]
    } else {
        (host, port)
            .to_socket_addrs()
            .map_err(|source| ListenError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect()
    };
    let mut out: Vec<TcpListener> = Vec::new();
    let mut chosen = port;
    for mut a in addrs {
        a.set_port(chosen);
        let l = TcpListener::bind(a).map_err(|source| ListenError::Bind {
            addr: a.to_string(),
            source,
        })?;
        if chosen == 0 {
            chosen = l
                .local_addr()
                .map_err(|source| ListenError::Bind {
                    addr: a.to_string(),
                    source,
                })?
                .port();
        }
        out.push(l);
    }
    Ok(out)
}

/// The port the listeners are bound to: the configured one, or the one the
/// kernel chose when the configuration asked for port 0.
pub fn bound_port(listeners: &[TcpListener]) -> Option<u16> {
    listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
}

/// Binds a Unix-domain listener, replacing a stale socket file left by a
/// crashed process but never one a live server still answers on.
pub fn unix(path: &Path) -> Result<UnixListener, ListenError> {
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| ListenError::Bind {
        addr: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_address_the_same_chosen_port() {
        // "localhost" may resolve to 127.0.0.1 and ::1: both must share the
        // port the kernel picked for the first.
        let listeners = match tcp("localhost", 0) {
            Ok(l) => l,
            // A host without IPv6 cannot bind ::1; the single-address case
            // below still runs.
            Err(ListenError::Bind { .. }) => tcp("127.0.0.1", 0).expect("bind 127.0.0.1:0"),
            Err(e) => panic!("{e}"),
        };
        let port = bound_port(&listeners).expect("a bound port");
        assert_ne!(port, 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("local address").port(), port);
        }
    }
}
