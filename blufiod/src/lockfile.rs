//! Advisory lock files (`flock`), held for the life of the process, that keep a second daemon
//! from taking over a socket or a state directory that a running one uses.
//!
//! The kernel drops the lock when the process dies, however it dies, so a crash never leaves a
//! stale lock behind. Lock files are never removed: removing one would let two processes each
//! lock a different inode under the same name.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockFile {
    _lock: Flock<File>,
}

/// Errors from taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{path} is locked by another process")]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockFile {
    /// Takes an exclusive lock on `path` (created with mode 0600 if missing) without waiting.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            // A link planted at the lock's path must not make blufiod create or lock a file
            // elsewhere.
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|source| LockError::Lock {
                path: path.to_owned(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held { path: path.to_owned() }),
            Err((_, errno)) => Err(LockError::Lock {
                path: path.to_owned(),
                source: errno.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_at_the_lock_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let path = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert!(matches!(LockFile::acquire(&path), Err(LockError::Lock { .. })));
        assert!(!victim.exists());
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::acquire(&path).unwrap();
        assert!(matches!(LockFile::acquire(&path), Err(LockError::Held { .. })));
        drop(first);
        LockFile::acquire(&path).unwrap();
    }
}
