//! Configuration of the agent: the LLM provider, the turn loop, budgets, prices and tools.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Output tokens a single provider call may produce. It is also what a turn reserves against the
/// budget (at the output price) before each call, so it bounds the worst case of one call.
const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Five minutes: a long answer with tools can stream for minutes, but not forever.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Providers send `ping` events or chunks at least every few seconds; a minute of silence is a
/// dead stream.
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
const DEFAULT_MAX_RETRIES: u32 = 3;
const DEFAULT_RETRY_BASE_DELAY_MS: u64 = 500;
/// History kept in the context, in estimated tokens; room for the system prompt and the answer
/// remains in every current model's window.
const DEFAULT_CONTEXT_TOKENS: u32 = 60_000;
const DEFAULT_MAX_TOOL_ITERATIONS: u32 = 8;
/// Concurrent turns across all sessions: a $4 VPS has one or two cores and the work is mostly
/// waiting on the provider, so four keeps it responsive without piling up spend.
const DEFAULT_MAX_CONCURRENT_TURNS: u32 = 4;
const DEFAULT_MAX_QUEUED_TURNS: u32 = 16;
const DEFAULT_MAX_CACHED_SESSIONS: u32 = 64;
/// Budget caps are on by default: an agent left running must not spend without limit.
const DEFAULT_DAILY_USD: f64 = 1.0;
const DEFAULT_MONTHLY_USD: f64 = 10.0;
const DEFAULT_TOOL_RESULT_BYTES: u64 = 32 * 1024;

/// The default system prompt when none is configured.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are blufio, a personal assistant that runs on the owner's own server. \
Be concise and accurate. Use the tools you are given when they help, and say so when you cannot do something.";

/// A secret string: shown masked in every view and in `Debug`.
///
/// Serialized with a leading [`SECRET_MARK`], so that the views (which work on the serialized
/// tree) mask it whatever the key registry says, and a test can tie the registry's `secret` flag
/// to this type: a new secret field cannot be shown in clear by forgetting the flag.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

/// The character a serialized [`Secret`] starts with (from Unicode's private use area, which no
/// real key or token contains).
pub const SECRET_MARK: char = '\u{F8FF}';

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{SECRET_MARK}{}", self.0))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self(text.strip_prefix(SECRET_MARK).map_or(text.clone(), str::to_owned)))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.0.is_empty() { "\"\"" } else { "\"********\"" })
    }
}

impl Secret {
    /// The secret itself; call only where it is sent to its owner (an API request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// How a config value names a vault entry: `secret:NAME`.
pub const SECRET_REFERENCE_PREFIX: &str = "secret:";

/// The value of a secret key: the name of a vault entry (`"secret:anthropic"`), or the secret
/// itself, which only the environment (`BLUFIO_PROVIDER__API_KEY`) should still give: blufiod
/// moves a literal it finds in its config file into the vault when it starts (a file edited by
/// hand and reloaded keeps its literal until the next start, and the health check says so), and
/// `config set` takes only references.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSetting {
    /// A vault entry's name.
    Vault(String),
    /// The secret itself.
    Literal(Secret),
}

impl SecretSetting {
    /// The vault entry named, if it is a reference.
    pub fn vault_name(&self) -> Option<&str> {
        match self {
            Self::Vault(name) => Some(name),
            Self::Literal(_) => None,
        }
    }
}

impl Serialize for SecretSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // A name is not secret: shown as it is, so that `config get` says which entry.
            Self::Vault(name) => serializer.serialize_str(&format!("{SECRET_REFERENCE_PREFIX}{name}")),
            Self::Literal(secret) => secret.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Some(literal) = text.strip_prefix(SECRET_MARK) {
            return Ok(Self::Literal(Secret(literal.to_owned())));
        }
        Ok(match text.strip_prefix(SECRET_REFERENCE_PREFIX) {
            Some(name) => Self::Vault(name.to_owned()),
            None => Self::Literal(Secret(text)),
        })
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vault(name) => write!(formatter, "\"{SECRET_REFERENCE_PREFIX}{name}\""),
            Self::Literal(secret) => secret.fmt(formatter),
        }
    }
}

