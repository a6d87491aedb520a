//! Binding the control socket safely: a lock file guards it, so a stale socket left by a crash
//! is replaced while a running daemon is never displaced; the socket is created under a
//! restrictive umask (never loosened by a chmod race) and only then opened to its group.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use nix::unistd::Gid;

use crate::health::Finding;
use crate::lockfile::{LockError, LockFile};

/// Mode of the bound socket: owner and group may connect; peer credentials decide the rest.
const SOCKET_MODE: u32 = 0o660;

/// A bound, locked control socket.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener, non-blocking, ready for tokio.
    pub listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    _lock: LockFile,
    /// Passed by systemd (socket activation): its file is systemd's, never removed here.
    inherited: bool,
}

/// Errors from binding the control socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another daemon holds the socket's lock.
    #[error(
        "another blufiod is running on {socket} (it holds {}); stop it first (systemctl stop blufiod), or give this one another control.socket",
        lock.display()
    )]
    AlreadyRunning {
        /// The socket.
        socket: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// systemd passed a socket that is not the configured one, or not a listening Unix socket.
    #[error(
        "systemd passed a control socket {inherited} that {problem}; make ListenStream= in blufiod.socket the control.socket path ({configured}), or stop blufiod.socket"
    )]
    Inherited {
        /// What systemd passed, as far as it can be named.
        inherited: String,
        /// The configured socket.
        configured: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Others could replace the socket in its directory.
    #[error(
        "the control socket's directory {path} is not private: {problem}; another user could put their own socket in blufiod's place, so `chmod go-w` it (or its parent), or set daemon.runtime_dir or control.socket elsewhere"
    )]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; remove it or set control.socket to another path")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The runtime directory belongs to another user.
    #[error(
        "runtime directory {path} belongs to uid {owner}, not to this daemon's uid {euid}; remove it or set daemon.runtime_dir"
    )]
    ForeignDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// A filesystem step failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io {
        operation,
        path,
        source,
    }
}

/// Takes the lock file beside the socket at `path` (`<path>.lock`): held by another daemon, it is
/// `AlreadyRunning`. Returns the lock and its path.
fn lock_socket(path: &Path) -> Result<(LockFile, PathBuf), SocketError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = LockFile::acquire(&lock_path).map_err(|error| match error {
        LockError::Held { path: lock } => SocketError::AlreadyRunning {
            socket: path.to_owned(),
            lock,
        },
        LockError::Lock { path, source } => SocketError::Io {
            operation: "lock",
            path,
            source,
        },
    })?;
    Ok((lock, lock_path))
}

/// Binds the control socket at `path`, group-owned by `group` when given.
pub fn bind(path: &Path, group: Option<Gid>) -> Result<BoundSocket, SocketError> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_directory(dir, group)?;

    let (lock, lock_path) = lock_socket(path)?;

    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            // We hold the lock, so whoever made this socket is gone; a daemon too old to take
            // the lock would still answer, so check before replacing it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::AlreadyRunning {
                    socket: path.to_owned(),
                    lock: lock_path,
                });
            }
            tracing::info!(socket = %path.display(), "removing stale control socket");
            std::fs::remove_file(path).map_err(io_error("remove stale socket", path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_owned() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error("inspect", path)(source)),
    }

    // Bind under umask 0177 so the socket is born 0600: there is no moment at which it is more
    // open than intended. The umask is process-wide; nothing else creates files during startup.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(io_error("bind", path))?;
    listener.set_nonblocking(true).map_err(io_error("configure", path))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid.as_raw())).map_err(io_error("chown", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_error("chmod", path))?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        _lock: lock,
        inherited: false,
    })
}

/// Takes the listening socket systemd passed (socket activation) as the control socket at
/// `path`. It must be a listening Unix stream socket bound to exactly `path`; the lock file is
/// taken as for a bound socket, so a second daemon still cannot start on it. Its mode and group
/// are the socket unit's (`SocketMode=`, `SocketGroup=`), and its file is never removed here.
pub fn adopt(listener: std::os::fd::OwnedFd, path: &Path) -> Result<BoundSocket, SocketError> {
    let refused = |inherited: String, problem| SocketError::Inherited {
        inherited,
        configured: path.to_owned(),
        problem,
    };
    let listening = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false);
    let kind = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::SockType);
    let address = nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(listener.as_raw_fd());
    let Ok(address) = address else {
        return Err(refused("(not a Unix socket)".to_owned(), "is not a Unix socket"));
    };
    let Some(bound) = address.path() else {
        return Err(refused(
            format!("{address}"),
            "has no path (an abstract or unnamed socket)",
        ));
    };
    let shown = bound.display().to_string();
    if bound != path {
        return Err(refused(shown, "is not control.socket"));
    }
    if !listening || kind != Ok(nix::sys::socket::SockType::Stream) {
        return Err(refused(
            shown,
            "is not a listening stream socket (Accept=no, ListenStream=)",
        ));
    }
    let (lock, _) = lock_socket(path)?;
    let listener = std::os::unix::net::UnixListener::from(listener);
    listener.set_nonblocking(true).map_err(io_error("configure", path))?;
    tracing::info!(socket = %path.display(), "control socket passed by systemd (socket activation)");
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        _lock: lock,
        inherited: true,
    })
}

