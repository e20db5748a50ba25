//! The users file: one `username:base64(nonce ‖ ciphertext ‖ tag)` line per
//! user, each password sealed with AES-256-GCM under the master key, with a
//! fresh 12-byte nonce per entry and the user name as associated data (so a
//! line moved to another user name fails to decrypt instead of handing that
//! user someone else's password). Blank lines and `#` comments are allowed
//! when reading; saving writes entries only, sorted by name.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

use zeroize::Zeroizing;

use super::{MasterKey, VaultError};
use crate::random;

/// GCM nonce length (the size GCM is designed for).
pub const NONCE_LEN: usize = 12;
/// GCM authentication tag length.
pub const TAG_LEN: usize = 16;
/// PostgreSQL truncates role names to 63 bytes (NAMEDATALEN - 1); a longer
/// name could never match a client's.
pub const MAX_USER_LEN: usize = 63;
/// Longest password kept (pgagroal's limit too).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Biggest users file read.
pub const MAX_FILE_LEN: u64 = 8 * 1024 * 1024;

struct Entry {
    password: Zeroizing<String>,
    /// The line's sealed form, kept so that saving leaves untouched entries
    /// byte-for-byte as they were.
    sealed: String,
}

/// The decrypted contents of a users file, and the key to re-seal with.
pub struct Users {
    key: MasterKey,
    entries: BTreeMap<String, Entry>,
}

impl Users {
    /// An empty set of users that will be sealed under `key`.
    pub fn new(key: &MasterKey) -> Self {
        Users {
            key: key.clone(),
            entries: BTreeMap::new(),
        }
    }

    /// Reads and decrypts `path`. Every entry is decrypted now, so a wrong
    /// key is reported here (naming the line), never later as a wrong
    /// password.
    pub fn load(path: &Path, key: &MasterKey) -> Result<Self, VaultError> {
        let file = File::open(path).map_err(|e| VaultError::io("open", path, e))?;
        Self::read_from(file, path, key)
    }

    /// Like [`Users::load`], but a missing file is an empty set (for the
    /// first `user add`).
    pub fn load_or_new(path: &Path, key: &MasterKey) -> Result<Self, VaultError> {
        match File::open(path) {
            Ok(file) => Self::read_from(file, path, key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new(key)),
            Err(e) => Err(VaultError::io("open", path, e)),
        }
    }

