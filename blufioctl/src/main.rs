//! `blufioctl`, the thin control client of blufiod: parses the command line, runs the command
//! (one module per command group in [`commands`]: one gRPC call over the daemon's Unix socket, or
//! for `chat` and `shell` streamed agent turns), and maps failures to the documented exit codes
//! (see [`cli::EXIT_CODES_HELP`]). `remote` does the same over the daemon's HTTPS gateway, with
//! signed requests. `backup` and `restore` stream an archive, which this binary verifies with the
//! archive reader that `blufio-proto` shares with the daemon.
//!
//! This binary depends on `blufio-proto` only; it never opens the daemon's database or config
//! file itself (`config validate FILE` reads FILE and sends its text to the daemon).

mod chat;
mod cli;
mod client;
mod commands;
mod device;
mod output;
mod progress;
mod remote;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::chat::{Echo, TurnError};
use crate::cli::{Cli, Command};
use crate::client::ClientError;
use crate::commands::Context;
use crate::device::KeyFileError;
use crate::output::{Human, Paint, Render, Style};
use crate::remote::RemoteError;

/// The operation failed: the daemon refused it, the config is invalid, a timeout, or a local
/// error such as an unreadable FILE.
const EXIT_FAILED: u8 = 1;
/// The daemon is not reachable: socket missing, connection refused, or permission denied.
const EXIT_UNREACHABLE: u8 = 3;
/// Ctrl-C stopped a `backup` or `restore`: 128 + SIGINT, what a shell reports for a process that
/// SIGINT ended, since those commands catch it to clean up first.
const EXIT_INTERRUPTED: u8 = 130;
// Exit code 2 (usage error) is produced by clap itself when parsing fails.

/// Hint printed when the daemon is not running or the socket is wrong.
const START_HINT: &str =
    "start it with 'blufiod' (or 'systemctl start blufiod'), or point --socket / BLUFIOCTL_SOCKET at its socket";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (cli, deprecated) = cli::parse(|name| std::env::var_os(name).is_some(), std::env::args_os());
    for warning in deprecated {
        crate::output::eprint_line(format_args!("warning: {warning}"));
    }
    let no_color = std::env::var_os("NO_COLOR");
    let stdout_style = Style::detect(cli.plain, io::stdout().is_terminal(), no_color.as_deref());
    let stderr_style = Style::detect(cli.plain, io::stderr().is_terminal(), no_color.as_deref());
    let printer = Printer {
        stdout_style,
        stderr_style,
    };

    match run(cli, &printer).await {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Invalid) => ExitCode::from(EXIT_FAILED),
        Err(failure) => {
            printer.failure(&failure);
            ExitCode::from(failure.code)
        }
    }
}

/// How a command that ran to completion ended.
enum Outcome {
    Success,
    /// The command ran but part of it failed, and that has been printed (`config validate` found
    /// problems, a turn of `shell` failed); the exit code is 1.
    Invalid,
}

/// A failed command: the error to print, an optional hint, and the exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
    hint: Option<String>,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: EXIT_FAILED,
            error,
            hint: None,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        let (code, hint) = match &error {
            ClientError::Unreachable { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                let hint = "blufiod lets root, its own user and members of its configured group \
                            connect; run as one of them, or point --socket / BLUFIOCTL_SOCKET at a \
                            socket you may use";
                (EXIT_UNREACHABLE, Some(hint.to_owned()))
            }
            ClientError::Unreachable { .. } => (EXIT_UNREACHABLE, Some(START_HINT.to_owned())),
            ClientError::Timeout { .. } => (
                EXIT_FAILED,
                Some("blufiod may be hung; check 'systemctl status blufiod' and its journal".into()),
            ),
            ClientError::Status(status) if status.code() == tonic::Code::PermissionDenied => (
                EXIT_FAILED,
                Some("'blufioctl status' shows the access your user has".to_owned()),
            ),
            ClientError::Connect { .. } | ClientError::Status(_) => (EXIT_FAILED, None),
        };
        Failure {
            code,
            error: anyhow::Error::new(error),
            hint,
        }
    }
}

