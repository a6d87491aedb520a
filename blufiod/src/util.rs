//! Small helpers the daemon's modules share, one copy each: the Unix clock, atomic file
//! replacement, an error's chain as one line, and this machine's interface addresses. Nothing here knows any subsystem.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

pub use blufio_proto::httpsig::unix_now;

/// Every address of this machine's network interfaces (IPv4 and IPv6), read now.
pub fn interface_addresses() -> nix::Result<Vec<std::net::IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|interface| {
            let address = interface.address?;
            match address.as_sockaddr_in() {
                Some(v4) => Some(std::net::IpAddr::V4(v4.ip())),
                None => address.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())),
            }
        })
        .collect())
}

/// The permissions of a file written by [`write_atomically`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Always this mode.
    Exactly(u32),
    /// The mode of the file being replaced, or this one for a new file.
    KeepOr(u32),
}

/// Replaces `path` with `contents` so that a reader sees either the old or the new file, never a
/// mix, even across a crash: a temporary file beside it (created 0600, so never readable by
/// others even briefly), fsync, rename over `path`, fsync of the directory. The directory is
/// created if missing.
pub fn write_atomically(path: &Path, contents: &[u8], mode: FileMode) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mode = match mode {
        FileMode::Exactly(mode) => mode,
        FileMode::KeepOr(new) => match std::fs::metadata(path) {
            Ok(metadata) => metadata.permissions().mode() & 0o7777,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => new,
            Err(error) => return Err(error),
        },
    };
    let mut temporary = tempfile::Builder::new().prefix(".tmp-blufiod-").tempfile_in(dir)?;
    temporary
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    temporary.write_all(contents)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|error| error.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// An error and its causes on one line, `outer: inner: root`. A cause whose text the message
/// already holds is skipped: several libraries (reqwest, io wrappers) repeat their source in
/// their own message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        assert_eq!(error_chain(&Outer(std::io::Error::other("root"))), "outer: root");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read: root")]
        struct Repeating(#[source] std::io::Error);
        assert_eq!(
            error_chain(&Repeating(std::io::Error::other("root"))),
            "cannot read: root"
        );
    }

    #[test]
    fn atomic_writes_keep_or_set_the_mode_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        write_atomically(&path, b"one", FileMode::KeepOr(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"two", FileMode::KeepOr(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        write_atomically(&path, b"three", FileMode::Exactly(0o400)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        assert!(unix_now() > 1_700_000_000);
    }
}
