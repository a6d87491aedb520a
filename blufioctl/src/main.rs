//! `blufioctl`, the thin control client of blufiod: parses the command line, makes one gRPC call
//! over the daemon's Unix socket (or, for `chat` and `shell`, streams agent turns), prints the
//! answer and maps failures to the documented exit codes (see [`cli::EXIT_CODES_HELP`]).
//! `remote` does the same over the daemon's HTTPS gateway, with signed requests.
//!
//! This binary depends on `blufio-proto` only; it never opens the daemon's database or config
//! file itself (`config validate FILE` reads FILE and sends its text to the daemon).

mod chat;
mod cli;
mod client;
mod device;
mod output;
mod remote;
mod shell;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};
use serde::Serialize;

use blufio_proto::control::v1::TurnCompleted;

use crate::chat::{Echo, Transcript, TurnError};
use crate::cli::{
    ChatArgs, Cli, Command, ConfigCommand, DeviceCommand, RemoteArgs, RemoteCommand, RemoteSessionsCommand,
    SessionsCommand,
};
use crate::client::{Client, ClientError};
use crate::device::{KeyFile, KeyFileError};
use crate::output::{Human, Paint, Style};
use crate::remote::{Gateway, RemoteError};

/// The operation failed: the daemon refused it, the config is invalid, a timeout, or a local
/// error such as an unreadable FILE.
const EXIT_FAILED: u8 = 1;
/// The daemon is not reachable: socket missing, connection refused, or permission denied.
const EXIT_UNREACHABLE: u8 = 3;
// Exit code 2 (usage error) is produced by clap itself when parsing fails.

/// Hint printed when the daemon is not running or the socket is wrong.
const START_HINT: &str =
    "start it with 'blufiod' (or 'systemctl start blufiod'), or point --socket / BLUFIO_SOCKET at its socket";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
    /// `config validate` found problems; they have been printed and the exit code is 1.
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
                            connect; run as one of them, or point --socket / BLUFIO_SOCKET at a \
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
    let mut failure = Failure::from(error);
    if let Some(hint) = hint {
        failure.hint.get_or_insert_with(|| hint.to_owned());
    }
    failure
}

/// A failed call about sessions or turns, with the hints that only make sense there.
fn session_failure(error: ClientError) -> Failure {
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
    let mut failure = Failure::from(error);
    if let Some(hint) = hint {
        failure.hint.get_or_insert_with(|| hint.to_owned());
    }
    failure
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

    /// Prints human output; returns whether it carried error lines.
    fn human(&self, human: &Human) -> Result<bool, Failure> {
        self.stdout(&human.stdout)?;
        for warning in &human.warnings {
            self.warning(warning);
        }
        for error in &human.errors {
            self.error(error);
        }
        Ok(!human.errors.is_empty())
    }

    fn warning(&self, message: &str) {
        eprintln!("{}: {message}", self.stderr_style.paint(Paint::Yellow, "warning"));
    }

    fn error(&self, message: &str) {
        eprintln!("{}: {message}", self.stderr_style.paint(Paint::Red, "error"));
    }

    /// Prints a failure: its `error:` line and its `hint:` line, if any.
    fn failure(&self, failure: &Failure) {
        // `{:#}` prints the whole cause chain once, joined with ": ".
        self.error(&format!("{:#}", failure.error));
        if let Some(hint) = &failure.hint {
            eprintln!("{}: {hint}", self.stderr_style.paint(Paint::Bold, "hint"));
        }
    }

    /// Live output for a streamed turn.
    fn echo(&self) -> Echo {
        Echo::new(self.stderr_style)
    }
}

