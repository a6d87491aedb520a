//! Lifecycle hooks: the owner's programs, run at lifecycle points and on alerts (`[hooks]`).
//!
//! Each command runs without a shell, in its own process group (killed as a group on timeout,
//! when the daemon stops, and after the command exits, so nothing it left behind outlives it),
//! with a clean environment (`PATH`, `LANG`, `BLUFIO_EVENT`, `BLUFIOCTL_SOCKET` and the event's
//! details as `BLUFIO_*`), the details as one JSON object on stdin, and its output logged line by
//! line under the hook's name. At most `hooks.max_concurrent` run at once: an alert that finds
//! no room is dropped and counted, never queued, while the awaited lifecycle hooks (`pre_start`,
//! `pre_reload`, `pre_stop`, `post_stop`) wait for room.
//!
//! The alerts come from the event bus ([`Hooks::watch`]); the awaited hooks are run by what owns
//! the lifecycle point ([`Hooks::run`]).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigHandle, HOOK_NAMES};
use crate::events::{Event, Subscription};
use crate::process::{ProcessGroupGuard, isolated_command, spawn_in_own_group};

/// The `PATH` a hook gets (programs are named by absolute path; this is for what they call).
const HOOK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Output lines of one command that are logged per stream; the rest are counted.
const MAX_LOGGED_LINES: usize = 200;
/// A longer output line is cut to this many bytes in the log.
const MAX_LINE_BYTES: usize = 2048;
/// How long the output of a finished command is still read: a grandchild that left the process
/// group could hold its pipes open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// An event's details: `(NAME, value)` pairs, given as `BLUFIO_NAME` and as `name` in the JSON.
pub type Details = Vec<(&'static str, String)>;

/// How one command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// Another exit status, or killed by a signal it did not get from us.
    Failed,
    /// Ran past `hooks.timeout_secs`; its process group was killed.
    Timeout,
    /// Could not be started.
    Error,
    /// No room among `hooks.max_concurrent`: not run.
    Dropped,
    /// The daemon stopped while it ran; its process group was killed.
    Cancelled,
}

impl Outcome {
    /// The `outcome` label of `blufio_hook_runs_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Dropped => "dropped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One command's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The hook (`on_backup`).
    pub hook: &'static str,
    /// The program (argv\[0\]).
    pub program: String,
    /// When it started, Unix seconds.
    pub started_at: i64,
    /// How long it ran.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// A short account: "exit status 3", "killed after 30 s".
    pub detail: String,
}

/// The hooks runner.
#[derive(Debug)]
pub struct Hooks {
    config: ConfigHandle,
    socket: PathBuf,
    slots: Arc<Semaphore>,
    runs: IntCounterVec,
    /// The last run of each hook (at most one entry per hook name).
    last: Mutex<BTreeMap<&'static str, Run>>,
    /// Cancelled when the daemon's drain ends: running alerts are killed.
    token: CancellationToken,
}

impl Hooks {
    /// The help of `blufio_hook_runs_total`, whose labels are `hook` and `outcome`.
    pub const RUNS_HELP: &str =
        "Hook commands run, by hook and outcome (ok, failed, timeout, error, dropped, cancelled).";

    /// A runner for the hooks in `config`; `socket` is the control socket given to them, `runs`
    /// the `hook_runs_total` counter (labels `hook`, `outcome`).
    pub fn new(config: ConfigHandle, runs: IntCounterVec, socket: PathBuf, token: CancellationToken) -> Arc<Self> {
        let slots = config.get().config.hooks.max_concurrent as usize;
        Arc::new(Self {
            config,
            socket,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            runs,
            last: Mutex::new(BTreeMap::new()),
            token,
        })
    }

    /// Runs the commands of `hook` in order and waits for them, waiting for room among
    /// `hooks.max_concurrent` if needed. Every command runs even if one before it failed.
    pub async fn run(&self, hook: &'static str, details: Details) -> Vec<Run> {
        let commands = self.config.get().config.hooks.commands(hook).to_vec();
        if commands.is_empty() {
            return Vec::new();
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return Vec::new();
        };
        let mut runs = Vec::with_capacity(commands.len());
        for argv in &commands {
            runs.push(self.run_command(hook, argv, &details).await);
        }
        runs
    }

