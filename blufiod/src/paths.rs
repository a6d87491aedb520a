//! Where the daemon keeps things, resolved once at startup from the config and systemd's
//! environment (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`), with per-user fallbacks so that a normal
//! user can run `blufiod` with no config at all.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::{Config, DATABASE_FILE_NAME};

/// Resolved locations. Changing any of them needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The config file (which may not exist).
    pub config: PathBuf,
    /// Durable state: the database and keys.
    pub state_dir: PathBuf,
    /// Volatile state: the socket and lock files.
    pub runtime_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// The SQLite database.
    pub database: PathBuf,
}

impl Paths {
    /// Resolves every path: the config wins, then systemd's directories, then the defaults for
    /// root (`/var/lib/blufio`, `/run/blufio`) or a normal user (XDG directories).
    pub fn resolve(config: &Config, config_path: &Path, env: impl Fn(&str) -> Option<OsString>, euid: u32) -> Self {
        let state_dir = config
            .daemon
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&env, euid));
        let runtime_dir = config
            .daemon
            .runtime_dir
            .clone()
            .unwrap_or_else(|| blufio_proto::paths::default_runtime_dir(&env, euid));
        let socket = config
            .control
            .socket
            .clone()
            .unwrap_or_else(|| runtime_dir.join(blufio_proto::paths::SOCKET_FILE_NAME));
        let database = config
            .storage
            .path
            .clone()
            .unwrap_or_else(|| state_dir.join(DATABASE_FILE_NAME));
        Self {
            config: config_path.to_owned(),
            state_dir,
            runtime_dir,
            socket,
            database,
        }
    }
}

fn default_state_dir(env: &impl Fn(&str) -> Option<OsString>, euid: u32) -> PathBuf {
    if let Some(dir) = blufio_proto::paths::first_systemd_dir(env("STATE_DIRECTORY")) {
        return dir;
    }
    if euid == 0 {
        return PathBuf::from("/var/lib/blufio");
    }
    env("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/blufio-state-{euid}")))
        .join("blufio")
}

/// Why `dir` is no place for blufiod's private files, if it is not: it must belong to blufiod's
/// user and be writable by no one else, and none of the directories above it may let anyone else
/// swap it for another (each owned by that user or root, and writable by others only if sticky,
/// like `/tmp`). Symbolic links are followed first: what counts is where the files land. A
/// directory that cannot be looked at is a problem too.
pub fn private_dir_problem(dir: &Path, euid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let inspect =
        |path: &Path| std::fs::metadata(path).map_err(|error| format!("cannot inspect {}: {error}", path.display()));
    let dir = match std::fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(error) => return Some(format!("cannot resolve {}: {error}", dir.display())),
    };
    let metadata = match inspect(&dir) {
        Ok(metadata) => metadata,
        Err(problem) => return Some(problem),
    };
    if metadata.uid() != euid {
        return Some(format!(
            "{} belongs to uid {}, not to blufiod's user (uid {euid})",
            dir.display(),
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is mode {:04o}: other users may write in it",
            dir.display(),
            metadata.mode() & 0o7777
        ));
    }
    for ancestor in dir.ancestors().skip(1) {
        let above = match inspect(ancestor) {
            Ok(above) => above,
            Err(problem) => return Some(problem),
        };
        if above.uid() != euid && above.uid() != 0 {
            return Some(format!(
                "{} above it belongs to uid {}, who could move it away and put another in its place",
                ancestor.display(),
                above.uid()
            ));
        }
        if above.mode() & 0o022 != 0 && above.mode() & 0o1000 == 0 {
            return Some(format!(
                "{} above it is mode {:04o}: other users could move it away and put another in its place",
                ancestor.display(),
                above.mode() & 0o7777
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_is_ours_and_shut_and_so_is_its_place() {
        use std::os::unix::fs::PermissionsExt as _;
        let set_mode =
            |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("parent");
        let dir = parent.join("state");
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&parent, 0o755);
        set_mode(&dir, 0o700);
        assert_eq!(private_dir_problem(&dir, euid), None);
        set_mode(&dir, 0o777);
        assert!(private_dir_problem(&dir, euid).unwrap().contains("mode 0777"));
        set_mode(&dir, 0o700);
        // A parent anyone may write: only with the sticky bit, like /tmp.
        set_mode(&parent, 0o777);
        assert!(private_dir_problem(&dir, euid).unwrap().contains("above it"));
        set_mode(&parent, 0o1777);
        assert_eq!(private_dir_problem(&dir, euid), None);
        // Another user's directory, or one in another user's directory (as root, which can chown).
        if euid == 0 {
            std::os::unix::fs::chown(&dir, Some(65_534), None).unwrap();
            assert!(
                private_dir_problem(&dir, euid)
                    .unwrap()
                    .contains("belongs to uid 65534")
            );
            std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
            std::os::unix::fs::chown(&parent, Some(65_534), None).unwrap();
            assert!(private_dir_problem(&dir, euid).unwrap().contains("above it"));
            // Reported (attack on 57e394b): higher up counts too, since whoever owns a directory
            // there can move the whole branch aside.
            std::os::unix::fs::chown(&parent, Some(0), None).unwrap();
            std::os::unix::fs::chown(root.path(), Some(65_534), None).unwrap();
            let problem = private_dir_problem(&dir, euid).unwrap();
            assert!(problem.contains("above it belongs to uid 65534"), "{problem}");
            std::os::unix::fs::chown(root.path(), Some(0), None).unwrap();
        }
        // A link is judged by where it leads.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(private_dir_problem(&link, euid), private_dir_problem(&dir, euid));
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn systemd_directories_are_used_under_systemd() {
        let env = env_of(&[
            ("STATE_DIRECTORY", "/var/lib/blufio"),
            ("RUNTIME_DIRECTORY", "/run/blufio"),
        ]);
        let paths = Paths::resolve(&Config::default(), Path::new("/etc/blufio/blufiod.toml"), env, 998);
        assert_eq!(paths.database, PathBuf::from("/var/lib/blufio/blufio.db"));
        assert_eq!(paths.socket, PathBuf::from("/run/blufio/blufiod.sock"));
    }

    #[test]
    fn a_normal_user_gets_xdg_directories() {
        let env = env_of(&[("HOME", "/home/ann"), ("XDG_RUNTIME_DIR", "/run/user/1000")]);
        let paths = Paths::resolve(&Config::default(), Path::new("/c"), env, 1000);
        assert_eq!(paths.state_dir, PathBuf::from("/home/ann/.local/state/blufio"));
        assert_eq!(paths.socket, PathBuf::from("/run/user/1000/blufio/blufiod.sock"));
    }

    #[test]
    fn config_overrides_win() {
        let mut config = Config::default();
        config.daemon.state_dir = Some("/srv/blufio".into());
        config.control.socket = Some("/srv/ctl.sock".into());
        let paths = Paths::resolve(&config, Path::new("/c"), env_of(&[("STATE_DIRECTORY", "/x")]), 0);
        assert_eq!(paths.database, PathBuf::from("/srv/blufio/blufio.db"));
        assert_eq!(paths.socket, PathBuf::from("/srv/ctl.sock"));
        assert_eq!(paths.runtime_dir, PathBuf::from("/run/blufio"));
    }
}
