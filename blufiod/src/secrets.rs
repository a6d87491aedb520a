//! The one place a config value becomes a secret. A subsystem that needs a key asks [`Secrets`]
//! and never reads the vault, the environment or a config value itself.
//!
//! A secret key of the config (`provider.api_key`, `gateway.metrics_token`) names a vault entry
//! (`"secret:anthropic"`), which is decrypted at the moment it is needed. A provider key may also
//! come from the provider's conventional environment variable (`ANTHROPIC_API_KEY`,
//! `OPENAI_API_KEY`, read once at start: the environment of a running process does not change),
//! for containers; and a literal that only the environment can still put in the config
//! (`BLUFIO_PROVIDER__API_KEY`) is used as it is. Status says which source is in effect.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{
    Config, ConfigHandle, GatewayConfig, LiveConfig, MIN_METRICS_TOKEN_CHARS, ProviderConfig, ProviderKind,
    SECRET_REFERENCE_PREFIX, Secret, SecretSetting,
};
use crate::health::{Check, Finding, Health};
use crate::vault::{Vault, VaultError};

/// Where a resolved secret came from, for status and logs (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A vault entry.
    Vault(String),
    /// A value in the configuration itself (a `BLUFIO_*` variable, or a config file blufiod could
    /// not rewrite).
    Config,
    /// A provider's conventional environment variable.
    Environment(&'static str),
}

impl SecretSource {
    /// Where the secret came from, for status and logs (never the value).
    pub fn describe(&self) -> String {
        match self {
            Self::Vault(name) => format!("vault secret `{name}`"),
            Self::Config => "the configuration (a value in clear, not in the vault)".to_owned(),
            Self::Environment(name) => format!("environment variable {name}"),
        }
    }
}

/// A secret and its source.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The secret.
    pub value: Secret,
    /// Where it came from.
    pub source: SecretSource,
}

/// A secret key whose value cannot be had.
#[derive(Debug, thiserror::Error)]
#[error("{key} names a secret the vault cannot give")]
pub struct SecretError {
    /// The config key.
    pub key: &'static str,
    #[source]
    source: VaultError,
}

/// The secrets resolver, made once by the composition root.
#[derive(Debug)]
pub struct Secrets {
    vault: Arc<Vault>,
    /// Provider key variables present and non-empty at start.
    environment: HashMap<&'static str, Secret>,
}

