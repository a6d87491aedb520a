//! The daemon's configuration: one `deny_unknown_fields` struct tree, loaded with figment from the
//! embedded defaults, then the config file, then `BLUFIO_SECTION__KEY` environment variables.
//!
//! Every key is listed once in [`KEYS`] with whether it is secret and whether a change needs a
//! restart; tests keep that registry, the struct tree and `packaging/blufiod.example.toml` in
//! step. This module never touches the network, the database or the control socket.

mod agent;
mod file;
mod hooks;
mod keys;
mod live;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use agent::{
    AgentConfig, BackupConfig, BudgetConfig, GatewayConfig, HttpGetConfig, MemoryConfig, ModelPrice, Principal,
    ProviderConfig, ProviderKind, RunCommandConfig, SECRET_REFERENCE_PREFIX, Secret, SecretSetting, ToolsConfig,
    VaultConfig, default_pricing, secret_name_problem,
};
pub use file::{ConfigWriteError, Edit, prepare_set, prepare_unset};
pub use hooks::{HOOK_NAMES, HooksConfig};
pub use keys::{
    ConfigEntry, KeySpec, ValueSource, changed_keys, entries, key_path, mask_url_credentials, suggest as keys_suggest,
};
pub use live::{ConfigChange, ConfigHandle, LiveConfig, ReloadError, SetOutcome};

/// Prefix of the environment variables that override config keys (`BLUFIO_LOG__LEVEL=debug`).
pub const ENV_PREFIX: &str = "BLUFIO_";
/// Environment variables with the prefix that are not config keys: the binaries' own options.
const ENV_NOT_KEYS: &[&str] = &["CONFIG", "SOCKET", "VAULT_PASSPHRASE"];
/// The start (after `BLUFIO_`, lower-cased) of blufioctl's older variables, which the daemon
/// ignores.
const CLIENT_ENV_PREFIX: &str = "remote_";
/// File name of the config file inside a configuration directory.
pub const CONFIG_FILE_NAME: &str = "blufiod.toml";
/// File name of the database inside the state directory.
pub const DATABASE_FILE_NAME: &str = "blufio.db";

/// Seconds the daemon waits for in-flight work on shutdown. Ten seconds is long enough for an
/// RPC to finish and well inside systemd's default `TimeoutStopSec` of 90 s.
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// SQLite busy timeout: how long a statement waits for a lock before failing. Five seconds rides
/// out a checkpoint or a backup without making a stuck writer look alive for long.
const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Connections in the read pool. Reads are short; four keeps a 2-core VPS busy without
/// hoarding file descriptors.
const DEFAULT_READ_CONNECTIONS: u32 = 4;

/// The whole configuration of `blufiod`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Process-level settings: directories and shutdown.
    pub daemon: DaemonConfig,
    /// Logging.
    pub log: LogConfig,
    /// The local gRPC control socket.
    pub control: ControlConfig,
    /// The SQLite database.
    pub storage: StorageConfig,
    /// The LLM provider.
    pub provider: ProviderConfig,
    /// The turn loop.
    pub agent: AgentConfig,
    /// Spending caps.
    pub budget: BudgetConfig,
    /// Prices per model, USD per million tokens; merged over the built-in table.
    pub pricing: std::collections::BTreeMap<String, ModelPrice>,
    /// Built-in tools, each off unless enabled.
    pub tools: ToolsConfig,
    /// The HTTPS gateway for remote clients.
    pub gateway: GatewayConfig,
    /// The daemon's own memory limit.
    pub memory: MemoryConfig,
    /// Where the secrets vault's key comes from.
    pub vault: VaultConfig,
    /// Scheduled backups.
    pub backup: BackupConfig,
    /// Programs run at lifecycle points and on alerts.
    pub hooks: HooksConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            daemon: DaemonConfig::default(),
            log: LogConfig::default(),
            control: ControlConfig::default(),
            storage: StorageConfig::default(),
            provider: ProviderConfig::default(),
            agent: AgentConfig::default(),
            budget: BudgetConfig::default(),
            pricing: default_pricing(),
            tools: ToolsConfig::default(),
            gateway: GatewayConfig::default(),
            memory: MemoryConfig::default(),
            vault: VaultConfig::default(),
            backup: BackupConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// State directory (database, keys). Default: `$STATE_DIRECTORY`, else `/var/lib/blufio` for
    /// root, else `$XDG_STATE_HOME/blufio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Runtime directory (socket, lock). Default: `$RUNTIME_DIRECTORY`, else `/run/blufio` for
    /// root, else `$XDG_RUNTIME_DIR/blufio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<PathBuf>,
    /// Seconds to wait for in-flight work when stopping.
    pub shutdown_timeout_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: None,
            runtime_dir: None,
            shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter directive such as `info` or `blufiod=debug,info`. `RUST_LOG`, when set,
    /// takes precedence.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
    /// A file the daemon appends its log to instead of stderr, reopened on SIGUSR1 and on
    /// reload so that logrotate can rename it away. Unset: stderr (which journald captures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Auto,
            file: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human lines; coloured on a TTY, without colour and timestamps under journald, with
    /// timestamps and without colour in `log.file`.
    Auto,
    /// Human lines, never coloured.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket. Default: `<runtime_dir>/blufiod.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// A group whose members may use the socket (mode 0660, group-owned). Unset: only root and
    /// the daemon's own user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// What members of `group` may do.
    pub group_access: Access,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: None,
            group: None,
            group_access: Access::ReadOnly,
        }
    }
}

