//! A small tmpfs mounted for one test, for what only a full file system shows: a full disk under
//! a backup, a state directory without headroom. Unmounted when dropped (also when the test
//! panics), so a failed test leaves no mount behind.

use std::path::{Path, PathBuf};

/// A tmpfs mounted at a directory, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, for example `"2m"`) and mode 0700
    /// at `at`, which must exist; `None` where this machine cannot (not root, no `mount`, a
    /// container that forbids it): the caller then skips what needs it, saying so.
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Self { at: at.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
    }
}
