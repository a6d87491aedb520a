//! `blufioctl doctor` with the daemon down: what can be checked without it, from the outside.
//!
//! The config file (through `blufiod --check-config --json`, which also says which paths the
//! daemon would use), the state directory and its permissions, the lock files and the socket (a
//! stale socket, or a daemon that holds its locks but does not answer), the systemd unit, and
//! the last lines of its journal. Nothing here changes anything: locks are read from
//! `/proc/locks`, never taken, so a daemon starting meanwhile is not disturbed.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use blufio_proto::control::v1::{CheckLevel, CheckResult};

/// The daemon's own checks, which cannot run while it is down (a test keeps this list equal to
/// the daemon's registry).
pub const DAEMON_CHECKS: &[&str] = &[
    "runtime",
    "storage",
    "integrity",
    "control",
    "phase",
    "provider",
    "provider_api",
    "clock",
    "pricing",
    "budget",
    "vault",
    "backup",
    "memory",
    "watchdog",
    "gateway",
    "disk",
    "growth",
    "config",
    "socket",
    "schema",
];

/// The unit the packages install.
const UNIT: &str = "blufiod.service";
/// How long one helper program (`blufiod --check-config`, `systemctl`, `journalctl`) may take.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Journal lines shown.
const JOURNAL_LINES: &str = "15";

/// What the offline checks found: the checks, and the journal's last lines when readable.
pub struct Offline {
    pub checks: Vec<CheckResult>,
    pub journal: Option<Vec<String>>,
}

/// The paths `blufiod --check-config --json` reports.
#[derive(Debug, Default, serde::Deserialize)]
struct DaemonPaths {
    state_dir: PathBuf,
    socket: PathBuf,
    socket_lock: PathBuf,
    state_lock: PathBuf,
    database: PathBuf,
}

/// `blufiod --check-config --json`.
#[derive(Debug, serde::Deserialize)]
struct ConfigReport {
    config: PathBuf,
    present: bool,
    valid: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    paths: Option<DaemonPaths>,
}

/// Runs every offline check. `tried` is the socket blufioctl could not reach and `why` the
/// reason, `denied` whether the socket refused this user (then the daemon may well be running);
/// `config` the config file to check (`--config`), else the daemon's default.
pub async fn run(tried: &Path, why: &str, denied: bool, config: Option<&Path>) -> Offline {
    let not_run = DAEMON_CHECKS.join(", ");
    let daemon = if denied {
        check(
            "daemon",
            CheckLevel::Fail,
            format!(
                "the socket {} refuses this user ({why}); blufiod's own checks ({not_run}) could not run",
                tried.display()
            ),
            "run doctor as root, as blufiod's user or as a member of its control.group (sudo blufioctl doctor)",
            Duration::ZERO,
        )
    } else {
        check(
            "daemon",
            CheckLevel::Fail,
            format!(
                "blufiod does not answer at {}: {why}; its own checks ({not_run}) could not run",
                tried.display()
            ),
            "start it ('systemctl start blufiod' or 'blufiod'), or point --socket at its socket; the checks below look from the outside",
            Duration::ZERO,
        )
    };
    let mut checks = vec![daemon];
    let started = Instant::now();
    let (config_check, paths) = config_check(config).await;
    checks.push(timed(config_check, started));
    if let Some(paths) = &paths {
        let started = Instant::now();
        checks.push(timed(state_dir_check(paths), started));
    }
    let started = Instant::now();
    checks.push(timed(lock_check(tried, paths.as_ref(), denied), started));
    let journal = if Path::new("/run/systemd/system").is_dir() {
        let started = Instant::now();
        checks.push(timed(unit_check().await, started));
        journal().await
    } else {
        checks.push(check(
            "unit",
            CheckLevel::Ok,
            "systemd does not run here; blufiod is started some other way".to_owned(),
            "",
            Duration::ZERO,
        ));
        None
    };
    Offline { checks, journal }
}