/// What a caller on the control socket may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Nothing.
    None,
    /// Calls that only read.
    ReadOnly,
    /// Every call.
    Full,
}

impl Access {
    /// The name used in the config file and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::ReadOnly => "read-only",
            Access::Full => "full",
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Path of the SQLite database. Default: `<state_dir>/blufio.db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Milliseconds a statement waits for a database lock before failing.
    pub busy_timeout_ms: u64,
    /// Connections in the read-only pool (the writer is always one connection).
    pub read_connections: u32,
    /// What a committed write survives: `normal` a killed daemon, `full` also a power loss or a
    /// kernel crash (each commit is synced to disk first).
    pub synchronous: Synchronous,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: None,
            busy_timeout_ms: DEFAULT_BUSY_TIMEOUT_MS,
            read_connections: DEFAULT_READ_CONNECTIONS,
            synchronous: Synchronous::Normal,
        }
    }
}

/// SQLite's `synchronous` setting (WAL mode), as `storage.synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Synchronous {
    /// Commits reach the operating system before they are acknowledged: they survive a killed
    /// or crashed daemon, not a power loss or a kernel crash (the file is never corrupted).
    Normal,
    /// Each commit is synced to disk before it is acknowledged: it survives a power loss too.
    Full,
}

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment could not merge or extract the configuration.
    #[error("invalid configuration:\n{}", .problems.join("\n"))]
    Invalid {
        /// One line per problem, each naming the key and its source.
        problems: Vec<String>,
    },
    /// The config file named by `--config` or `BLUFIO_CONFIG` does not exist.
    #[error(
        "config file {path} (named by {named_by}) does not exist: create it (`blufiod --check-config` lists every key; blufiod.example.toml documents them) or {} to use the defaults",
        if *named_by == "--config" { "drop --config" } else { "unset BLUFIO_CONFIG" }
    )]
    MissingFile {
        /// The path given.
        path: PathBuf,
        /// `--config` or `BLUFIO_CONFIG`.
        named_by: &'static str,
    },
    /// The config file exists but cannot be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// The path read.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the config comes from, and how the environment is consulted.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The config file (which may not exist).
    pub path: PathBuf,
    /// What named the path (`--config` or `BLUFIO_CONFIG`), if anything did: then it must exist.
    pub named_by: Option<&'static str>,
}

