//! The registry of config keys and the flattened, masked view of a configuration that
//! `GetConfig` and `blufiod --check-config` show.

use figment::value::Value;

use super::Loaded;

/// What is known about one dotted config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Dotted key, for example `log.level`.
    pub key: &'static str,
    /// Whether the value is a secret: shown masked, never logged.
    pub secret: bool,
    /// Whether a change only takes effect after a restart.
    pub restart_required: bool,
    /// Whether only root and the daemon's own user may change it: the key names a program, file,
    /// directory or host that the daemon trusts with its own uid and keys, which secret goes to
    /// which host, where the gateway listens, how long backups are kept, or who may use the
    /// control socket. A group's full access does not reach it (else every member could make the
    /// daemon run or open anything as itself).
    pub owner_only: bool,
}

const fn live(key: &'static str) -> KeySpec {
    KeySpec {
        key,
        secret: false,
        restart_required: false,
        owner_only: false,
    }
}

const fn restart(key: &'static str) -> KeySpec {
    KeySpec {
        key,
        secret: false,
        restart_required: true,
        owner_only: false,
    }
}

const fn secret(key: &'static str) -> KeySpec {
    KeySpec {
        key,
        secret: true,
        restart_required: false,
        owner_only: false,
    }
}

/// Marks `spec` as the owner's (see [`KeySpec::owner_only`]).
const fn owner(spec: KeySpec) -> KeySpec {
    KeySpec {
        owner_only: true,
        ..spec
    }
}

/// Every config key, sorted. A test checks this list against the struct tree. `pricing` is one
/// key whose value is a table of models.
pub const KEYS: &[KeySpec] = &[
    live("agent.context_tokens"),
    restart("agent.max_cached_sessions"),
    restart("agent.max_concurrent_turns"),
    restart("agent.max_queued_turns"),
    live("agent.max_tool_iterations"),
    live("agent.session_retention_days"),
    live("agent.system_prompt"),
    owner(live("agent.system_prompt_file")),
    owner(live("backup.dir")),
    owner(live("backup.interval_secs")),
    owner(live("backup.keep")),
    live("budget.daily_usd"),
    live("budget.monthly_usd"),
    owner(restart("control.group")),
    owner(live("control.group_access")),
    owner(restart("control.socket")),
    owner(restart("daemon.runtime_dir")),
    live("daemon.shutdown_timeout_secs"),
    owner(restart("daemon.state_dir")),
    owner(restart("gateway.allow_public_bind")),
    owner(restart("gateway.cert_file")),
    owner(restart("gateway.enabled")),
    live("gateway.idle_timeout_secs"),
    owner(restart("gateway.key_file")),
    owner(restart("gateway.listen")),
    live("gateway.max_body_bytes"),
    restart("gateway.max_clock_skew_secs"),
    restart("gateway.max_connections"),
    restart("gateway.max_connections_per_address"),
    live("gateway.max_header_bytes"),
    restart("gateway.metrics_listen"),
    secret("gateway.metrics_token"),
    restart("gateway.plain_http"),
    restart("gateway.rate_limit_per_minute"),
    restart("gateway.replay_cache_entries"),
    live("gateway.request_timeout_secs"),
    live("gateway.server_names"),
    owner(restart("hooks.max_concurrent")),
    owner(live("hooks.on_backup")),
    owner(live("hooks.on_budget_exhausted")),
    owner(live("hooks.on_device_change")),
    owner(live("hooks.on_memory_pressure")),
    owner(live("hooks.on_provider_down")),
    owner(live("hooks.post_reload")),
    owner(live("hooks.post_start")),
    owner(live("hooks.post_stop")),
    owner(live("hooks.pre_reload")),
    owner(live("hooks.pre_start")),
    owner(live("hooks.pre_stop")),
    owner(live("hooks.timeout_secs")),
    owner(restart("log.file")),
    restart("log.format"),
    live("log.level"),
    live("memory.limit_mib"),
    live("memory.pressure_percent"),
    live("memory.warn_percent"),
    live("pricing"),
    live("provider.anthropic_version"),
    owner(secret("provider.api_key")),
    owner(live("provider.base_url")),
    live("provider.connect_timeout_secs"),
    live("provider.idle_timeout_secs"),
    owner(live("provider.kind")),
    live("provider.max_retries"),
    live("provider.max_tokens"),
    live("provider.model"),
    live("provider.request_timeout_secs"),
    live("provider.retry_base_delay_ms"),
    restart("storage.busy_timeout_ms"),
    owner(restart("storage.path")),
    restart("storage.read_connections"),
    restart("storage.synchronous"),
    owner(live("tools.files.enabled")),
    live("tools.files.max_bytes"),
    owner(live("tools.files.workspace")),
    live("tools.http_get.allow_http"),
    owner(live("tools.http_get.allow_private")),
    live("tools.http_get.enabled"),
    live("tools.http_get.max_bytes"),
    live("tools.http_get.timeout_secs"),
    live("tools.max_result_bytes"),
    owner(live("tools.run_command.allow")),
    owner(live("tools.run_command.callers")),
    owner(live("tools.run_command.enabled")),
    live("tools.run_command.max_output_bytes"),
    live("tools.run_command.timeout_secs"),
    owner(restart("vault.key_file")),
    owner(restart("vault.passphrase_file")),
];