impl BoundSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, and the socket file with its lock, which the daemon holds for its life.
    pub fn into_parts(self) -> (std::os::unix::net::UnixListener, SocketHold) {
        (
            self.listener,
            SocketHold {
                path: self.path,
                _lock: self._lock,
                remove_on_drop: !self.inherited,
            },
        )
    }
}

/// The bound socket's file and lock. Dropping it releases the lock and, unless
/// [`SocketHold::keep_file`] was called, removes the file: a daemon that fails to start, or
/// stops cleanly, leaves no socket behind; one that stops on a fatal error leaves it for the
/// next start to replace.
#[derive(Debug)]
pub struct SocketHold {
    path: PathBuf,
    _lock: LockFile,
    remove_on_drop: bool,
}

impl SocketHold {
    /// Leaves the socket file in place when dropped.
    pub fn keep_file(&mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for SocketHold {
    fn drop(&mut self) {
        if self.remove_on_drop {
            remove(&self.path);
        }
    }
}

/// The doctor's `socket` check: the control socket is still there, still a socket of the
/// daemon's, with the mode and group it was bound with, in a directory nobody else may write.
/// Access is decided by peer credentials anyway; these bits are the layer before that.
pub fn permissions_finding(path: &Path, group: Option<Gid>) -> Finding {
    let euid = nix::unistd::geteuid().as_raw();
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) => {
            return Finding::fail(
                format!(
                    "the control socket {} is gone ({error}): blufioctl cannot reach blufiod",
                    path.display()
                ),
                "restart blufiod (`systemctl restart blufiod`); find what removes files in its runtime directory",
            );
        }
    };
    let mode = metadata.permissions().mode() & 0o7777;
    let fix = "restart blufiod, which binds the socket afresh with the right mode and group";
    if !metadata.file_type().is_socket() || metadata.uid() != euid {
        return Finding::fail(
            format!(
                "{} is not blufiod's socket any more (a {} owned by uid {})",
                path.display(),
                if metadata.file_type().is_socket() {
                    "socket"
                } else {
                    "file"
                },
                metadata.uid()
            ),
            fix,
        );
    }
    if mode & 0o007 != 0 {
        return Finding::fail(
            format!(
                "the control socket {} is mode {mode:04o}: every local user may connect",
                path.display()
            ),
            fix,
        );
    }
    let directory = path.parent().unwrap_or(path);
    if let Ok(dir) = std::fs::metadata(directory)
        && dir.permissions().mode() & 0o002 != 0
        && dir.permissions().mode() & 0o1000 == 0
    {
        return Finding::fail(
            format!(
                "{} is writable by every local user, who could replace the socket",
                directory.display()
            ),
            format!(
                "`chmod o-w {}`, or use blufiod's own runtime directory",
                directory.display()
            ),
        );
    }
    let group_now = metadata.gid();
    if mode != SOCKET_MODE || group.is_some_and(|gid| gid.as_raw() != group_now) {
        return Finding::warn(
            format!(
                "the control socket is mode {mode:04o}, group {group_now}; blufiod bound it {SOCKET_MODE:04o}{}",
                group.map_or_else(String::new, |gid| format!(", group {gid}"))
            ),
            fix,
        );
    }
    Finding::ok(format!(
        "{} is mode {mode:04o}, group {group_now}{}",
        path.display(),
        if group.is_some() { " (control.group)" } else { "" }
    ))
}

/// Removes the socket file; called only on a clean exit. The lock is released when the returned
/// value (or the process) goes away.
pub fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), %error, "cannot remove control socket");
    }
}

/// Creates the runtime directory (0700, or 0750 and group-owned when a group may connect) and
/// refuses one that belongs to another user.
fn prepare_directory(dir: &Path, group: Option<Gid>) -> Result<(), SocketError> {
    let euid = nix::unistd::geteuid().as_raw();
    if !dir.exists() {
        let mode = if group.is_some() { 0o750 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io_error("create directory", dir))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(dir, None, Some(gid.as_raw())).map_err(io_error("chown", dir))?;
            // The process umask (0077) masked the group bits at creation; widen on purpose.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_error("chmod", dir))?;
        }
    }
    let metadata = std::fs::metadata(dir).map_err(io_error("inspect", dir))?;
    if metadata.uid() != euid && euid != 0 {
        return Err(SocketError::ForeignDirectory {
            path: dir.to_owned(),
            owner: metadata.uid(),
            euid,
        });
    }
    // (A socket systemd passes is not bound here: its unit decides the directory's mode.)
    if let Some(problem) = crate::paths::private_dir_problem(dir, euid) {
        return Err(SocketError::UnsafeDirectory {
            path: dir.to_owned(),
            problem,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_0660_and_a_second_bind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/blufiod.sock");
        let first = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let error = bind(&path, None).unwrap_err();
        assert!(matches!(error, SocketError::AlreadyRunning { .. }), "{error:?}");
        assert!(error.to_string().contains("another blufiod is running on"), "{error}");
        assert!(error.to_string().contains("blufiod.sock"), "{error}");
        drop(first);
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(
            path.exists(),
            "the dropped listener leaves its file behind, like a crash"
        );
        let bound = bind(&path, None).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(bound);
    }

    #[test]
    fn a_regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.sock");
        std::fs::write(&path, "keep me").unwrap();
        assert!(matches!(bind(&path, None), Err(SocketError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
