//! The daemon's shared state: identity, resolved paths, storage, the live configuration and the
//! lifecycle phase, plus the two ways the configuration changes at runtime (reload and set).
//!
//! Every subsystem gets an `Arc<Shared>`; none holds its own copy of the config. Changes are
//! serialized by one lock so that a reload and a `SetConfig` never interleave. This module knows
//! nothing of gRPC: the control module converts what it returns.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};

use crate::agent::Agent;
use crate::config::{self, ConfigEntry, ConfigSource, ConfigWriteError, KeySpec, Loaded, ValueSource};
use crate::gateway::GatewayInfo;
use crate::logging::LogHandle;
use crate::notify::Notifier;
use crate::paths::Paths;
use crate::storage::Storage;
use crate::watchdog::WatchdogStatus;

/// The daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening storage, binding listeners.
    Starting,
    /// Serving.
    Ready,
    /// Re-reading the configuration.
    Reloading,
    /// Draining before exit.
    Stopping,
}

/// What a configuration change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// Changed keys now in effect.
    pub applied: Vec<&'static str>,
    /// Changed keys that need a restart.
    pub restart_required: Vec<&'static str>,
}

/// The result of setting one key.
#[derive(Debug, Clone)]
pub struct SetOutcome {
    /// The entry as now configured.
    pub entry: ConfigEntry,
    /// Whether the running daemon already uses the new value.
    pub applied_live: bool,
    /// Keys (this one or others) that need a restart.
    pub restart_required: Vec<&'static str>,
    /// The environment variable that overrides the key, if any.
    pub overridden_by_env: Option<String>,
}

/// Errors from reloading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration on disk is invalid; the previous one stays in effect.
    #[error("the configuration on disk is invalid; still running the previous configuration")]
    Load {
        #[source]
        source: config::ConfigError,
    },
}

/// A snapshot for `GetStatus`.
#[derive(Debug, Clone)]
pub struct DaemonStatus {
    /// Lifecycle phase.
    pub phase: Phase,
    /// Version.
    pub version: &'static str,
    /// Process id.
    pub pid: u32,
    /// Time since start.
    pub uptime: Duration,
    /// Resolved paths.
    pub paths: Paths,
    /// Whether the config file exists.
    pub config_file_present: bool,
    /// Database bytes on disk.
    pub database_size_bytes: u64,
    /// Whether the previous run ended uncleanly.
    pub previous_run_unclean: bool,
    /// Subsystem names and what each is doing.
    pub subsystems: Vec<(&'static str, String)>,
}

/// The live configuration, shared by everything that reads it; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct ConfigHandle(Arc<RwLock<Arc<Loaded>>>);

impl ConfigHandle {
    /// A handle holding `loaded`.
    pub fn new(loaded: Loaded) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(loaded))))
    }

    /// The configuration now in effect.
    pub fn get(&self) -> Arc<Loaded> {
        self.0.read().expect("config lock poisoned").clone()
    }

    fn replace(&self, loaded: Loaded) {
        *self.0.write().expect("config lock poisoned") = Arc::new(loaded);
    }
}

/// State shared by all subsystems.
#[derive(Debug)]
pub struct Shared {
    /// Process id.
    pub pid: u32,
    /// When the process started serving requests from main.
    pub started: Instant,
    /// Resolved paths (fixed until restart).
    pub paths: Paths,
    /// The database.
    pub storage: Storage,
    /// Whether the previous run ended uncleanly.
    pub previous_run_unclean: bool,
    /// systemd notifications.
    pub notifier: Notifier,
    /// What the watchdog last saw.
    pub watchdog: WatchdogStatus,
    /// The agent.
    pub agent: Arc<Agent>,
    /// The HTTPS gateway, when enabled.
    pub gateway: Option<GatewayInfo>,
    source: ConfigSource,
    startup: Arc<Loaded>,
    current: ConfigHandle,
    phase: watch::Sender<Phase>,
    log: Option<LogHandle>,
    change_lock: Mutex<()>,
}

/// What `Shared::new` needs.
#[derive(Debug)]
pub struct SharedParts {
    /// When main started.
    pub started: Instant,
    /// Resolved paths.
    pub paths: Paths,
    /// The database.
    pub storage: Storage,
    /// Whether the previous run ended uncleanly.
    pub previous_run_unclean: bool,
    /// Where the config comes from.
    pub source: ConfigSource,
    /// The live configuration (holding the config loaded at startup).
    pub config: ConfigHandle,
    /// The agent.
    pub agent: Arc<Agent>,
    /// The HTTPS gateway, when enabled.
    pub gateway: Option<GatewayInfo>,
    /// The live log filter, when logging is installed.
    pub log: Option<LogHandle>,
}