/// The shown form of a secret that is set.
pub const MASK: &str = "********";

/// Looks up a key's spec.
pub fn key_spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|spec| spec.key == key)
}

/// The registry entry a dotted key belongs to and its path of table names: a registered key, or
/// one model's prices under `pricing` (`pricing."gpt-4.1"` or `pricing."gpt-4.1".input`, TOML
/// quoting for names with dots). `None` when the key is none of these.
pub fn key_path(key: &str) -> Option<(&'static KeySpec, Vec<String>)> {
    if let Some(spec) = key_spec(key) {
        return Some((spec, key.split('.').map(str::to_owned).collect()));
    }
    const PRICE_FIELDS: [&str; 4] = ["input", "output", "cache_write", "cache_read"];
    let segments: Vec<String> = toml_edit::Key::parse(key)
        .ok()?
        .iter()
        .map(|segment| segment.get().to_owned())
        .collect();
    let model_price = segments.first().is_some_and(|first| first == "pricing")
        && match segments.len() {
            2 => true,
            3 => PRICE_FIELDS.contains(&segments[2].as_str()),
            _ => false,
        };
    model_price.then(|| (key_spec("pricing").expect("pricing is registered"), segments))
}

/// Whether `line` is a parser's quotation of source: optional digits, then ` |`.
fn is_excerpt(line: &str) -> bool {
    let rest = line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit());
    rest.trim_start().starts_with('|')
}

/// What to tell someone who asked for `key`, which is not a key: the keys of a section they
/// named, or the nearest key when they mistyped one, else how to list them all.
pub fn suggest(key: &str) -> String {
    let section: Vec<&str> = KEYS
        .iter()
        .map(|spec| spec.key)
        .filter(|known| known.strip_prefix(key).is_some_and(|rest| rest.starts_with('.')))
        .collect();
    if !section.is_empty() {
        return format!("`{key}` is a section; its keys are {}", section.join(", "));
    }
    let wanted = key.to_ascii_lowercase();
    let nearest = KEYS
        .iter()
        .map(|spec| (edit_distance(&wanted, spec.key), spec.key))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match nearest {
        Some((_, known)) => format!("did you mean `{known}`?"),
        None => "run `blufioctl config get` to list the keys".to_owned(),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    /// The embedded defaults.
    Default,
    /// The config file.
    File,
    /// A `BLUFIO_*` environment variable.
    Env,
}

impl ValueSource {
    /// The name used on the wire and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueSource::Default => "default",
            ValueSource::File => "file",
            ValueSource::Env => "env",
        }
    }
}

