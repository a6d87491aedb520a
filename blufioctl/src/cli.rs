//! The command line of `blufioctl`: its clap definition and nothing else.
//!
//! Parsing only; this module never talks to the daemon or prints anything. The exit-code table in
//! [`EXIT_CODES_HELP`] is part of the public interface, so the numbers here must match `main.rs`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::remote::Pin;

/// Environment variable that names the control socket, like `--socket`. blufioctl's variables
/// start with `BLUFIOCTL_`; `BLUFIO_` is the daemon's configuration.
pub const SOCKET_ENV: &str = "BLUFIOCTL_SOCKET";
/// Environment variables for `remote`'s `--url`, `--key`, `--pin` and `--keyid`.
pub const REMOTE_URL_ENV: &str = "BLUFIOCTL_REMOTE_URL";
pub const REMOTE_KEY_ENV: &str = "BLUFIOCTL_REMOTE_KEY";
pub const REMOTE_PIN_ENV: &str = "BLUFIOCTL_REMOTE_PIN";
pub const REMOTE_KEYID_ENV: &str = "BLUFIOCTL_REMOTE_KEYID";

/// The names blufioctl's variables had before they left the daemon's `BLUFIO_` namespace: still
/// read when the new name is not set, with a warning. (subcommand, argument, new name, old name)
const OLD_ENV_NAMES: &[(Option<&str>, &str, &str, &str)] = &[
    (None, "socket", SOCKET_ENV, "BLUFIO_SOCKET"),
    (Some("remote"), "url", REMOTE_URL_ENV, "BLUFIO_REMOTE_URL"),
    (Some("remote"), "key", REMOTE_KEY_ENV, "BLUFIO_REMOTE_KEY"),
    (Some("remote"), "pin", REMOTE_PIN_ENV, "BLUFIO_REMOTE_PIN"),
    (Some("remote"), "keyid", REMOTE_KEYID_ENV, "BLUFIO_REMOTE_KEYID"),
];

