//! The local half of `blufioctl device add`: generating a device's Ed25519 key pair, keeping the
//! private half in a new file only its owner can read, and reading an existing public key.
//!
//! The private key never leaves this process except into that file: only the public key is sent
//! to the daemon. An existing file is never overwritten, and a key file whose device could not be
//! registered is removed again.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use blufio_proto::httpsig;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;

/// Permissions of a new private key file: read and write for its owner only.
const KEY_FILE_MODE: u32 = 0o600;

/// Why the key file could not be created.
#[derive(Debug)]
pub enum KeyFileError {
    /// The file exists already; it is left alone.
    Exists { path: PathBuf },
    /// Creating it failed (a missing directory, no permission, ...).
    Create { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFileError::Exists { path } => {
                write!(
                    f,
                    "key file {} already exists; refusing to overwrite it",
                    path.display()
                )
            }
            KeyFileError::Create { path, .. } => write!(f, "cannot create key file {}", path.display()),
        }
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyFileError::Exists { .. } => None,
            KeyFileError::Create { source, .. } => Some(source),
        }
    }
}

/// A new, still empty private key file. Dropped without [`KeyFile::write`], it is removed, so a
/// failed registration leaves nothing behind.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    file: Option<File>,
}

impl KeyFile {
    /// Creates `path` exclusively (never replacing an existing file) with mode 0600.
    pub fn create(path: &Path) -> Result<KeyFile, KeyFileError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_FILE_MODE)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    KeyFileError::Create {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// Writes `key` as PKCS#8 PEM, flushes it to disk and keeps the file. Returns its path,
    /// absolute when it can be resolved.
    pub fn write(mut self, key: &SigningKey) -> anyhow::Result<PathBuf> {
        let pem = httpsig::signing_key_to_pkcs8_pem(key).context("cannot encode the private key")?;
        let mut file = self.file.take().context("the key file was already written")?;
        let written = file.write_all(pem.as_bytes()).and_then(|()| file.sync_all());
        if let Err(error) = written {
            // Put it back so that `drop` removes the partial file.
            self.file = Some(file);
            return Err(anyhow::Error::new(error).context(format!("cannot write key file {}", self.path.display())));
        }
        let path = std::mem::take(&mut self.path);
        Ok(std::fs::canonicalize(&path).unwrap_or(path))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: the file is empty or partial, and the error that led here is the one
            // to report.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new key pair from 32 bytes of the operating system's randomness.
pub fn generate_key() -> anyhow::Result<SigningKey> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).context("cannot get random bytes for a new key")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key in `path` (PEM "PUBLIC KEY"), checked and re-encoded for `AddDevice`.
pub fn read_public_key(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read public key file {}", path.display()))?;
    anyhow::ensure!(
        !text.contains("PRIVATE KEY"),
        "{} holds a private key; --public-key takes the public half only (for example from \
         'openssl pkey -in {} -pubout')",
        path.display(),
        path.display()
    );
    let key = httpsig::verifying_key_from_pem(&text)
        .with_context(|| format!("cannot use public key file {}", path.display()))?;
    Ok(httpsig::verifying_key_to_pem(&key)?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn key_files_are_new_private_and_removed_unless_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.pem");
        let key = generate_key().expect("a key");
        let file = KeyFile::create(&path).expect("creates");
        assert!(matches!(KeyFile::create(&path), Err(KeyFileError::Exists { .. })));
        let written = file.write(&key).expect("writes");
        assert_eq!(written, std::fs::canonicalize(&path).expect("exists"));
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let read = httpsig::signing_key_from_pkcs8_pem(&text).expect("parses");
        assert_eq!(read.to_bytes(), key.to_bytes());

        let error = KeyFile::create(&path).expect_err("never overwrites");
        assert!(
            error.to_string().contains("already exists; refusing to overwrite"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), text, "left alone");

        let abandoned = dir.path().join("abandoned.pem");
        drop(KeyFile::create(&abandoned).expect("creates"));
        assert!(!abandoned.exists(), "an unwritten key file is removed");
        assert!(matches!(
            KeyFile::create(&dir.path().join("no/such/dir.pem")),
            Err(KeyFileError::Create { .. })
        ));
    }

    #[test]
    fn generated_keys_differ() {
        let first = generate_key().expect("a key");
        assert_ne!(first.to_bytes(), generate_key().expect("a key").to_bytes());
    }

    #[test]
    fn public_keys_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate_key().expect("a key");
        let public = dir.path().join("device.pub");
        let pem = httpsig::verifying_key_to_pem(&key.verifying_key()).expect("encodes");
        std::fs::write(&public, &pem).expect("writes");
        assert_eq!(read_public_key(&public).expect("reads"), pem);

        let private = dir.path().join("device.pem");
        std::fs::write(
            &private,
            httpsig::signing_key_to_pkcs8_pem(&key).expect("encodes").as_bytes(),
        )
        .expect("writes");
        let error = read_public_key(&private).expect_err("a private key is refused");
        assert!(error.to_string().contains("holds a private key"), "{error}");

        let garbage = dir.path().join("garbage.pub");
        std::fs::write(&garbage, "hello").expect("writes");
        assert!(read_public_key(&garbage).is_err());
        assert!(read_public_key(&dir.path().join("absent.pub")).is_err());
    }
}