    fn read_from(file: File, path: &Path, key: &MasterKey) -> Result<Self, VaultError> {
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| VaultError::io("read", path, e))?;
        if text.len() as u64 > MAX_FILE_LEN {
            return Err(VaultError::TooLarge {
                path: path.to_owned(),
                max: MAX_FILE_LEN,
            });
        }
        let mut users = Users::new(key);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let syntax = |message: String| VaultError::Syntax {
                path: path.to_owned(),
                line,
                message,
            };
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.trim().is_empty() || raw.starts_with('#') {
                continue;
            }
            // Base64 has no ':', so the last one separates; a ':' in a role
            // name (possible when quoted in SQL) then still works.
            let (user, sealed) = raw
                .rsplit_once(':')
                .ok_or_else(|| syntax("expected username:encrypted-password".into()))?;
            check_user(user).map_err(|e| syntax(e.to_string()))?;
            if users.entries.contains_key(user) {
                return Err(syntax(format!("user \"{user}\" appears twice")));
            }
            let password = open(key, user, sealed).map_err(|f| match f {
                OpenFailure::Format(m) => syntax(m.into()),
                OpenFailure::Crypto(source) => VaultError::Decrypt {
                    path: path.to_owned(),
                    line,
                    user: user.to_owned(),
                    source,
                },
            })?;
            users.entries.insert(
                user.to_owned(),
                Entry {
                    password,
                    sealed: sealed.to_owned(),
                },
            );
        }
        Ok(users)
    }

    /// Writes all entries to `path` with mode 0600, atomically: a new file
    /// is written and synced beside it, then renamed over it, so a crash
    /// leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), VaultError> {
        let mut text = String::new();
        for (user, e) in &self.entries {
            text.push_str(user);
            text.push(':');
            text.push_str(&e.sealed);
            text.push('\n');
        }
        write_atomically(path, text.as_bytes())
    }

    pub fn add(&mut self, user: &str, password: &str) -> Result<(), VaultError> {
        if self.entries.contains_key(user) {
            return Err(VaultError::UserExists(user.to_owned()));
        }
        self.set(user, password)
    }

    pub fn edit(&mut self, user: &str, password: &str) -> Result<(), VaultError> {
        if !self.entries.contains_key(user) {
            return Err(VaultError::NoSuchUser(user.to_owned()));
        }
        self.set(user, password)
    }

    pub fn remove(&mut self, user: &str) -> Result<(), VaultError> {
        self.entries
            .remove(user)
            .map(drop)
            .ok_or_else(|| VaultError::NoSuchUser(user.to_owned()))
    }

    /// User names, sorted.
    pub fn list(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    pub fn password(&self, user: &str) -> Option<&str> {
        self.entries.get(user).map(|e| e.password.as_str())
    }

    pub fn contains(&self, user: &str) -> bool {
        self.entries.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn set(&mut self, user: &str, password: &str) -> Result<(), VaultError> {
        check_user(user)?;
        check_password(password)?;
        let sealed = seal(&self.key, user, password)?;
        self.entries.insert(
            user.to_owned(),
            Entry {
                password: Zeroizing::new(password.to_owned()),
                sealed,
            },
        );
        Ok(())
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.list())
            .finish_non_exhaustive()
    }
}

fn check_user(user: &str) -> Result<(), VaultError> {
    if user.is_empty() {
        return Err(VaultError::InvalidUser("empty"));
    }
    if user.len() > MAX_USER_LEN {
        return Err(VaultError::InvalidUser("longer than 63 bytes"));
    }
    if user.chars().any(char::is_control) {
        return Err(VaultError::InvalidUser("contains a control character"));
    }
    if user.starts_with('#') || user.starts_with(char::is_whitespace) {
        return Err(VaultError::InvalidUser(
            "starts with '#' or a space, which the file format reserves",
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), VaultError> {
    if password.is_empty() {
        return Err(VaultError::InvalidPassword("empty"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(VaultError::InvalidPassword("longer than 1024 bytes"));
    }
    // The protocol carries passwords as NUL-terminated strings.
    if password.contains('\0') {
        return Err(VaultError::InvalidPassword("contains a NUL byte"));
    }
    Ok(())
}

/// `base64(nonce ‖ ciphertext ‖ tag)`, the user name as associated data.
fn seal(key: &MasterKey, user: &str, password: &str) -> Result<String, VaultError> {
    let nonce: [u8; NONCE_LEN] = random::bytes()?;
    let mut tag = [0u8; TAG_LEN];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        key.as_bytes(),
        Some(&nonce),
        user.as_bytes(),
        password.as_bytes(),
        &mut tag,
    )?;
    let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len() + TAG_LEN);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    blob.extend_from_slice(&tag);
    Ok(B64.encode(blob))
}

enum OpenFailure {
    Format(&'static str),
    Crypto(openssl::error::ErrorStack),
}

fn open(key: &MasterKey, user: &str, sealed: &str) -> Result<Zeroizing<String>, OpenFailure> {
    let blob = B64
        .decode(sealed.trim_end())
        .map_err(|_| OpenFailure::Format("encrypted password is not base64"))?;
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenFailure::Format("encrypted password is too short"));
    }
    if blob.len() > NONCE_LEN + TAG_LEN + MAX_PASSWORD_LEN {
        return Err(OpenFailure::Format("encrypted password is too long"));
    }
    let (nonce, rest) = blob.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let plain = decrypt_aead(
        Cipher::aes_256_gcm(),
        key.as_bytes(),
        Some(nonce),
        user.as_bytes(),
        ciphertext,
        tag,
    )
    .map_err(OpenFailure::Crypto)?;
    match String::from_utf8(plain) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            // Authenticated, so written by a tool other than ours; the
            // bytes are still secret.
            drop(Zeroizing::new(e.into_bytes()));
            Err(OpenFailure::Format("decrypted password is not UTF-8"))
        }
    }
}

