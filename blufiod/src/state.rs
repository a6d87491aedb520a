//! The daemon's shared state: identity, resolved paths, the lifecycle phase, and a reload that
//! moves the phase and tells systemd around the live configuration's own reload
//! ([`crate::config::LiveConfig`], which owns every configuration change).
//!
//! This module knows nothing of gRPC: the control module converts what it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::{ConfigChange, LiveConfig, Loaded, ReloadError};
use crate::events::{Event, EventBus};
use crate::gateway::GatewayInfo;
use crate::health::Health;
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
    /// The live configuration.
    pub live: Arc<LiveConfig>,
    /// Lifecycle events.
    pub events: Arc<EventBus>,
    /// The health checks.
    pub health: Arc<Health>,
    phase: watch::Sender<Phase>,
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
    /// The live configuration.
    pub live: Arc<LiveConfig>,
    /// The agent.
    pub agent: Arc<Agent>,
    /// The HTTPS gateway, when enabled.
    pub gateway: Option<GatewayInfo>,
    /// Lifecycle events.
    pub events: Arc<EventBus>,
    /// The health checks.
    pub health: Arc<Health>,
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
            live: parts.live,
            events: parts.events,
            health: parts.health,
            phase: watch::Sender::new(Phase::Starting),
        }
    }

    /// The configuration now in effect.
    pub fn config(&self) -> Arc<Loaded> {
        self.live.get()
    }

    /// The lifecycle phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to another phase.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Re-reads the configuration (SIGHUP, `ReloadConfig`): the phase is `Reloading` meanwhile and
    /// systemd hears `RELOADING=1` then `READY=1`. An invalid file changes nothing.
    pub async fn reload(&self) -> Result<ConfigChange, ReloadError> {
        self.notifier.reloading();
        self.events.publish(Event::Reloading);
        // Only a serving daemon is "reloading"; a reload never hides that shutdown has begun.
        self.phase.send_if_modified(|phase| {
            let serving = *phase == Phase::Ready;
            if serving {
                *phase = Phase::Reloading;
            }
            serving
        });
        let outcome = self.live.reload().await;
        // Back to Ready only if shutdown has not begun meanwhile.
        self.phase.send_if_modified(|phase| {
            let reloading = *phase == Phase::Reloading;
            if reloading {
                *phase = Phase::Ready;
            }
            reloading
        });
        self.events.publish(Event::Reloaded { ok: outcome.is_ok() });
        match &outcome {
            Ok(change) => {
                tracing::info!(applied = ?change.applied, restart_required = ?change.restart_required, "configuration reloaded");
                self.notifier.ready(&self.ready_line());
            }
            Err(error) => {
                tracing::error!(error = %crate::error_chain(error), "reload failed; keeping the previous configuration");
                self.notifier.ready(&format!(
                    "{}; last reload failed: invalid configuration",
                    self.ready_line()
                ));
            }
        }
        outcome
    }

    /// The `STATUS=` line while serving.
    pub fn ready_line(&self) -> String {
        format!("ready: serving on {}", self.paths.socket.display())
    }

    /// A snapshot for `GetStatus`.
    pub fn status(&self) -> DaemonStatus {
        let pending = self.live.pending_restart();
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
    use crate::config::{self, ConfigSource};
    use crate::storage::{Storage, StorageOptions};

    #[tokio::test]
    async fn reload_moves_the_phase_back_to_ready_unless_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        std::fs::write(&path, "").unwrap();
        let loaded = config::load_from(Some(""), Some(&path), false).unwrap();
        let storage = Storage::open(&StorageOptions {
            path: dir.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
        })
        .await
        .unwrap();
        let paths = Paths::resolve(&loaded.config, &path, |_| None, 1000);
        let live = Arc::new(LiveConfig::new(
            ConfigSource {
                path: path.clone(),
                explicit: true,
            },
            loaded,
        ));
        let agent = Agent::start(
            storage.clone(),
            live.handle(),
            dir.path().to_owned(),
            EventBus::new(),
            Default::default(),
        )
        .await
        .unwrap();
        let shared = Shared::new(SharedParts {
            started: Instant::now(),
            paths,
            storage,
            previous_run_unclean: false,
            live,
            agent: Arc::new(agent),
            gateway: None,
            events: EventBus::new(),
            health: Health::new(),
        });
        let mut events = shared.events.subscribe();
        shared.set_phase(Phase::Ready);
        std::fs::write(&path, "[daemon]\nshutdown_timeout_secs = 3\n").unwrap();
        shared.reload().await.unwrap();
        assert_eq!(shared.phase(), Phase::Ready);
        assert_eq!(*events.next().await.unwrap(), Event::Reloading);
        assert_eq!(*events.next().await.unwrap(), Event::Reloaded { ok: true });
        assert_eq!(shared.config().config.daemon.shutdown_timeout_secs, 3);
        shared.set_phase(Phase::Stopping);
        std::fs::write(&path, "[daemon]\nshutdown_timeout_secs = \"x\"\n").unwrap();
        assert!(shared.reload().await.is_err());
        assert_eq!(
            shared.phase(),
            Phase::Stopping,
            "a reload never undoes the start of shutdown"
        );
        assert_eq!(shared.config().config.daemon.shutdown_timeout_secs, 3);
    }
}