/// Parses the command line (exiting on a usage error, as clap does), reading an old variable name
/// where only it is set; returns the deprecation warnings to print.
pub fn parse(env: impl Fn(&str) -> bool, args: impl IntoIterator<Item = std::ffi::OsString>) -> (Cli, Vec<String>) {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let mut command = Cli::command();
    let mut warnings = Vec::new();
    for (subcommand, argument, new, old) in OLD_ENV_NAMES {
        if env(new) || !env(old) {
            continue;
        }
        warnings.push(format!(
            "{old} is deprecated (BLUFIO_ names the daemon's settings); rename it to {new}"
        ));
        command = match subcommand {
            None => command.mut_arg(*argument, |arg| arg.env(*old)),
            Some(name) => command.mut_subcommand(*name, |sub| sub.mut_arg(*argument, |arg| arg.env(*old))),
        };
    }
    let matches = command
        .try_get_matches_from_mut(args)
        .unwrap_or_else(|error| error.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if let Some((name, problem)) = usage_problem(&cli) {
        // The subcommand's usage line, as clap shows for its own errors there.
        let kind = clap::error::ErrorKind::ArgumentConflict;
        match command.find_subcommand_mut(name) {
            Some(subcommand) => subcommand.error(kind, problem).exit(),
            None => command.error(kind, problem).exit(),
        }
    }
    (cli, warnings)
}

/// What clap cannot check itself: a combination of a value and a flag that make no sense
/// together. Reported as a usage error (exit code 2), like clap's own.
/// Returns the subcommand and the problem.
fn usage_problem(cli: &Cli) -> Option<(&'static str, &'static str)> {
    let is_stdio = |path: &Option<PathBuf>| path.as_deref() == Some(std::path::Path::new("-"));
    match &cli.command {
        Command::Backup(args) if is_stdio(&args.path) && args.output.json && !args.verify => Some((
            "backup",
            "`backup -` writes the archive to stdout, where --json would write its document too; drop one",
        )),
        Command::Restore(args) if args.path.as_os_str() == "-" => Some((
            "restore",
            "restore reads a file, which it verifies before sending; save the archive to a file first (`./-` names \
             a file called -)",
        )),
        _ => None,
    }
}

/// The exit status table, shown at the end of `--help` and in the man page.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0    success
  1    the operation failed: the daemon refused it (for example permission denied, an invalid
       value, a budget cap reached or no provider configured), the configuration is invalid, a
       chat turn ended without an answer, a backup archive is damaged, or the daemon did not
       answer in time
  2    usage error: the command line could not be parsed
  3    blufiod is not reachable: its socket is missing, the connection was refused, or
       permission to connect was denied; for `remote`, the gateway cannot be reached (connection
       refused, name not resolved, TLS failure) or its certificate does not match --pin
  130  `backup` or `restore` was interrupted by Ctrl-C (a backup then leaves no file behind)";

/// Control client for blufiod, the blufio agent daemon.
///
/// blufioctl talks gRPC to blufiod over its local control socket. Every command that prints data
/// accepts --json for a stable, machine-readable document on stdout.
#[derive(Debug, Parser)]
#[command(name = "blufioctl", version, after_help = EXIT_CODES_HELP, arg_required_else_help = true)]
pub struct Cli {
    /// Control socket of blufiod [default: $RUNTIME_DIRECTORY/blufiod.sock under systemd,
    /// /run/blufio/blufiod.sock for root, otherwise $XDG_RUNTIME_DIR/blufio/blufiod.sock]
    #[arg(long, global = true, env = SOCKET_ENV, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Plain output: no colour and no column alignment (colour is also off when NO_COLOR is set
    /// or stdout is not a terminal)
    #[arg(long, global = true)]
    pub plain: bool,

    /// Seconds to wait for the daemon to answer one request before giving up (exit code 1); chat
    /// and shell turns, backups and restores have no deadline
    ///
    /// Applies to every call except the turns of `chat` and `shell` and the transfers of `backup`
    /// and `restore`, which may run for minutes: for those only connecting is bounded (press
    /// Ctrl-C to stop waiting). A `remote chat` turn's stream must start within it.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's state, storage, subsystems and the caller's access
    Status(JsonArgs),

    /// Read, change, validate or reload the daemon's configuration, and store the secrets its keys
    /// name
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Show where the secret vault's key comes from and what the vault holds, or rotate its key
    ///
    /// The vault holds the secrets that config keys name as `secret:NAME` (`blufioctl config
    /// set-secret` stores one), encrypted under a key from a systemd credential, a key file, a
    /// passphrase, or a key file that blufiod generates in its state directory.
    #[command(subcommand)]
    Vault(VaultCommand),

    /// Send one message to the agent and stream its answer to stdout
    ///
    /// Tool activity and a summary line (session, tokens, cost, model) go to stderr. Without
    /// --session the daemon starts a new session; the summary names it so that the conversation
    /// can continue with --session. The turn has no deadline (--timeout does not apply).
    Chat(ChatArgs),

    /// Talk to the agent interactively, one message per line, in one session
    ///
    /// Lines starting with `/` are commands: /new, /session, /help, /quit. Ctrl-C cancels a
    /// streaming answer or clears the line; Ctrl-D quits. History is kept in
    /// $XDG_STATE_HOME/blufio/shell_history (default ~/.local/state/blufio/shell_history).
    Shell {
        /// Continue this session instead of starting a new one with the first message
        #[arg(long, value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        session: Option<String>,
    },

    /// List, show or delete chat sessions
    #[command(subcommand, alias = "session")]
    Sessions(SessionsCommand),

    /// Register, list or revoke the devices whose keys may sign requests to the HTTPS gateway
    #[command(subcommand, alias = "devices")]
    Device(DeviceCommand),

    /// Talk to a blufiod HTTPS gateway instead of the local socket, signing every request with a
    /// device key
    ///
    /// Every request is signed (RFC 9421, ed25519) with the private key in --key, which must have
    /// been registered on the daemon's host with `blufioctl device add`. --timeout bounds each
    /// request except the answer of `chat`.
    Remote(RemoteArgs),

    /// Write a backup archive of the daemon's state (database, sealed secrets, config), or check
    /// one with --verify
    ///
    /// blufiod takes a consistent snapshot while it keeps serving and streams it as a tar file
    /// with a SHA-256 of every member. blufioctl writes it to a temporary file (mode 0600: it
    /// holds the sealed secrets and the config) beside PATH, verifying every member as it writes,
    /// and only then renames it to PATH, so a failed or interrupted backup leaves nothing at PATH. The
    /// vault's key is never in an archive. --timeout does not apply; Ctrl-C stops.
    Backup(BackupArgs),

    /// Restore a backup archive into the daemon: verified here, then sent, verified again and
    /// swapped in by blufiod
    ///
    /// blufiod refuses new turns, lets running ones finish, keeps the current database as a
    /// safety copy, swaps in the archive's database, migrates it and resumes. It changes nothing
    /// when the archive is damaged, comes from a newer blufiod, or holds secrets its vault key
    /// cannot open (see --without-secrets). Each phase is printed on stderr as it begins.
    /// --timeout does not apply.
    Restore(RestoreArgs),

    /// Show spend against the budget caps, and tokens and cost per day, model and session
    Usage {
        /// Days back from today (UTC) to report
        #[arg(long, value_name = "N", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Print the daemon's metrics in the Prometheus text format (what the gateway's /metrics
    /// serves), through the control socket: works with the gateway disabled
    Metrics,

    /// Run the daemon's health checks and say what is wrong and how to fix it
    ///
    /// One line per check: ok, warn or fail, its name, how long it took, what it saw and, when
    /// something needs fixing, how. --deep adds the expensive checks (a whole-database integrity
    /// check). With blufiod down, it checks what it can from the outside (the config file, the
    /// state directory, stale locks and socket, the systemd unit) and shows the unit's last
    /// journal lines. Exit codes: 0 when no check failed (warnings included), 1 when one did, 3
    /// when blufiod cannot be reached (after the offline checks). Each check has up to 30 s;
    /// --timeout applies with a floor of 40 s.
    Doctor(DoctorArgs),

    /// Show the daemon's recent log lines, from memory, and follow new ones with -f
    ///
    /// blufiod keeps its last 2,000 lines (at most 512 KiB) in memory for this; the full log is
    /// in the journal (`journalctl -u blufiod`) or in log.file. Lines below log.level were never
    /// logged and cannot be shown. Each line: UTC time, level, target, message. A follower too
    /// slow for the daemon is told how many lines it missed. --timeout applies without -f.
    Logs(LogsArgs),

    /// List the hooks ([hooks] in the config) with their last runs, or run one for a test
    ///
    /// Hooks are the owner's programs that blufiod runs at lifecycle points (pre_start,
    /// post_start, pre_reload, post_reload, pre_stop, post_stop) and on alerts
    /// (on_budget_exhausted, on_memory_pressure, on_backup, on_device_change, on_provider_down).
    #[command(subcommand)]
    Hooks(HooksCommand),

    /// Print a shell completion script to stdout
    Completions {
        /// The shell to generate completions for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the roff man page to stdout, or write it and one page per subcommand into DIR
    /// (used by `cargo xtask dist`)
    #[command(hide = true)]
    Man {
        /// Write blufioctl.1 and blufioctl-SUBCOMMAND.1 pages here instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `blufioctl config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show the effective configuration (secrets masked), one key or all of them
    Get {
        /// A dotted key such as `log.level`; every key when omitted
        key: Option<String>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Change one key in the daemon's config file and apply it live where possible
    Set {
        /// A dotted key such as `log.level`
        key: String,
        /// The new value, parsed as a TOML value when it is one (30, true, "text", [1, 2]) and
        /// otherwise taken as a plain string; a secret key such as provider.api_key takes
        /// `secret:NAME`, naming a secret stored with `config set-secret NAME`
        #[arg(allow_hyphen_values = true)]
        value: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Remove one key from the daemon's config file, so that it takes its default (or its
    /// environment value) again, and apply that live where possible
    Unset {
        /// A dotted key such as `gateway.metrics_token`
        key: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Validate a configuration file, or the daemon's own file when FILE is omitted; exits 1 when
    /// it is invalid
    Validate {
        /// A TOML file to validate; it is read by blufioctl and sent to the daemon
        file: Option<PathBuf>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Re-read the config file, like SIGHUP, and report which keys changed
    Reload(JsonArgs),

    /// Store a secret in the daemon's encrypted vault, creating or replacing it; config keys name
    /// it as `secret:NAME`
    ///
    /// The value is never taken from the command line, where shell history and `ps` would see it.
    /// On a terminal it is asked for twice without echo; otherwise all of stdin is read, without
    /// one trailing newline: `openssl rand -hex 16 | blufioctl config set-secret metrics`.
    SetSecret {
        /// The secret's name: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or a digit
        name: String,
        /// Then point this config key at the secret, as `config set KEY secret:NAME` does
        #[arg(long = "for", value_name = "KEY")]
        for_key: Option<String>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// List the vault's secrets: their times, the config keys that name each, and at most the
    /// last four characters of a long value; never a value
    ListSecrets(JsonArgs),

    /// Delete a secret from the vault; refused while a config key names it, unless --force
    DeleteSecret {
        /// The secret's name
        name: String,
        /// Delete it even while config keys name it (they fail until given another secret)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl vault ...`.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Show the key source, how the key is derived, the cipher, the entries and a pending rekey
    Status(JsonArgs),

    /// Rotate the vault's key without touching a secret
    ///
    /// Without an option, blufiod writes a new random key to the key file in effect (its generated
    /// one or vault.key_file) and the rekey completes at once. With --new-passphrase or --new-key
    /// the rekey waits until blufiod starts with that key; the current key opens the vault until
    /// then. Root and the daemon's user only.
    #[command(group(ArgGroup::new("new").args(["new_passphrase", "new_key"])))]
    Rekey {
        /// Move to a new passphrase (at least 12 characters), asked for twice on a terminal or
        /// read from stdin
        #[arg(long)]
        new_passphrase: bool,
        /// Move to the key material in FILE (at least 32 bytes, for example from `openssl rand
        /// -hex 32`; trailing whitespace is dropped; `-` reads stdin), for a systemd credential
        /// or a key file you install
        #[arg(long, value_name = "FILE")]
        new_key: Option<PathBuf>,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl backup ...`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the archive; an existing directory gets the default name inside it, and `-`
    /// writes the archive to stdout [default: blufio-backup-<UTC time>.tar in the current
    /// directory]
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,

    /// Check the archive at PATH instead of making one (every member's size and SHA-256 against
    /// its manifest; `-` reads stdin); needs no daemon, exits 1 when the archive is damaged
    #[arg(long, requires = "path", conflicts_with_all = ["include_tls", "without_config", "force"])]
    pub verify: bool,

    /// Also put the gateway's TLS certificate and private key in the archive (root and the
    /// daemon's user only)
    #[arg(long)]
    pub include_tls: bool,

    /// Leave the config file out of the archive (needed by members of control.group: the file
    /// holds the owner's settings unmasked)
    #[arg(long)]
    pub without_config: bool,

    /// Replace PATH if it exists (it is replaced only once the new archive is verified)
    #[arg(long)]
    pub force: bool,

    /// Have blufiod stream the archive over the socket instead of passing the owner a read-only
    /// descriptor of its checked snapshot, from which blufioctl builds the archive (slower; `-`
    /// and members of control.group always get the stream)
    #[arg(long, conflicts_with = "verify")]
    pub stream: bool,

    #[command(flatten)]
    pub output: JsonArgs,
}

/// `blufioctl restore ...`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive, as written by `blufioctl backup`
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Restore even though this blufiod's vault key does not open the archive's secrets: they
    /// are dropped and must be stored again with `blufioctl config set-secret`
    #[arg(long)]
    pub without_secrets: bool,

    /// Also install the archive's config file over the daemon's (blufiod validates it first;
    /// root and the daemon's user only)
    #[arg(long)]
    pub restore_config: bool,

    /// Also install the archive's TLS key pair (from `backup --include-tls`; blufiod checks it
    /// loads first; root and the daemon's user only); otherwise the daemon keeps its own
    /// certificate
    #[arg(long)]
    pub restore_tls: bool,

    #[command(flatten)]
    pub output: JsonArgs,
}

/// `blufioctl chat ...`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Continue this session; a new session is started when omitted
    #[arg(long, value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub session: Option<String>,

    /// The message; its words are joined with spaces. A lone `-` reads the message from stdin
    #[arg(required = true, value_name = "MESSAGE")]
    pub message: Vec<String>,

    /// Print one JSON document with the whole answer at the end instead of streaming text
    #[arg(long)]
    pub json: bool,
}

/// `blufioctl sessions ...`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, most recently updated first
    List {
        /// Sessions to list (the daemon's default is 50)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
        /// Continue after this cursor (the `next_cursor` of a previous `--json` listing)
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Show one session and its most recent messages
    Show {
        /// The session id
        id: String,
        /// Most recent messages to show (the daemon's default is 200; a page also ends before
        /// 2 MiB of messages)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=2000))]
        limit: Option<u32>,
        /// Show the messages before this cursor (the `next_cursor` of a later page)
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Delete a session and its messages (spend stays in the usage ledger)
    Delete {
        /// The session id
        id: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Give a session a new title
    Rename {
        /// The session id
        id: String,
        /// The new title (1 to 200 characters)
        title: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Delete the sessions not updated for DAYS days (spend stays in the usage ledger)
    Prune {
        /// Age in days of the newest activity a pruned session may have
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
        older_than: u32,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Write a whole session (its latest 2000 messages) to stdout, as Markdown or JSON
    Export {
        /// The session id
        id: String,
        /// `markdown` (a readable transcript) or `json` (the `sessions show --json` document)
        #[arg(long, value_name = "FORMAT", default_value = "markdown", value_parser = ["markdown", "json"])]
        format: String,
    },
}

/// `blufioctl device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device: generate a key pair and keep its private half in --key-out, or register
    /// an existing public key with --public-key
    ///
    /// Only the public key is sent to the daemon. --key-out creates a new file readable only by
    /// you (mode 0600) and never overwrites an existing one.
    #[command(group(ArgGroup::new("key").required(true).args(["key_out", "public_key"])))]
    Add {
        /// A name for the device (letters, digits, '-', '_', '.'; at most 64)
        name: String,
        /// Generate a new ed25519 key and write its private half here (PKCS#8 PEM)
        #[arg(long, value_name = "FILE")]
        key_out: Option<PathBuf>,
        /// Register this existing ed25519 public key (PEM "PUBLIC KEY") instead
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// List the registered devices, revoked ones included
    List(JsonArgs),

    /// Revoke a device: the gateway refuses its next request
    Revoke {
        /// The device's name
        name: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Rename an active device
    Rename {
        /// The device's name
        name: String,
        /// Its new name
        new_name: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Delete the revoked entries of NAME from the list (revoke an active device first)
    Remove {
        /// The revoked devices' name
        name: String,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl remote ...`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The gateway's base URL, such as https://host.example:8443
    #[arg(long, env = REMOTE_URL_ENV, value_name = "URL", value_parser = crate::remote::BaseUrl::parse)]
    pub url: crate::remote::BaseUrl,

    /// The device's private key (PKCS#8 PEM), as written by `blufioctl device add --key-out`
    #[arg(long, env = REMOTE_KEY_ENV, value_name = "FILE")]
    pub key: PathBuf,

    /// Trust the gateway only if the SHA-256 fingerprint of its certificate is this (hex pairs,
    /// as `blufioctl status` shows, or `SHA256:base64` like device fingerprints); without it the
    /// system's certificate authorities decide
    #[arg(long, env = REMOTE_PIN_ENV, value_name = "SHA256")]
    pub pin: Option<Pin>,

    /// The keyid to sign with [default: the key's fingerprint, which is what `device add`
    /// registers]
    #[arg(long, env = REMOTE_KEYID_ENV, value_name = "KEYID")]
    pub keyid: Option<String>,

    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// The commands `remote` runs against the gateway.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Send one message to the agent and stream its answer to stdout, like `blufioctl chat`
    Chat(ChatArgs),

    /// List, show or delete chat sessions, like `blufioctl sessions`
    #[command(subcommand, alias = "session")]
    Sessions(RemoteSessionsCommand),

    /// The daemon's state, version, uptime, sessions, memory and cost, like `blufioctl status`
    /// (without what names the host: paths, pid, subsystems)
    Status(JsonArgs),

    /// Spend and tokens per day, model and session, against the caps, like `blufioctl usage`
    Usage {
        /// Days to cover, counting today (UTC)
        #[arg(long, value_name = "N", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl remote ... sessions ...`.
#[derive(Debug, Subcommand)]
pub enum RemoteSessionsCommand {
    /// List sessions, most recently updated first (at most 100)
    List(JsonArgs),

    /// Show one session and its most recent messages (at most 200)
    Show {
        /// The session id
        id: String,
        #[command(flatten)]
        output: JsonArgs,
    },

    /// Delete a session and its messages
    Delete {
        /// The session id
        id: String,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Add the expensive checks (PRAGMA integrity_check over the whole database)
    #[arg(long)]
    pub deep: bool,
    /// Run only these checks (by name, deep ones included); repeat or separate with commas
    #[arg(long, value_name = "CHECK", value_delimiter = ',')]
    pub only: Vec<String>,
    /// The daemon's config file, for the checks that run while blufiod is down (default: the
    /// one blufiod itself would read)
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub output: JsonArgs,
}

/// `blufioctl hooks ...`.
#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Show each hook's commands and its last run since the daemon started
    List(JsonArgs),

    /// Run one hook's commands now with a sample event (BLUFIO_TEST=1) and show how each ended
    ///
    /// Waits for them, up to 30 s. Exit code 1 when one did not succeed. Root and the daemon's
    /// user only: hooks run as the daemon's user.
    Test {
        /// The hook, for example on_backup
        name: String,
        #[command(flatten)]
        output: JsonArgs,
    },
}

/// `blufioctl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// How many recent lines to show first (0 with -f: only new ones)
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    pub lines: u32,
    /// Keep running and print each new line as the daemon logs it (stop with Ctrl-C)
    #[arg(short, long)]
    pub follow: bool,
    /// The least severe level to show
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevelArg::Info)]
    pub level: LogLevelArg,
    /// Print one JSON object per line (JSON Lines) instead of text
    #[arg(long)]
    pub json: bool,
}

/// A log level for `logs --level`, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevelArg {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// The `--json` flag shared by every data-printing command.
#[derive(Debug, Clone, Copy, Args)]
pub struct JsonArgs {
    /// Print one JSON document to stdout instead of human-readable text
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_accepts_negative_values() {
        let cli = Cli::try_parse_from(["blufioctl", "config", "set", "agent.temperature", "-1"])
            .expect("a hyphenated value should parse");
        match cli.command {
            Command::Config(ConfigCommand::Set { key, value, .. }) => {
                assert_eq!(key, "agent.temperature");
                assert_eq!(value, "-1");
            }
            other => panic!("unexpected command {other:?}"),
        }
    }

    #[test]
    fn chat_takes_words_and_flags_anywhere() {
        let cli = Cli::try_parse_from(["blufioctl", "chat", "what", "is", "--json", "up?", "--session", "s1"])
            .expect("chat should parse");
        match cli.command {
            Command::Chat(args) => {
                assert_eq!(args.message, ["what", "is", "up?"]);
                assert!(args.json);
                assert_eq!(args.session.as_deref(), Some("s1"));
            }
            other => panic!("unexpected command {other:?}"),
        }
        let cli = Cli::try_parse_from(["blufioctl", "chat", "-"]).expect("a lone dash is a message");
        assert!(matches!(cli.command, Command::Chat(args) if args.message == ["-"]));
        assert!(
            Cli::try_parse_from(["blufioctl", "chat"]).is_err(),
            "a message is required"
        );
    }

    #[test]
    fn device_add_needs_exactly_one_key_source() {
        let cli = Cli::try_parse_from(["blufioctl", "device", "add", "laptop", "--key-out", "k.pem"])
            .expect("--key-out parses");
        assert!(matches!(
            cli.command,
            Command::Device(DeviceCommand::Add { key_out: Some(_), .. })
        ));
        let cli = Cli::try_parse_from([
            "blufioctl",
            "device",
            "add",
            "laptop",
            "--public-key",
            "k.pub",
            "--json",
        ])
        .expect("--public-key parses");
        assert!(matches!(
            cli.command,
            Command::Device(DeviceCommand::Add {
                public_key: Some(_),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["blufioctl", "device", "add", "laptop"]).is_err());
        assert!(
            Cli::try_parse_from(["blufioctl", "device", "add", "x", "--key-out", "a", "--public-key", "b"]).is_err()
        );
    }

    #[test]
    fn an_empty_session_is_refused_rather_than_read_as_a_new_one() {
        for args in [
            &["blufioctl", "chat", "--session", "", "hi"][..],
            &["blufioctl", "shell", "--session", ""],
            &[
                "blufioctl",
                "remote",
                "--url",
                "https://h",
                "--key",
                "k",
                "chat",
                "--session",
                "",
                "hi",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["blufioctl", "chat", "--session", "s1", "hi"]).is_ok());
    }

    #[test]
    fn remote_takes_connection_flags_then_a_command() {
        let pin = ["AB"; 32].join(":");
        let cli = Cli::try_parse_from([
            "blufioctl",
            "remote",
            "--url",
            "https://h:8443",
            "--key",
            "k.pem",
            "--pin",
            &pin,
            "chat",
            "--json",
            "hi",
            "there",
        ])
        .expect("remote chat parses");
        let Command::Remote(remote) = cli.command else {
            panic!("expected remote");
        };
        assert_eq!(remote.url.to_string(), "https://h:8443/");
        assert_eq!(remote.pin.map(|pin| pin.to_string()), Some(pin));
        assert!(matches!(remote.command, RemoteCommand::Chat(args) if args.json && args.message == ["hi", "there"]));
        let cli = Cli::try_parse_from([
            "blufioctl",
            "remote",
            "--url",
            "https://h",
            "--key",
            "k",
            "sessions",
            "show",
            "s1",
            "--json",
        ])
        .expect("remote sessions parses");
        assert!(matches!(
            cli.command,
            Command::Remote(RemoteArgs {
                command: RemoteCommand::Sessions(RemoteSessionsCommand::Show { .. }),
                ..
            })
        ));
        assert!(
            Cli::try_parse_from([
                "blufioctl",
                "remote",
                "--url",
                "u",
                "--key",
                "k",
                "--pin",
                "zz",
                "sessions",
                "list"
            ])
            .is_err(),
            "a malformed pin is a usage error"
        );
    }

    #[test]
    fn secrets_never_come_from_argv() {
        let cli = Cli::try_parse_from([
            "blufioctl",
            "config",
            "set-secret",
            "anthropic",
            "--for",
            "provider.api_key",
        ])
        .expect("set-secret parses");
        assert!(matches!(
            cli.command,
            Command::Config(ConfigCommand::SetSecret { name, for_key: Some(key), .. })
                if name == "anthropic" && key == "provider.api_key"
        ));
        for args in [
            &["blufioctl", "config", "set-secret", "anthropic", "sk-value"][..],
            &["blufioctl", "config", "set-secret", "anthropic", "--value", "sk-value"],
            &["blufioctl", "vault", "rekey", "--new-passphrase", "correct horse"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn rekey_takes_at_most_one_new_key() {
        let cli = Cli::try_parse_from(["blufioctl", "vault", "rekey"]).expect("rekey parses");
        assert!(matches!(
            cli.command,
            Command::Vault(VaultCommand::Rekey {
                new_passphrase: false,
                new_key: None,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["blufioctl", "vault", "rekey", "--new-key", "-", "--json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Vault(VaultCommand::Rekey { new_key: Some(path), output, .. }) if path.as_os_str() == "-" && output.json
        ));
        assert!(Cli::try_parse_from(["blufioctl", "vault", "rekey", "--new-passphrase", "--new-key", "k"]).is_err());
    }

    #[test]
    fn backup_and_restore_arguments() {
        let cli = Cli::try_parse_from(["blufioctl", "backup"]).expect("backup parses");
        assert!(matches!(&cli.command, Command::Backup(args) if args.path.is_none() && !args.verify));
        assert_eq!(usage_problem(&cli), None);
        let cli = Cli::try_parse_from(["blufioctl", "backup", "x.tar", "--verify", "--json"]).expect("parses");
        assert!(matches!(&cli.command, Command::Backup(args) if args.verify && args.output.json));
        assert!(
            Cli::try_parse_from(["blufioctl", "backup", "--verify"]).is_err(),
            "--verify needs a PATH"
        );
        assert!(Cli::try_parse_from(["blufioctl", "backup", "--verify", "x", "--include-tls"]).is_err());
        assert!(Cli::try_parse_from(["blufioctl", "backup", "--verify", "x", "--force"]).is_err());

        let cli = Cli::try_parse_from(["blufioctl", "backup", "-", "--json"]).expect("clap takes it");
        assert!(usage_problem(&cli).is_some_and(|(name, problem)| name == "backup" && problem.contains("stdout")));
        let cli = Cli::try_parse_from(["blufioctl", "backup", "-", "--verify", "--json"]).expect("parses");
        assert_eq!(usage_problem(&cli), None, "verifying stdin prints json to stdout");

        let cli = Cli::try_parse_from(["blufioctl", "restore", "x.tar", "--without-secrets", "--restore-config"])
            .expect("restore parses");
        assert!(matches!(
            &cli.command,
            Command::Restore(args) if args.without_secrets && args.restore_config && !args.output.json
        ));
        assert!(
            Cli::try_parse_from(["blufioctl", "restore"]).is_err(),
            "PATH is required"
        );
        let cli = Cli::try_parse_from(["blufioctl", "restore", "-"]).expect("clap takes it");
        assert!(usage_problem(&cli).is_some());
    }

    #[test]
    fn limits_are_bounded() {
        assert!(Cli::try_parse_from(["blufioctl", "sessions", "list", "--limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["blufioctl", "sessions", "list", "--limit", "501"]).is_err());
        assert!(Cli::try_parse_from(["blufioctl", "usage", "--days", "367"]).is_err());
        let cli = Cli::try_parse_from(["blufioctl", "usage"]).expect("usage parses");
        assert!(matches!(cli.command, Command::Usage { days: 30, .. }));
    }
}