impl From<TurnError> for Failure {
    fn from(error: TurnError) -> Self {
        match error {
            TurnError::Client(error) => session_failure(error),
            TurnError::NoAnswer => anyhow::anyhow!("the turn ended without an answer").into(),
        }
    }
}

impl From<KeyFileError> for Failure {
    fn from(error: KeyFileError) -> Self {
        let hint = match &error {
            KeyFileError::Exists { .. } => {
                "choose another --key-out path, or remove the file if it holds no key you still need"
            }
            KeyFileError::Create { .. } => "check that the directory exists and that you may write there",
        };
        Failure {
            code: EXIT_FAILED,
            error: anyhow::Error::new(error),
            hint: Some(hint.to_owned()),
        }
    }
}

impl From<RemoteError> for Failure {
    fn from(error: RemoteError) -> Self {
        let (code, hint) = match &error {
            RemoteError::Unreachable {
                origin,
                certificate_refused: true,
                ..
            } => (
                EXIT_UNREACHABLE,
                Some(format!(
                    "the certificate of {origin} is not trusted here; if it is blufiod's own certificate, pass \
                     --pin with the fingerprint that 'blufioctl status' shows on the daemon's host"
                )),
            ),
            RemoteError::Unreachable { origin, .. } => (
                EXIT_UNREACHABLE,
                Some(format!(
                    "check --url {origin}: is blufiod running there with [gateway] enabled? 'blufioctl status' on \
                     its host shows the gateway's address"
                )),
            ),
            RemoteError::PinMismatch { pin, .. } => (
                EXIT_UNREACHABLE,
                Some(format!(
                    "--pin is {pin}; compare with what 'blufioctl status' shows on the daemon's host: if its \
                     certificate was replaced, pin the new fingerprint, otherwise something intercepts the \
                     connection"
                )),
            ),
            RemoteError::ParseKey { .. } => (
                EXIT_FAILED,
                Some("--key takes the private key file written by 'blufioctl device add NAME --key-out FILE'".into()),
            ),
            RemoteError::Protocol { origin, .. } => (EXIT_FAILED, Some(format!("is {origin} a blufiod gateway?"))),
            RemoteError::Timeout { .. } => (
                EXIT_FAILED,
                Some("the gateway or blufiod may be overloaded or hung; --timeout waits longer".into()),
            ),
            RemoteError::Problem { .. } => (EXIT_FAILED, problem_hint(&error).map(str::to_owned)),
            // Plain HTTP to a TLS port: the server's TLS bytes are no HTTP version hyper knows.
            RemoteError::Transport { origin, reason }
                if origin.starts_with("http://") && reason.contains("invalid HTTP version") =>
            {
                (
                    EXIT_FAILED,
                    Some(format!(
                        "{origin} answered in TLS: blufiod's gateway speaks HTTPS; use --url https://{}",
                        origin.trim_start_matches("http://")
                    )),
                )
            }
            RemoteError::ReadKey { .. }
            | RemoteError::Setup { .. }
            | RemoteError::Sign(_)
            | RemoteError::Transport { .. }
            | RemoteError::NoAnswer => (EXIT_FAILED, None),
        };
        Failure {
            code,
            error: anyhow::Error::new(error),
            hint,
        }
    }
}

/// The hint for a problem the gateway reported, by its type.
fn problem_hint(error: &RemoteError) -> Option<&'static str> {
    Some(match error.problem_kind()? {
        "key-unknown" => {
            "register this key on the daemon's host with 'blufioctl device add NAME --public-key FILE' \
             ('blufioctl device list' shows the registered keyids), or check --keyid"
        }
        "signature-expired" => {
            "check this machine's clock: a signature is accepted only within gateway.max_clock_skew_secs \
             of the daemon's clock"
        }
        "session-not-found" => "'blufioctl remote ... sessions list' shows the sessions",
        "budget-exhausted" => "'blufioctl usage' on the daemon's host shows the spend against the caps",
        _ => return None,
    })
}