/// One effective value, ready to show.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    /// The key's spec.
    pub spec: KeySpec,
    /// TOML literal of the value (masked for secrets); empty when unset.
    pub value_toml: String,
    /// JSON text of the value (masked for secrets); `null` when unset.
    pub value_json: String,
    /// Where the value came from.
    pub source: ValueSource,
    /// Whether an optional key has no value.
    pub unset: bool,
}

/// The effective entries of `loaded`, all of them or the one named by `key`. Returns `None` when
/// `key` is not a config key.
pub fn entries(loaded: &Loaded, key: Option<&str>) -> Option<Vec<ConfigEntry>> {
    let tree = Value::serialize(&loaded.config).expect("config serializes to a figment value");
    let specs: Vec<&KeySpec> = match key {
        Some(key) => vec![key_spec(key)?],
        None => KEYS.iter().collect(),
    };
    let entries = specs
        .into_iter()
        .map(|spec| {
            let value = tree.find_ref(spec.key);
            let (value_toml, value_json) = match value {
                None => (String::new(), "null".to_owned()),
                // A secret key shows only a vault reference (a name, not a secret); anything else
                // under it, and any marked value anywhere, is masked.
                Some(value) if is_secret(value) || (spec.secret && !is_reference(value)) => {
                    (format!("\"{MASK}\""), format!("\"{MASK}\""))
                }
                // A URL may carry credentials (`https://user:pass@host`, `?key=`): never shown.
                Some(Value::String(tag, text)) if text.contains("://") => {
                    let shown = Value::String(*tag, mask_url_credentials(text));
                    (
                        to_toml(&shown).to_string().trim().to_owned(),
                        serde_json::to_string(&shown).expect("figment values serialize to JSON"),
                    )
                }
                Some(value) => (
                    to_toml(value).to_string().trim().to_owned(),
                    serde_json::to_string(value).expect("figment values serialize to JSON"),
                ),
            };
            ConfigEntry {
                spec: *spec,
                value_toml,
                value_json,
                source: loaded.source_of(spec.key),
                unset: value.is_none(),
            }
        })
        .collect();
    Some(entries)
}

/// `text` (an error message that may quote lines of a config file) with the value of every secret
/// key masked: on any line where a secret key's name (its last segment, or the whole dotted key)
/// is followed by `=`, everything after the `=` becomes [`MASK`]. Parse errors quote the offending
/// line whole, and an unquoted `api_key = sk-...` is exactly such a line.
pub fn mask_secrets_in(text: &str) -> String {
    let names: Vec<&str> = KEYS
        .iter()
        .filter(|spec| spec.secret)
        .flat_map(|spec| [spec.key, spec.key.rsplit('.').next().unwrap_or(spec.key)])
        .collect();
    let mut masked = String::with_capacity(text.len());
    let mut first = true;
    for line in text.split('\n') {
        // A parser's excerpt of the file (`12 | api_key = ...`, `   |   ^`) is dropped whole: a
        // misspelt, upper-case or escaped key name, or a multi-line string, can carry a secret
        // past any key-name test. The message keeps the line and column.
        if is_excerpt(line) {
            continue;
        }
        if !first {
            masked.push('\n');
        }
        first = false;
        let secret_at = names.iter().find_map(|name| {
            line.match_indices(name).find_map(|(at, _)| {
                let before_ok = line[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
                let rest = line[at + name.len()..].trim_start_matches([' ', '\t', '"', '\'']);
                (before_ok && rest.starts_with('=')).then(|| line.len() - rest.len() + 1)
            })
        });
        match secret_at {
            Some(after_equals) => {
                masked.push_str(&line[..after_equals]);
                masked.push(' ');
                masked.push_str(MASK);
            }
            None => masked.push_str(line),
        }
    }
    masked
}

/// Whether a serialized value is a vault reference (`secret:NAME`).
fn is_reference(value: &Value) -> bool {
    matches!(value, Value::String(_, text) if text.starts_with(super::SECRET_REFERENCE_PREFIX))
}

/// Whether a serialized value is a [`super::agent::Secret`].
fn is_secret(value: &Value) -> bool {
    matches!(value, Value::String(_, text) if text.starts_with(super::agent::SECRET_MARK))
}

/// `url` with its user info and its query masked: `https://********@host/path?********`.
pub fn mask_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?{MASK}"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Every key whose value differs between two configurations, in [`KEYS`] order.
pub fn changed_keys(old: &super::Config, new: &super::Config) -> Vec<&'static KeySpec> {
    let old = Value::serialize(old).expect("config serializes to a figment value");
    let new = Value::serialize(new).expect("config serializes to a figment value");
    KEYS.iter()
        .filter(|spec| old.find_ref(spec.key) != new.find_ref(spec.key))
        .collect()
}

