//! Test harness: starts the real `blufiod` on a temp dir and socket, drives it with the real
//! `blufioctl`, captures its sd_notify datagrams, and stops it with SIGTERM.
//!
//! Binaries: `blufiod` comes from `CARGO_BIN_EXE_blufiod`; `blufioctl` from `$BLUFIOCTL_BIN`,
//! else from the same target directory (built by `cargo test --workspace`, which builds every
//! package's binaries).

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod fake_provider;

use std::io::Read as _;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a daemon may take to become ready or to stop before a test fails. Generous: CI
/// machines are slow and shared; readiness speed is measured by a benchmark, not here.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The daemon binary.
pub fn blufiod_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_blufiod"))
}

/// The client binary.
pub fn blufioctl_bin() -> PathBuf {
    let path = std::env::var_os("BLUFIOCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| blufiod_bin().with_file_name("blufioctl"));
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo test --workspace` (which builds blufioctl) or set BLUFIOCTL_BIN",
        path.display()
    );
    path
}

/// sd_notify datagrams received on a temporary `NOTIFY_SOCKET`.
#[derive(Clone)]
pub struct NotifyLog {
    messages: Arc<(Mutex<Vec<String>>, Condvar)>,
    pub path: PathBuf,
}

impl NotifyLog {
    /// Binds a datagram socket at `path` and collects what arrives on a background thread.
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
        let messages: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while let Ok(len) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                let (lock, condvar) = &*sink;
                lock.lock().unwrap().push(text);
                condvar.notify_all();
            }
        });
        Self {
            messages,
            path: path.to_owned(),
        }
    }

    /// Every datagram so far.
    pub fn all(&self) -> Vec<String> {
        self.messages.0.lock().unwrap().clone()
    }

    /// Every line (assignment) so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|message| message.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// Waits until some datagram satisfies `predicate`; returns it.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (lock, condvar) = &*self.messages;
        let mut messages = lock.lock().unwrap();
        loop {
            if let Some(found) = messages.iter().find(|message| predicate(message)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no sd_notify message {what} within {PATIENCE:?}; got {messages:?}"
            );
            messages = condvar.wait_timeout(messages, left).unwrap().0;
        }
    }

    /// How many datagrams satisfy `predicate`.
    pub fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.all().iter().filter(|message| predicate(message)).count()
    }
}

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
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            config: String::new(),
            env: Vec::new(),
            notify: true,
            wait_ready: true,
        }
    }
}

/// A running `blufiod` in its own temp directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub notify: Option<NotifyLog>,
    stderr_path: PathBuf,
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
        let mut command = Command::new(blufiod_bin());
        command
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &root)
            .env("RUST_BACKTRACE", "1")
            // Each test daemon gets its own port; tests read it from `status`.
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
        let child = command.spawn().expect("spawn blufiod");
        let daemon = Self {
            child: Some(child),
            dir,
            socket,
            config_path,
            notify,
            stderr_path,
        };
        if options.wait_ready {
            daemon.wait_ready();
        }
        daemon
    }

    /// Waits for `READY=1` (or, without a notify socket, for `status` to answer).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = match &self.notify {
                Some(notify) => notify
                    .all()
                    .iter()
                    .any(|message| message.lines().any(|line| line == "READY=1")),
                None => self.ctl(&["status"]).status.success(),
            };
            if ready {
                return;
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

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs `blufioctl --socket <socket> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.socket, args)
    }

    /// Runs blufioctl as another user.
    pub fn ctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let mut command = ctl_command(&self.socket, args);
        // std drops root's supplementary groups when it switches uid (setgroups(0)).
        command.uid(uid).gid(gid);
        command.output().expect("run blufioctl")
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

fn ctl_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(blufioctl_bin());
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BLUFIO_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs `blufioctl --socket <socket> args...`.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    ctl_command(socket, args).output().expect("run blufioctl")
}

/// stdout and stderr of an output, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A gRPC client of the control socket, for tests that need an RPC blufioctl does not offer.
pub async fn control_client(
    socket: &Path,
) -> blufio_proto::control::v1::control_client::ControlClient<tonic::transport::Channel> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the control socket");
    blufio_proto::control::v1::control_client::ControlClient::new(channel)
}

/// Config for a daemon whose provider is `fake`, with prices that make costs easy to check:
/// $1 per million input tokens, $2 per million output tokens; `extra` is appended.
/// Starts a daemon in a fresh directory whose provider is `fake`, with `extra` config appended.
pub fn start_with_fake(fake: &fake_provider::FakeProvider, extra: &str) -> Daemon {
    Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(fake, extra),
            ..DaemonOptions::default()
        },
    )
}

pub fn fake_provider_config(fake: &fake_provider::FakeProvider, extra: &str) -> String {
    format!(
        "[provider]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"test-key\"\nmodel = \"fake-model\"\n\
         max_tokens = 1000\nidle_timeout_secs = 5\nmax_retries = 1\nretry_base_delay_ms = 10\n\
         [pricing.\"fake-model\"]\ninput = 1.0\noutput = 2.0\n{extra}",
        fake.url()
    )
}