/// A failed device RPC, with the hints that only make sense there.
fn device_failure(error: ClientError) -> Failure {
    let hint = match &error {
        ClientError::Status(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::AlreadyExists) => {
            Some("'blufioctl device list' shows the registered devices")
        }
        _ => None,
    };
    with_hint(Failure::from(error), hint)
}

/// A failed secret or vault RPC, with the hint that only makes sense there.
fn secret_failure(error: ClientError) -> Failure {
    let hint = match &error {
        ClientError::Status(status) if status.code() == tonic::Code::NotFound => {
            Some("'blufioctl config list-secrets' shows the secrets")
        }
        _ => None,
    };
    with_hint(Failure::from(error), hint)
}

/// Adds `hint` unless the failure has one, or its message already points to the same command
/// (the daemon's messages often end with the command to run; saying it twice is noise).
fn with_hint(mut failure: Failure, hint: Option<&str>) -> Failure {
    let message = failure.error.to_string();
    let command = |hint: &str| hint.split('\'').nth(1).map(|command| command.to_owned());
    if let Some(hint) = hint
        && !command(hint).is_some_and(|command| message.contains(&command))
    {
        failure.hint.get_or_insert_with(|| hint.to_owned());
    }
    failure
}

/// A failed `Restore`, with the hint that only makes sense there: a vault key that does not open
/// the archive's secrets can be got around with `--without-secrets` (unless the daemon said so).
fn restore_failure(error: ClientError) -> Failure {
    let hint = match &error {
        ClientError::Status(status)
            if status.code() == tonic::Code::FailedPrecondition
                && status.message().contains("vault")
                && !status.message().contains("--without-secrets") =>
        {
            Some(
                "'blufioctl restore --without-secrets' restores everything but the secrets, which you then store \
                 again with 'blufioctl config set-secret'",
            )
        }
        ClientError::Status(status) if status.code() == tonic::Code::Unavailable => {
            Some("'blufioctl status' shows the turns in flight and a backup or restore in progress")
        }
        _ => None,
    };
    with_hint(Failure::from(error), hint)
}

/// A command stopped by Ctrl-C, after it cleaned up; `error` says what was left undone.
fn interrupted(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_INTERRUPTED,
        error,
        hint: None,
    }
}

/// A failed call about sessions or turns, with the hints that only make sense there.
pub(crate) fn session_failure(error: ClientError) -> Failure {
    let hint = match &error {
        ClientError::Status(status) if status.code() == tonic::Code::NotFound => {
            Some("'blufioctl sessions list' shows the sessions")
        }
        // RESOURCE_EXHAUSTED also means a full turn queue, where the daemon's "retry later" says
        // it all; only a budget cap gets the pointer to the spend.
        ClientError::Status(status)
            if status.code() == tonic::Code::ResourceExhausted && status.message().contains("budget") =>
        {
            Some("'blufioctl usage' shows the spend against the caps")
        }
        _ => None,
    };
    with_hint(Failure::from(error), hint)
}

/// Writes command output: stdout text, and `warning:`/`error:` lines on stderr.
struct Printer {
    stdout_style: Style,
    stderr_style: Style,
}

