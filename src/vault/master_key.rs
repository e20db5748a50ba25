//! The master key: 32 random bytes, base64 on one line, in a file that only
//! its owner may read or write (like pgagroal's `~/.pgagroal/master.key`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::VaultError;
use crate::random;

/// AES-256 key length.
pub const KEY_LEN: usize = 32;
/// Directory under `$HOME` and file name of the default key.
pub const DEFAULT_DIR: &str = ".pgcorral";
pub const DEFAULT_FILE: &str = "master.key";
/// A key file is one base64 line (44 characters); anything much larger is
/// not a key file.
const MAX_FILE_LEN: u64 = 1024;

/// The master key. `Debug` does not show it; its memory is wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut key = MasterKey([0u8; KEY_LEN]);
        random::fill(&mut key.0)?;
        Ok(key)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// `$HOME/.pgcorral/master.key`.
pub fn default_path() -> Result<PathBuf, VaultError> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => {
            Ok(PathBuf::from(home).join(DEFAULT_DIR).join(DEFAULT_FILE))
        }
        _ => Err(VaultError::NoHome),
    }
}

/// Creates a new key file at `path` with mode 0600 (its directory, if
/// missing, with 0700). An existing file is an error unless `force`, in
/// which case it is replaced atomically — and every users file encrypted
/// with the old key becomes unreadable.
pub fn create(path: &Path, force: bool) -> Result<MasterKey, VaultError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| VaultError::io("create directory", dir, e))?;
        }
    }
    let key = MasterKey::generate()?;
    let mut text = Zeroizing::new(B64.encode(key.as_bytes()).into_bytes());
    text.push(b'\n');
    if force {
        write_replacing(path, &text)?;
    } else {
        write_new(path, &text)?;
    }
    Ok(key)
}

fn write_new(path: &Path, text: &[u8]) -> Result<(), VaultError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => VaultError::Exists {
                path: path.to_owned(),
            },
            _ => VaultError::io("create", path, e),
        })?;
    f.write_all(text)
        .and_then(|()| f.sync_all())
        .map_err(|e| VaultError::io("write", path, e))
}

fn write_replacing(path: &Path, text: &[u8]) -> Result<(), VaultError> {
    super::users::write_atomically(path, text)
}

/// Reads the key at `path`, refusing a file that group or others could
/// read or write, or that belongs to someone else (other than root): such a
/// key may have been read, or planted.
pub fn load(path: &Path) -> Result<MasterKey, VaultError> {
    let file = File::open(path).map_err(|e| VaultError::io("open", path, e))?;
    // Checked on the open file, so the file judged is the file read.
    let meta = file
        .metadata()
        .map_err(|e| VaultError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(VaultError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(VaultError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mut text = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(|e| VaultError::io("read", path, e))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &[u8]) -> Result<MasterKey, VaultError> {
    let invalid = |reason| VaultError::InvalidKey {
        path: path.to_owned(),
        reason,
    };
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(invalid("file too large"));
    }
    let decoded = Zeroizing::new(
        B64.decode(text.trim_ascii())
            .map_err(|_| invalid("not base64"))?,
    );
    <[u8; KEY_LEN]>::try_from(decoded.as_slice())
        .map(MasterKey)
        .map_err(|_| invalid("not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn create_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("master.key");
        let key = create(&path, false).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 45, "44 base64 characters and a newline");
        assert_eq!(load(&path).unwrap().as_bytes(), key.as_bytes());
    }

    #[test]
    fn create_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = create(&path, false).unwrap();
        let e = create(&path, false).unwrap_err();
        assert!(matches!(e, VaultError::Exists { .. }), "{e}");
        assert_eq!(load(&path).unwrap().as_bytes(), first.as_bytes());
        let second = create(&path, true).unwrap();
        assert_ne!(first.as_bytes(), second.as_bytes());
        assert_eq!(load(&path).unwrap().as_bytes(), second.as_bytes());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        create(&path, false).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o601, 0o610] {
            chmod(&path, mode);
            let e = load(&path).unwrap_err();
            assert!(
                matches!(e, VaultError::Permissions { mode: m, .. } if m == mode),
                "{mode:o}: {e}"
            );
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
        }
        for mode in [0o600, 0o400] {
            chmod(&path, mode);
            load(&path).unwrap();
        }
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        for bad in [&b""[..], b"not base64!\n", b"AAAA\n", &[b'A'; 2000]] {
            fs::write(&path, bad).unwrap();
            chmod(&path, 0o600);
            assert!(
                matches!(load(&path), Err(VaultError::InvalidKey { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(VaultError::Io { .. })
        ));
        chmod(dir.path(), 0o700);
        assert!(matches!(load(dir.path()), Err(VaultError::NotAFile { .. })));
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let k = MasterKey::from_bytes([7; KEY_LEN]);
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
