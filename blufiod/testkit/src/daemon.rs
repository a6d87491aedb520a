//! A real `blufiod` in a temp dir: written config, its own socket and gateway port, stderr
//! captured to a file, optionally its own `NOTIFY_SOCKET`; stopped with SIGTERM, and on drop
//! asserted to have exited cleanly.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ctl::{ctl_command, describe, output_of};
use crate::{Binaries, NotifyLog, PATIENCE};

/// How to start a daemon.
pub struct DaemonOptions {
    /// Extra TOML appended to the generated config.
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Whether to capture sd_notify datagrams.
    pub notify: bool,
    /// Whether to wait for readiness.
    pub wait_ready: bool,
    /// Which `blufiod` and `blufioctl` to run: by default those of this test or benchmark's own
    /// build profile.
    pub binaries: Binaries,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            config: String::new(),
            env: Vec::new(),
            notify: true,
            wait_ready: true,
            binaries: Binaries::from_env(),
        }
    }
}

/// A running `blufiod` in its own temp directory.
pub struct Daemon {
    child: Option<Child>,
    pub dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub notify: Option<NotifyLog>,
    binaries: Binaries,
    stderr_path: PathBuf,
    /// Just before `exec`, for the time to readiness.
    spawned: Instant,
}

/// The directory layout of one test, reusable across daemon restarts.
pub fn new_dir() -> Arc<tempfile::TempDir> {
    Arc::new(tempfile::tempdir().expect("temp dir"))
}

impl Daemon {
    /// Starts a daemon with default options in a fresh directory.
    pub fn start() -> Self {
        Self::start_with(new_dir(), DaemonOptions::default())
    }

    /// Starts a daemon in `dir` (shared with earlier daemons of the same test).
    pub fn start_with(dir: Arc<tempfile::TempDir>, options: DaemonOptions) -> Self {
        let root = dir.path();
        let socket = root.join("run/blufiod.sock");
        let config_path = root.join("blufiod.toml");
        let base = format!(
            "[daemon]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nshutdown_timeout_secs = 5\n",
            root.join("state").display(),
            root.join("run").display()
        );
        std::fs::write(&config_path, format!("{base}{}", options.config)).unwrap();
        Self::spawn(dir, config_path, socket, options)
    }

    /// Starts a daemon on an existing config file.
    pub fn spawn(dir: Arc<tempfile::TempDir>, config_path: PathBuf, socket: PathBuf, options: DaemonOptions) -> Self {
        let root = dir.path().to_owned();
        let runs = std::fs::read_dir(&root).unwrap().count();
        let stderr_path = root.join(format!("blufiod-{runs}.stderr"));
        let notify = options
            .notify
            .then(|| NotifyLog::bind(&root.join(format!("notify-{runs}.sock"))));
        let mut command = Command::new(options.binaries.blufiod());
        command
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &root)
            .env("RUST_BACKTRACE", "1")
            // Each daemon gets its own port; tests read it from `status`.
            .env("BLUFIO_GATEWAY__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        if let Some(notify) = &notify {
            command.env("NOTIFY_SOCKET", &notify.path);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let spawned = Instant::now();
        let child = command.spawn().expect("spawn blufiod");
        let daemon = Self {
            child: Some(child),
            dir,
            socket,
            config_path,
            notify,
            binaries: options.binaries,
            stderr_path,
            spawned,
        };
        if options.wait_ready {
            daemon.wait_ready();
        }
        daemon
    }

    /// Waits for `READY=1` (or, without a notify socket, for `status` to answer); returns how
    /// long after `exec` it came.
    pub fn wait_ready(&self) -> Duration {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready_at = match &self.notify {
                Some(notify) => notify.arrival(|message| message.lines().any(|line| line == "READY=1")),
                None => self.ctl(&["status"]).status.success().then(Instant::now),
            };
            if let Some(ready_at) = ready_at {
                return ready_at.saturating_duration_since(self.spawned);
            }
            self.assert_running("before READY=1");
            assert!(
                Instant::now() < deadline,
                "blufiod not ready within {PATIENCE:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&self, when: &str) {
        let pid = self.pid();
        if kill(pid, None).is_err() || self.exited() {
            panic!("blufiod exited {when}:\n{}", self.stderr());
        }
    }

    fn exited(&self) -> bool {
        // A zombie still answers kill(0); /proc tells whether it is dead.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.as_ref().expect("daemon running").id()).unwrap())
    }

    /// What the daemon wrote to stderr so far (all of it, once it has stopped).
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs `blufioctl --socket <socket> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        output_of(ctl_command(self.binaries.blufioctl(), &self.socket, args))
    }

    /// Runs `blufioctl doctor --only NAME --json` and returns that check's entry, whatever the
    /// exit code (a failing check exits 1).
    pub fn doctor_check(&self, name: &str) -> serde_json::Value {
        let output = self.ctl(&["doctor", "--only", name, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("doctor --only {name} printed no JSON ({error}): {}", describe(&output)));
        report["checks"][0].clone()
    }

    /// Runs `blufioctl --socket <socket> args...` with `input` on its standard input (a pipe, as
    /// a script gives it).
    pub fn ctl_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = ctl_command(self.binaries.blufioctl(), &self.socket, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blufioctl");
        std::io::Write::write_all(&mut child.stdin.take().expect("piped stdin"), input)
            .expect("write blufioctl's stdin");
        child.wait_with_output().expect("wait for blufioctl")
    }

    /// Runs `blufioctl --socket <socket> args...` with its standard output on `stdout` (a file,
    /// `/dev/full`); the output's `stdout` is then empty.
    pub fn ctl_to(&self, args: &[&str], stdout: impl Into<Stdio>) -> Output {
        let mut command = ctl_command(self.binaries.blufioctl(), &self.socket, args);
        command.stdout(stdout).stderr(Stdio::piped());
        output_of(command)
    }

    /// Starts `blufioctl --socket <socket> args...` in the background, its output piped (a chat
    /// a test interrupts, for example).
    pub fn ctl_in_background(&self, args: &[&str]) -> Child {
        ctl_command(self.binaries.blufioctl(), &self.socket, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blufioctl")
    }

    /// Runs blufioctl as another user.
    pub fn ctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let mut command = ctl_command(self.binaries.blufioctl(), &self.socket, args);
        // std drops root's supplementary groups when it switches uid (setgroups(0)).
        command.uid(uid).gid(gid);
        output_of(command)
    }

    /// `blufioctl metrics`: the daemon's exposition text, asserted to succeed.
    pub fn metrics_text(&self) -> String {
        let output = self.ctl(&["metrics"]);
        assert!(
            output.status.success(),
            "blufioctl metrics failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.stderr()
        );
        String::from_utf8(output.stdout).expect("the exposition is UTF-8")
    }

    /// The samples of `blufioctl metrics`.
    pub fn metrics(&self) -> crate::exposition::Samples {
        crate::exposition::Samples::parse(&self.metrics_text())
    }

    /// Runs blufioctl, asserts success, and parses its `--json` output.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let output = self.ctl(&args);
        assert!(
            output.status.success(),
            "blufioctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.stderr()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "blufioctl {args:?} printed invalid JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal blufiod");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("blufiod did not exit within {PATIENCE:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let status = self.stop();
        if !std::thread::panicking() {
            assert!(
                status.success(),
                "blufiod did not exit cleanly ({status}):\n{}",
                self.stderr()
            );
        }
    }
}
