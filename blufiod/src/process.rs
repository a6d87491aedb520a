//! Child processes the daemon starts (the `run_command` tool, hooks): each in its own process
//! group that dies with the call, with only stdin, stdout and stderr inherited.

use std::ffi::OsStr;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A command for `program` that runs apart from the daemon: an environment of only `PATH` (set to
/// `search_path`) and `LANG=C.UTF-8`, stdout and stderr piped, stdin closed, its own process
/// group, only the standard descriptors inherited, killed if dropped. Callers add the arguments,
/// variables, directory and stdin it needs, then [`spawn_in_own_group`].
pub fn isolated_command(program: impl AsRef<OsStr>, search_path: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .env("PATH", search_path)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    close_inherited_descriptors_on_exec(&mut command);
    command
}

/// Starts `command` (made by [`isolated_command`]); its process group dies with the guard, however
/// the caller's work ends.
pub fn spawn_in_own_group(
    command: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, ProcessGroupGuard)> {
    let child = command.spawn()?;
    let group = ProcessGroupGuard(child.id().and_then(|pid| i32::try_from(pid).ok()));
    Ok((child, group))
}

/// Makes the program start with only stdin, stdout and stderr open.
///
/// The daemon's own descriptors are close-on-exec already, but one it inherited without that flag
/// (from a service manager, a shell or a careless parent) would otherwise pass on to every program
/// it runs. They are marked close-on-exec in the child rather than closed, so std's pipe that
/// reports a failed exec to the parent keeps working until the exec. If the kernel cannot do
/// that, the program does not start.
#[allow(unsafe_code, reason = "pre_exec registers code that runs in the forked child")]
fn close_inherited_descriptors_on_exec(command: &mut tokio::process::Command) {
    let mark_close_on_exec = || {
        // SAFETY: close_range only changes descriptor flags of the calling (child) process; 3 and
        // u32::MAX are a valid range and CLOSE_RANGE_CLOEXEC a valid flag.
        let result = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // functions may be called: it makes one system call and reads errno, and neither allocates
    // nor takes a lock.
    unsafe {
        command.pre_exec(mark_close_on_exec);
    }
}

/// Kills the process group when dropped: when the call ends normally, times out, or is dropped
/// because it was cancelled. Stragglers a program left in the background die with it.
pub struct ProcessGroupGuard(pub Option<i32>);

impl ProcessGroupGuard {
    /// Kills `group` now (nothing when `None` or already gone).
    pub fn kill(group: Option<i32>) {
        if let Some(group) = group {
            // ESRCH (the group is gone) is the normal case after a clean exit.
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        Self::kill(self.0);
    }
}
