//! The live configuration: the one handle every subsystem reads the configuration through, and
//! the two ways it changes while the daemon runs (`reload` from the file, `set_key` of one key).
//!
//! Changes are serialized by one lock, so a reload and a `SetConfig` never interleave. A change
//! fans out to what subsystems registered: appliers (`on_change`) run on every change and apply
//! live keys that need more than a fresh read (the log filter); reloaders (`on_reload`) run on a
//! reload only and re-read material outside the config file (the gateway's certificate). This
//! module knows no subsystem: the root registers them.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{
    ConfigEntry, ConfigError, ConfigSource, ConfigWriteError, ENV_PREFIX, Edit, KeySpec, Loaded, ValueSource,
    changed_keys, entries, prepare_set, prepare_unset,
};

/// The configuration now in effect, replaced whole on each change. Cheap to clone; readers take
/// a snapshot (`get`) at the moment they need it and never keep it.
#[derive(Debug, Clone)]
pub struct ConfigHandle(Arc<RwLock<Arc<Loaded>>>);

impl ConfigHandle {
    /// A handle holding `loaded`.
    pub fn new(loaded: Loaded) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(loaded))))
    }

    /// The configuration now in effect.
    pub fn get(&self) -> Arc<Loaded> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the configuration, for tests of a subsystem that reads it.
    #[cfg(test)]
    pub fn set_for_tests(&self, loaded: Loaded) {
        self.replace(loaded);
    }

    fn replace(&self, loaded: Loaded) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
    }
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
        source: ConfigError,
    },
    /// The configuration on disk is valid, but a subsystem refused it while the daemon runs.
    #[error(
        "the configuration on disk cannot be applied to the running daemon: {reason}; still running the previous configuration"
    )]
    Refused {
        /// What the subsystem said.
        reason: String,
    },
}

/// Applies the live keys of a new configuration (old, new).
type Applier = Box<dyn Fn(&Loaded, &Loaded) + Send + Sync>;
/// Judges a new configuration against the running daemon; an error refuses the change.
type Checker = Box<dyn Fn(&Loaded) -> Result<(), String> + Send + Sync>;
/// Re-reads material outside the config file; an error is logged, the old material kept.
type Reloader = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The live configuration and its change paths.
pub struct LiveConfig {
    source: ConfigSource,
    startup: Arc<Loaded>,
    current: ConfigHandle,
    change_lock: tokio::sync::Mutex<()>,
    appliers: Mutex<Vec<(&'static str, Applier)>>,
    reloaders: Mutex<Vec<(&'static str, Reloader)>>,
    checks: Mutex<Vec<(&'static str, Checker)>>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LiveConfig")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// The live configuration, starting from `loaded` (read from `source`).
    pub fn new(source: ConfigSource, loaded: Loaded) -> Self {
        let current = ConfigHandle::new(loaded);
        Self {
            source,
            startup: current.get(),
            current,
            change_lock: tokio::sync::Mutex::new(()),
            appliers: Mutex::default(),
            reloaders: Mutex::default(),
            checks: Mutex::default(),
        }
    }

    /// The secret keys to which the config file itself gives a value in clear (not a
    /// `secret:NAME` reference), with those values: what blufiod moves into the vault. A value
    /// from the environment is not the file's and is not listed.
    pub fn literal_secrets_in_file(&self) -> Vec<(&'static str, super::Secret)> {
        let Ok(Some(text)) = self.source.read_file() else {
            return Vec::new();
        };
        let Ok(document) = text.parse::<toml_edit::DocumentMut>() else {
            return Vec::new();
        };
        super::keys::KEYS
            .iter()
            .filter(|spec| spec.secret)
            .filter_map(|spec| {
                let mut item = document.as_item();
                for segment in spec.key.split('.') {
                    item = item.get(segment)?;
                }
                let value = item.as_str()?;
                (!value.is_empty() && !value.starts_with(super::SECRET_REFERENCE_PREFIX))
                    .then(|| (spec.key, super::Secret(value.to_owned())))
            })
            .collect()
    }

    /// The config file's path.
    pub fn file_path(&self) -> &std::path::Path {
        &self.source.path
    }

    /// A handle for a subsystem that only reads.
    pub fn handle(&self) -> ConfigHandle {
        self.current.clone()
    }

    /// The configuration now in effect.
    pub fn get(&self) -> Arc<Loaded> {
        self.current.get()
    }

    /// Registers `apply(old, new)`, run after every change is installed.
    pub fn on_change(&self, name: &'static str, apply: impl Fn(&Loaded, &Loaded) + Send + Sync + 'static) {
        self.appliers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, Box::new(apply)));
    }

    /// Registers `reload()`, run on every reload (SIGHUP, `ReloadConfig`), whether or not the file
    /// changed.
    pub fn on_reload(&self, name: &'static str, reload: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, Box::new(reload)));
    }

    /// Re-reads the config file and applies what can be applied live, then runs the reloaders.
    /// An invalid file changes nothing (the reloaders still run).
    pub async fn reload(&self) -> Result<ConfigChange, ReloadError> {
        let _guard = self.change_lock.lock().await;
        let outcome = match self.source.load() {
            Ok(loaded) => match self.check(&loaded) {
                Ok(()) => Ok(self.install(loaded)),
                Err(reason) => Err(ReloadError::Refused { reason }),
            },
            Err(source) => Err(ReloadError::Load { source }),
        };
        for (name, reload) in self.reloaders.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if let Err(error) = reload() {
                tracing::error!(reloader = name, %error, "reload failed; keeping what was in use");
            }
        }
        outcome
    }