    /// Starts the commands of `hook` beside the caller's work, if there is room; otherwise they
    /// are dropped and counted.
    pub fn fire(self: &Arc<Self>, hook: &'static str, details: Details) {
        let commands = self.config.get().config.hooks.commands(hook).to_vec();
        if commands.is_empty() {
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(hook, "hook dropped: hooks.max_concurrent commands are already running");
            for argv in &commands {
                self.record(Run {
                    hook,
                    program: argv.first().cloned().unwrap_or_default(),
                    started_at: crate::util::unix_now(),
                    duration: Duration::ZERO,
                    outcome: Outcome::Dropped,
                    exit_code: None,
                    detail: "dropped: hooks.max_concurrent commands were already running".to_owned(),
                });
            }
            return;
        };
        let hooks = self.clone();
        tokio::spawn(async move {
            for argv in &commands {
                hooks.run_command(hook, argv, &details).await;
            }
            drop(slot);
        });
    }

    /// The last run of each hook that ran since the start.
    pub fn last_runs(&self) -> BTreeMap<&'static str, Run> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, run: Run) {
        self.runs.with_label_values(&[run.hook, run.outcome.as_str()]).inc();
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run.hook, run);
    }

    /// Runs one command to its end, logs and counts it.
    async fn run_command(&self, hook: &'static str, argv: &[String], details: &Details) -> Run {
        let timeout = Duration::from_secs(self.config.get().config.hooks.timeout_secs);
        let started = Instant::now();
        let started_at = crate::util::unix_now();
        let program = argv.first().cloned().unwrap_or_default();
        let (outcome, exit_code, detail) = self.execute(hook, argv, details, timeout).await;
        let run = Run {
            hook,
            program,
            started_at,
            duration: started.elapsed(),
            outcome,
            exit_code,
            detail,
        };
        match outcome {
            Outcome::Ok => tracing::info!(hook, program = %run.program, ms = run.duration.as_millis(), "hook ran"),
            _ => {
                tracing::warn!(hook, program = %run.program, outcome = outcome.as_str(), detail = %run.detail, "hook did not succeed")
            }
        }
        self.record(run.clone());
        run
    }

    async fn execute(
        &self,
        hook: &'static str,
        argv: &[String],
        details: &Details,
        timeout: Duration,
    ) -> (Outcome, Option<i32>, String) {
        let Some((program, args)) = argv.split_first() else {
            return (Outcome::Error, None, "an empty command".to_owned());
        };
        let mut command = isolated_command(program, HOOK_PATH);
        command
            .args(args)
            .env("BLUFIO_EVENT", hook)
            .env("BLUFIOCTL_SOCKET", &self.socket)
            .envs(details.iter().map(|(name, value)| (format!("BLUFIO_{name}"), value)))
            .current_dir("/")
            .stdin(Stdio::piped());
        // From here on the group dies with this call: on timeout, on shutdown, and after the exit.
        let (mut child, group) = match spawn_in_own_group(&mut command) {
            Ok(started) => started,
            Err(error) => return (Outcome::Error, None, format!("cannot start: {error}")),
        };
        if let Some(mut stdin) = child.stdin.take() {
            let json = details_json(hook, details);
            // A hook that does not read its stdin closes the pipe: that is not an error.
            tokio::spawn(async move {
                let _ = stdin.write_all(json.as_bytes()).await;
            });
        }
        let readers = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(log_lines(hook, "stdout", out))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(log_lines(hook, "stderr", err))),
        ];
        let ended = tokio::select! {
            status = child.wait() => Some(status),
            () = tokio::time::sleep(timeout) => None,
            () = self.token.cancelled() => {
                ProcessGroupGuard::kill(group.0);
                let _ = child.wait().await;
                return (Outcome::Cancelled, None, "killed: blufiod is stopping".to_owned());
            }
        };
        // Whatever it left running in its group goes with it, which also closes the pipes.
        ProcessGroupGuard::kill(group.0);
        let status = match ended {
            Some(status) => status,
            None => {
                let _ = child.wait().await;
                finish_readers(readers).await;
                return (
                    Outcome::Timeout,
                    None,
                    format!("killed after {} s (hooks.timeout_secs)", timeout.as_secs()),
                );
            }
        };
        finish_readers(readers).await;
        match status {
            Ok(status) if status.success() => (Outcome::Ok, Some(0), "exit status 0".to_owned()),
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => (Outcome::Failed, Some(code), format!("exit status {code}")),
                (None, Some(signal)) => (Outcome::Failed, None, format!("killed by signal {signal}")),
                (None, None) => (Outcome::Failed, None, format!("{status}")),
            },
            Err(error) => (Outcome::Error, None, format!("lost track of it: {error}")),
        }
    }

    /// Runs the alert hooks for events from the bus until `token` is cancelled.
    pub async fn watch(self: Arc<Self>, mut events: Subscription, token: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = token.cancelled() => return,
                event = events.next() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            if let Some((hook, details)) = alert_of(&event) {
                self.fire(hook, details);
            }
        }
    }
}