async fn run(cli: Cli, printer: &Printer) -> Result<Outcome, Failure> {
    let style = printer.stdout_style;
    let socket = socket_path(cli.socket);
    let call_timeout = Duration::from_secs(cli.timeout);
    match cli.command {
        Command::Status(args) => {
            let status = Client::connect(&socket, call_timeout).await?.get_status().await?;
            if args.json {
                printer.json(&output::status_json(&status))?;
            } else {
                printer.human(&output::status_human(&status, style))?;
            }
        }
        Command::Config(ConfigCommand::Get { key, output: args }) => {
            let key = key.unwrap_or_default();
            let config = Client::connect(&socket, call_timeout).await?.get_config(key).await?;
            if args.json {
                printer.json(&output::config_get_json(&config))?;
            } else {
                printer.human(&output::config_get_human(&config, style))?;
            }
        }
        Command::Config(ConfigCommand::Set {
            key,
            value,
            output: args,
        }) => {
            let set = Client::connect(&socket, call_timeout)
                .await?
                .set_config(key.clone(), value.clone())
                .await?;
            if args.json {
                printer.json(&output::config_set_json(&set))?;
            } else {
                printer.human(&output::config_set_human(&set, &key, &value, style))?;
            }
        }
        Command::Config(ConfigCommand::Validate { file, output: args }) => {
            // Read FILE before connecting: a typo in the path is the user's to fix first.
            let (toml, name) = match &file {
                Some(path) => (read_config_document(path)?, path.display().to_string()),
                None => (String::new(), String::new()),
            };
            let validation = Client::connect(&socket, call_timeout)
                .await?
                .validate_config(toml, name.clone())
                .await?;
            let file_name = file.as_ref().map(|_| name.as_str());
            if args.json {
                printer.json(&output::config_validate_json(&validation, file_name))?;
            } else {
                printer.human(&output::config_validate_human(&validation, file_name, style))?;
            }
            if !validation.valid {
                return Ok(Outcome::Invalid);
            }
        }
        Command::Config(ConfigCommand::Reload(args)) => {
            let reload = Client::connect(&socket, call_timeout).await?.reload_config().await?;
            if args.json {
                printer.json(&output::config_reload_json(&reload))?;
            } else {
                printer.human(&output::config_reload_human(&reload, style))?;
            }
        }
        Command::Chat(args) => return chat(args, &socket, call_timeout, printer).await,
        Command::Shell { session } => {
            let client = Client::connect(&socket, call_timeout).await?;
            return shell::run(client, session, printer).await;
        }
        Command::Sessions(SessionsCommand::List {
            limit,
            cursor,
            output: args,
        }) => {
            let list = Client::connect(&socket, call_timeout)
                .await?
                .list_sessions(limit.unwrap_or(0), cursor.unwrap_or_default())
                .await?;
            if args.json {
                printer.json(&output::sessions_list_json(&list))?;
            } else {
                let width = terminal_width(style);
                printer.human(&output::sessions_list_human(&list, unix_now(), width, style))?;
            }
        }
        Command::Sessions(SessionsCommand::Show {
            id,
            limit,
            output: args,
        }) => {
            let session = Client::connect(&socket, call_timeout)
                .await?
                .get_session(id, limit.unwrap_or(0))
                .await
                .map_err(session_failure)?;
            if args.json {
                printer.json(&output::session_show_json(&session))?;
            } else {
                printer.human(&output::session_show_human(&session, unix_now(), style))?;
            }
        }
        Command::Sessions(SessionsCommand::Delete { id, output: args }) => {
            Client::connect(&socket, call_timeout)
                .await?
                .delete_session(id.clone())
                .await
                .map_err(session_failure)?;
            if args.json {
                printer.json(&output::session_delete_json(&id))?;
            } else {
                printer.human(&output::session_delete_human(&id))?;
            }
        }
        Command::Device(DeviceCommand::Add {
            name,
            key_out,
            public_key,
            output: args,
        }) => {
            // Settle the key locally first: a file that exists or a bad public key is the user's
            // to fix before anything is registered.
            let (new_key, public_key_pem) = match (key_out, public_key) {
                (Some(path), _) => {
                    let file = KeyFile::create(&path)?;
                    let key = device::generate_key()?;
                    let pem = blufio_proto::httpsig::verifying_key_to_pem(&key.verifying_key())
                        .context("cannot encode the public key")?;
                    (Some((file, key)), pem)
                }
                (None, Some(path)) => (None, device::read_public_key(&path)?),
                (None, None) => return Err(anyhow::anyhow!("--key-out FILE or --public-key FILE is required").into()),
            };
            // Dropping the key file on any failure from here on removes it.
            let mut client = Client::connect(&socket, call_timeout).await?;
            let device = client.add_device(name, public_key_pem).await.map_err(device_failure)?;
            let key_file = match new_key {
                Some((file, key)) => Some(file.write(&key).map_err(|error| Failure {
                    code: EXIT_FAILED,
                    error,
                    hint: Some(format!(
                        "the device is registered but its key is lost: 'blufioctl device revoke {}', then add it \
                         again",
                        device.name
                    )),
                })?),
                None => None,
            };
            let key_file = key_file.as_ref().map(|path| path.display().to_string());
            if args.json {
                printer.json(&output::device_add_json(&device, key_file.as_deref()))?;
            } else {
                // Best effort: the gateway's address and pin make the next step copyable.
                let gateway = client.get_status().await.ok().and_then(|status| status.gateway);
                let remote = output::remote_command_hint(gateway.as_ref(), key_file.as_deref());
                printer.human(&output::device_add_human(&device, key_file.as_deref(), &remote, style))?;
            }
        }
        Command::Device(DeviceCommand::List(args)) => {
            let list = Client::connect(&socket, call_timeout).await?.list_devices().await?;
            if args.json {
                printer.json(&output::device_list_json(&list))?;
            } else {
                printer.human(&output::device_list_human(&list, unix_now(), style))?;
            }
        }
        Command::Device(DeviceCommand::Revoke { name, output: args }) => {
            let device = Client::connect(&socket, call_timeout)
                .await?
                .revoke_device(name)
                .await
                .map_err(device_failure)?;
            if args.json {
                printer.json(&output::device_revoke_json(&device))?;
            } else {
                printer.human(&output::device_revoke_human(&device))?;
            }
        }
        Command::Remote(args) => return remote(args, call_timeout, printer).await,
        Command::Usage { days, output: args } => {
            let usage = Client::connect(&socket, call_timeout).await?.get_usage(days).await?;
            if args.json {
                printer.json(&output::usage_json(&usage))?;
            } else {
                printer.human(&output::usage_human(&usage, days, style))?;
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "blufioctl", &mut script);
            let script = String::from_utf8(script).context("completion script is not utf-8")?;
            printer.stdout(&script)?;
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("cannot render the man page")?;
            let page = String::from_utf8(page).context("man page is not utf-8")?;
            printer.stdout(&page)?;
        }
    }
    Ok(Outcome::Success)
}

