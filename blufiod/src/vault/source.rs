//! Where the key-encryption key comes from, tried in order, and the checks each source must
//! pass before its secret is used:
//!
//! 1. a systemd credential, `$CREDENTIALS_DIRECTORY/vault-key` (`LoadCredential=` or
//!    `LoadCredentialEncrypted=`, which binds it to the TPM or the host key);
//! 2. a key file named by `vault.key_file` (0600 or 0400, owned by the daemon's user);
//! 3. a passphrase from `BLUFIO_VAULT_PASSPHRASE`, else from `vault.passphrase_file` (same file
//!    rules), stretched with Argon2id;
//! 4. the generated key file `<state>/vault.key`, which sits beside the data it protects and is
//!    warned about at startup and by the health registry.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::VaultError;
use crate::util::{FileMode, write_atomically};

/// The credential's name under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "vault-key";
/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "BLUFIO_VAULT_PASSPHRASE";
/// The generated key file's name in the state directory.
pub const GENERATED_FILE_NAME: &str = "vault.key";
/// Shortest key material: 32 bytes (a 64-character hex key is 64).
pub const MIN_KEY_BYTES: usize = 32;
/// Longest key or passphrase, from a file or given to a rekey.
pub const MAX_KEY_BYTES: usize = 4096;
/// Shortest passphrase.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The kind of a key source, stored with each slot ("what sealed this").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A systemd credential.
    Credential,
    /// `vault.key_file`.
    KeyFile,
    /// A passphrase.
    Passphrase,
    /// `<state>/vault.key`.
    Generated,
}

impl SourceKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Credential => "credential",
            Self::KeyFile => "key-file",
            Self::Passphrase => "passphrase",
            Self::Generated => "generated",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Credential, Self::KeyFile, Self::Passphrase, Self::Generated]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Whether its secret is a passphrase (Argon2id) rather than key material (HKDF).
    pub fn is_passphrase(self) -> bool {
        self == Self::Passphrase
    }

    /// How an owner supplies this kind, for errors about a vault it sealed.
    pub fn how_to_supply(self) -> &'static str {
        match self {
            Self::Credential => {
                "the systemd credential `vault-key` (LoadCredential= or LoadCredentialEncrypted= in the unit)"
            }
            Self::KeyFile => "the key file named by vault.key_file",
            Self::Passphrase => "the passphrase, in BLUFIO_VAULT_PASSPHRASE or the file named by vault.passphrase_file",
            Self::Generated => "the generated key file vault.key in the state directory",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The source in effect and where exactly it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// Its kind.
    pub kind: SourceKind,
    /// The file it is read from, or `None` for the environment variable.
    pub path: Option<PathBuf>,
    /// Whether that file is in the state directory, beside the data it protects (a copy of the
    /// directory is then a copy of the secrets).
    pub beside_data: bool,
}

impl KeySource {
    /// A source of `kind` read from `path`.
    pub fn new(kind: SourceKind, path: Option<PathBuf>, state_dir: &Path) -> Self {
        let beside_data = path.as_deref().is_some_and(|path| path.starts_with(state_dir));
        Self {
            kind,
            path,
            beside_data,
        }
    }

    /// For status and errors: the kind and where.
    pub fn describe(&self) -> String {
        let text = match (&self.path, self.kind) {
            (None, _) => format!("passphrase from {PASSPHRASE_ENV}"),
            (Some(path), SourceKind::Credential) => format!("systemd credential {}", path.display()),
            (Some(path), SourceKind::KeyFile) => format!("key file {} (vault.key_file)", path.display()),
            (Some(path), SourceKind::Passphrase) => {
                format!("passphrase file {} (vault.passphrase_file)", path.display())
            }
            (Some(path), SourceKind::Generated) => format!("generated key file {}", path.display()),
        };
        if self.beside_data {
            format!("{text} (beside the data it protects)")
        } else {
            text
        }
    }
}