fn check(name: &str, level: CheckLevel, detail: String, hint: &str, took: Duration) -> CheckResult {
    CheckResult {
        name: name.to_owned(),
        level: level.into(),
        detail,
        hint: hint.to_owned(),
        duration_seconds: took.as_secs_f64(),
        deep: false,
    }
}

fn timed(mut result: CheckResult, started: Instant) -> CheckResult {
    result.duration_seconds = started.elapsed().as_secs_f64();
    result
}

/// Runs a helper program with a deadline; `None` when it cannot be run at all.
async fn output_of(program: &Path, args: &[&str]) -> Option<std::process::Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    tokio::time::timeout(PROGRAM_TIMEOUT, child.wait_with_output())
        .await
        .ok()?
        .ok()
}

/// The `blufiod` to ask: the one installed beside this blufioctl, else the first in `PATH`.
fn find_blufiod() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("blufiod")));
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("blufiod"));
    beside.into_iter().chain(in_path).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|metadata| metadata.is_file() && metadata.mode() & 0o111 != 0)
    })
}

async fn config_check(config: Option<&Path>) -> (CheckResult, Option<DaemonPaths>) {
    let fail = |level, detail: String, hint: &str| (check("config", level, detail, hint, Duration::ZERO), None);
    let Some(blufiod) = find_blufiod() else {
        return fail(
            CheckLevel::Warn,
            "blufiod is neither beside blufioctl nor in PATH, so the config file could not be checked".to_owned(),
            "install blufiod, or run 'blufiod --check-config' where it is",
        );
    };
    let mut args = vec!["--check-config", "--json"];
    let config_arg;
    if let Some(config) = config {
        config_arg = config.to_string_lossy().into_owned();
        args.extend(["--config", &config_arg]);
    }
    let Some(output) = output_of(&blufiod, &args).await else {
        return fail(
            CheckLevel::Warn,
            format!("{} --check-config could not be run", blufiod.display()),
            "run it by hand to see why",
        );
    };
    let report: ConfigReport = match serde_json::from_slice(&output.stdout) {
        Ok(report) => report,
        Err(_) => {
            return fail(
                CheckLevel::Warn,
                format!(
                    "{} --check-config --json gave no report (exit {:?}): {}",
                    blufiod.display(),
                    output.status.code(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                "a blufiod older than this blufioctl? run 'blufiod --check-config' by hand",
            );
        }
    };
    if !report.valid {
        return fail(
            CheckLevel::Fail,
            report
                .error
                .unwrap_or_else(|| "the configuration is invalid".to_owned()),
            "fix the file (blufiod.example.toml documents every key); 'blufiod --check-config' checks it again",
        );
    }
    let detail = if report.present {
        format!("{} parses and validates", report.config.display())
    } else {
        format!(
            "{} does not exist; blufiod runs on its defaults and the environment",
            report.config.display()
        )
    };
    (
        check("config", CheckLevel::Ok, detail, "", Duration::ZERO),
        report.paths,
    )
}

fn state_dir_check(paths: &DaemonPaths) -> CheckResult {
    let dir = &paths.state_dir;
    let at = |level, detail: String, hint: &str| check("state_dir", level, detail, hint, Duration::ZERO);
    let metadata = match std::fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return at(
                CheckLevel::Warn,
                format!("{} does not exist yet", dir.display()),
                "blufiod creates it (0700) at its first start; under systemd, StateDirectory= does",
            );
        }
        Err(error) => {
            return at(
                CheckLevel::Warn,
                format!("cannot look at {}: {error}", dir.display()),
                "run doctor as root or as the daemon's user to check it",
            );
        }
    };
    if !metadata.is_dir() {
        return at(
            CheckLevel::Fail,
            format!("{} is not a directory", dir.display()),
            "move it away; blufiod keeps its database and keys in a directory there",
        );
    }
    let mode = metadata.permissions().mode() & 0o777;
    let owner = owner_name(metadata.uid());
    if mode & 0o077 != 0 {
        return at(
            CheckLevel::Fail,
            format!(
                "{} is mode {mode:o} (owner {owner}): others can reach the database and the vault's key",
                dir.display()
            ),
            &format!("chmod 700 {}", dir.display()),
        );
    }
    let database = match std::fs::metadata(&paths.database) {
        Ok(database) if database.permissions().mode() & 0o077 != 0 => {
            return at(
                CheckLevel::Fail,
                format!(
                    "{} is mode {:o}: others may read it",
                    paths.database.display(),
                    database.permissions().mode() & 0o777
                ),
                &format!("chmod 600 {}", paths.database.display()),
            );
        }
        Ok(database) => format!("the database is {} MiB", database.len() / (1024 * 1024)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "no database yet".to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            "this user may not look inside (as it should be)".to_owned()
        }
        Err(error) => format!("the database cannot be read: {error}"),
    };
    at(
        CheckLevel::Ok,
        format!("{} is mode {mode:o}, owned by {owner}; {database}", dir.display()),
        "",
    )
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |user| user.name)
}

