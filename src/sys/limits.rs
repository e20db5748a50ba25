//! The descriptor limit.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use super::os;

/// `RLIMIT_NOFILE` as (soft, hard).
pub fn nofile() -> io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(os)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one, the most an
/// unprivileged process may have; returns (soft, hard) as they are after.
/// Workers inherit the raised limit with the fork.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(os)?;
    }
    nofile()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (soft, hard) = raise_nofile().unwrap();
        assert_eq!(soft, hard);
    }
}