/// The hook an event fires, with its details; `None` for events no hook follows.
pub fn alert_of(event: &Event) -> Option<(&'static str, Details)> {
    Some(match event {
        Event::Ready => ("post_start", vec![("VERSION", env!("CARGO_PKG_VERSION").to_owned())]),
        Event::Reloaded { ok } => (
            "post_reload",
            vec![("OUTCOME", if *ok { "ok" } else { "failed" }.to_owned())],
        ),
        Event::BudgetExhausted { period } => ("on_budget_exhausted", vec![("PERIOD", (*period).to_owned())]),
        Event::MemoryPressureChanged { level, rss_bytes } => (
            "on_memory_pressure",
            vec![("LEVEL", (*level).to_owned()), ("RSS_BYTES", rss_bytes.to_string())],
        ),
        Event::BackupFinished { path, bytes } => (
            "on_backup",
            vec![
                ("OUTCOME", "ok".to_owned()),
                (
                    "BACKUP_PATH",
                    path.as_ref().map(|path| path.display().to_string()).unwrap_or_default(),
                ),
                ("BACKUP_BYTES", bytes.to_string()),
            ],
        ),
        Event::BackupFailed { error } => (
            "on_backup",
            vec![("OUTCOME", "failed".to_owned()), ("ERROR", error.clone())],
        ),
        Event::DeviceAdded { name, keyid } => (
            "on_device_change",
            vec![
                ("CHANGE", "added".to_owned()),
                ("DEVICE", name.clone()),
                ("KEYID", keyid.clone()),
            ],
        ),
        Event::DeviceRevoked { name, keyid } => (
            "on_device_change",
            vec![
                ("CHANGE", "revoked".to_owned()),
                ("DEVICE", name.clone()),
                ("KEYID", keyid.clone()),
            ],
        ),
        Event::ProviderDown { provider, error } => (
            "on_provider_down",
            vec![("PROVIDER", (*provider).to_owned()), ("ERROR", error.clone())],
        ),
        _ => return None,
    })
}

/// Details that look like a real event of `hook`, for `blufioctl hooks test`; `None` for a name
/// that is not a hook.
pub fn sample_details(hook: &str) -> Option<(&'static str, Details)> {
    let hook = *HOOK_NAMES.iter().find(|name| **name == hook)?;
    let sample = |event: Event| alert_of(&event).map(|(_, details)| details).unwrap_or_default();
    let details = match hook {
        "post_start" => sample(Event::Ready),
        "post_reload" => sample(Event::Reloaded { ok: true }),
        "on_budget_exhausted" => sample(Event::BudgetExhausted { period: "day" }),
        "on_memory_pressure" => sample(Event::MemoryPressureChanged {
            level: "warn",
            rss_bytes: 200 * 1024 * 1024,
        }),
        "on_backup" => sample(Event::BackupFinished {
            path: Some("/var/lib/blufio/backups/blufio-backup-test.tar".into()),
            bytes: 1_048_576,
        }),
        "on_device_change" => sample(Event::DeviceAdded {
            name: "test-device".to_owned(),
            keyid: "test-keyid".to_owned(),
        }),
        "on_provider_down" => sample(Event::ProviderDown {
            provider: "anthropic",
            error: "a test: the provider did not answer".to_owned(),
        }),
        _ => Vec::new(),
    };
    let mut details = details;
    details.push(("TEST", "1".to_owned()));
    Some((hook, details))
}

/// `{"event": hook, "time": unix seconds, ...details in lower case}`.
fn details_json(hook: &str, details: &Details) -> String {
    let mut object = serde_json::Map::new();
    object.insert("event".to_owned(), hook.into());
    object.insert("time".to_owned(), crate::util::unix_now().into());
    for (name, value) in details {
        object.insert(name.to_ascii_lowercase(), value.clone().into());
    }
    let mut text = serde_json::Value::Object(object).to_string();
    text.push('\n');
    text
}