/// The process holding a `flock` on `path`, from `/proc/locks` (which names the device and inode
/// of each locked file and the pid of the holder): read-only, unlike trying to take the lock.
fn lock_holder(path: &Path, proc_locks: &str) -> Option<u32> {
    let metadata = std::fs::metadata(path).ok()?;
    let device = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(metadata.dev()),
        nix::sys::stat::minor(metadata.dev()),
        metadata.ino()
    );
    proc_locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->" after the number.
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&device.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

fn lock_check(tried: &Path, paths: Option<&DaemonPaths>, denied: bool) -> CheckResult {
    let at = |level, detail: String, hint: &str| check("lock", level, detail, hint, Duration::ZERO);
    let proc_locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let state_holder = paths.and_then(|paths| lock_holder(&paths.state_lock, &proc_locks));
    let socket_lock = paths.map_or_else(
        || {
            let mut lock = tried.as_os_str().to_owned();
            lock.push(".lock");
            PathBuf::from(lock)
        },
        |paths| paths.socket_lock.clone(),
    );
    let socket_holder = lock_holder(&socket_lock, &proc_locks);
    let configured = paths.map(|paths| paths.socket.as_path());
    if let Some(pid) = state_holder.or(socket_holder) {
        let elsewhere = configured.filter(|socket| *socket != tried);
        return match elsewhere {
            Some(socket) => at(
                CheckLevel::Fail,
                format!(
                    "blufiod (pid {pid}) runs, and its config puts the socket at {}, not {}",
                    socket.display(),
                    tried.display()
                ),
                &format!("blufioctl --socket {} doctor", socket.display()),
            ),
            None if denied => at(
                CheckLevel::Ok,
                format!("blufiod (pid {pid}) runs; its socket refused this user"),
                "",
            ),
            None => at(
                CheckLevel::Fail,
                format!("blufiod (pid {pid}) holds its locks but does not answer on its socket"),
                "it may be hung or still starting: 'systemctl status blufiod' and its journal say which; 'systemctl restart blufiod' if it is hung",
            ),
        };
    }
    if denied {
        return at(
            CheckLevel::Warn,
            "no lock holder is visible to this user, so whether blufiod runs is not known here".to_owned(),
            "run doctor as root or as blufiod's user",
        );
    }
    if std::fs::symlink_metadata(tried).is_ok_and(|metadata| metadata.file_type().is_socket()) {
        return at(
            CheckLevel::Warn,
            format!(
                "{} is a stale socket: no blufiod holds its lock (the last one did not stop cleanly)",
                tried.display()
            ),
            "nothing to do: the next start removes it; the journal says why the last run ended",
        );
    }
    at(
        CheckLevel::Ok,
        "no blufiod holds the state directory or the socket, and no stale socket is left".to_owned(),
        "",
    )
}