/// Why `name` cannot name a vault entry, if it cannot: 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or a digit.
pub fn secret_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.chars().count() > 64 {
        return Some("a name has 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Some("use lower-case letters, digits, `.`, `_` and `-` (for example `anthropic`)");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("a name starts with a letter or a digit");
    }
    None
}

/// Which wire protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI-compatible Chat Completions (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter).
    Openai,
}

impl ProviderKind {
    /// Every kind.
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Anthropic, ProviderKind::Openai];

    /// The name used in config and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
        }
    }

    /// The API's public base URL.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Openai => "https://api.openai.com/v1",
        }
    }

    /// A sensible current model.
    pub fn default_model(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "claude-sonnet-4-5",
            ProviderKind::Openai => "gpt-4.1-mini",
        }
    }

    /// The environment variable that may hold the API key.
    pub fn api_key_env(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            ProviderKind::Openai => "OPENAI_API_KEY",
        }
    }
}

/// `[provider]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL; default: the provider's public API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Model; default: a current model of the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// API key, as a vault reference (`secret:anthropic`); default: `$ANTHROPIC_API_KEY` or
    /// `$OPENAI_API_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSetting>,
    /// `anthropic-version` header.
    pub anthropic_version: String,
    /// Output tokens per call.
    pub max_tokens: u32,
    /// Seconds one provider call may take in total, stream included.
    pub request_timeout_secs: u64,
    /// Seconds a stream may stay silent.
    pub idle_timeout_secs: u64,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: u64,
    /// Retries of a call that failed with 429, 500, 502, 503, 529 or a connection error, before
    /// any of its answer was streamed.
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubled each retry, unless `retry-after` says otherwise.
    pub retry_base_delay_ms: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Anthropic,
            base_url: None,
            model: None,
            api_key: None,
            anthropic_version: "2023-06-01".to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_base_delay_ms: DEFAULT_RETRY_BASE_DELAY_MS,
        }
    }
}

impl ProviderConfig {
    /// The effective base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(self.kind.default_base_url())
            .trim_end_matches('/')
            .to_owned()
    }

    /// The effective model.
    pub fn model(&self) -> String {
        self.model
            .clone()
            .unwrap_or_else(|| self.kind.default_model().to_owned())
    }
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The system prompt.
    pub system_prompt: String,
    /// A markdown file whose contents replace `system_prompt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt_file: Option<PathBuf>,
    /// History kept in the context, in estimated tokens (oldest messages are dropped first).
    pub context_tokens: u32,
    /// Provider calls one turn may make while running tools.
    pub max_tool_iterations: u32,
    /// Turns that may run at once across all sessions.
    pub max_concurrent_turns: u32,
    /// Turns that may wait for a slot; beyond that callers are told to retry.
    pub max_queued_turns: u32,
    /// Sessions whose state is kept in memory; the least recently used are evicted.
    pub max_cached_sessions: u32,
    /// Sessions not updated for this many days are deleted (their spend stays in the ledger);
    /// 0 keeps them for ever.
    pub session_retention_days: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
            system_prompt_file: None,
            context_tokens: DEFAULT_CONTEXT_TOKENS,
            max_tool_iterations: DEFAULT_MAX_TOOL_ITERATIONS,
            max_concurrent_turns: DEFAULT_MAX_CONCURRENT_TURNS,
            max_queued_turns: DEFAULT_MAX_QUEUED_TURNS,
            max_cached_sessions: DEFAULT_MAX_CACHED_SESSIONS,
            session_retention_days: 0,
        }
    }
}

/// `[budget]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Cap on spend per UTC day in US dollars; 0 means no daily cap.
    pub daily_usd: f64,
    /// Cap on spend per UTC calendar month in US dollars; 0 means no monthly cap.
    pub monthly_usd: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            daily_usd: DEFAULT_DAILY_USD,
            monthly_usd: DEFAULT_MONTHLY_USD,
        }
    }
}

/// Prices of one model in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Input tokens written to the prompt cache (default: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Input tokens read from the prompt cache (default: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

const fn price(input: f64, output: f64, cache_write: Option<f64>, cache_read: f64) -> ModelPrice {
    ModelPrice {
        input,
        output,
        cache_write,
        cache_read: Some(cache_read),
    }
}

