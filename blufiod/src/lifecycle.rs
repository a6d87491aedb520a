//! The daemon's identity and lifecycle: who it is (pid, start time, resolved paths), which phase
//! it is in, and the reload that moves the phase and tells systemd around the live configuration's
//! own reload ([`crate::config::LiveConfig`], which owns every configuration change).
//!
//! This is all that is shared by everyone. Each subsystem gets the rest (the agent, storage,
//! devices, registries) in its own dependency struct from the composition root, so nothing here
//! points at a subsystem.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{ConfigChange, LiveConfig, Loaded, ReloadError};
use crate::events::{Event, EventBus};
use crate::hooks::Hooks;
use crate::notify::Notifier;
use crate::paths::Paths;
use crate::watchdog::WatchdogStatus;

/// The daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the daemon was built from (`unknown` outside a git checkout; see `build.rs`).
pub const COMMIT: &str = env!("BLUFIOD_COMMIT");

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

/// The daemon's identity, paths and phase.
#[derive(Debug)]
pub struct Lifecycle {
    /// Process id.
    pub pid: u32,
    /// When the process started.
    pub started: Instant,
    /// Resolved paths (fixed until restart).
    pub paths: Paths,
    /// Whether the previous run ended uncleanly.
    pub previous_run_unclean: bool,
    /// systemd notifications.
    pub notifier: Notifier,
    /// What the watchdog last saw.
    pub watchdog: WatchdogStatus,
    live: Arc<LiveConfig>,
    events: Arc<EventBus>,
    /// Runs the awaited `pre_reload` hooks.
    hooks: Arc<Hooks>,
    phase: watch::Sender<Phase>,
}

impl Lifecycle {
    /// A daemon in `Starting`.
    pub fn new(
        started: Instant,
        paths: Paths,
        previous_run_unclean: bool,
        live: Arc<LiveConfig>,
        events: Arc<EventBus>,
        hooks: Arc<Hooks>,
    ) -> Self {
        Self {
            pid: std::process::id(),
            started,
            paths,
            previous_run_unclean,
            notifier: Notifier,
            watchdog: WatchdogStatus::default(),
            live,
            events,
            hooks,
            phase: watch::Sender::new(Phase::Starting),
        }
    }

    /// The configuration now in effect.
    pub fn config(&self) -> Arc<Loaded> {
        self.live.get()
    }

    /// Time since the process started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
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
        // Awaited: a pre_reload hook finishes before the file is read again. Its failure is
        // logged (by the runner) and counted; the reload goes on.
        self.hooks.run("pre_reload", Vec::new()).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, ConfigSource};

    #[tokio::test]
    async fn reload_moves_the_phase_back_to_ready_unless_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blufiod.toml");
        std::fs::write(&path, "").unwrap();
        let loaded = config::load_from(Some(""), Some(&path), false).unwrap();
        let paths = Paths::resolve(&loaded.config, &path, |_| None, 1000);
        let live = Arc::new(LiveConfig::new(
            ConfigSource {
                path: path.clone(),
                named_by: Some("--config"),
            },
            loaded,
        ));
        let events = EventBus::new();
        let hooks = Hooks::new(
            live.handle(),
            prometheus::IntCounterVec::new(prometheus::Opts::new("runs", "runs"), &["hook", "outcome"]).unwrap(),
            dir.path().join("blufiod.sock"),
            tokio_util::sync::CancellationToken::new(),
        );
        let shared = Lifecycle::new(Instant::now(), paths, false, live, events.clone(), hooks);
        let mut events = events.subscribe();
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
