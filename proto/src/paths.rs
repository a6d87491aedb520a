//! Default filesystem locations shared by `blufiod` and `blufioctl`, following systemd's
//! conventions: `$RUNTIME_DIRECTORY` when systemd provides it, `/run/blufio` for root, and
//! `$XDG_RUNTIME_DIR/blufio` for a normal user.

use std::ffi::OsString;
use std::path::PathBuf;

/// File name of the control socket inside the runtime directory.
pub const SOCKET_FILE_NAME: &str = "blufiod.sock";

/// The runtime directory used when the config does not name one.
///
/// `env` looks up an environment variable (injected so that tests need not touch the process
/// environment); `euid` is the effective user id of the caller.
pub fn default_runtime_dir(env: impl Fn(&str) -> Option<OsString>, euid: u32) -> PathBuf {
    if let Some(dir) = first_systemd_dir(env("RUNTIME_DIRECTORY")) {
        return dir;
    }
    if euid == 0 {
        return PathBuf::from("/run/blufio");
    }
    match env("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("blufio"),
        // Without a per-user runtime directory, fall back to a per-uid directory in /tmp; the
        // daemon creates it with mode 0700 and refuses one owned by somebody else.
        None => PathBuf::from(format!("/tmp/blufio-{euid}")),
    }
}

/// The control socket used when neither the config nor the command line names one.
pub fn default_socket_path(env: impl Fn(&str) -> Option<OsString>, euid: u32) -> PathBuf {
    default_runtime_dir(env, euid).join(SOCKET_FILE_NAME)
}

/// systemd passes `RuntimeDirectory=`/`StateDirectory=` as a colon-separated list of absolute
/// paths; blufio uses the first.
pub fn first_systemd_dir(value: Option<OsString>) -> Option<PathBuf> {
    let value = value?;
    let value = value.to_str()?;
    value.split(':').find(|part| !part.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn systemd_runtime_directory_wins() {
        let env = env_of(&[
            ("RUNTIME_DIRECTORY", "/run/blufio:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ]);
        assert_eq!(
            default_socket_path(env, 1000),
            PathBuf::from("/run/blufio/blufiod.sock")
        );
    }

    #[test]
    fn root_uses_run() {
        assert_eq!(default_runtime_dir(env_of(&[]), 0), PathBuf::from("/run/blufio"));
    }

    #[test]
    fn user_uses_xdg_runtime_dir_then_tmp() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000")]);
        assert_eq!(default_runtime_dir(env, 1000), PathBuf::from("/run/user/1000/blufio"));
        assert_eq!(
            default_runtime_dir(env_of(&[("XDG_RUNTIME_DIR", "")]), 1000),
            PathBuf::from("/tmp/blufio-1000")
        );
    }
}
