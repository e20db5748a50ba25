//! PostgreSQL's md5 password scheme.
//!
//! The stored form is `"md5" + hex(md5(password ‖ user))`; for a 4-byte salt
//! the client answers `"md5" + hex(md5(hex(md5(password ‖ user)) ‖ salt))`.
//! Knowing the stored form is therefore as good as knowing the password,
//! which is why pgcorral keeps passwords encrypted in its vault and, in
//! pass-through, keeps only one response for one salt (see `doc/SECURITY.md`).

use openssl::hash::{hash, MessageDigest};
use zeroize::Zeroizing;

use super::constant_time_eq;

/// Length of `"md5"` followed by 32 hex digits: both the stored form and a
/// client's response.
pub const MD5_PASSWORD_LEN: usize = 35;

#[derive(Debug, thiserror::Error)]
pub enum Md5Error {
    /// OpenSSL refused to compute MD5 (a FIPS-only provider does).
    #[error("md5 is not available from openssl: {0}")]
    Unavailable(#[from] openssl::error::ErrorStack),
}

/// `"md5" + hex(md5(password ‖ user))`, the form PostgreSQL stores in
/// `pg_authid.rolpassword`. It logs in as well as the password does, so it
/// is wiped when dropped, like the password it was made from.
pub fn md5_password(user: &str, password: &[u8]) -> Result<Zeroizing<String>, Md5Error> {
    let mut input = Zeroizing::new(Vec::with_capacity(password.len() + user.len()));
    input.extend_from_slice(password);
    input.extend_from_slice(user.as_bytes());
    Ok(Zeroizing::new(prefixed_hex_md5(&input)?))
}

/// Whether `s` has the shape of a stored md5 password. PostgreSQL uses the
/// same test to decide that a password is already hashed.
pub fn is_md5_password(s: &[u8]) -> bool {
    s.len() == MD5_PASSWORD_LEN
        && s.starts_with(b"md5")
        && s[3..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The response a client holding `stored_md5_or_plain` (either a cleartext
/// password or its stored md5 form) sends for `salt`.
pub fn md5_response(
    stored_md5_or_plain: &[u8],
    user: &str,
    salt: &[u8; 4],
) -> Result<String, Md5Error> {
    let stored = if is_md5_password(stored_md5_or_plain) {
        // Already hashed: the bytes are ASCII by the check above.
        Zeroizing::new(String::from_utf8_lossy(stored_md5_or_plain).into_owned())
    } else {
        md5_password(user, stored_md5_or_plain)?
    };
    let mut input = Zeroizing::new(Vec::with_capacity(32 + 4));
    input.extend_from_slice(&stored.as_bytes()[3..]);
    input.extend_from_slice(salt);
    Ok(prefixed_hex_md5(&input)?)
}

/// Compares a client's response (the PasswordMessage payload, without its
/// NUL) with the expected one in constant time.
pub fn responses_match(expected: &[u8], given: &[u8]) -> bool {
    constant_time_eq(expected, given)
}

fn prefixed_hex_md5(input: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    let digest = hash(MessageDigest::md5(), input)?;
    let mut out = String::with_capacity(MD5_PASSWORD_LEN);
    out.push_str("md5");
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    // md5("secretpostgres"), as `echo -n secretpostgres | md5sum` prints it.
    const POSTGRES_SECRET: &str = "md553f48b7c4b76a86ce72276c5755f217d";

    #[test]
    fn stored_form_of_a_known_password() {
        assert_eq!(
            *md5_password("postgres", b"secret").unwrap(),
            POSTGRES_SECRET
        );
    }

    #[test]
    fn stored_form_matches_postgresql() {
        // What PostgreSQL 16 stored for `CREATE ROLE bob PASSWORD 'secret'`
        // with `password_encryption = 'md5'`.
        assert_eq!(
            *md5_password("bob", b"secret").unwrap(),
            "md521f3163f8f86fa10bdefbfbd502a8f06"
        );
    }

    #[test]
    fn response_from_plain_and_from_stored_agree() {
        let salt = [0x01, 0x02, 0x03, 0x04];
        let from_plain = md5_response(b"secret", "postgres", &salt).unwrap();
        let from_stored = md5_response(POSTGRES_SECRET.as_bytes(), "postgres", &salt).unwrap();
        assert_eq!(from_plain, from_stored);
        assert!(is_md5_password(from_plain.as_bytes()));

        // Independently: md5(hex ‖ salt), computed the long way.
        let mut input = POSTGRES_SECRET.as_bytes()[3..].to_vec();
        input.extend_from_slice(&salt);
        assert_eq!(from_plain, prefixed_hex_md5(&input).unwrap());
    }

    #[test]
    fn response_depends_on_salt_user_and_password() {
        let a = md5_response(b"secret", "postgres", &[1, 2, 3, 4]).unwrap();
        assert_ne!(
            a,
            md5_response(b"secret", "postgres", &[1, 2, 3, 5]).unwrap()
        );
        assert_ne!(
            a,
            md5_response(b"secret", "postgre", &[1, 2, 3, 4]).unwrap()
        );
        assert_ne!(
            a,
            md5_response(b"secreT", "postgres", &[1, 2, 3, 4]).unwrap()
        );
    }

    #[test]
    fn md5_shape() {
        assert!(is_md5_password(POSTGRES_SECRET.as_bytes()));
        assert!(!is_md5_password(b"md553f48b7c4b76a86ce72276c5755f217D"));
        assert!(!is_md5_password(b"md553f48b7c4b76a86ce72276c5755f217"));
        assert!(!is_md5_password(b"xyz53f48b7c4b76a86ce72276c5755f217d"));
        assert!(!is_md5_password(b"secret"));
    }

    #[test]
    fn responses_match_is_exact() {
        let r = md5_response(b"secret", "postgres", &[9, 9, 9, 9]).unwrap();
        assert!(responses_match(r.as_bytes(), r.as_bytes()));
        let wrong = md5_response(b"wrong", "postgres", &[9, 9, 9, 9]).unwrap();
        assert!(!responses_match(r.as_bytes(), wrong.as_bytes()));
        assert!(!responses_match(r.as_bytes(), &r.as_bytes()[..34]));
        assert!(!responses_match(r.as_bytes(), b""));
    }
}