/// Converts a figment value into a TOML value for display.
fn to_toml(value: &Value) -> toml_edit::Value {
    match value {
        Value::String(_, text) => text.as_str().into(),
        Value::Char(_, char) => char.to_string().into(),
        Value::Bool(_, bool) => (*bool).into(),
        Value::Num(_, num) => match num
            .to_i128()
            .or_else(|| num.to_u128().and_then(|n| i128::try_from(n).ok()))
        {
            // TOML integers are i64; a larger one is shown as text rather than rounded.
            Some(int) => i64::try_from(int)
                .map(toml_edit::Value::from)
                .unwrap_or_else(|_| int.to_string().into()),
            None => num.to_f64().unwrap_or(f64::NAN).into(),
        },
        Value::Empty(..) => "".into(),
        Value::Dict(_, dict) => {
            let mut table = toml_edit::InlineTable::new();
            for (key, value) in dict {
                table.insert(key, to_toml(value));
            }
            toml_edit::Value::InlineTable(table)
        }
        Value::Array(_, items) => toml_edit::Value::Array(items.iter().map(to_toml).collect()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_that_name_programs_paths_or_hosts_are_the_owners() {
        // A key added later that names a file, a program, a directory or a host must be marked
        // `owner(...)`, or a group's full access reaches the daemon's identity through it.
        let names_a_path_program_or_host = |key: &str| {
            key.starts_with("hooks.")
                || key.starts_with("control.")
                || [
                    "_file",
                    ".file",
                    ".dir",
                    "_dir",
                    ".path",
                    ".socket",
                    ".workspace",
                    ".allow",
                    "base_url",
                ]
                .iter()
                .any(|end| key.ends_with(end))
        };
        for spec in KEYS {
            if names_a_path_program_or_host(spec.key) {
                assert!(spec.owner_only, "{} must be the owner's", spec.key);
            }
        }
        let owners: Vec<&str> = KEYS
            .iter()
            .filter(|spec| spec.owner_only)
            .map(|spec| spec.key)
            .collect();
        // Which secret goes to which host (an attack sent the owner's key to a member's port),
        // and where the gateway listens.
        for key in [
            "tools.http_get.allow_private",
            "provider.api_key",
            "provider.kind",
            "gateway.listen",
            "gateway.allow_public_bind",
            "backup.keep",
            "backup.interval_secs",
        ] {
            assert!(owners.contains(&key), "{key}: {owners:?}");
        }
        assert!(!owners.contains(&"budget.daily_usd") && !owners.contains(&"log.level"));
        let (pricing, _) = key_path("pricing.\"m\".input").unwrap();
        assert!(!pricing.owner_only);
    }

    #[test]
    fn unknown_keys_get_the_section_or_the_nearest_key() {
        assert_eq!(
            suggest("log"),
            "`log` is a section; its keys are log.file, log.format, log.level"
        );
        assert_eq!(suggest("provider.apikey"), "did you mean `provider.api_key`?");
        assert_eq!(
            suggest("nothing.like.it"),
            "run `blufioctl config get` to list the keys"
        );
    }

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(
            mask_url_credentials("http://user:hunter2@127.0.0.1:9/v1?key=abc"),
            "http://********@127.0.0.1:9/v1?********"
        );
        assert_eq!(mask_url_credentials("https://api.example/v1"), "https://api.example/v1");
        let loaded = super::super::load_from(
            Some("[provider]\nbase_url = \"https://me:hunter2@api.example/v1\"\n"),
            None,
            false,
        )
        .unwrap();
        let shown = entries(&loaded, Some("provider.base_url")).unwrap().remove(0);
        assert!(!shown.value_json.contains("hunter2"), "{}", shown.value_json);
        assert!(shown.value_json.contains("api.example"), "{}", shown.value_json);
    }

    #[test]
    fn secret_values_are_masked_in_quoted_config_lines() {
        let error = "TOML parse error at line 3, column 11\n  |\n3 | api_key = sk-ant-api03-SECRET\n  |           ^\ninvalid string";
        let masked = mask_secrets_in(error);
        assert!(!masked.contains("SECRET"), "{masked}");
        assert!(!masked.contains(" | "), "the excerpt is dropped whole: {masked}");
        assert_eq!(masked, "TOML parse error at line 3, column 11\ninvalid string");
        // What a key-name test misses: another spelling of the key, an escape, a multi-line
        // string whose last line holds the secret. None of it is quoted.
        for source in [
            "API_KEY = sk-ant-LEAK",
            "apikey = sk-ant-LEAK",
            "\"api\\u005fkey\" = sk-ant-LEAK",
            "sk-ant-LEAK\"\"\"",
        ] {
            let error = format!(
                "TOML parse error at line 12, column 11\n   |\n12 | {source}\n   |           ^\ninvalid string"
            );
            assert!(!mask_secrets_in(&error).contains("LEAK"), "{source}");
        }
        for line in [
            "provider.api_key=sk-1 # x",
            "provider = { api_key = \"sk-2\" }",
            "\"metrics_token\" = abc",
            "metrics_token =abc",
        ] {
            assert!(
                !mask_secrets_in(line).contains("sk-") && !mask_secrets_in(line).contains("abc"),
                "{line}"
            );
        }
        assert_eq!(mask_secrets_in("my_api_key_hint = 3"), "my_api_key_hint = 3");
        assert_eq!(mask_secrets_in("level = debug"), "level = debug");
    }

    use std::collections::BTreeSet;

    use super::super::{Config, load_from};
    use super::*;
    use crate::config::SecretSetting;

    /// A config with every optional field set.
    fn full_config() -> Config {
        let mut config = Config::default();
        config.daemon.state_dir = Some("/s".into());
        config.daemon.runtime_dir = Some("/r".into());
        config.control.socket = Some("/r/s.sock".into());
        config.control.group = Some("g".into());
        config.storage.path = Some("/s/db".into());
        config.provider.base_url = Some("https://x".into());
        config.provider.model = Some("m".into());
        config.provider.api_key = Some(SecretSetting::Literal(super::super::agent::Secret("k".into())));
        config.agent.system_prompt_file = Some("/p.md".into());
        config.tools.files.workspace = Some("/w".into());
        config.gateway.cert_file = Some("/c.pem".into());
        config.gateway.key_file = Some("/k.pem".into());
        config.gateway.metrics_token = Some(SecretSetting::Literal(super::super::agent::Secret("t".into())));
        config.vault.key_file = Some("/etc/v.key".into());
        config.vault.passphrase_file = Some("/etc/v.pass".into());
        config.backup.dir = Some("/b".into());
        config.log.file = Some("/l/blufiod.log".into());
        config.gateway.metrics_listen = Some("127.0.0.1:9464".into());
        config
    }

    /// Every leaf of the struct tree, with every optional field set.
    fn leaves_of_full_config() -> BTreeSet<String> {
        let tree = Value::serialize(full_config()).unwrap();
        let mut leaves = BTreeSet::new();
        fn walk(prefix: &str, value: &Value, leaves: &mut BTreeSet<String>) {
            match value {
                Value::Dict(_, dict) if prefix != "pricing" => {
                    for (key, value) in dict {
                        let path = if prefix.is_empty() {
                            key.clone()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        walk(&path, value, leaves);
                    }
                }
                _ => {
                    leaves.insert(prefix.to_owned());
                }
            }
        }
        walk("", &tree, &mut leaves);
        leaves
    }

    #[test]
    fn secrets_are_masked_in_every_view() {
        let loaded = load_from(Some("[provider]\napi_key = \"sk-ant-very-secret\"\n"), None, false).unwrap();
        let entry = entries(&loaded, Some("provider.api_key")).unwrap().remove(0);
        assert!(entry.spec.secret);
        assert_eq!(entry.value_toml, "\"********\"");
        assert_eq!(entry.value_json, "\"********\"");
        let all = entries(&loaded, None).unwrap();
        assert!(all.iter().all(|entry| !entry.value_toml.contains("very-secret")));
        assert!(
            !format!("{:?}", loaded.config).contains("very-secret"),
            "Debug must not show secrets"
        );
    }

    #[test]
    fn a_vault_reference_is_shown_and_a_literal_is_not() {
        let loaded = load_from(
            Some("[provider]\napi_key = \"secret:anthropic\"\n[gateway]\nmetrics_token = \"scrape-me-scrape-me\"\n"),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            loaded.config.provider.api_key,
            Some(SecretSetting::Vault("anthropic".into()))
        );
        let entry = entries(&loaded, Some("provider.api_key")).unwrap().remove(0);
        assert_eq!(entry.value_toml, "\"secret:anthropic\"");
        let entry = entries(&loaded, Some("gateway.metrics_token")).unwrap().remove(0);
        assert_eq!(entry.value_json, format!("\"{MASK}\""));
        let error = load_from(Some("[provider]\napi_key = \"secret:Bad Name\"\n"), None, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("does not name a vault secret") && !error.contains("Bad Name"),
            "{error}"
        );
    }

    #[test]
    fn the_secret_flag_follows_the_secret_type() {
        // Every key whose serialized value is a Secret, in a config with every optional key set.
        let tree = Value::serialize(full_config()).unwrap();
        let of_type: BTreeSet<&str> = KEYS
            .iter()
            .filter(|spec| tree.find_ref(spec.key).is_some_and(is_secret))
            .map(|spec| spec.key)
            .collect();
        let flagged: BTreeSet<&str> = KEYS.iter().filter(|spec| spec.secret).map(|spec| spec.key).collect();
        assert_eq!(of_type, flagged);
        // A marked value is masked even under a key the registry forgot to flag.
        assert!(is_secret(
            &Value::serialize(super::super::agent::Secret("x".into())).unwrap()
        ));
    }

    #[test]
    fn registry_matches_the_struct_tree() {
        let registry: BTreeSet<String> = KEYS.iter().map(|spec| spec.key.to_owned()).collect();
        assert_eq!(registry, leaves_of_full_config());
        let mut sorted: Vec<&str> = KEYS.iter().map(|spec| spec.key).collect();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            KEYS.iter().map(|spec| spec.key).collect::<Vec<_>>(),
            "keep KEYS sorted"
        );
    }

    #[test]
    fn entries_show_values_sources_and_unset_keys() {
        let loaded = load_from(
            Some("[daemon]\nshutdown_timeout_secs = 3\n"),
            Some(std::path::Path::new("/c.toml")),
            false,
        )
        .unwrap();
        let all = entries(&loaded, None).unwrap();
        assert_eq!(all.len(), KEYS.len());
        let timeout = entries(&loaded, Some("daemon.shutdown_timeout_secs"))
            .unwrap()
            .remove(0);
        assert_eq!(timeout.value_toml, "3");
        assert_eq!(timeout.value_json, "3");
        assert_eq!(timeout.source, ValueSource::File);
        let level = entries(&loaded, Some("log.level")).unwrap().remove(0);
        assert_eq!(level.value_toml, "\"info\"");
        assert_eq!(level.source, ValueSource::Default);
        let socket = entries(&loaded, Some("control.socket")).unwrap().remove(0);
        assert!(socket.unset);
        assert_eq!(socket.value_json, "null");
        assert!(entries(&loaded, Some("no.such")).is_none());
    }
}