/// What the daemon looks at to choose a source.
#[derive(Debug, Clone, Default)]
pub struct SourceInputs {
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials_directory: Option<PathBuf>,
    /// `vault.key_file`.
    pub key_file: Option<PathBuf>,
    /// `BLUFIO_VAULT_PASSPHRASE`, when set and non-empty.
    pub passphrase: Option<Zeroizing<String>>,
    /// `vault.passphrase_file`.
    pub passphrase_file: Option<PathBuf>,
    /// The state directory (for the generated key file).
    pub state_dir: PathBuf,
    /// The daemon's effective uid, which must own key files.
    pub euid: u32,
}

/// A chosen source with its secret read.
pub struct Loaded {
    /// Where it came from.
    pub source: KeySource,
    /// The key material or passphrase bytes.
    pub secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Loaded")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SourceInputs {
    /// The generated key file's path.
    pub fn generated_path(&self) -> PathBuf {
        self.state_dir.join(GENERATED_FILE_NAME)
    }

    /// Chooses the first source present and reads its secret. `Ok(None)` when none is present
    /// (the generated key file does not exist either): the caller makes one for a new vault only.
    pub fn load(&self) -> Result<Option<Loaded>, VaultError> {
        let source = |kind, path| KeySource::new(kind, path, &self.state_dir);
        if let Some(dir) = &self.credentials_directory {
            let path = dir.join(CREDENTIAL_NAME);
            if path.exists() {
                // systemd makes the file readable by the service only; its owner is the service's
                // user or root, so only the size and type are checked.
                let secret = read_key(&path, None)?;
                return material(source(SourceKind::Credential, Some(path)), secret).map(Some);
            }
        }
        if let Some(path) = &self.key_file {
            let secret = read_key(path, Some(self.euid))?;
            return material(source(SourceKind::KeyFile, Some(path.clone())), secret).map(Some);
        }
        if let Some(passphrase) = &self.passphrase {
            // Trailing whitespace is never part of a passphrase, wherever it comes from.
            let secret = Zeroizing::new(passphrase.trim_end().as_bytes().to_vec());
            return passphrase_of(source(SourceKind::Passphrase, None), secret).map(Some);
        }
        if let Some(path) = &self.passphrase_file {
            let secret = read_key(path, Some(self.euid))?;
            return passphrase_of(source(SourceKind::Passphrase, Some(path.clone())), secret).map(Some);
        }
        let path = self.generated_path();
        match std::fs::symlink_metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => {
                let secret = read_key(&path, Some(self.euid))?;
                material(source(SourceKind::Generated, Some(path)), secret).map(Some)
            }
        }
    }
}

/// New random key material: 32 random bytes as 64 hex characters (a file an owner can copy).
pub fn generate_key() -> Zeroizing<Vec<u8>> {
    let random: Zeroizing<[u8; 32]> = Zeroizing::new(super::crypto::random());
    let mut text = Zeroizing::new(Vec::with_capacity(64));
    for byte in random.iter() {
        text.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    text
}

/// Writes key material to `path` (0600, or the 0400 of the file it replaces), atomically: a
/// reader sees the old key or the new one, never a mix. `path` may not be a symbolic link, and its
/// directory may be written only by root and blufiod's user (`owner`): nobody else can then put a
/// link there between this check and the rename.
pub fn write_key(path: &Path, material: &[u8], owner: u32) -> Result<(), VaultError> {
    let refuse = |problem: String| VaultError::KeySource {
        tried: path.display().to_string(),
        problem,
    };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(refuse(
                "it is a symbolic link; the new key is not written through it".to_owned(),
            ));
        }
        Ok(metadata) if !metadata.is_file() => return Err(refuse("it is not a regular file".to_owned())),
        _ => {}
    }
    check_directory(path, owner).map_err(refuse)?;
    let mut text = Zeroizing::new(Vec::with_capacity(material.len() + 1));
    text.extend_from_slice(material);
    text.push(b'\n');
    write_atomically(path, &text, FileMode::KeepOr(0o600)).map_err(|source| VaultError::WriteKey {
        path: path.to_owned(),
        source,
    })
}