/// `blufioctl chat`: one turn, streamed, or collected into one JSON document with `--json`.
async fn chat(args: ChatArgs, socket: &Path, call_timeout: Duration, printer: &Printer) -> Result<Outcome, Failure> {
    // Read the message before connecting: an empty one is the user's to fix first.
    let text = chat_message(&args.message)?;
    let mut client = Client::connect(socket, call_timeout).await?;
    let mut transcript = Transcript::new(args.session.unwrap_or_default());
    let mut echo = (!args.json).then(|| printer.echo());
    let result = chat::run_turn(&mut client, text, &mut transcript, echo.as_mut()).await;
    finish_turn(printer, echo, &transcript, result)
}

/// Reports a turn of `chat` or `remote chat`: the `--json` document (when there is no `echo`),
/// or the end of the streamed text, the summary line and any warning.
fn finish_turn<E>(
    printer: &Printer,
    echo: Option<Echo>,
    transcript: &Transcript,
    result: Result<TurnCompleted, E>,
) -> Result<Outcome, Failure>
where
    Failure: From<E>,
{
    let Some(mut echo) = echo else {
        let completed = result?;
        printer.json(&output::chat_json(transcript, &completed))?;
        return Ok(Outcome::Success);
    };
    echo.end_text();
    let completed = result?;
    echo.note(&output::chat_summary(&transcript.session_id, &completed));
    if let Some(warning) = output::chat_stop_warning(&completed) {
        echo.warning(&warning);
    }
    if let Some(error) = echo.take_write_error() {
        return Err(anyhow::Error::new(error).context("cannot write to stdout").into());
    }
    Ok(Outcome::Success)
}