impl Shared {
    /// Assembles the shared state.
    pub fn new(parts: SharedParts) -> Self {
        Self {
            pid: std::process::id(),
            started: parts.started,
            paths: parts.paths,
            storage: parts.storage,
            previous_run_unclean: parts.previous_run_unclean,
            notifier: Notifier,
            watchdog: WatchdogStatus::default(),
            agent: parts.agent,
            gateway: parts.gateway,
            source: parts.source,
            startup: parts.config.get(),
            current: parts.config,
            phase: watch::Sender::new(Phase::Starting),
            log: parts.log,
            change_lock: Mutex::new(()),
        }
    }

    /// The configuration now in effect.
    pub fn config(&self) -> Arc<Loaded> {
        self.current.get()
    }

    /// The lifecycle phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to another phase.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Effective entries (all, or one key), with `pending_restart` for keys whose running value
    /// is older than the configured one. `None` when `key` is unknown.
    pub fn config_entries(&self, key: Option<&str>) -> Option<Vec<(ConfigEntry, bool)>> {
        let current = self.config();
        let pending = config::changed_keys(&self.startup.config, &current.config);
        let entries = config::entries(&current, key)?;
        Some(
            entries
                .into_iter()
                .map(|entry| {
                    let pending = entry.spec.restart_required && pending.iter().any(|spec| spec.key == entry.spec.key);
                    (entry, pending)
                })
                .collect(),
        )
    }

    /// Re-reads the config file and applies what can be applied live (SIGHUP, `ReloadConfig`).
    /// An invalid file changes nothing.
    pub async fn reload(&self) -> Result<ConfigChange, ReloadError> {
        let _guard = self.change_lock.lock().await;
        self.notifier.reloading();
        self.set_phase(Phase::Reloading);
        let outcome = self.source.load().map(|loaded| self.apply(loaded));
        if let Some(gateway) = &self.gateway
            && let Err(error) = gateway.reload_certificate()
        {
            tracing::error!(error = %crate::error_chain(&error), "cannot reload the gateway certificate; keeping the old one");
        }
        // Back to Ready only if shutdown has not begun meanwhile.
        self.phase.send_if_modified(|phase| {
            let reloading = *phase == Phase::Reloading;
            if reloading {
                *phase = Phase::Ready;
            }
            reloading
        });
        match outcome {
            Ok(change) => {
                tracing::info!(applied = ?change.applied, restart_required = ?change.restart_required, "configuration reloaded");
                self.notifier.ready(&self.ready_line());
                Ok(change)
            }
            Err(source) => {
                tracing::error!(error = %source, "reload failed; keeping the previous configuration");
                self.notifier.ready(&format!(
                    "{}; last reload failed: invalid configuration",
                    self.ready_line()
                ));
                Err(ReloadError::Load { source })
            }
        }
    }

    /// Sets one key in the config file (validated first, written atomically) and applies it.
    pub async fn set_key(&self, key: &str, value: &str) -> Result<SetOutcome, ConfigWriteError> {
        let _guard = self.change_lock.lock().await;
        let current_text = self
            .source
            .read_file()
            .map_err(|source| ConfigWriteError::Read { source })?;
        let loaded = config::set_key_in_file(&self.source.path, current_text.as_deref(), key, value)?;
        let overridden_by_env = (loaded.source_of(key) == ValueSource::Env)
            .then(|| format!("{}{}", config::ENV_PREFIX, key.replace('.', "__").to_uppercase()));
        let change = self.apply(loaded);
        tracing::info!(key, applied = ?change.applied, restart_required = ?change.restart_required, "configuration key set");
        let (entry, pending) = self
            .config_entries(Some(key))
            .and_then(|mut entries| entries.pop())
            .expect("set_key_in_file accepts only known keys");
        Ok(SetOutcome {
            applied_live: !pending && overridden_by_env.is_none(),
            entry,
            restart_required: self.pending_restart(),
            overridden_by_env,
        })
    }

    /// Validates the config file as a reload would read it, without applying it.
    pub fn validate_own_file(&self) -> Result<(), config::ConfigError> {
        self.source.load().map(drop)
    }