    /// Registers `check(new)`, run before a change is written or installed: an error refuses
    /// the change with its reason. For limits that depend on the running daemon's state (its
    /// memory now), which validation of the file alone cannot know.
    pub fn on_check(&self, name: &'static str, check: impl Fn(&Loaded) -> Result<(), String> + Send + Sync + 'static) {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, Box::new(check)));
    }

    fn check(&self, new: &Loaded) -> Result<(), String> {
        for (_, check) in self.checks.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            check(new)?;
        }
        Ok(())
    }

    /// Sets one key in the config file (validated first, written atomically) and applies it.
    pub async fn set_key(&self, key: &str, value: &str) -> Result<SetOutcome, ConfigWriteError> {
        self.change_key(key, |path, current| prepare_set(path, current, key, value))
            .await
    }

    /// Removes one key from the config file (validated first, written atomically), so that it
    /// takes its default or environment value again, and applies that.
    pub async fn unset_key(&self, key: &str) -> Result<SetOutcome, ConfigWriteError> {
        self.change_key(key, |path, current| prepare_unset(path, current, key))
            .await
    }

    async fn change_key(
        &self,
        key: &str,
        edit: impl FnOnce(&std::path::Path, Option<&str>) -> Result<Edit, ConfigWriteError>,
    ) -> Result<SetOutcome, ConfigWriteError> {
        let _guard = self.change_lock.lock().await;
        let current_text = self
            .source
            .read_file()
            .map_err(|source| ConfigWriteError::Read { source })?;
        let edit = edit(&self.source.path, current_text.as_deref())?;
        self.check(&edit.loaded).map_err(|reason| ConfigWriteError::Refused {
            key: key.to_owned(),
            reason,
        })?;
        let loaded = edit.write(&self.source.path)?;
        // One model's prices (`pricing."m".input`) belong to the registry's `pricing` entry.
        let key = super::keys::key_path(key).map_or(key, |(spec, _)| spec.key);
        let overridden_by_env = (loaded.source_of(key) == ValueSource::Env)
            .then(|| format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase()));
        let change = self.install(loaded);
        tracing::info!(key, applied = ?change.applied, restart_required = ?change.restart_required, "configuration key changed");
        let (entry, pending) = self
            .entries(Some(key))
            .and_then(|mut entries| entries.pop())
            .expect("an edit is prepared only for known keys");
        Ok(SetOutcome {
            applied_live: !pending && overridden_by_env.is_none(),
            entry,
            restart_required: self.pending_restart(),
            overridden_by_env,
        })
    }

    /// Validates the config file as a reload would read it, without applying it.
    pub fn validate_file(&self) -> Result<(), ConfigError> {
        self.source.load().map(drop)
    }

    /// What is wrong with the config file on disk now (which the next reload or restart would
    /// read), or `None` when it is valid.
    pub fn file_problems(&self) -> Option<Vec<String>> {
        match self.validate_file() {
            Ok(()) => None,
            Err(ConfigError::Invalid { problems }) => Some(problems),
            Err(other) => Some(vec![crate::error_chain(&other)]),
        }
    }

    /// Effective entries (all, or one key), with `pending_restart` for keys whose running value
    /// is older than the configured one. `None` when `key` is unknown.
    pub fn entries(&self, key: Option<&str>) -> Option<Vec<(ConfigEntry, bool)>> {
        let current = self.get();
        let pending = changed_keys(&self.startup.config, &current.config);
        let entries = entries(&current, key)?;
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

    /// Keys changed since startup that need a restart.
    pub fn pending_restart(&self) -> Vec<&'static str> {
        changed_keys(&self.startup.config, &self.get().config)
            .into_iter()
            .filter(|spec| spec.restart_required)
            .map(|spec| spec.key)
            .collect()
    }

    /// Installs a new configuration and runs the appliers.
    fn install(&self, loaded: Loaded) -> ConfigChange {
        let old = self.get();
        let changed: Vec<&'static KeySpec> = changed_keys(&old.config, &loaded.config);
        self.current.replace(loaded);
        let new = self.get();
        for (_, apply) in self.appliers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            apply(&old, &new);
        }
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn live_with_file(dir: &std::path::Path, text: &str) -> LiveConfig {
        let path = dir.join("blufiod.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = super::super::load_from(Some(text), Some(&path), false).unwrap();
        LiveConfig::new(
            ConfigSource {
                path,
                named_by: Some("--config"),
            },
            loaded,
        )
    }

    #[tokio::test]
    async fn reload_applies_live_keys_reports_restart_keys_and_fans_out() {
        let dir = tempfile::tempdir().unwrap();
        let live = live_with_file(dir.path(), "");
        let applied = Arc::new(AtomicUsize::new(0));
        let reloaded = Arc::new(AtomicUsize::new(0));
        live.on_change("count", {
            let applied = applied.clone();
            move |old, new| {
                assert_ne!(old.config, new.config);
                applied.fetch_add(1, Ordering::Relaxed);
            }
        });
        live.on_reload("count", {
            let reloaded = reloaded.clone();
            move || {
                reloaded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        });
        std::fs::write(
            dir.path().join("blufiod.toml"),
            "[daemon]\nshutdown_timeout_secs = 3\n[storage]\nbusy_timeout_ms = 10\n",
        )
        .unwrap();
        let change = live.reload().await.unwrap();
        assert_eq!(change.applied, vec!["daemon.shutdown_timeout_secs"]);
        assert_eq!(change.restart_required, vec!["storage.busy_timeout_ms"]);
        assert_eq!(live.get().config.daemon.shutdown_timeout_secs, 3);
        assert_eq!(live.pending_restart(), vec!["storage.busy_timeout_ms"]);
        assert_eq!(
            (applied.load(Ordering::Relaxed), reloaded.load(Ordering::Relaxed)),
            (1, 1)
        );
        live.set_key("log.level", "debug").await.unwrap();
        assert_eq!(
            (applied.load(Ordering::Relaxed), reloaded.load(Ordering::Relaxed)),
            (2, 1)
        );
    }

    #[tokio::test]
    async fn an_invalid_file_changes_nothing_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let live = live_with_file(dir.path(), "[daemon]\nshutdown_timeout_secs = 4\n");
        std::fs::write(
            dir.path().join("blufiod.toml"),
            "[daemon]\nshutdown_timeout_secs = \"x\"\n",
        )
        .unwrap();
        assert!(live.reload().await.is_err());
        assert_eq!(live.get().config.daemon.shutdown_timeout_secs, 4);
    }

    #[tokio::test]
    async fn set_key_writes_the_file_and_applies_live() {
        let dir = tempfile::tempdir().unwrap();
        let live = live_with_file(dir.path(), "# keep\n[log]\nlevel = \"info\"\n");
        let outcome = live.set_key("control.group_access", "full").await.unwrap();
        assert!(outcome.applied_live);
        assert!(outcome.restart_required.is_empty());
        assert_eq!(outcome.entry.value_toml, "\"full\"");
        assert_eq!(live.get().config.control.group_access, super::super::Access::Full);
        let outcome = live.set_key("storage.read_connections", "2").await.unwrap();
        assert!(!outcome.applied_live);
        assert_eq!(outcome.restart_required, vec!["storage.read_connections"]);
        let text = std::fs::read_to_string(dir.path().join("blufiod.toml")).unwrap();
        assert!(text.starts_with("# keep\n[log]\nlevel = \"info\"\n"), "{text}");
        let pending: Vec<_> = live
            .entries(None)
            .unwrap()
            .into_iter()
            .filter(|(_, pending)| *pending)
            .map(|(entry, _)| entry.spec.key)
            .collect();
        assert_eq!(pending, vec!["storage.read_connections"]);
    }
}