impl ConfigSource {
    /// Resolves the config file path: `--config` (`flag`), else `BLUFIO_CONFIG`, else
    /// `$CONFIGURATION_DIRECTORY/blufiod.toml`, else `/etc/blufio/blufiod.toml` for root, else
    /// `$XDG_CONFIG_HOME/blufio/blufiod.toml` (`~/.config/...`).
    pub fn resolve(flag: Option<PathBuf>, env: impl Fn(&str) -> Option<OsString>, euid: u32) -> Self {
        if let Some(path) = flag {
            return Self {
                path,
                named_by: Some("--config"),
            };
        }
        if let Some(path) = env("BLUFIO_CONFIG").filter(|path| !path.is_empty()) {
            return Self {
                path: PathBuf::from(path),
                named_by: Some("BLUFIO_CONFIG"),
            };
        }
        let path = if let Some(dir) = blufio_proto::paths::first_systemd_dir(env("CONFIGURATION_DIRECTORY")) {
            dir.join(CONFIG_FILE_NAME)
        } else if euid == 0 {
            PathBuf::from("/etc/blufio").join(CONFIG_FILE_NAME)
        } else {
            let base = env("XDG_CONFIG_HOME")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".config")))
                .unwrap_or_else(|| PathBuf::from("/etc"));
            base.join("blufio").join(CONFIG_FILE_NAME)
        };
        Self { path, named_by: None }
    }

    /// Loads the effective configuration: defaults < file < environment.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let text = self.read_file()?;
        load_from(text.as_deref(), Some(&self.path), true)
    }

    /// Reads the config file, or `None` when it does not exist (and need not).
    pub fn read_file(&self) -> Result<Option<String>, ConfigError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(named_by) = self.named_by {
                    Err(ConfigError::MissingFile {
                        path: self.path.clone(),
                        named_by,
                    })
                } else {
                    Ok(None)
                }
            }
            Err(source) => Err(ConfigError::ReadFile {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// A loaded configuration and the figment it came from (which knows each value's source).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    figment: Figment,
}

impl Loaded {
    /// `config` as if it came from defaults alone, for tests of a subsystem that reads it.
    #[cfg(test)]
    pub fn for_tests(config: Config) -> Self {
        Self {
            config,
            figment: Figment::new(),
        }
    }

    /// Where the effective value of a dotted key came from.
    pub fn source_of(&self, key: &str) -> ValueSource {
        match self.figment.find_metadata(key) {
            Some(metadata) if matches!(metadata.source, Some(figment::Source::File(_))) => ValueSource::File,
            Some(metadata) if metadata.name.contains("environment") => ValueSource::Env,
            _ => ValueSource::Default,
        }
    }
}

/// Loads a configuration from TOML text (`None`: no file) with `name` used in messages, and the
/// `BLUFIO_*` environment when `with_env`.
pub fn load_from(text: Option<&str>, name: Option<&Path>, with_env: bool) -> Result<Loaded, ConfigError> {
    let loaded = extract(text, name, with_env)?;
    let problems = loaded.config.validate();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid { problems });
    }
    Ok(loaded)
}

/// Like [`load_from`], but only checks the shape of the document, not the semantic rules of
/// [`Config::validate`] (which depend on the machine, such as whether a group exists).
fn extract(text: Option<&str>, name: Option<&Path>, with_env: bool) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(text) = text {
        let toml = Toml::string(text);
        figment = match name {
            Some(path) => figment.merge(file::NamedToml::new(toml, path)),
            None => figment.merge(toml),
        };
    }
    if with_env {
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(ENV_NOT_KEYS)
                // blufioctl's own variables (BLUFIO_REMOTE_*, from before it had BLUFIOCTL_*)
                // may be exported in the same shell: they are not the daemon's keys.
                .filter(|key| !key.as_str().to_ascii_lowercase().starts_with(CLIENT_ENV_PREFIX))
                .split("__"),
        );
    }
    let config: Config = match figment.extract() {
        Ok(config) => config,
        Err(error) => {
            // serde stops at the first bad field of a struct: extract each section on its own,
            // so that the owner sees every problem of the file at once. A syntax error (no key
            // path) is the same for every section, so it is said once.
            let syntax = error.path.is_empty();
            let mut problems = file::describe_errors(error, text);
            for error in section_errors(&figment).into_iter().filter(|_| !syntax) {
                for problem in file::describe_errors(error, text) {
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                }
            }
            return Err(ConfigError::Invalid { problems });
        }
    };
    Ok(Loaded { config, figment })
}

