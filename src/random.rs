//! The one source of random numbers: cancel secrets, SCRAM nonces and
//! salts, MD5 salts, vault keys and nonces, the statement-name key. All of
//! them come from the kernel (getrandom(2)), and a failure is an error for
//! the caller: nothing falls back to something guessable such as the time
//! or the pid, because a predictable cancel secret or nonce is a hole, not
//! a degraded mode.
//!
//! Not OpenSSL's generator: every worker draws a cancel secret right after
//! it is forked, and OpenSSL answers a fork by setting up its generator
//! again, which measured a third more page faults and CPU per client
//! connection than the system call.

/// The kernel could not produce random bytes (its pool not yet
/// initialised, or the call refused).
#[derive(Debug, thiserror::Error)]
#[error("no random numbers available: {0}")]
pub struct RandomError(#[source] getrandom::Error);

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    fill_from(buf, getrandom::fill)
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}

/// A random `u64`.
pub fn u64() -> Result<u64, RandomError> {
    bytes().map(u64::from_ne_bytes)
}

/// A random `i32` other than zero (zero marks "none" in cancel keys).
pub fn nonzero_i32() -> Result<i32, RandomError> {
    nonzero_i32_from(getrandom::fill)
}

/// A failure as the source would report it, for callers' tests.
#[cfg(test)]
pub(crate) fn failure() -> RandomError {
    RandomError(getrandom::Error::UNSUPPORTED)
}

fn fill_from(
    buf: &mut [u8],
    source: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<(), RandomError> {
    source(buf).map_err(RandomError)
}

fn nonzero_i32_from(
    mut source: impl FnMut(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<i32, RandomError> {
    loop {
        let mut b = [0u8; 4];
        fill_from(&mut b, &mut source)?;
        let v = i32::from_ne_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn outputs_differ() {
        let keys: HashSet<[u8; 16]> = (0..64).map(|_| bytes().unwrap()).collect();
        assert_eq!(keys.len(), 64);
        let ints: HashSet<i32> = (0..64).map(|_| nonzero_i32().unwrap()).collect();
        assert!(ints.len() > 60, "{} distinct of 64", ints.len());
        assert!(!ints.contains(&0));
        assert_ne!(u64().unwrap(), u64().unwrap());
    }

    #[test]
    fn a_failing_source_is_an_error_and_leaves_no_guess() {
        let mut buf = [0u8; 8];
        let failing = |_: &mut [u8]| Err(getrandom::Error::UNSUPPORTED);
        let err = fill_from(&mut buf, failing).unwrap_err();
        assert!(err.to_string().starts_with("no random numbers available"));
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(buf, [0u8; 8]);
        assert!(nonzero_i32_from(failing).is_err());
    }

    #[test]
    fn zero_is_never_a_secret() {
        // A source that gives zero first must be asked again.
        let mut calls = 0;
        let v = nonzero_i32_from(|b: &mut [u8]| {
            calls += 1;
            b.fill(if calls == 1 { 0 } else { 7 });
            Ok(())
        })
        .unwrap();
        assert_eq!(v, i32::from_ne_bytes([7; 4]));
        assert_eq!(calls, 2);
    }
}