/// List prices (USD per million tokens) of current models, as published by Anthropic and OpenAI.
/// Override or extend them with `[pricing."<model>"]`; a model without a price is refused.
pub fn default_pricing() -> BTreeMap<String, ModelPrice> {
    [
        ("claude-opus-4-1", price(15.0, 75.0, Some(18.75), 1.5)),
        ("claude-sonnet-4-5", price(3.0, 15.0, Some(3.75), 0.3)),
        ("claude-sonnet-4-0", price(3.0, 15.0, Some(3.75), 0.3)),
        ("claude-haiku-4-5", price(1.0, 5.0, Some(1.25), 0.1)),
        ("claude-3-5-haiku-latest", price(0.8, 4.0, Some(1.0), 0.08)),
        ("gpt-5", price(1.25, 10.0, None, 0.125)),
        ("gpt-5-mini", price(0.25, 2.0, None, 0.025)),
        ("gpt-5-nano", price(0.05, 0.4, None, 0.005)),
        ("gpt-4.1", price(2.0, 8.0, None, 0.5)),
        ("gpt-4.1-mini", price(0.4, 1.6, None, 0.1)),
        ("gpt-4.1-nano", price(0.1, 0.4, None, 0.025)),
        ("gpt-4o", price(2.5, 10.0, None, 1.25)),
        ("gpt-4o-mini", price(0.15, 0.6, None, 0.075)),
    ]
    .into_iter()
    .map(|(model, price)| (model.to_owned(), price))
    .collect()
}

/// `[tools]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Bytes of one tool result kept in the conversation; the rest is cut with a marker.
    pub max_result_bytes: u64,
    /// `http_get`.
    pub http_get: HttpGetConfig,
    /// `read_file` and `write_file`.
    pub files: FilesConfig,
    /// `run_command`.
    pub run_command: RunCommandConfig,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            max_result_bytes: DEFAULT_TOOL_RESULT_BYTES,
            http_get: HttpGetConfig::default(),
            files: FilesConfig::default(),
            run_command: RunCommandConfig::default(),
        }
    }
}

/// `[tools.http_get]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpGetConfig {
    /// Whether the tool is offered to the model.
    pub enabled: bool,
    /// Whether plain `http://` URLs are allowed (https only by default).
    pub allow_http: bool,
    /// Hosts or IP networks (CIDR) that may be fetched even though they are private or loopback.
    pub allow_private: Vec<String>,
    /// Bytes read from a response at most.
    pub max_bytes: u64,
    /// Seconds one fetch may take.
    pub timeout_secs: u64,
}

impl Default for HttpGetConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_http: false,
            allow_private: Vec::new(),
            max_bytes: 1024 * 1024,
            timeout_secs: 15,
        }
    }
}

/// `[tools.files]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Whether `read_file` and `write_file` are offered to the model.
    pub enabled: bool,
    /// The directory the tools are confined to. Default: `<state_dir>/workspace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    /// Bytes one read or write may move.
    pub max_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            workspace: None,
            max_bytes: 1024 * 1024,
        }
    }
}

/// `[tools.run_command]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunCommandConfig {
    /// Whether the tool is offered to the model.
    pub enabled: bool,
    /// Programs that may be run, by absolute path. Nothing else can run; there is no shell.
    pub allow: Vec<PathBuf>,
    /// Seconds a command may run before it is killed.
    pub timeout_secs: u64,
    /// Bytes of stdout and stderr kept.
    pub max_output_bytes: u64,
    /// Whose turns are offered the tool. A program runs as the daemon's own user, with its files
    /// and keys within reach, so by default only the owner's turns (root's and the daemon's user's
    /// on the control socket) get it; a group's member or a paired device gets it only when
    /// listed here.
    pub callers: Vec<Principal>,
}

impl Default for RunCommandConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            timeout_secs: 30,
            max_output_bytes: 64 * 1024,
            callers: vec![Principal::Owner],
        }
    }
}

/// Who asked for a turn: what decides which tools it is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Principal {
    /// Root or the daemon's own user, on the control socket.
    Owner,
    /// A member of `control.group` with full access, on the control socket.
    Group,
    /// A paired device, through the gateway.
    Device,
}

impl Principal {
    /// The name used in the config file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Principal::Owner => "owner",
            Principal::Group => "group",
            Principal::Device => "device",
        }
    }
}