fn material(source: KeySource, secret: Zeroizing<Vec<u8>>) -> Result<Loaded, VaultError> {
    if secret.len() < MIN_KEY_BYTES {
        return Err(VaultError::KeySource {
            tried: source.describe(),
            problem: format!(
                "it holds {} bytes of key, fewer than {MIN_KEY_BYTES}; make a key with `openssl rand -hex 32 > FILE`",
                secret.len()
            ),
        });
    }
    Ok(Loaded { source, secret })
}

fn passphrase_of(source: KeySource, secret: Zeroizing<Vec<u8>>) -> Result<Loaded, VaultError> {
    let chars = String::from_utf8_lossy(&secret).chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(VaultError::KeySource {
            tried: source.describe(),
            problem: format!("a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters, this one has {chars}"),
        });
    }
    Ok(Loaded { source, secret })
}

/// Reads a key or passphrase file: a regular file (no symlink), at most 4 KiB, and when
/// `owner` is given, owned by that uid with mode 0600 or 0400. Trailing whitespace (the newline
/// an editor or `echo` adds) is not part of the key.
fn read_key(path: &Path, owner: Option<u32>) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let refuse = |problem: String| VaultError::KeySource {
        tried: path.display().to_string(),
        problem,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| {
            refuse(if error.raw_os_error() == Some(libc::ELOOP) {
                "it is a symbolic link; name the file itself".to_owned()
            } else {
                format!("cannot open it: {error}")
            })
        })?;
    let metadata = file
        .metadata()
        .map_err(|error| refuse(format!("cannot stat it: {error}")))?;
    if !metadata.is_file() {
        return Err(refuse("it is not a regular file".to_owned()));
    }
    if let Some(uid) = owner {
        check_directory(path, uid).map_err(refuse)?;
        let mode = metadata.mode() & 0o7777;
        if metadata.uid() != uid {
            return Err(refuse(format!(
                "it is owned by uid {}, not by blufiod's user (uid {uid}); `chown` it to that user",
                metadata.uid()
            )));
        }
        if mode != 0o600 && mode != 0o400 {
            return Err(refuse(format!(
                "its mode is {mode:04o}; a key file must be 0600 or 0400 (`chmod 600 {}`)",
                path.display()
            )));
        }
    }
    if metadata.len() > MAX_KEY_BYTES as u64 {
        return Err(refuse(format!(
            "it has {} bytes; a key or passphrase file holds at most {MAX_KEY_BYTES}",
            metadata.len()
        )));
    }
    let mut secret = Zeroizing::new(Vec::with_capacity(MAX_KEY_BYTES));
    file.take(MAX_KEY_BYTES as u64 + 1)
        .read_to_end(&mut secret)
        .map_err(|error| refuse(format!("cannot read it: {error}")))?;
    let kept = secret.trim_ascii_end().len();
    // Zeroizing<Vec> wipes only its live length: wipe the trimmed tail before truncating.
    zeroize::Zeroize::zeroize(&mut secret[kept..]);
    secret.truncate(kept);
    Ok(secret)
}