/// Logs each line of a hook's output, at most [`MAX_LOGGED_LINES`] of at most
/// [`MAX_LINE_BYTES`]; the rest is read and counted so the hook never blocks on a full pipe. A
/// line is never held whole: past its first [`MAX_LINE_BYTES`] bytes the rest is dropped as it
/// arrives, so a hook that prints a gigabyte without a newline costs a fixed buffer.
async fn log_lines(hook: &'static str, stream: &'static str, mut output: impl AsyncRead + Unpin) {
    let mut buffer = [0u8; 8192];
    let mut cutter = LineCutter::default();
    let mut counter = LineCounter::default();
    loop {
        let read = match output.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        cutter.feed(&buffer[..read], |line| counter.log(hook, stream, line));
    }
    cutter.finish(|line| counter.log(hook, stream, line));
    if counter.skipped > 0 {
        tracing::info!(
            hook,
            stream,
            skipped = counter.skipped,
            "more output lines were not logged"
        );
    }
}

/// Splits output into lines of at most [`MAX_LINE_BYTES`], holding at most that much.
#[derive(Default)]
struct LineCutter {
    line: Vec<u8>,
}

impl LineCutter {
    /// Takes the next bytes of output; `emit` gets each line that ends in them.
    fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for chunk in bytes.split_inclusive(|byte| *byte == b'\n') {
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            let ends = chunk.last() == Some(&b'\n');
            let content = if ends { &chunk[..chunk.len() - 1] } else { chunk };
            self.line.extend_from_slice(&content[..content.len().min(room)]);
            if ends {
                emit(&self.line);
                self.line.clear();
            }
        }
    }

    /// The last line, when the output did not end with a newline.
    fn finish(self, mut emit: impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            emit(&self.line);
        }
    }
}

/// How many lines of one stream were logged, and how many were not.
#[derive(Default)]
struct LineCounter {
    logged: usize,
    skipped: u64,
}

impl LineCounter {
    fn log(&mut self, hook: &'static str, stream: &'static str, line: &[u8]) {
        if self.logged == MAX_LOGGED_LINES {
            self.skipped += 1;
            return;
        }
        self.logged += 1;
        let text = String::from_utf8_lossy(line);
        tracing::info!(hook, stream, "{}", printable(text.trim_end_matches('\r')));
    }
}

/// `text` with its control characters but tab escaped (`\r`, `\u{1b}`): a hook's output cannot
/// move the cursor or rewrite a line of whatever terminal shows the log.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

async fn finish_readers(readers: [Option<tokio::task::JoinHandle<()>>; 2]) {
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alert_hook_has_a_sample_and_a_source_event() {
        for name in HOOK_NAMES {
            let (hook, details) = sample_details(name).expect("every hook has a sample");
            assert_eq!(hook, name);
            assert!(details.iter().any(|(key, _)| *key == "TEST"));
        }
        assert!(sample_details("nope").is_none());
        let (hook, details) = alert_of(&Event::BackupFailed {
            error: "disk full".to_owned(),
        })
        .unwrap();
        assert_eq!(hook, "on_backup");
        assert!(details.contains(&("OUTCOME", "failed".to_owned())));
        assert!(
            alert_of(&Event::Starting).is_none(),
            "pre_start is awaited, not an alert"
        );
    }

    #[test]
    fn control_characters_in_output_are_shown_escaped() {
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(
            printable("ok\r\u{1b}[2KFAKE LINE"),
            "ok\\r\\u{1b}[2KFAKE LINE",
            "a carriage return or an escape sequence cannot rewrite the line"
        );
    }

    #[test]
    fn a_line_without_end_costs_a_fixed_buffer_and_is_cut() {
        let mut cutter = LineCutter::default();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        // 64 MiB of one line in 8 KiB reads, then two short lines, the last without a newline.
        let block = vec![b'x'; 8192];
        for _ in 0..8192 {
            cutter.feed(&block, |line| lines.push(line.to_vec()));
            assert!(
                cutter.line.capacity() <= 2 * MAX_LINE_BYTES,
                "held {}",
                cutter.line.capacity()
            );
        }
        cutter.feed(b"\nsecond\r\nthi", |line| lines.push(line.to_vec()));
        cutter.feed(b"rd", |line| lines.push(line.to_vec()));
        cutter.finish(|line| lines.push(line.to_vec()));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], vec![b'x'; MAX_LINE_BYTES]);
        assert_eq!(lines[1], b"second\r");
        assert_eq!(lines[2], b"third");
    }

    #[test]
    fn the_json_on_stdin_carries_the_details() {
        let json = details_json("on_device_change", &vec![("DEVICE", "phone \"x\"".to_owned())]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["event"], "on_device_change");
        assert_eq!(value["device"], "phone \"x\"");
        assert!(value["time"].as_i64().unwrap() > 1_700_000_000);
    }
}