impl Secrets {
    /// The resolver over `vault`, with the provider key variables read through `env` (the
    /// process environment in the daemon).
    pub fn new(vault: Arc<Vault>, env: impl Fn(&str) -> Option<String>) -> Arc<Self> {
        let environment = ProviderKind::ALL
            .iter()
            .map(|kind| kind.api_key_env())
            .filter_map(|name| {
                env(name)
                    .filter(|value| !value.is_empty())
                    .map(|value| (name, Secret(value)))
            })
            .collect();
        Arc::new(Self { vault, environment })
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    fn resolve(&self, key: &'static str, setting: &SecretSetting) -> Result<Resolved, SecretError> {
        match setting {
            SecretSetting::Vault(name) => {
                let value = self.vault.get(name).map_err(|source| SecretError { key, source })?;
                Ok(Resolved {
                    value,
                    source: SecretSource::Vault(name.clone()),
                })
            }
            SecretSetting::Literal(value) => Ok(Resolved {
                value: value.clone(),
                source: SecretSource::Config,
            }),
        }
    }

    /// The API key of `provider`: `provider.api_key` when set, else the kind's environment
    /// variable; `None` when neither is.
    pub fn provider_key(&self, provider: &ProviderConfig) -> Result<Option<Resolved>, SecretError> {
        if let Some(setting) = &provider.api_key {
            return self.resolve("provider.api_key", setting).map(Some);
        }
        let name = provider.kind.api_key_env();
        Ok(self.environment.get(name).map(|value| Resolved {
            value: value.clone(),
            source: SecretSource::Environment(name),
        }))
    }

    /// Where the provider key would come from, without decrypting it: for status.
    pub fn provider_key_source(&self, provider: &ProviderConfig) -> Option<SecretSource> {
        match &provider.api_key {
            Some(SecretSetting::Vault(name)) => Some(SecretSource::Vault(name.clone())),
            Some(SecretSetting::Literal(_)) => Some(SecretSource::Config),
            None => {
                let name = provider.kind.api_key_env();
                self.environment
                    .contains_key(name)
                    .then_some(SecretSource::Environment(name))
            }
        }
    }

    /// The bearer token `/metrics` requires, if one is configured: for comparing with what a
    /// request sends, which is not a use of it (see [`Secrets::metrics_token_used`]).
    pub fn metrics_token(&self, gateway: &GatewayConfig) -> Result<Option<Secret>, SecretError> {
        let key = "gateway.metrics_token";
        gateway
            .metrics_token
            .as_ref()
            .map(|setting| match setting {
                SecretSetting::Vault(name) => self.vault.inspect(name).map_err(|source| SecretError { key, source }),
                SecretSetting::Literal(value) => Ok(value.clone()),
            })
            .transpose()
    }

    /// Records that a scrape presented the metrics token.
    pub fn metrics_token_used(&self, gateway: &GatewayConfig) {
        if let Some(SecretSetting::Vault(name)) = &gateway.metrics_token {
            self.vault.note_use(name);
        }
    }

    /// A generation that changes whenever a vault entry does: what caches a client built with
    /// a secret compare.
    pub fn generation(&self) -> u64 {
        self.vault.generation()
    }

    /// Whether every vault entry `config` names exists (and the metrics token is long enough):
    /// the check a configuration change passes before it is written or installed.
    pub fn check(&self, config: &Config) -> Result<(), String> {
        for (key, name) in references(config) {
            let value = self
                .vault
                .inspect(&name)
                .map_err(|error| format!("{key} names `secret:{name}`: {error}"))?;
            if let Some(problem) = value_problem(config, &name, &value) {
                return Err(problem);
            }
        }
        Ok(())
    }
}

impl Secrets {
    /// Moves every secret the config file holds in clear into the vault, and rewrites the
    /// file's line to name it (`secret:anthropic`), so that no key stays in clear in a file that
    /// editors, backups and `cat` see. A value from the environment stays where it is. A file
    /// blufiod may not write keeps its value, with a warning (and the health check's).
    pub async fn move_literals_into_vault(&self, live: &LiveConfig) {
        let config = live.get();
        for (key, value) in live.literal_secrets_in_file() {
            let base = match key {
                "provider.api_key" => config.config.provider.kind.as_str(),
                _ => "metrics",
            };
            // The first free name, or one already holding this very value.
            let name = (1..)
                .map(|n| if n == 1 { base.to_owned() } else { format!("{base}-{n}") })
                .find(|name| {
                    self.vault
                        .inspect(name)
                        .map_or(true, |held| held.expose() == value.expose())
                })
                .expect("names are unbounded");
            if let Err(error) = self.vault.set(&name, &value).await {
                tracing::warn!(key, error = %crate::error_chain(&error), "cannot move a secret from the config file into the vault; it stays in clear there");
                continue;
            }
            match live.set_key(key, &format!("{SECRET_REFERENCE_PREFIX}{name}")).await {
                Ok(_) => tracing::info!(
                    key,
                    secret = %name,
                    file = %live.file_path().display(),
                    "moved a secret from the config file into the vault; the file now names it"
                ),
                Err(error) => tracing::warn!(
                    key,
                    secret = %name,
                    file = %live.file_path().display(),
                    error = %crate::error_chain(&error),
                    "a secret is in clear in the config file and blufiod cannot rewrite the file; it is in the vault too: set the key to the reference by hand"
                ),
            }
        }
    }