/// Writes `data` to a new file beside `path` (mode 0600, synced) and renames
/// it over `path`, then syncs the directory so the rename itself survives a
/// crash. Readers see the old file or the new one, never a partial one.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<(), VaultError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| VaultError::io("write", path, std::io::ErrorKind::InvalidInput.into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    // A leftover from a crashed run with the same pid would block
    // create_new; it is ours to remove.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(VaultError::io("write", path, e));
    }
    // Some file systems cannot sync a directory; the data itself is synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key(1);
        for pw in ["secret", "pässwörd ✓", &"x".repeat(MAX_PASSWORD_LEN)] {
            let sealed = seal(&k, "alice", pw).unwrap();
            assert_eq!(open(&k, "alice", &sealed).ok().unwrap().as_str(), pw);
            let blob = B64.decode(&sealed).unwrap();
            assert_eq!(blob.len(), NONCE_LEN + pw.len() + TAG_LEN);
        }
    }

    #[test]
    fn two_encryptions_of_one_password_differ() {
        let k = key(1);
        let a = seal(&k, "alice", "secret").unwrap();
        let b = seal(&k, "alice", "secret").unwrap();
        assert_ne!(a, b);
        assert_ne!(
            B64.decode(&a).unwrap()[..NONCE_LEN],
            B64.decode(&b).unwrap()[..NONCE_LEN]
        );
    }

    #[test]
    fn wrong_key_moved_line_and_tampering_fail() {
        let sealed = seal(&key(1), "alice", "secret").unwrap();
        assert!(matches!(
            open(&key(2), "alice", &sealed),
            Err(OpenFailure::Crypto(_))
        ));
        assert!(matches!(
            open(&key(1), "bob", &sealed),
            Err(OpenFailure::Crypto(_))
        ));
        let mut blob = B64.decode(&sealed).unwrap();
        blob[NONCE_LEN] ^= 1;
        assert!(matches!(
            open(&key(1), "alice", &B64.encode(&blob)),
            Err(OpenFailure::Crypto(_))
        ));
        assert!(matches!(
            open(&key(1), "alice", "AAAA"),
            Err(OpenFailure::Format(_))
        ));
        assert!(matches!(
            open(&key(1), "alice", "!!"),
            Err(OpenFailure::Format(_))
        ));
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        let k = key(3);
        let mut users = Users::new(&k);
        users.add("bob", "b-pass").unwrap();
        users.add("alice", "a-pass").unwrap();
        users.add("odd:name", "o-pass").unwrap();
        users.save(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        let loaded = Users::load(&path, &k).unwrap();
        assert_eq!(loaded.list(), ["alice", "bob", "odd:name"]);
        assert_eq!(loaded.password("alice"), Some("a-pass"));
        assert_eq!(loaded.password("odd:name"), Some("o-pass"));
        assert_eq!(loaded.password("carol"), None);

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(!text.contains("a-pass"));
        assert!(text.lines().all(|l| l.contains(':')));
    }

    #[test]
    fn add_edit_remove() {
        let mut users = Users::new(&key(4));
        users.add("alice", "one").unwrap();
        assert!(matches!(
            users.add("alice", "two"),
            Err(VaultError::UserExists(_))
        ));
        users.edit("alice", "two").unwrap();
        assert_eq!(users.password("alice"), Some("two"));
        assert!(matches!(
            users.edit("bob", "x"),
            Err(VaultError::NoSuchUser(_))
        ));
        users.remove("alice").unwrap();
        assert!(users.is_empty());
        assert!(matches!(
            users.remove("alice"),
            Err(VaultError::NoSuchUser(_))
        ));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        let mut users = Users::new(&key(4));
        for bad in ["", "#x", " x", "a\nb", &"u".repeat(64)] {
            assert!(
                matches!(users.add(bad, "pw"), Err(VaultError::InvalidUser(_))),
                "{bad:?}"
            );
        }
        users.add(&"u".repeat(63), "pw").unwrap();
        for bad in ["", "a\0b", &"p".repeat(MAX_PASSWORD_LEN + 1)] {
            assert!(matches!(
                users.add("x", bad),
                Err(VaultError::InvalidPassword(_))
            ));
        }
    }

    #[test]
    fn wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        let mut users = Users::new(&key(5));
        users.add("alice", "secret").unwrap();
        users.save(&path).unwrap();
        let e = Users::load(&path, &key(6)).unwrap_err();
        assert!(matches!(&e, VaultError::Decrypt { line: 1, user, .. } if user == "alice"));
        let text = e.to_string();
        assert!(text.contains("users.conf:1"), "{text}");
        assert!(text.contains("wrong master key"), "{text}");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        let k = key(7);
        let good = format!("alice:{}", seal(&k, "alice", "pw").unwrap());
        for (text, line) in [
            (format!("# comment\n\n{good}\nno separator\n"), 4),
            (format!("{good}\n{good}\n"), 2),
            ("bob:!!notbase64\n".to_string(), 1),
            (":AAAA\n".to_string(), 1),
        ] {
            fs::write(&path, text).unwrap();
            match Users::load(&path, &k) {
                Err(VaultError::Syntax { line: l, .. }) => assert_eq!(l, line),
                other => panic!("{other:?}"),
            }
        }
        fs::write(&path, format!("# comment\r\n\r\n{good}\r\n")).unwrap();
        assert_eq!(Users::load(&path, &k).unwrap().list(), ["alice"]);
    }

    #[test]
    fn load_or_new_starts_empty_only_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        assert!(Users::load_or_new(&path, &key(8)).unwrap().is_empty());
        assert!(matches!(
            Users::load(&path, &key(8)),
            Err(VaultError::Io { .. })
        ));
    }

    #[test]
    fn save_is_atomic_and_keeps_untouched_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.conf");
        let k = key(9);
        let mut users = Users::new(&k);
        users.add("alice", "a").unwrap();
        users.add("bob", "b").unwrap();
        users.save(&path).unwrap();
        // A loose mode on the old file does not carry over.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let alice_line = before.lines().next().unwrap().to_owned();

        // A reader holding the old file keeps seeing the old contents: the
        // new file replaced it by rename, it was not rewritten in place.
        let mut old_reader = File::open(&path).unwrap();
        let old_inode = fs::metadata(&path).unwrap().ino();
        let mut users = Users::load(&path, &k).unwrap();
        users.edit("bob", "b2").unwrap();
        users.add("carol", "c").unwrap();
        users.save(&path).unwrap();

        let mut seen = String::new();
        old_reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, before);
        let meta = fs::metadata(&path).unwrap();
        assert_ne!(meta.ino(), old_inode);
        assert_eq!(meta.mode() & 0o777, 0o600);
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after.lines().next().unwrap(),
            alice_line,
            "untouched entry kept"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(Users::load(&path, &k).unwrap().password("bob"), Some("b2"));

        // A failed save leaves the old file alone.
        let missing_dir = dir.path().join("nope").join("users.conf");
        assert!(matches!(
            users.save(&missing_dir),
            Err(VaultError::Io { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), after);
    }

    #[test]
    fn debug_shows_names_not_passwords() {
        let mut users = Users::new(&key(1));
        users.add("alice", "hunter2").unwrap();
        let d = format!("{users:?}");
        assert!(d.contains("alice") && !d.contains("hunter2"));
    }
}