/// Why the directory of `path` would let another user replace the key in it, if it would: it
/// must belong to root or `owner`, and be writable by nobody else unless it is sticky (`/tmp`,
/// where only a file's owner may rename or remove it).
fn check_directory(path: &Path, owner: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let metadata = std::fs::metadata(dir).map_err(|error| format!("cannot stat its directory: {error}"))?;
    let mode = metadata.mode() & 0o7777;
    if metadata.uid() != 0 && metadata.uid() != owner {
        return Err(format!(
            "its directory {} belongs to uid {}, who could replace the key; keep the key in a directory of root or blufiod's user",
            dir.display(),
            metadata.uid()
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "its directory {} (mode {mode:04o}) may be written by other users, who could replace the key; use a directory only root and blufiod's user can write (`chmod go-w`)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn inputs(dir: &Path) -> SourceInputs {
        SourceInputs {
            state_dir: dir.to_owned(),
            euid: nix::unistd::geteuid().as_raw(),
            ..SourceInputs::default()
        }
    }

    fn key_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn sources_are_tried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = inputs(dir.path());
        assert!(inputs.load().unwrap().is_none(), "nothing present: the caller decides");
        write_key(&inputs.generated_path(), &generate_key(), inputs.euid).unwrap();
        assert_eq!(inputs.load().unwrap().unwrap().source.kind, SourceKind::Generated);
        inputs.passphrase_file = Some(key_file(dir.path(), "pass", "a passphrase of some length\n", 0o400));
        let loaded = inputs.load().unwrap().unwrap();
        assert_eq!(loaded.source.kind, SourceKind::Passphrase);
        assert_eq!(
            loaded.secret.as_slice(),
            b"a passphrase of some length",
            "the newline is not part of it"
        );
        inputs.passphrase = Some(Zeroizing::new("from the environment!".to_owned()));
        assert_eq!(inputs.load().unwrap().unwrap().source.path, None);
        inputs.key_file = Some(key_file(dir.path(), "key", &"ab".repeat(32), 0o600));
        assert_eq!(inputs.load().unwrap().unwrap().source.kind, SourceKind::KeyFile);
        let credentials = tempfile::tempdir().unwrap();
        inputs.credentials_directory = Some(credentials.path().to_owned());
        assert_eq!(
            inputs.load().unwrap().unwrap().source.kind,
            SourceKind::KeyFile,
            "no credential file: next"
        );
        key_file(credentials.path(), CREDENTIAL_NAME, &"cd".repeat(32), 0o644);
        let loaded = inputs.load().unwrap().unwrap();
        assert_eq!(loaded.source.kind, SourceKind::Credential);
        assert!(loaded.source.describe().contains("vault-key"));
    }

    #[test]
    fn key_files_must_be_private_long_enough_and_not_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = inputs(dir.path());
        let path = key_file(dir.path(), "key", &"ab".repeat(32), 0o640);
        inputs.key_file = Some(path.clone());
        let error = inputs.load().unwrap_err().to_string();
        assert!(error.contains("0640") && error.contains("chmod 600"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        inputs.key_file = Some(link);
        let error = inputs.load().unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");

        inputs.key_file = Some(key_file(dir.path(), "short", "too short\n", 0o600));
        let error = inputs.load().unwrap_err().to_string();
        assert!(
            error.contains("fewer than 32") && error.contains("openssl rand"),
            "{error}"
        );

        inputs.key_file = Some(dir.path().to_owned());
        assert!(inputs.load().unwrap_err().to_string().contains("not a regular file"));

        inputs.key_file = None;
        inputs.passphrase = Some(Zeroizing::new("short".to_owned()));
        let error = inputs.load().unwrap_err().to_string();
        assert!(error.contains("at least 12 characters"), "{error}");
        assert!(!error.contains("short\""), "the passphrase is never quoted");
    }

    #[test]
    fn keys_in_a_directory_others_may_write_and_links_are_refused_for_reading_and_writing() {
        let dir = tempfile::tempdir().unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let key = key_file(&shared, "vault.key", &"ab".repeat(32), 0o600);
        let mut inputs = inputs(dir.path());
        inputs.key_file = Some(key.clone());
        let error = inputs.load().unwrap_err().to_string();
        assert!(error.contains("may be written by other users"), "{error}");
        let error = write_key(&key, &generate_key(), euid).unwrap_err().to_string();
        assert!(error.contains("may be written by other users"), "{error}");
        // Sticky, as /tmp: only a file's owner may replace it.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        inputs.load().unwrap();

        // A link where the key should be is never written through.
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        let target = key_file(dir.path(), "elsewhere", "not a key", 0o644);
        let link = private.join("vault.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = write_key(&link, &generate_key(), euid).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a key");
    }

    #[test]
    fn a_new_key_is_private_and_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GENERATED_FILE_NAME);
        let euid = nix::unistd::geteuid().as_raw();
        let first = generate_key();
        assert_eq!(first.len(), 64);
        write_key(&path, &first, euid).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = generate_key();
        assert_ne!(*first, *second);
        write_key(&path, &second, euid).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().trim_ascii_end(), second.as_slice());
    }
}
