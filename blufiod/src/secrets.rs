//! The one place secrets are resolved. A subsystem that needs a key asks [`Secrets`] and never
//! reads the environment or a config value itself, so that the coming vault (a `provider.api_key`
//! that names a vault entry) changes this module and nothing else.
//!
//! Today a secret comes from the configuration (`provider.api_key`, `gateway.metrics_token`) or,
//! for provider keys only, from the daemon's environment (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`),
//! read once at start: the environment of a running process does not change.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{GatewayConfig, ProviderConfig, ProviderKind, Secret};

/// Where a resolved secret came from, for `doctor` and status lines (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// The configuration file or a `BLUFIO_*` variable.
    Config,
    /// A provider's conventional environment variable.
    Environment(&'static str),
}

impl SecretSource {
    /// Where the secret came from, for logs and `doctor` (never the value).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Config => "from the configuration",
            Self::Environment(name) => name,
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

/// The secrets resolver, made once by the composition root.
#[derive(Debug, Default)]
pub struct Secrets {
    /// Provider key variables present and non-empty at start.
    environment: HashMap<&'static str, Secret>,
}

impl Secrets {
    /// Reads the provider key variables through `env` (the process environment in the daemon).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Arc<Self> {
        let environment = ProviderKind::ALL
            .iter()
            .map(|kind| kind.api_key_env())
            .filter_map(|name| {
                env(name)
                    .filter(|value| !value.is_empty())
                    .map(|value| (name, Secret(value)))
            })
            .collect();
        Arc::new(Self { environment })
    }

    /// The API key of `provider`: `provider.api_key` when set and non-empty, else the kind's
    /// environment variable.
    pub fn provider_key(&self, provider: &ProviderConfig) -> Option<Resolved> {
        if let Some(key) = provider.api_key.as_ref().filter(|key| !key.expose().is_empty()) {
            return Some(Resolved {
                value: key.clone(),
                source: SecretSource::Config,
            });
        }
        let name = provider.kind.api_key_env();
        self.environment.get(name).map(|value| Resolved {
            value: value.clone(),
            source: SecretSource::Environment(name),
        })
    }

    /// The bearer token `/metrics` requires, if one is configured.
    pub fn metrics_token<'a>(&self, gateway: &'a GatewayConfig) -> Option<&'a Secret> {
        gateway.metrics_token.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ProviderKind, key: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            kind,
            api_key: key.map(|key| Secret(key.to_owned())),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn a_configured_key_wins_over_the_environment_and_an_empty_one_does_not_count() {
        let secrets = Secrets::from_env(|name| (name == "ANTHROPIC_API_KEY").then(|| "from-env".to_owned()));
        let configured = secrets
            .provider_key(&provider(ProviderKind::Anthropic, Some("from-config")))
            .unwrap();
        assert_eq!(configured.value.expose(), "from-config");
        assert_eq!(configured.source, SecretSource::Config);
        let fallback = secrets
            .provider_key(&provider(ProviderKind::Anthropic, Some("")))
            .unwrap();
        assert_eq!(fallback.value.expose(), "from-env");
        assert_eq!(fallback.source, SecretSource::Environment("ANTHROPIC_API_KEY"));
        assert!(
            secrets.provider_key(&provider(ProviderKind::Openai, None)).is_none(),
            "each kind reads only its own variable"
        );
    }

    #[test]
    fn empty_environment_values_are_no_key() {
        let secrets = Secrets::from_env(|_| Some(String::new()));
        assert!(secrets.provider_key(&provider(ProviderKind::Openai, None)).is_none());
    }
}