/// Default gateway address: loopback only, so nothing is exposed until the owner decides.
const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8443";

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Whether the HTTPS gateway runs.
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: String,
    /// Must be true to listen on a non-loopback address.
    pub allow_public_bind: bool,
    /// Serve plain HTTP instead of HTTPS; allowed only on loopback (behind a local reverse proxy).
    pub plain_http: bool,
    /// PEM certificate chain; with `key_file`. Default: a self-signed certificate kept in
    /// `<state_dir>/tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Largest request header block, in bytes.
    pub max_header_bytes: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Seconds a client has to send the request head and body.
    pub request_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub idle_timeout_secs: u64,
    /// Connections served at once. At the cap an unauthenticated connection is evicted to make
    /// room, or the newcomer is closed.
    pub max_connections: u32,
    /// Connections one address (an IPv4 address, an IPv6 /64) may hold at once. Behind a reverse
    /// proxy every client comes from the proxy's address: raise it to what the proxy opens (at
    /// `max_connections` or above, one address may take every slot).
    pub max_connections_per_address: u32,
    /// Requests per minute per device key.
    pub rate_limit_per_minute: u32,
    /// Seconds a signature's `created` may differ from the daemon's clock.
    pub max_clock_skew_secs: u64,
    /// Nonces remembered for replay protection; when full, new requests are refused.
    pub replay_cache_entries: u32,
    /// A bearer token required to scrape `/metrics`; unset: open (loopback by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<SecretSetting>,
    /// A second, plain-HTTP loopback listener serving only `/metrics` and `/health`, for a local
    /// Prometheus that should not need TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Host names (or addresses) clients may address the gateway by, besides `localhost`, the
    /// listen address and the names of the certificate: a request for any other host is refused
    /// (421), so it cannot be a request meant for another server or a DNS-rebinding attempt.
    pub server_names: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_GATEWAY_LISTEN.to_owned(),
            allow_public_bind: false,
            plain_http: false,
            cert_file: None,
            key_file: None,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 256,
            max_connections_per_address: 32,
            rate_limit_per_minute: 120,
            max_clock_skew_secs: 300,
            replay_cache_entries: 100_000,
            metrics_token: None,
            metrics_listen: None,
            server_names: Vec::new(),
        }
    }
}

/// `[vault]`: where the key that opens the secrets vault comes from, when not from a systemd
/// credential (`$CREDENTIALS_DIRECTORY/vault-key`, tried first). Neither set and no
/// `BLUFIO_VAULT_PASSPHRASE`: a key file generated in the state directory, beside the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// A file holding the key (at least 32 bytes, for example `openssl rand -hex 32`), owned by
    /// blufiod's user with mode 0600 or 0400, kept away from the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A file holding a passphrase (at least 12 characters), stretched with Argon2id; same file
    /// rules. `BLUFIO_VAULT_PASSPHRASE` in the environment is tried before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
}

/// `[backup]`: backups the daemon writes itself, on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Seconds between scheduled backups; 0 turns them off.
    pub interval_secs: u64,
    /// Where they go; default: `backups` in the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Backups kept (the oldest beyond this are removed, as are safety copies of restores).
    pub keep: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            interval_secs: 86_400,
            dir: None,
            keep: 7,
        }
    }
}

/// `[memory]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The daemon's own memory limit in MiB (resident set); 0 means no limit. Above
    /// `warn_percent` of it the daemon sheds its caches; above `pressure_percent` new turns and
    /// sessions are refused with a retry hint until memory is back under it.
    pub limit_mib: u64,
    /// Percentage of `limit_mib` at which caches are shed and free pages returned (at most
    /// `pressure_percent`: a higher value acts as `pressure_percent`).
    pub warn_percent: u8,
    /// Percentage of `limit_mib` at which new turns and sessions are refused.
    pub pressure_percent: u8,
}

/// A $4 VPS has 512 MiB to 1 GiB for everything; an idle daemon uses about 13 MiB. 256 MiB leaves
/// room for many concurrent turns and stops a runaway long before the OOM killer would.
const DEFAULT_MEMORY_LIMIT_MIB: u64 = 256;

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            warn_percent: 75,
            pressure_percent: 90,
        }
    }
}