    /// Registers the `vault` health check: the key source (a warning when the key sits beside
    /// the data), a rekey waiting for its key, secrets in clear in the config file, and config
    /// keys naming secrets the vault does not hold.
    pub fn register_checks(self: &Arc<Self>, health: &Health, live: &Arc<LiveConfig>) {
        let secrets = self.clone();
        let live = live.clone();
        health.register(Check::new("vault", move || {
            let secrets = secrets.clone();
            let live = live.clone();
            async move { secrets.finding(&live.handle(), &live.literal_secrets_in_file()) }
        }));
    }

    fn finding(&self, config: &ConfigHandle, literals: &[(&'static str, Secret)]) -> Finding {
        let config = config.get();
        if let Err(problem) = self.check(&config.config) {
            return Finding::fail(
                problem,
                "store the secret with `blufioctl config set-secret NAME`, or name one that `blufioctl config list-secrets` shows",
            );
        }
        let status = self.vault.status();
        if let Some((key, _)) = literals.first() {
            return Finding::warn(
                format!("{key} is in clear in the config file"),
                "blufiod moves it into the vault when it starts and may write the file: make the file writable by blufiod's user and restart, or store it yourself with `blufioctl config set-secret NAME` and set the key to `secret:NAME`",
            );
        }
        if let Some(pending) = &status.pending {
            return Finding::warn(
                format!("a rekey to a new {} key is waiting for that key", pending.source),
                format!(
                    "supply {} and restart blufiod; until then the current key opens the vault",
                    pending.source.how_to_supply()
                ),
            );
        }
        if status.source.beside_data {
            return Finding::warn(
                format!("the vault key is {}", status.source.describe()),
                "a copy of the state directory is a copy of the secrets: give blufiod a systemd credential (LoadCredentialEncrypted=vault-key), a vault.key_file elsewhere or a passphrase, with `blufioctl vault rekey --new-key FILE` or `--new-passphrase`",
            );
        }
        Finding::ok(format!(
            "{} secrets; key from the {}",
            status.entries,
            status.source.describe()
        ))
    }
}

/// Why `value` cannot be the secret `name` while `config` names it, if it cannot: the metrics
/// token must be long enough not to be guessed.
pub fn value_problem(config: &Config, name: &str, value: &Secret) -> Option<String> {
    let guards_metrics = references(config)
        .iter()
        .any(|(key, named)| *key == "gateway.metrics_token" && named == name);
    (guards_metrics && value.expose().chars().count() < MIN_METRICS_TOKEN_CHARS).then(|| {
        format!(
            "gateway.metrics_token names `secret:{name}`, whose value is shorter than {MIN_METRICS_TOKEN_CHARS} characters and could be guessed; store a longer one (`openssl rand -hex 16 | blufioctl config set-secret {name}`)"
        )
    })
}

/// Every (config key, vault entry) that `config` refers to.
pub fn references(config: &Config) -> Vec<(&'static str, String)> {
    config
        .secrets()
        .into_iter()
        .filter_map(|(key, setting)| Some((key, setting?.vault_name()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{Storage, StorageOptions};
    use crate::vault::SourceInputs;

    async fn vault(dir: &std::path::Path) -> Arc<Vault> {
        let storage = Storage::open(&StorageOptions {
            path: dir.join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap();
        Vault::open(
            storage,
            SourceInputs {
                state_dir: dir.to_owned(),
                euid: nix::unistd::geteuid().as_raw(),
                ..SourceInputs::default()
            },
        )
        .await
        .unwrap()
    }

    fn provider(kind: ProviderKind, key: Option<SecretSetting>) -> ProviderConfig {
        ProviderConfig {
            kind,
            api_key: key,
            ..ProviderConfig::default()
        }
    }

    #[tokio::test]
    async fn a_configured_key_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(dir.path()).await;
        vault.set("anthropic", &Secret("from-the-vault".into())).await.unwrap();
        let secrets = Secrets::new(vault, |name| {
            (name == "ANTHROPIC_API_KEY").then(|| "from-env".to_owned())
        });
        let named = provider(ProviderKind::Anthropic, Some(SecretSetting::Vault("anthropic".into())));
        let resolved = secrets.provider_key(&named).unwrap().unwrap();
        assert_eq!(resolved.value.expose(), "from-the-vault");
        assert_eq!(resolved.source, SecretSource::Vault("anthropic".into()));
        assert_eq!(secrets.provider_key_source(&named), Some(resolved.source));

        let fallback = secrets
            .provider_key(&provider(ProviderKind::Anthropic, None))
            .unwrap()
            .unwrap();
        assert_eq!(fallback.value.expose(), "from-env");
        assert_eq!(fallback.source, SecretSource::Environment("ANTHROPIC_API_KEY"));
        assert!(
            secrets
                .provider_key(&provider(ProviderKind::Openai, None))
                .unwrap()
                .is_none(),
            "each kind reads only its own variable"
        );
        let literal = provider(
            ProviderKind::Openai,
            Some(SecretSetting::Literal(Secret("clear".into()))),
        );
        assert_eq!(
            secrets.provider_key(&literal).unwrap().unwrap().source,
            SecretSource::Config
        );
    }

    #[tokio::test]
    async fn the_vault_check_warns_of_a_key_beside_the_data_and_fails_a_missing_secret() {
        use crate::health::Level;
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(vault(dir.path()).await, |_| None);
        let loaded = |text: &str| ConfigHandle::new(crate::config::load_from(Some(text), None, false).unwrap());
        let empty = loaded("");
        let finding = secrets.finding(&empty, &[]);
        assert_eq!(finding.level, Level::Warn, "{finding:?}");
        assert!(finding.detail.contains("beside the data"), "{finding:?}");

        let dangling = loaded("[provider]\napi_key = \"secret:anthropic\"\n");
        let finding = secrets.finding(&dangling, &[]);
        assert_eq!(finding.level, Level::Fail, "{finding:?}");
        assert!(finding.detail.contains("secret:anthropic"), "{finding:?}");

        let finding = secrets.finding(&empty, &[("provider.api_key", Secret("sk-in-clear".into()))]);
        assert_eq!(finding.level, Level::Warn);
        assert!(
            finding.detail.contains("in clear") && !format!("{finding:?}").contains("sk-in-clear"),
            "{finding:?}"
        );

        // A passphrase vault with its secrets present is fine.
        let other = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            path: other.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap();
        let inputs = SourceInputs {
            state_dir: other.path().to_owned(),
            euid: nix::unistd::geteuid().as_raw(),
            passphrase: Some(zeroize::Zeroizing::new("a passphrase of length".to_owned())),
            ..SourceInputs::default()
        };
        let secrets = Secrets::new(Vault::open(storage, inputs).await.unwrap(), |_| None);
        secrets.vault().set("anthropic", &Secret("sk-1".into())).await.unwrap();
        let finding = secrets.finding(&dangling, &[]);
        assert_eq!(finding.level, Level::Ok, "{finding:?}");
    }

    #[tokio::test]
    async fn a_missing_entry_is_an_error_that_names_the_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(vault(dir.path()).await, |_| Some(String::new()));
        let named = provider(ProviderKind::Openai, Some(SecretSetting::Vault("openai".into())));
        let error = crate::error_chain(&secrets.provider_key(&named).unwrap_err());
        assert!(
            error.contains("provider.api_key") && error.contains("config set-secret openai"),
            "{error}"
        );
        let mut config = Config {
            provider: named,
            ..Config::default()
        };
        assert!(secrets.check(&config).unwrap_err().contains("secret:openai"));
        secrets.vault().set("openai", &Secret("sk-1".into())).await.unwrap();
        secrets.check(&config).unwrap();
        config.gateway.metrics_token = Some(SecretSetting::Vault("openai".into()));
        assert!(secrets.check(&config).unwrap_err().contains("shorter than 16"));
        assert_eq!(
            references(&config),
            [
                ("gateway.metrics_token", "openai".to_owned()),
                ("provider.api_key", "openai".to_owned())
            ]
        );
    }
}