async fn unit_check() -> CheckResult {
    let at = |level, detail: String, hint: &str| check("unit", level, detail, hint, Duration::ZERO);
    let systemctl = Path::new("systemctl");
    let (Some(enabled), Some(active)) = (
        output_of(systemctl, &["is-enabled", UNIT]).await,
        output_of(systemctl, &["is-active", UNIT]).await,
    ) else {
        return at(
            CheckLevel::Warn,
            "systemctl could not be run".to_owned(),
            "check the unit with 'systemctl status blufiod'",
        );
    };
    let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
    let active = String::from_utf8_lossy(&active.stdout).trim().to_owned();
    let said = format!("{UNIT} is {enabled} and {active}");
    match (enabled.as_str(), active.as_str()) {
        ("not-found" | "", _) => at(
            CheckLevel::Warn,
            format!("{UNIT} is not installed"),
            "install the package (or run install.sh from the release tarball), then 'systemctl enable --now blufiod'",
        ),
        (_, "failed") => at(
            CheckLevel::Fail,
            said,
            "the journal below says why; fix it, then 'systemctl restart blufiod'",
        ),
        (_, "activating" | "reloading" | "deactivating") => {
            at(CheckLevel::Warn, said, "wait a moment and run doctor again")
        }
        (_, "active") => at(
            CheckLevel::Fail,
            said,
            "the service runs but its socket does not answer here: point --socket at it",
        ),
        ("enabled" | "enabled-runtime" | "static" | "alias" | "indirect" | "generated", _) => {
            at(CheckLevel::Warn, said, "start it: 'systemctl start blufiod'")
        }
        _ => at(
            CheckLevel::Warn,
            said,
            "'systemctl enable --now blufiod' starts it now and at every boot",
        ),
    }
}

/// The unit's last journal lines, when journalctl runs and this user may read them.
async fn journal() -> Option<Vec<String>> {
    let output = output_of(
        Path::new("journalctl"),
        &[
            "--unit",
            UNIT,
            "--lines",
            JOURNAL_LINES,
            "--no-pager",
            "--quiet",
            "--output",
            "short-iso",
        ],
    )
    .await?;
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (output.status.success() && !lines.is_empty()).then_some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_holder_is_found_by_device_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.lock");
        std::fs::write(&path, "").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        let device = format!(
            "{:02x}:{:02x}:{}",
            nix::sys::stat::major(metadata.dev()),
            nix::sys::stat::minor(metadata.dev()),
            metadata.ino()
        );
        let locks = format!(
            "1: POSIX  ADVISORY  WRITE 77 {device} 0 EOF\n\
             2: FLOCK  ADVISORY  WRITE 4242 {device} 0 EOF\n\
             2: -> FLOCK  ADVISORY  WRITE 99 {device} 0 EOF\n"
        );
        assert_eq!(lock_holder(&path, &locks), Some(4242));
        assert_eq!(lock_holder(&path, "1: FLOCK  ADVISORY  WRITE 5 00:00:1 0 EOF\n"), None);
        assert_eq!(lock_holder(&dir.path().join("missing"), &locks), None);
    }

    #[test]
    fn a_real_flock_shows_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.lock");
        let file = std::fs::File::create(&path).unwrap();
        file.lock().unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert_eq!(lock_holder(&path, &locks), Some(std::process::id()));
        file.unlock().unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert_eq!(lock_holder(&path, &locks), None);
    }

    #[test]
    fn state_dir_permissions_are_judged() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let paths = DaemonPaths {
            state_dir: state.clone(),
            database: state.join("blufio.db"),
            ..DaemonPaths::default()
        };
        assert_eq!(state_dir_check(&paths).level(), CheckLevel::Warn, "missing");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = state_dir_check(&paths);
        assert_eq!(open.level(), CheckLevel::Fail);
        assert!(
            open.detail.contains("mode 755") && open.hint.contains("chmod 700"),
            "{open:?}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&paths.database, vec![0; 10]).unwrap();
        std::fs::set_permissions(&paths.database, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(state_dir_check(&paths).level(), CheckLevel::Fail);
        std::fs::set_permissions(&paths.database, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fine = state_dir_check(&paths);
        assert_eq!(fine.level(), CheckLevel::Ok, "{fine:?}");
        assert!(fine.detail.contains("mode 700"), "{fine:?}");
    }
}