impl Printer {
    /// Writes `text` to stdout. A closed pipe (`blufioctl config get | head -1`) is not an error.
    fn stdout(&self, text: &str) -> Result<(), Failure> {
        let mut stdout = io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(anyhow::Error::new(error).context("cannot write to stdout").into()),
        }
    }

    /// Prints one `--json` document.
    fn json(&self, value: &impl Serialize) -> Result<(), Failure> {
        let text = output::json_document(value).context("cannot serialize the json output")?;
        self.stdout(&text)
    }

    /// Prints human output: its text on stdout, then its warning and error lines on stderr.
    fn human(&self, human: &Human) -> Result<(), Failure> {
        self.stdout(&human.stdout)?;
        for warning in &human.warnings {
            self.warning(warning);
        }
        for error in &human.errors {
            self.error(error);
        }
        Ok(())
    }

    /// Prints a command's answer: its `--json` document when `json`, otherwise its human output.
    /// This is the one place where a command's two renderings part ways.
    fn emit(&self, view: &impl Render, json: bool) -> Result<(), Failure> {
        if json {
            self.json(&view.json())
        } else {
            self.human(&view.human(self.stdout_style))
        }
    }

    /// Prints a command's human output on stderr, for a command whose stdout carries data
    /// (`backup -` writes the archive there).
    fn human_on_stderr(&self, view: &impl Render) {
        let human = view.human(self.stderr_style);
        let mut stderr = io::stderr().lock();
        // A closed stderr loses the summary, not the data; the exit code still tells.
        let _ = stderr.write_all(human.stdout.as_bytes()).and_then(|()| stderr.flush());
        drop(stderr);
        for warning in &human.warnings {
            self.warning(warning);
        }
        for error in &human.errors {
            self.error(error);
        }
    }

    // Messages may carry text from the daemon, a gateway or a model: every line goes through
    // `printable`, so no escape sequence reaches the terminal (newlines stay: a config error
    // lists its problems one per line).
    fn warning(&self, message: &str) {
        crate::output::eprint_line(format_args!(
            "{}: {}",
            self.stderr_style.paint(Paint::Yellow, "warning"),
            crate::output::printable(message, true)
        ));
    }

    fn error(&self, message: &str) {
        crate::output::eprint_line(format_args!(
            "{}: {}",
            self.stderr_style.paint(Paint::Red, "error"),
            crate::output::printable(message, true)
        ));
    }

    /// Prints a failure: its `error:` line and its `hint:` line, if any.
    fn failure(&self, failure: &Failure) {
        // `{:#}` prints the whole cause chain once, joined with ": ".
        self.error(&format!("{:#}", failure.error));
        if let Some(hint) = &failure.hint {
            crate::output::eprint_line(format_args!(
                "{}: {}",
                self.stderr_style.paint(Paint::Bold, "hint"),
                crate::output::printable(hint, true)
            ));
        }
    }

    /// Live output for a streamed turn.
    fn echo(&self) -> Echo {
        Echo::new(self.stderr_style)
    }
}

/// Runs the command of `cli`; the global flags reach it as a [`Context`].
async fn run(cli: Cli, printer: &Printer) -> Result<Outcome, Failure> {
    let context = Context {
        socket: socket_path(cli.socket),
        call_timeout: Duration::from_secs(cli.timeout),
        printer,
    };
    match cli.command {
        Command::Status(args) => commands::status::run(&context, args).await,
        Command::Config(command) => commands::config::run(&context, command).await,
        Command::Vault(command) => commands::vault::run(&context, command).await,
        Command::Chat(args) => commands::chat::run(&context, args).await,
        Command::Shell { session } => commands::shell::run(&context, session).await,
        Command::Sessions(command) => commands::sessions::run(&context, command).await,
        Command::Device(command) => commands::device::run(&context, command).await,
        Command::Remote(args) => commands::remote::run(&context, args).await,
        Command::Backup(args) => commands::backup::run(&context, args).await,
        Command::Restore(args) => commands::backup::restore(&context, args).await,
        Command::Usage { days, output } => commands::usage::run(&context, days, output).await,
        Command::Metrics => commands::metrics::run(&context).await,
        Command::Doctor(args) => commands::doctor::run(&context, args).await,
        Command::Logs(args) => commands::logs::run(&context, args).await,
        Command::Hooks(command) => commands::hooks::run(&context, command).await,
        Command::Completions { shell } => commands::generate::completions(&context, shell),
        Command::Man { dir } => commands::generate::man(&context, dir.as_deref()),
    }
}

/// `--socket` / `BLUFIOCTL_SOCKET` when given (and not empty), else the shared default location.
fn socket_path(given: Option<PathBuf>) -> PathBuf {
    given.filter(|path| !path.as_os_str().is_empty()).unwrap_or_else(|| {
        blufio_proto::paths::default_socket_path(|name| std::env::var_os(name), nix::unistd::geteuid().as_raw())
    })
}
