//! Where formatted log lines go: stderr, or `log.file`, which can be reopened at runtime.
//!
//! Each event arrives as one `write_all` of a whole line (tracing-subscriber formats first), and
//! the file is written under a lock with `O_APPEND`. A reopen opens the new file before it swaps
//! it in under the same lock, so every line lands exactly once: in the renamed file before the
//! swap, in the new one after it.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// `log.file`, open for appending.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Opens (creating, mode 0600 under the daemon's umask) `path` for appending. A symbolic link
    /// there is refused, so that the daemon never appends through a link to somebody else's file.
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
        })
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again and swaps the new file in; the old one is closed once its last line
    /// is written. On an error the daemon keeps writing to the file it had.
    pub fn reopen(&self) -> Result<(), std::io::Error> {
        let fresh = open_append(&self.path)?;
        let old = std::mem::replace(&mut *self.lock(), fresh);
        drop(old);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens `path` for appending without blocking on a FIFO and without following a link, and
/// accepts only a regular file of the daemon's own with one name: a file somebody else planted
/// in a shared directory would read every line, a FIFO would hang the daemon.
fn open_append(path: &Path) -> Result<File, std::io::Error> {
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(std::io::Error::other(format!(
            "it belongs to uid {}, not to blufiod's uid {euid}; remove it, or keep the log in a directory only blufiod may write",
            metadata.uid()
        )));
    }
    if metadata.nlink() != 1 {
        return Err(std::io::Error::other("it has other names (hard links); remove them"));
    }
    // Back to blocking writes: a full disk reports, it does not spin.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(file)
}

/// The destination of the main log layer.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard error.
    Stderr,
    /// `log.file`.
    File(Arc<LogFile>),
}

/// One event's writer: holds the destination's lock for the event's single write.
pub enum SinkWriter<'a> {
    /// Standard error.
    Stderr(std::io::StderrLock<'static>),
    /// `log.file`.
    File(MutexGuard<'a, File>),
}

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stderr(stderr) => stderr.write(bytes),
            Self::File(file) => file.write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stderr(stderr) => stderr.write_all(bytes),
            Self::File(file) => file.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stderr(stderr) => stderr.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Self::Stderr => SinkWriter::Stderr(std::io::stderr().lock()),
            Self::File(file) => SinkWriter::File(file.lock()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_reopen_after_a_rename_starts_a_new_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.log");
        let sink = Sink::File(Arc::new(LogFile::open(&path).unwrap()));
        let Sink::File(file) = &sink else { unreachable!() };
        sink.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("blufiod.log.1")).unwrap();
        sink.make_writer().write_all(b"two\n").unwrap();
        file.reopen().unwrap();
        sink.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("blufiod.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn a_link_in_place_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs\n").unwrap();
        let path = dir.path().join("blufiod.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(LogFile::open(&path).is_err());
        let directory = dir.path().join("dir");
        std::fs::create_dir(&directory).unwrap();
        assert!(LogFile::open(&directory).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
        // A FIFO is refused at once, without waiting for a reader.
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        assert!(LogFile::open(&fifo).is_err());
        // A second name for the file is refused too.
        let own = dir.path().join("own.log");
        std::fs::write(&own, "").unwrap();
        std::fs::hard_link(&own, dir.path().join("alias.log")).unwrap();
        assert!(LogFile::open(&own).is_err());
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("blufiod.log");
        std::fs::write(&planted, "").unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let error = LogFile::open(&planted).unwrap_err();
        assert!(error.to_string().contains("belongs to uid 65534"), "{error}");
    }
}