/// `blufioctl remote ...`: the command against the gateway at `--url`.
async fn remote(args: RemoteArgs, call_timeout: Duration, printer: &Printer) -> Result<Outcome, Failure> {
    let style = printer.stdout_style;
    // Read a chat message before anything else: an empty one is the user's to fix first.
    let message = match &args.command {
        RemoteCommand::Chat(chat) => Some(chat_message(&chat.message)?),
        RemoteCommand::Sessions(_) => None,
    };
    let (key, warning) = remote::read_key(&args.key)?;
    if let Some(warning) = warning {
        printer.warning(&warning);
    }
    let gateway = Gateway::new(args.url, key, args.keyid, args.pin, call_timeout)?;
    match args.command {
        RemoteCommand::Chat(chat) => {
            let text = message.unwrap_or_default();
            let mut transcript = Transcript::new(chat.session.unwrap_or_default());
            let mut echo = (!chat.json).then(|| printer.echo());
            let result = gateway.run_turn(&text, &mut transcript, echo.as_mut()).await;
            return finish_turn(printer, echo, &transcript, result);
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::List(args)) => {
            let list = gateway.list_sessions().await?;
            if args.json {
                printer.json(&output::sessions_list_json(&list))?;
            } else {
                let width = terminal_width(style);
                printer.human(&output::sessions_list_human(&list, unix_now(), width, style))?;
            }
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::Show { id, output: args }) => {
            let session = gateway.get_session(&id).await?;
            if args.json {
                printer.json(&output::session_show_json(&session))?;
            } else {
                printer.human(&output::session_show_human(&session, unix_now(), style))?;
            }
        }
        RemoteCommand::Sessions(RemoteSessionsCommand::Delete { id, output: args }) => {
            gateway.delete_session(&id).await?;
            if args.json {
                printer.json(&output::session_delete_json(&id))?;
            } else {
                printer.human(&output::session_delete_human(&id))?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// The chat message: the words joined with spaces, or stdin for a lone `-`.
fn chat_message(words: &[String]) -> anyhow::Result<String> {
    let text = if words == ["-"] {
        io::read_to_string(io::stdin()).context("cannot read the message from stdin")?
    } else {
        words.join(" ")
    };
    let text = text.trim();
    anyhow::ensure!(!text.is_empty(), "the message is empty");
    Ok(text.to_owned())
}

use blufio_proto::httpsig::unix_now;

/// The width of the terminal on stdout, when aligned output goes to one.
fn terminal_width(style: Style) -> Option<usize> {
    if !style.align || !io::stdout().is_terminal() {
        return None;
    }
    // rustyline (already here for `shell`) asks the terminal through its safe TIOCGWINSZ wrapper,
    // which spares this crate `unsafe` or another dependency. $COLUMNS is the fallback.
    let from_terminal = rustyline::DefaultEditor::new()
        .ok()
        .and_then(|mut editor| editor.dimensions())
        .map(|(columns, _rows)| usize::from(columns));
    from_terminal
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .filter(|columns| *columns > 0)
}

/// `--socket` / `BLUFIO_SOCKET` when given (and not empty), else the shared default location.
fn socket_path(given: Option<PathBuf>) -> PathBuf {
    given.filter(|path| !path.as_os_str().is_empty()).unwrap_or_else(|| {
        blufio_proto::paths::default_socket_path(|name| std::env::var_os(name), nix::unistd::geteuid().as_raw())
    })
}

/// Reads a config file for `config validate FILE`.
fn read_config_document(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    // An empty `toml` field asks the daemon to validate its own file instead. An empty file is a
    // valid (all-defaults) document, so send it as a lone newline, which parses the same.
    Ok(if text.is_empty() { "\n".to_owned() } else { text })
}