    /// Keys changed since startup that need a restart.
    pub fn pending_restart(&self) -> Vec<&'static str> {
        config::changed_keys(&self.startup.config, &self.config().config)
            .into_iter()
            .filter(|spec| spec.restart_required)
            .map(|spec| spec.key)
            .collect()
    }

    /// Installs a new configuration, applying the live keys.
    fn apply(&self, loaded: Loaded) -> ConfigChange {
        let old = self.config();
        let changed: Vec<&'static KeySpec> = config::changed_keys(&old.config, &loaded.config);
        if changed.iter().any(|spec| spec.key == "log.level")
            && let Some(log) = &self.log
            && let Err(error) = log.set_level(&loaded.config.log.level)
        {
            tracing::error!(%error, "cannot apply log.level");
        }
        self.current.replace(loaded);
        ConfigChange {
            applied: changed
                .iter()
                .filter(|spec| !spec.restart_required)
                .map(|spec| spec.key)
                .collect(),
            restart_required: changed
                .iter()
                .filter(|spec| spec.restart_required)
                .map(|spec| spec.key)
                .collect(),
        }
    }

    /// The `STATUS=` line while serving.
    pub fn ready_line(&self) -> String {
        format!("ready: serving on {}", self.paths.socket.display())
    }

    /// A snapshot for `GetStatus`.
    pub fn status(&self) -> DaemonStatus {
        let pending = self.pending_restart();
        let config_line = if pending.is_empty() {
            "up to date".to_owned()
        } else {
            format!("restart needed for {}", pending.join(", "))
        };
        DaemonStatus {
            phase: self.phase(),
            version: VERSION,
            pid: self.pid,
            uptime: self.started.elapsed(),
            config_file_present: self.paths.config.exists(),
            database_size_bytes: self.storage.size_bytes(),
            previous_run_unclean: self.previous_run_unclean,
            subsystems: vec![
                ("control", format!("listening on {}", self.paths.socket.display())),
                (
                    "gateway",
                    match &self.gateway {
                        Some(gateway) => format!("{} on {}", gateway.scheme, gateway.address),
                        None => "disabled (gateway.enabled = false)".to_owned(),
                    },
                ),
                ("storage", format!("sqlite (WAL) at {}", self.storage.path().display())),
                ("watchdog", self.watchdog.describe()),
                ("config", config_line),
            ],
            paths: self.paths.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    async fn shared_with_file(dir: &std::path::Path, text: &str) -> Shared {
        let path = dir.join("blufiod.toml");
        std::fs::write(&path, text).unwrap();
        let source = ConfigSource {
            path: path.clone(),
            explicit: true,
        };
        let loaded = config::load_from(Some(text), Some(&path), false).unwrap();
        let storage = Storage::open(&StorageOptions {
            path: dir.join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
        })
        .await
        .unwrap();
        let paths = Paths::resolve(&loaded.config, &path, |_| None, 1000);
        let config = ConfigHandle::new(loaded);
        let agent = Agent::start(storage.clone(), config.clone(), dir.to_owned(), Default::default())
            .await
            .unwrap();
        Shared::new(SharedParts {
            started: Instant::now(),
            paths,
            storage,
            previous_run_unclean: false,
            source,
            config,
            agent: Arc::new(agent),
            gateway: None,
            log: None,
        })
    }

    #[tokio::test]
    async fn reload_applies_live_keys_and_reports_restart_keys() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_file(dir.path(), "").await;
        std::fs::write(
            dir.path().join("blufiod.toml"),
            "[daemon]\nshutdown_timeout_secs = 3\n[storage]\nbusy_timeout_ms = 10\n",
        )
        .unwrap();
        let change = shared.reload().await.unwrap();
        assert_eq!(change.applied, vec!["daemon.shutdown_timeout_secs"]);
        assert_eq!(change.restart_required, vec!["storage.busy_timeout_ms"]);
        assert_eq!(shared.config().config.daemon.shutdown_timeout_secs, 3);
        assert_eq!(shared.pending_restart(), vec!["storage.busy_timeout_ms"]);
        assert_eq!(shared.phase(), Phase::Ready);
    }

    #[tokio::test]
    async fn an_invalid_file_changes_nothing_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_file(dir.path(), "[daemon]\nshutdown_timeout_secs = 4\n").await;
        std::fs::write(
            dir.path().join("blufiod.toml"),
            "[daemon]\nshutdown_timeout_secs = \"x\"\n",
        )
        .unwrap();
        assert!(shared.reload().await.is_err());
        assert_eq!(shared.config().config.daemon.shutdown_timeout_secs, 4);
    }

    #[tokio::test]
    async fn set_key_writes_the_file_and_applies_live() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_file(dir.path(), "# keep\n[log]\nlevel = \"info\"\n").await;
        let outcome = shared.set_key("control.group_access", "full").await.unwrap();
        assert!(outcome.applied_live);
        assert!(outcome.restart_required.is_empty());
        assert_eq!(outcome.entry.value_toml, "\"full\"");
        assert_eq!(shared.config().config.control.group_access, config::Access::Full);
        let outcome = shared.set_key("storage.read_connections", "2").await.unwrap();
        assert!(!outcome.applied_live);
        assert_eq!(outcome.restart_required, vec!["storage.read_connections"]);
        let text = std::fs::read_to_string(dir.path().join("blufiod.toml")).unwrap();
        assert!(text.starts_with("# keep\n[log]\nlevel = \"info\"\n"), "{text}");
        let pending: Vec<_> = shared
            .config_entries(None)
            .unwrap()
            .into_iter()
            .filter(|(_, pending)| *pending)
            .map(|(entry, _)| entry.spec.key)
            .collect();
        assert_eq!(pending, vec!["storage.read_connections"]);
    }
}
