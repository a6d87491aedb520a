//! Small helpers the daemon's modules share, one copy each: the Unix clock, atomic file
//! replacement, an error's chain as one line, this machine's interface addresses, and bulk work
//! on a low-priority thread. Nothing here knows any subsystem.

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

/// Ends the process at once, as a crash would, when `BLUFIOD_CRASH_AT` names `point`: the seam
/// the crash-consistency tests kill the daemon through at an exact step (a signal from outside
/// cannot hit a step that takes microseconds). Inert unless the variable is set.
pub fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("BLUFIOD_CRASH_AT").ok()).as_deref() == Some(point) {
        tracing::error!(point, "BLUFIOD_CRASH_AT: crashing here on purpose");
        std::process::abort();
    }
}

/// The nice value of [`background`] threads: the scheduler lets requests and turns (nice 0)
/// preempt them at once, while they still get what the machine has spare.
const BACKGROUND_NICE: libc::c_int = 10;

/// Runs `work`, bulk work that reads or writes a whole database (a snapshot, an integrity check,
/// hashing or streaming an archive), on a thread of its own at a lower CPU priority, so that on a
/// small machine the gateway's and the turns' latency stays close to what it is without it. A
/// thread of its own, not tokio's blocking pool: an unprivileged process cannot raise a thread's
/// priority back, and the pool reuses its threads.
pub async fn background<T, F>(name: &str, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            // The receiver is gone only when the caller stopped waiting.
            let _ = sender.send(work());
        })
        .unwrap_or_else(|error| panic!("cannot start the {name} thread: {error}"));
    receiver.await.unwrap_or_else(|_| panic!("the {name} thread panicked"))
}

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (on Linux a nice value is
/// per thread). Failing to is harmless: the work then runs at the daemon's priority.
fn lower_priority() {
    let thread = nix::unistd::gettid().as_raw();
    #[allow(unsafe_code)] // reason: setpriority(2) has no safe wrapper in nix or std
    // SAFETY: setpriority only reads its integer arguments.
    let status = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(thread).unwrap_or_default(),
            BACKGROUND_NICE,
        )
    };
    if status != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
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
    // A symlink (a config file linked from elsewhere) is followed: the file it names is
    // replaced, and the link stays a link.
    let resolved;
    let path = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            resolved = std::fs::canonicalize(path)?;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let existing = match std::fs::metadata(path) {
        Ok(metadata) => Some(metadata),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let mode = match (mode, &existing) {
        (FileMode::Exactly(mode), _) => mode,
        (FileMode::KeepOr(_), Some(metadata)) => metadata.permissions().mode() & 0o7777,
        (FileMode::KeepOr(new), None) => new,
    };
    let mut temporary = tempfile::Builder::new().prefix(".tmp-blufiod-").tempfile_in(dir)?;
    // The replacement keeps the file's owner and group where the process may set them (a
    // group that may read the config must not lose it on the first `config set`).
    if let Some(metadata) = &existing {
        use std::os::unix::fs::MetadataExt as _;
        let _ = std::os::unix::fs::fchown(temporary.as_file(), Some(metadata.uid()), Some(metadata.gid()));
    }
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

    /// The nice value of the calling thread (field 19 of `/proc/thread-self/stat`).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn background_work_runs_on_its_own_thread_at_a_lower_priority() {
        let here = own_nice();
        let (nice, name) = background("blufio-test", || {
            (own_nice(), std::thread::current().name().map(str::to_owned))
        })
        .await;
        assert!(
            nice >= BACKGROUND_NICE && nice >= here,
            "nice {nice} (the caller's is {here})"
        );
        assert_eq!(name.as_deref(), Some("blufio-test"));
        // The caller's thread is untouched.
        assert_eq!(own_nice(), here);
    }

    #[test]
    fn an_atomic_write_through_a_symlink_replaces_its_target_and_keeps_owner_and_mode() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("blufiod.toml");
        std::fs::write(&real, "old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let group = nix::unistd::getegid().as_raw();
        let group = if nix::unistd::geteuid().is_root() {
            // As root, a group other than ours shows that it is kept.
            std::os::unix::fs::chown(&real, None, Some(65534)).unwrap();
            65534
        } else {
            group
        };
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, b"new", FileMode::KeepOr(0o600)).unwrap();
        assert!(
            std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
            "the link stays a link"
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        let metadata = std::fs::metadata(&real).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o640);
        assert_eq!(metadata.gid(), group);
    }

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