/// The errors of each top-level section extracted alone (each stops at its first bad field).
fn section_errors(figment: &Figment) -> Vec<figment::Error> {
    fn errors_of<T: serde::de::DeserializeOwned>(figment: &Figment, section: &str) -> Option<figment::Error> {
        let mut error = figment.extract_inner::<T>(section).err()?;
        // figment puts the section after the field in the path of an inner extraction.
        if error.path.first().map(String::as_str) != Some(section) {
            error.path.retain(|part| part != section);
            error.path.insert(0, section.to_owned());
        }
        Some(error)
    }
    [
        errors_of::<DaemonConfig>(figment, "daemon"),
        errors_of::<LogConfig>(figment, "log"),
        errors_of::<ControlConfig>(figment, "control"),
        errors_of::<StorageConfig>(figment, "storage"),
        errors_of::<ProviderConfig>(figment, "provider"),
        errors_of::<AgentConfig>(figment, "agent"),
        errors_of::<BudgetConfig>(figment, "budget"),
        errors_of::<std::collections::BTreeMap<String, ModelPrice>>(figment, "pricing"),
        errors_of::<ToolsConfig>(figment, "tools"),
        errors_of::<GatewayConfig>(figment, "gateway"),
        errors_of::<MemoryConfig>(figment, "memory"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The smallest memory limit, in MiB: twice the release daemon's measured idle resident set
/// (14 to 17 MiB, `cargo xtask bench memory`, docs/benchmarks.md), so that turns have room.
pub const MEMORY_FLOOR_MIB: u64 = 32;

/// What one gateway connection can make the daemon hold, in KiB, whether or not it ever
/// authenticates: TLS buffers, HTTP/2 state and 16 streams whose responses the client never
/// reads. Measured at 166 KiB (128 such connections of 16 streams each to the release daemon,
/// docs/benchmarks.md); the limit must leave room for `gateway.max_connections` of them.
const GATEWAY_CONNECTION_KIB: u64 = 192;

/// The shortest `gateway.metrics_token`: it guards `/metrics` from other hosts, and failed
/// guesses are not rate-limited.
pub const MIN_METRICS_TOKEN_CHARS: usize = 16;

/// The largest dollar amount a budget cap or price may be: far above any real one, and small
/// enough that micro-dollar arithmetic cannot overflow.
pub const MAX_USD: f64 = 1e9;

/// The documented range of every numeric key, inclusive. Validation enforces it, so no value can
/// overflow where it meets time (deadlines, timers) or sizes; a test keeps it in step with the
/// registry, and the example config states the same bounds.
pub const RANGES: &[(&str, u64, u64)] = &[
    ("agent.context_tokens", 1, 10_000_000),
    ("agent.max_cached_sessions", 1, 1_000_000),
    ("agent.max_concurrent_turns", 1, 1_024),
    ("agent.max_queued_turns", 0, 100_000),
    ("agent.max_tool_iterations", 1, 1_000),
    ("agent.session_retention_days", 0, 36_500),
    ("backup.interval_secs", 0, 366 * 86_400),
    ("backup.keep", 1, 10_000),
    ("daemon.shutdown_timeout_secs", 1, 3_600),
    ("gateway.idle_timeout_secs", 1, 86_400),
    ("gateway.max_body_bytes", 1, 64 * 1024 * 1024),
    // Nonces are remembered for twice the skew; an hour either way is already generous.
    ("gateway.max_clock_skew_secs", 1, 3_600),
    ("gateway.max_connections", 1, 65_536),
    ("gateway.max_connections_per_address", 1, 65_536),
    ("gateway.max_header_bytes", 1_024, 1024 * 1024),
    ("gateway.rate_limit_per_minute", 1, 1_000_000),
    ("gateway.replay_cache_entries", 1, 10_000_000),
    ("gateway.request_timeout_secs", 1, 3_600),
    ("hooks.max_concurrent", 1, 64),
    ("hooks.timeout_secs", 1, 3_600),
    ("memory.limit_mib", 0, 1024 * 1024),
    ("memory.pressure_percent", 1, 100),
    ("memory.warn_percent", 1, 100),
    ("provider.connect_timeout_secs", 1, 600),
    ("provider.idle_timeout_secs", 1, 3_600),
    ("provider.max_retries", 0, 20),
    ("provider.max_tokens", 1, 1_000_000),
    ("provider.request_timeout_secs", 1, 86_400),
    ("provider.retry_base_delay_ms", 0, 600_000),
    ("storage.busy_timeout_ms", 0, 600_000),
    ("storage.read_connections", 1, 64),
    ("tools.files.max_bytes", 1, 1024 * 1024 * 1024),
    ("tools.http_get.max_bytes", 1, 1024 * 1024 * 1024),
    ("tools.http_get.timeout_secs", 1, 3_600),
    ("tools.max_result_bytes", 1, 16 * 1024 * 1024),
    ("tools.run_command.max_output_bytes", 1, 1024 * 1024 * 1024),
    ("tools.run_command.timeout_secs", 1, 86_400),
];

impl Config {
    /// Every integer key with its value, for the range checks.
    fn numeric_values(&self) -> [(&'static str, u64); 37] {
        [
            ("agent.context_tokens", u64::from(self.agent.context_tokens)),
            ("agent.max_cached_sessions", u64::from(self.agent.max_cached_sessions)),
            (
                "agent.session_retention_days",
                u64::from(self.agent.session_retention_days),
            ),
            ("agent.max_concurrent_turns", u64::from(self.agent.max_concurrent_turns)),
            ("agent.max_queued_turns", u64::from(self.agent.max_queued_turns)),
            ("agent.max_tool_iterations", u64::from(self.agent.max_tool_iterations)),
            ("backup.interval_secs", self.backup.interval_secs),
            ("backup.keep", u64::from(self.backup.keep)),
            ("daemon.shutdown_timeout_secs", self.daemon.shutdown_timeout_secs),
            ("gateway.idle_timeout_secs", self.gateway.idle_timeout_secs),
            ("gateway.max_body_bytes", self.gateway.max_body_bytes),
            ("gateway.max_clock_skew_secs", self.gateway.max_clock_skew_secs),
            ("gateway.max_connections", u64::from(self.gateway.max_connections)),
            (
                "gateway.max_connections_per_address",
                u64::from(self.gateway.max_connections_per_address),
            ),
            ("gateway.max_header_bytes", self.gateway.max_header_bytes),
            (
                "gateway.rate_limit_per_minute",
                u64::from(self.gateway.rate_limit_per_minute),
            ),
            (
                "gateway.replay_cache_entries",
                u64::from(self.gateway.replay_cache_entries),
            ),
            ("gateway.request_timeout_secs", self.gateway.request_timeout_secs),
            ("hooks.max_concurrent", u64::from(self.hooks.max_concurrent)),
            ("hooks.timeout_secs", self.hooks.timeout_secs),
            ("memory.limit_mib", self.memory.limit_mib),
            ("memory.pressure_percent", u64::from(self.memory.pressure_percent)),
            ("memory.warn_percent", u64::from(self.memory.warn_percent)),
            ("provider.connect_timeout_secs", self.provider.connect_timeout_secs),
            ("provider.idle_timeout_secs", self.provider.idle_timeout_secs),
            ("provider.max_retries", u64::from(self.provider.max_retries)),
            ("provider.max_tokens", u64::from(self.provider.max_tokens)),
            ("provider.request_timeout_secs", self.provider.request_timeout_secs),
            ("provider.retry_base_delay_ms", self.provider.retry_base_delay_ms),
            ("storage.busy_timeout_ms", self.storage.busy_timeout_ms),
            ("storage.read_connections", u64::from(self.storage.read_connections)),
            ("tools.files.max_bytes", self.tools.files.max_bytes),
            ("tools.http_get.max_bytes", self.tools.http_get.max_bytes),
            ("tools.http_get.timeout_secs", self.tools.http_get.timeout_secs),
            ("tools.max_result_bytes", self.tools.max_result_bytes),
            (
                "tools.run_command.max_output_bytes",
                self.tools.run_command.max_output_bytes,
            ),
            ("tools.run_command.timeout_secs", self.tools.run_command.timeout_secs),
        ]
    }

    /// Every secret key with its value (a test ties the list to the registry's secret flag).
    pub fn secrets(&self) -> [(&'static str, Option<&SecretSetting>); 2] {
        [
            ("gateway.metrics_token", self.gateway.metrics_token.as_ref()),
            ("provider.api_key", self.provider.api_key.as_ref()),
        ]
    }

    /// Checks what serde cannot: paths absolute, filter directives valid, group present.
    /// Returns one line per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let paths = [
            ("daemon.state_dir", &self.daemon.state_dir),
            ("daemon.runtime_dir", &self.daemon.runtime_dir),
            ("control.socket", &self.control.socket),
            ("storage.path", &self.storage.path),
            ("agent.system_prompt_file", &self.agent.system_prompt_file),
            ("tools.files.workspace", &self.tools.files.workspace),
            ("gateway.cert_file", &self.gateway.cert_file),
            ("gateway.key_file", &self.gateway.key_file),
            ("vault.key_file", &self.vault.key_file),
            ("vault.passphrase_file", &self.vault.passphrase_file),
            ("backup.dir", &self.backup.dir),
            ("log.file", &self.log.file),
        ];
        for (key, path) in paths {
            if let Some(path) = path
                && !path.is_absolute()
            {
                problems.push(format!(
                    "{key}: {} is not an absolute path; give a path that starts with /",
                    path.display()
                ));
            }
        }
        let limit = self.memory.limit_mib;
        if limit != 0 && limit < MEMORY_FLOOR_MIB {
            problems.push(format!(
                "memory.limit_mib: {limit} MiB is less than blufiod needs; it uses about 16 MiB idle and more per turn, so set at least {MEMORY_FLOOR_MIB}, or 0 for no limit"
            ));
        } else if limit != 0 && self.gateway.enabled {
            let connections = u64::from(self.gateway.max_connections);
            let needed = MEMORY_FLOOR_MIB + (connections * GATEWAY_CONNECTION_KIB).div_ceil(1024);
            if limit < needed {
                let fit = (limit - MEMORY_FLOOR_MIB) * 1024 / GATEWAY_CONNECTION_KIB;
                problems.push(format!(
                    "memory.limit_mib: {limit} MiB leaves no room for the gateway's {connections} connections (gateway.max_connections; each can hold about {GATEWAY_CONNECTION_KIB} KiB, signed or not), so anyone who can connect could push blufiod to its limit; set memory.limit_mib to at least {needed}, or gateway.max_connections to at most {fit}"
                ));
            }
        }
        for (key, setting) in self.secrets() {
            match setting {
                Some(SecretSetting::Literal(secret)) if secret.expose().is_empty() => problems.push(format!(
                    "{key}: an empty secret is not a value; name a vault secret (`secret:NAME`), or remove the key to have none"
                )),
                Some(SecretSetting::Vault(name)) => {
                    // Not echoed: what follows `secret:` may be a key pasted in the wrong place.
                    if let Some(problem) = secret_name_problem(name) {
                        problems.push(format!(
                            "{key}: the text after `{SECRET_REFERENCE_PREFIX}` does not name a vault secret: {problem}"
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(SecretSetting::Literal(token)) = &self.gateway.metrics_token
            && !token.expose().is_empty()
            && token.expose().chars().count() < MIN_METRICS_TOKEN_CHARS
        {
            problems.push(format!(
                "gateway.metrics_token: {} characters can be guessed; use at least {MIN_METRICS_TOKEN_CHARS} (for example the output of `openssl rand -hex 16`)",
                token.expose().chars().count()
            ));
        }
        problems.extend(self.hooks.problems());
        if let Err(reason) = check_filter(&self.log.level) {
            problems.push(format!(
                "log.level: {:?} is not a valid filter ({reason}); use a level such as \"info\" or directives such as \"blufiod=debug,info\"",
                self.log.level
            ));
        }
        if let Some(group) = &self.control.group {
            match nix::unistd::Group::from_name(group) {
                Ok(Some(_)) => {}
                Ok(None) => problems.push(format!(
                    "control.group: no group named {group:?} exists; create it (groupadd {group}) or unset the key"
                )),
                Err(error) => problems.push(format!("control.group: cannot look up group {group:?}: {error}")),
            }
        }
        for (key, value) in self.numeric_values() {
            let (_, min, max) = RANGES
                .iter()
                .find(|(ranged, ..)| *ranged == key)
                .expect("every numeric key has a range (tested)");
            if !(*min..=*max).contains(&value) {
                problems.push(format!(
                    "{key}: {value} is out of range; use a whole number from {min} to {max}"
                ));
            }
        }
        if let Some(base_url) = &self.provider.base_url
            && (!(base_url.starts_with("https://") || base_url.starts_with("http://"))
                || reqwest::Url::parse(base_url).is_err())
        {
            problems.push(format!(
                "provider.base_url: {:?} is not an http(s) URL; use for example \"https://api.openai.com/v1\"",
                mask_url_credentials(base_url)
            ));
        }
        for (key, value) in [
            ("budget.daily_usd", self.budget.daily_usd),
            ("budget.monthly_usd", self.budget.monthly_usd),
        ] {
            // A cap below a micro-dollar (the ledger's unit) could never be met; -0.0 is not 0.
            let below_unit = value > 0.0 && value < 1e-6;
            if !value.is_finite() || value.is_sign_negative() || below_unit || value > MAX_USD {
                problems.push(format!(
                    "{key}: must be 0 (no cap) or a number of US dollars from 0.000001 to {MAX_USD}"
                ));
            }
        }
        for (model, price) in &self.pricing {
            let parts = [
                Some(price.input),
                Some(price.output),
                price.cache_write,
                price.cache_read,
            ];
            if parts
                .into_iter()
                .flatten()
                .any(|part| !part.is_finite() || part.is_sign_negative() || part > MAX_USD)
            {
                problems.push(format!(
                    "pricing.\"{model}\": prices must be USD per million tokens from 0 to {MAX_USD}"
                ));
            }
        }
        problems.extend(self.gateway_problems());
        for program in &self.tools.run_command.allow {
            if !program.is_absolute() {
                problems.push(format!(
                    "tools.run_command.allow: {} is not an absolute path; list programs by full path",
                    program.display()
                ));
            }
        }
        problems
    }
}

/// A listen address: an IP address with a port (`127.0.0.1:8443`, `[::1]:8443`), or
/// `localhost:PORT`, which is 127.0.0.1. Names that need a resolver are not taken: what the
/// daemon binds must not depend on DNS.
pub fn parse_listen(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(address) = text.parse() {
        return Some(address);
    }
    let port = text.strip_prefix("localhost:")?.parse().ok()?;
    Some(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)))
}

impl Config {
    /// The gateway's own rules: a parseable address, public binds only when opted in, plain HTTP
    /// only on loopback, certificate and key together.
    fn gateway_problems(&self) -> Vec<String> {
        let gateway = &self.gateway;
        let mut problems = Vec::new();
        match parse_listen(&gateway.listen).ok_or(()) {
            Err(()) => problems.push(format!(
                "gateway.listen: {:?} is not an address with a port; use for example \"127.0.0.1:8443\"",
                gateway.listen
            )),
            Ok(address) if !address.ip().is_loopback() => {
                if !gateway.allow_public_bind {
                    problems.push(format!(
                        "gateway.listen: {address} is not a loopback address; set gateway.allow_public_bind = true to expose the gateway on purpose"
                    ));
                }
                if gateway.plain_http {
                    problems.push(format!(
                        "gateway.plain_http: plain HTTP is allowed only on a loopback address (behind a local reverse proxy), not on {address}"
                    ));
                }
            }
            Ok(_) => {}
        }
        if let Some(listen) = &gateway.metrics_listen {
            match parse_listen(listen).ok_or(()) {
                Ok(address) if address.ip().is_loopback() => {}
                Ok(address) => problems.push(format!(
                    "gateway.metrics_listen: {address} is not a loopback address; the plain-HTTP metrics listener is for local scrapers only"
                )),
                Err(()) => problems.push(format!(
                    "gateway.metrics_listen: {listen:?} is not an address with a port; use for example \"127.0.0.1:9464\""
                )),
            }
        }
        if gateway.cert_file.is_some() != gateway.key_file.is_some() {
            problems.push(
                "gateway.cert_file and gateway.key_file: set both, or neither for a self-signed certificate".to_owned(),
            );
        }
        problems
    }
}

/// Checks a tracing filter directive more strictly than `EnvFilter`, which reads a bare word such
/// as `inof` as a target name and so silently turns logging off.
fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
    {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.iter().any(|known| known.eq_ignore_ascii_case(level)) {
            return Err(format!("{level:?} is not one of {}", LEVELS.join(", ")));
        }
    }
    // Field values match as plain strings: a regex (the default) lets a caller build an
    // automaton exponential in the pattern (1 GB and 13 s for 20 `[ab]`s).
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .map(drop)
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_filter_is_a_plain_string_not_a_regex() {
        // An attack on the release build: this took 13.5 s and 1 GB when field values were
        // regexes, reachable by any read-only caller through ValidateConfig.
        // On the old code this test runs out of memory instead of passing.
        let pattern = format!("x[s{{f=[ab]*a{}}}]=info", "[ab]".repeat(24));
        assert!(check_filter(&pattern).is_ok());
    }

    #[test]
    fn defaults_are_valid() {
        let loaded = load_from(None, None, false).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.source_of("log.level"), ValueSource::Default);
    }

    #[test]
    fn file_values_override_defaults_and_are_attributed() {
        let loaded = load_from(
            Some("[log]\nlevel = \"debug\"\n"),
            Some(Path::new("/etc/x.toml")),
            false,
        )
        .unwrap();
        assert_eq!(loaded.config.log.level, "debug");
        assert_eq!(loaded.source_of("log.level"), ValueSource::File);
        assert_eq!(loaded.source_of("log.format"), ValueSource::Default);
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = "[log]\nlevel = \"info\"\n\n[control]\ngroup_acces = \"full\"\n";
        let error = load_from(Some(text), Some(Path::new("/etc/blufio/blufiod.toml")), false).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("control.group_acces"), "{message}");
        assert!(message.contains("/etc/blufio/blufiod.toml:5"), "{message}");
        assert!(
            message.contains("group_access"),
            "should suggest the known keys: {message}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let error = load_from(
            Some("[daemon]\nshutdown_timeout_secs = \"soon\"\n"),
            Some(Path::new("/c.toml")),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("daemon.shutdown_timeout_secs"), "{error}");
        assert!(error.contains("/c.toml:2"), "{error}");
    }

    #[test]
    fn every_integer_key_of_the_registry_has_a_range_that_holds_its_default() {
        let loaded = load_from(None, None, false).unwrap();
        let integer_keys: Vec<String> = keys::entries(&loaded, None)
            .unwrap()
            .into_iter()
            .filter(|entry| serde_json::from_str::<u64>(&entry.value_json).is_ok())
            .map(|entry| entry.spec.key.to_owned())
            .collect();
        let ranged: Vec<String> = RANGES.iter().map(|(key, ..)| (*key).to_owned()).collect();
        assert_eq!(integer_keys, ranged);
        for (key, value) in Config::default().numeric_values() {
            let (_, min, max) = RANGES.iter().find(|(ranged, ..)| *ranged == key).unwrap();
            assert!((*min..=*max).contains(&value), "{key} = {value}");
        }
    }

    #[test]
    fn a_base_url_must_parse_and_is_never_echoed_with_its_credentials() {
        for url in ["ftp://u:hunter5@h/", "http://u:hunter5@[::1"] {
            let text = format!("[provider]\nbase_url = \"{url}\"\n");
            let Err(ConfigError::Invalid { problems }) = load_from(Some(&text), None, false) else {
                panic!("{url} was accepted");
            };
            assert!(problems[0].starts_with("provider.base_url"), "{problems:?}");
            assert!(!problems[0].contains("hunter5"), "{problems:?}");
        }
    }

    #[test]
    fn budget_caps_are_zero_or_at_least_a_micro_dollar() {
        for cap in ["-0.0", "1e-320", "-1.0", "1e10"] {
            let text = format!("[budget]\ndaily_usd = {cap}\n");
            assert!(load_from(Some(&text), None, false).is_err(), "{cap} was accepted");
        }
        for cap in ["0.0", "0.000001", "12.5"] {
            let text = format!("[budget]\ndaily_usd = {cap}\n");
            load_from(Some(&text), None, false).unwrap();
        }
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_range() {
        let text = "[provider]\nrequest_timeout_secs = 9223372036854775807\n[gateway]\nmax_clock_skew_secs = 4611686018427387904\n";
        let Err(ConfigError::Invalid { problems }) = load_from(Some(text), None, false) else {
            panic!("expected invalid config");
        };
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems.iter().any(|problem| problem.starts_with("gateway.max_clock_skew_secs") && problem.contains("from 1 to 3600")), "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|problem| problem.starts_with("provider.request_timeout_secs")),
            "{problems:#?}"
        );
    }

    #[test]
    fn every_secret_of_the_registry_is_checked_and_an_empty_one_is_refused() {
        let registry: Vec<&str> = keys::KEYS
            .iter()
            .filter(|spec| spec.secret)
            .map(|spec| spec.key)
            .collect();
        let checked: Vec<&str> = Config::default().secrets().iter().map(|(key, _)| *key).collect();
        assert_eq!(checked, registry);
        for key in registry {
            let (section, name) = key.split_once('.').unwrap();
            let text = format!("[{section}]\n{name} = \"\"\n");
            let Err(ConfigError::Invalid { problems }) = load_from(Some(&text), None, false) else {
                panic!("an empty {key} was accepted");
            };
            assert!(
                problems[0].starts_with(key) && problems[0].contains("empty secret"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed_and_types_are_named_in_words() {
        let text = "[provider]\napi_key = 987654321\n[budget]\ndaily_usd = \"x\"\n";
        let Err(ConfigError::Invalid { problems }) = load_from(Some(text), None, false) else {
            panic!("expected invalid config");
        };
        let shown = problems.join("\n");
        assert!(!shown.contains("987654321"), "{shown}");
        assert!(shown.contains("provider.api_key: expected text in quotes"), "{shown}");
        let text = "[budget]\ndaily_usd = \"x\"\n";
        let Err(ConfigError::Invalid { problems }) = load_from(Some(text), None, false) else {
            panic!("expected invalid config");
        };
        assert!(
            problems[0].starts_with("budget.daily_usd: expected a number (such as 2.5)"),
            "{problems:?}"
        );
    }

    #[test]
    fn semantic_checks_report_every_problem() {
        let text = "[daemon]\nstate_dir = \"relative\"\n[log]\nlevel = \"inof\"\n[control]\ngroup = \"no-such-group-blufio\"\n";
        let Err(ConfigError::Invalid { problems }) = load_from(Some(text), None, false) else {
            panic!("expected invalid config");
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("daemon.state_dir"));
        assert!(problems[1].starts_with("log.level"));
        assert!(problems[2].contains("no-such-group-blufio"));
    }

    #[test]
    fn config_path_resolution_follows_systemd_then_fhs_then_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let explicit = ConfigSource::resolve(Some("/x.toml".into()), env(&[]), 0);
        assert_eq!(explicit.named_by, Some("--config"));
        assert_eq!(
            ConfigSource::resolve(None, env(&[("CONFIGURATION_DIRECTORY", "/etc/blufio-sd")]), 0).path,
            PathBuf::from("/etc/blufio-sd/blufiod.toml")
        );
        assert_eq!(
            ConfigSource::resolve(None, env(&[]), 0).path,
            PathBuf::from("/etc/blufio/blufiod.toml")
        );
        assert_eq!(
            ConfigSource::resolve(None, env(&[("HOME", "/home/u")]), 1000).path,
            PathBuf::from("/home/u/.config/blufio/blufiod.toml")
        );
    }

    #[test]
    fn example_config_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/blufiod.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The example has every key commented out; uncommenting must give a valid config too.
        load_from(Some(&text), Some(&path), false).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = ") || (rest.starts_with('[') && rest.ends_with(']')))
                    .unwrap_or(line)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let loaded = extract(Some(&uncommented), Some(&path), false).unwrap();
        for spec in keys::KEYS {
            assert_eq!(
                loaded.source_of(spec.key),
                ValueSource::File,
                "packaging/blufiod.example.toml does not document {}",
                spec.key
            );
        }
    }
}
