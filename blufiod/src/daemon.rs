//! The composition root: the one place that wires subsystems together.
//!
//! Order matters and is the daemon's contract with systemd: install signal handlers, bind and
//! lock everything (fail fast with a message naming the path), open and migrate storage, spawn
//! each subsystem with a child of the one cancellation token, and only then send `READY=1`.
//! Afterwards wait for SIGTERM/SIGINT or for the first subsystem to end (which is fatal), drain
//! under the configured timeout, and remove the socket only on a clean exit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentDeps};
use crate::backup::restore::{RestoreError, RestoreOptions, Restored};
use crate::backup::{BackupDeps, BackupPaths, Backups};
use crate::config::LiveConfig;
use crate::config::{ConfigSource, Loaded};
use crate::control::{self, ControlDeps, Policy, socket};
use crate::devices::Devices;
use crate::events::{Event, EventBus};
use crate::gateway;
use crate::health::{Check, Finding, Health};
use crate::hooks::Hooks;
use crate::lifecycle::{Lifecycle, Phase, VERSION};
use crate::lockfile::{LockError, LockFile};
use crate::logging::LogHandle;
use crate::memory::Monitor;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::paths::Paths;
use crate::secrets::Secrets;
use crate::storage::{RunId, Storage, StorageError, StorageOptions};
use crate::vault::{self, SourceInputs, Vault, VaultError};
use crate::watchdog;

/// What `main` hands to the daemon.
#[derive(Debug)]
pub struct Startup {
    /// When the process started.
    pub started: Instant,
    /// Where the config comes from.
    pub source: ConfigSource,
    /// The config, already validated.
    pub loaded: Loaded,
    /// The live log filter.
    pub log: Option<LogHandle>,
    /// The control socket's listener when systemd passed one (socket activation, `LISTEN_FDS`).
    pub inherited_socket: Option<std::os::fd::OwnedFd>,
}

/// A subsystem's failure, boxed so that each subsystem keeps its own error type.
type SubsystemError = Box<dyn std::error::Error + Send + Sync>;

/// Errors that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler")]
    InstallSignal {
        /// The signal.
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A `pre_start` hook failed: the start stops before anything is opened.
    #[error(
        "the pre_start hook {program} failed ({detail}); blufiod does not start while it fails: fix it, or remove it from hooks.pre_start"
    )]
    PreStartHook {
        /// The hook's program.
        program: String,
        /// How it ended.
        detail: String,
    },
    /// The control socket could not be bound.
    #[error("cannot bind the control socket")]
    BindControl(#[source] socket::SocketError),
    /// The state directory cannot be created.
    #[error("cannot create the state directory {path}")]
    CreateStateDir {
        /// The directory.
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory is not blufiod's alone.
    #[error(
        "the state directory {path} is not private: {problem}; blufiod keeps its database and keys there, so give it a directory only its user can change (`chown` and `chmod 700` it, or set daemon.state_dir)"
    )]
    UnsafeStateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Another daemon uses the state directory.
    #[error("cannot lock the state directory; is another blufiod using it?")]
    LockState(#[source] LockError),
    /// The process may not open enough files for the configured connections.
    #[error(
        "the daemon may open {limit} files, but gateway.max_connections = {connections} needs about {needed}; raise LimitNOFILE (ulimit -n) or lower gateway.max_connections"
    )]
    TooFewDescriptors {
        /// The open-files limit after raising it as far as allowed.
        limit: u64,
        /// The configured gateway connections.
        connections: u32,
        /// What they and everything else need.
        needed: u64,
    },
    /// The configured group vanished between validation and use.
    #[error("control.group {0:?} does not exist")]
    MissingGroup(String),
    /// The gateway could not be set up.
    #[error("cannot start the HTTPS gateway")]
    BindGateway(#[source] gateway::GatewayError),
    /// Storage could not be opened or used.
    #[error("storage failed")]
    Storage(#[source] StorageError),
    /// The secrets vault could not be opened.
    #[error("cannot open the secrets vault")]
    Vault(#[source] VaultError),
    /// The archive to restore cannot be read.
    #[error("cannot read the archive {path}")]
    ReadArchive {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A restore failed or was refused.
    #[error("restore failed")]
    Restore(#[source] RestoreError),
    /// A subsystem returned before shutdown was requested.
    #[error("subsystem {name} stopped unexpectedly")]
    SubsystemExited {
        /// The subsystem.
        name: &'static str,
    },
    /// A subsystem failed.
    #[error("subsystem {name} failed")]
    SubsystemFailed {
        /// The subsystem.
        name: &'static str,
        #[source]
        source: SubsystemError,
    },
    /// A subsystem panicked.
    #[error("subsystem {name} panicked")]
    SubsystemPanicked {
        /// The subsystem.
        name: &'static str,
    },
}

/// Named subsystem tasks.
struct Subsystems {
    tasks: JoinSet<(&'static str, Result<(), SubsystemError>)>,
    names: Vec<(tokio::task::Id, &'static str)>,
}

impl Subsystems {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            names: Vec::new(),
        }
    }

    fn spawn<E>(&mut self, name: &'static str, task: impl Future<Output = Result<(), E>> + Send + 'static)
    where
        E: Into<SubsystemError>,
    {
        let handle = self.tasks.spawn(async move { (name, task.await.map_err(Into::into)) });
        self.names.push((handle.id(), name));
    }

    /// Waits for the next subsystem to end and describes how it ended.
    async fn next(&mut self) -> Option<Result<&'static str, DaemonError>> {
        let joined = self.tasks.join_next_with_id().await?;
        Some(match joined {
            Ok((_, (name, Ok(())))) => Ok(name),
            Ok((_, (name, Err(source)))) => Err(DaemonError::SubsystemFailed { name, source }),
            Err(error) => {
                let name = self
                    .names
                    .iter()
                    .find(|(id, _)| *id == error.id())
                    .map_or("unknown", |(_, name)| name);
                Err(DaemonError::SubsystemPanicked { name })
            }
        })
    }
}

/// Descriptors the daemon needs besides the gateway's connections: the control socket's
/// connections (at most 256), the metrics listener's (16), the database, logs, listeners, tool
/// pipes, provider connections.
const DESCRIPTOR_RESERVE: u64 = 400;

/// Raises the soft open-files limit to the hard one (the soft default is often 1024) and returns
/// the limit now in effect.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Runs the daemon until it is told to stop (`Ok`) or something fatal happens (`Err`).
pub async fn run(startup: Startup) -> Result<(), DaemonError> {
    // Handlers first: SIGHUP's default action is to terminate, and systemd may send it early.
    let mut signals = Signals::install()?;
    let mut daemon = start(startup, signals.hangup.take(), signals.user1.take()).await?;
    let outcome = tokio::select! {
        _ = signals.terminate.recv() => { tracing::info!("SIGTERM received; shutting down"); Ok(()) }
        _ = signals.interrupt.recv() => { tracing::info!("SIGINT received; shutting down"); Ok(()) }
        ended = daemon.subsystems.next() => match ended {
            Some(Ok(name)) => Err(DaemonError::SubsystemExited { name }),
            Some(Err(error)) => Err(error),
            None => Err(DaemonError::SubsystemExited { name: "all" }),
        },
    };
    if let Err(error) = &outcome {
        tracing::error!(error = %crate::error_chain(error), "fatal; shutting down");
    }
    daemon.drain(outcome.is_ok()).await;
    outcome
}

/// The signals the daemon acts on.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Option<Signal>,
    user1: Option<Signal>,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| DaemonError::InstallSignal { signal: name, source })
        };
        Ok(Self {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            hangup: Some(install(SignalKind::hangup(), "SIGHUP")?),
            // Its default action is to terminate: logrotate's postrotate must not stop the daemon.
            user1: Some(install(SignalKind::user_defined1(), "SIGUSR1")?),
        })
    }
}

/// A started daemon: what `drain` needs to stop it.
struct Running {
    lifecycle: Arc<Lifecycle>,
    agent: Arc<Agent>,
    storage: Storage,
    events: Arc<EventBus>,
    run: RunId,
    subsystems: Subsystems,
    token: CancellationToken,
    socket: socket::SocketHold,
    state_lock: LockFile,
    hooks: Arc<Hooks>,
    /// Cancelled when the drain ends: hooks still running are killed.
    hooks_token: CancellationToken,
}

/// Binds, opens and wires everything, spawns each subsystem, and sends `READY=1`.
async fn start(startup: Startup, sighup: Option<Signal>, sigusr1: Option<Signal>) -> Result<Running, DaemonError> {
    let notifier = Notifier;
    // The cross-cutting registries, made once and unconditionally; subsystems register into them.
    let events = EventBus::new();
    let health = Health::new();
    let metrics = Arc::new(Metrics::new());
    // Subscribed before the first event, so that the counts start at the start.
    let counted_events = events.subscribe();
    events.publish(Event::Starting);
    let config = startup.loaded.config.clone();
    let limit = raise_open_files_limit();
    let needed = u64::from(config.gateway.max_connections) + DESCRIPTOR_RESERVE;
    if config.gateway.enabled && needed > limit {
        return Err(DaemonError::TooFewDescriptors {
            limit,
            connections: config.gateway.max_connections,
            needed,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    let paths = Paths::resolve(&config, &startup.source.path, |name| std::env::var_os(name), euid);
    let live = Arc::new(LiveConfig::new(startup.source, startup.loaded));
    // Hooks outlive the main token: pre_stop and post_stop run during the drain. Running alerts
    // are killed when the drain ends.
    let hooks_token = CancellationToken::new();
    let hooks = Hooks::new(
        live.handle(),
        metrics.counter_by("hook_runs_total", Hooks::RUNS_HELP, &["hook", "outcome"]),
        paths.socket.clone(),
        hooks_token.clone(),
    );
    let hook_events = events.subscribe();
    notifier.status("starting: running the pre_start hooks");
    if let Some(failed) = hooks
        .run("pre_start", Vec::new())
        .await
        .into_iter()
        .find(|run| run.outcome != crate::hooks::Outcome::Ok)
    {
        return Err(DaemonError::PreStartHook {
            program: failed.program,
            detail: failed.detail,
        });
    }
    let group = match &config.control.group {
        Some(name) => Some(control::resolve_group(name).ok_or_else(|| DaemonError::MissingGroup(name.clone()))?),
        None => None,
    };

    notifier.status("starting: binding the control socket");
    let bound = match startup.inherited_socket {
        Some(listener) => socket::adopt(listener, &paths.socket),
        None => socket::bind(
            &paths.socket,
            group.as_ref().map(|group| nix::unistd::Gid::from_raw(group.gid)),
        ),
    }
    .map_err(DaemonError::BindControl)?;
    tracing::info!(socket = %bound.path().display(), "control socket bound");
    // From here a failed start removes the socket file again (dropping `socket`).
    let (listener, socket) = bound.into_parts();

    notifier.status("starting: opening the database");
    let state_lock = lock_state_dir(&paths.state_dir)?;
    // The gateway's certificate, listeners and replay journal load on a thread of their own while
    // the database and the vault open: neither needs the other, and they are the two longest
    // parts of a start. Its outcome is taken after theirs, so errors come in the same order.
    let binding = config.gateway.enabled.then(|| {
        let (gateway, state_dir) = (config.gateway.clone(), paths.state_dir.clone());
        tokio::task::spawn_blocking(move || gateway::bind(&gateway, &state_dir))
    });
    // A restore cut short by a crash: say which database this start finds, before opening it.
    crate::backup::restore::recover(&paths.database);
    let storage = Storage::open(&StorageOptions {
        path: paths.database.clone(),
        busy_timeout: Duration::from_millis(config.storage.busy_timeout_ms),
        read_connections: config.storage.read_connections,
        full_sync: config.storage.synchronous == crate::config::Synchronous::Full,
    })
    .await
    .map_err(DaemonError::Storage)?;
    tracing::info!(database = %paths.database.display(), "database open and migrated");

    // Before anything is recorded: a refused key leaves the database as it was.
    notifier.status("starting: opening the vault");
    let vault = Vault::open(storage.clone(), vault_inputs(&config, &paths, euid))
        .await
        .map_err(DaemonError::Vault)?;
    tracing::info!(source = %vault.status().source.describe(), "vault open");
    // A passphrase's Argon2id took 19 MiB or more that the allocator would otherwise keep.
    crate::memory::release();
    let secrets = Secrets::new(vault.clone(), |name| std::env::var(name).ok());

    let (run, previous_run_unclean) = storage
        .record_start(std::process::id(), VERSION)
        .await
        .map_err(DaemonError::Storage)?;
    if previous_run_unclean {
        tracing::warn!("the previous run of blufiod did not shut down cleanly");
    }

    let bound_gateway = if let Some(binding) = binding {
        notifier.status("starting: binding the gateway");
        let bound = binding
            .await
            .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))
            .map_err(DaemonError::BindGateway)?;
        tracing::info!(
            address = %bound.info.address,
            scheme = bound.info.scheme,
            fingerprint = bound.info.cert.as_ref().map(|cert| cert.fingerprint()).unwrap_or_default(),
            "gateway bound"
        );
        Some(bound)
    } else {
        None
    };

    let token = CancellationToken::new();
    // What a configuration change must do beyond a fresh read, registered by what owns it.
    let log_ring = startup
        .log
        .as_ref()
        .map_or_else(Default::default, |log| log.ring().clone());
    if let Some(log) = startup.log.clone() {
        live.on_change("log", move |old, new| {
            if old.config.log.level != new.config.log.level
                && let Err(error) = log.set_level(&new.config.log.level)
            {
                tracing::error!(%error, "cannot apply log.level");
            }
        });
    }
    if let Some(log) = startup.log.clone() {
        live.on_reload("log-file", move || {
            log.reopen().map(drop).map_err(|error| crate::error_chain(&error))
        });
    }
    let checking = secrets.clone();
    live.on_check("secrets", move |loaded| checking.check(&loaded.config));
    secrets.move_literals_into_vault(&live).await;
    if let Err(problem) = secrets.check(&live.get().config) {
        tracing::warn!(%problem, "a config key names a secret the vault does not hold");
    }
    let memory = Monitor::new(live.handle(), events.clone());
    memory.register_live_check(&live);
    memory.register_metrics(&metrics);
    let shrinking = storage.clone();
    memory.on_shed("sqlite-caches", move || {
        // SQLite frees its page caches on the connections; that waits for idle connections,
        // so it runs on its own task.
        let storage = shrinking.clone();
        tokio::spawn(async move { storage.shrink_memory().await });
        1
    });
    metrics.start_time.set(
        (std::time::SystemTime::now() - startup.started.elapsed())
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64()),
    );
    Agent::register_live_check(&live);
    let gateway_info = bound_gateway.as_ref().map(|bound| bound.info.clone());
    if let Some(info) = gateway_info.clone() {
        live.on_reload("gateway-certificate", move || {
            info.reload_certificate().map_err(|error| crate::error_chain(&error))
        });
    }
    let agent = Arc::new(
        Agent::start(AgentDeps {
            storage: storage.clone(),
            config: live.handle(),
            secrets: secrets.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            memory: memory.clone(),
            state_dir: paths.state_dir.clone(),
            token: token.child_token(),
        })
        .await
        .map_err(DaemonError::Storage)?,
    );
    agent.register_metrics(&metrics);
    agent.register_shedders(&memory);
    let lifecycle = Arc::new(Lifecycle::new(
        startup.started,
        paths.clone(),
        previous_run_unclean,
        live.clone(),
        events.clone(),
        hooks.clone(),
    ));
    register_checks(&health, &lifecycle, &storage, &agent);
    secrets.register_checks(&health, &live);
    crate::backup::remove_stale_snapshots(&paths.state_dir);
    let backups = Backups::new(BackupDeps {
        storage: storage.clone(),
        config: live.handle(),
        paths: BackupPaths {
            state_dir: paths.state_dir.clone(),
            database: paths.database.clone(),
            config: paths.config.clone(),
        },
        events: events.clone(),
        owner: euid,
    });
    backups.register_metrics(&metrics);
    backups.register_checks(&health, startup.started);
    memory.register_checks(&health);
    agent.register_checks(&health);
    let watched = lifecycle.watchdog.clone();
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    health.register(Check::new("watchdog", move || {
        let finding = watchdog_finding(&watched.snapshot(), under_systemd);
        async move { finding }
    }));

    let mut subsystems = Subsystems::new();
    subsystems.spawn(
        "events",
        crate::metrics::count_events(metrics.clone(), events.clone(), counted_events, token.child_token()),
    );
    subsystems.spawn("memory", crate::memory::watch(memory.clone(), token.child_token()));
    subsystems.spawn("checkpoints", {
        let storage = storage.clone();
        let token = token.child_token();
        async move {
            storage.keep_checkpointing(token).await;
            Ok::<(), SubsystemError>(())
        }
    });
    subsystems.spawn("hooks", {
        let hooks = hooks.clone();
        let token = token.child_token();
        async move {
            hooks.watch(hook_events, token).await;
            Ok::<(), SubsystemError>(())
        }
    });
    let backup_changed = Arc::new(tokio::sync::Notify::new());
    let notify = backup_changed.clone();
    live.on_change("backup-schedule", move |old, new| {
        if old.config.backup != new.config.backup {
            notify.notify_one();
        }
    });
    subsystems.spawn("backup", {
        let backups = backups.clone();
        let token = token.child_token();
        async move {
            backups.run_schedule(backup_changed, token).await;
            Ok::<(), SubsystemError>(())
        }
    });
    let recording = token.child_token();
    subsystems.spawn("vault", async move {
        vault.record_uses(recording).await;
        Ok::<(), SubsystemError>(())
    });
    let retention_changed = Arc::new(tokio::sync::Notify::new());
    let notify = retention_changed.clone();
    live.on_change("session-retention", move |old, new| {
        if old.config.agent.session_retention_days != new.config.agent.session_retention_days {
            notify.notify_one();
        }
    });
    subsystems.spawn(
        "retention",
        agent.clone().keep_retention(retention_changed, token.child_token()),
    );
    // One device registry: the control plane changes it, the gateway reads it.
    let devices = Devices::new(storage.clone());
    devices.register_shedders(&memory);
    register_gateway_check(&health, gateway_info.clone(), devices.clone());
    let (state_dir, database) = (paths.state_dir.clone(), paths.database.clone());
    health.register(
        Check::new("disk", move || {
            let finding = crate::storage::space::disk_finding(&state_dir, &database);
            async move { finding }
        })
        .deep(),
    );
    let growth = crate::storage::space::Growth::start(&paths.state_dir, &paths.database);
    health.register(
        Check::new("growth", move || {
            let finding = growth.finding();
            async move { finding }
        })
        .deep(),
    );
    let checked = live.clone();
    health.register(Check::new("config", move || {
        let finding = config_finding(&checked);
        async move { finding }
    }));
    let (socket_path, socket_group) = (
        paths.socket.clone(),
        group.as_ref().map(|group| nix::unistd::Gid::from_raw(group.gid)),
    );
    health.register(Check::new("socket", move || {
        let finding = socket::permissions_finding(&socket_path, socket_group);
        async move { finding }
    }));
    subsystems.spawn(
        "control",
        control::serve(
            ControlDeps {
                lifecycle: lifecycle.clone(),
                live: live.clone(),
                agent: agent.clone(),
                storage: storage.clone(),
                devices: devices.clone(),
                health: health.clone(),
                events: events.clone(),
                metrics: metrics.clone(),
                memory: memory.clone(),
                secrets: secrets.clone(),
                backups: backups.clone(),
                gateway: gateway_info,
                logs: log_ring,
                hooks: hooks.clone(),
            },
            listener,
            Policy {
                daemon_uid: euid,
                group,
            },
            token.child_token(),
        ),
    );
    if let (Some(sigusr1), Some(log)) = (sigusr1, startup.log) {
        subsystems.spawn("log-reopen", reopen_on_sigusr1(log, sigusr1, token.child_token()));
    }
    if let Some(sighup) = sighup {
        subsystems.spawn(
            "reload",
            reload_on_sighup(lifecycle.clone(), sighup, token.child_token()),
        );
    }
    if let Some(bound) = bound_gateway {
        subsystems.spawn(
            "gateway",
            gateway::serve(
                bound,
                gateway::GatewayDeps {
                    agent: agent.clone(),
                    lifecycle: lifecycle.clone(),
                    config: live.handle(),
                    secrets,
                    metrics: metrics.clone(),
                    memory: memory.clone(),
                    health: health.clone(),
                    devices,
                },
                token.child_token(),
            ),
        );
    }
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        let interval = timeout / 2;
        tracing::info!(?interval, "systemd watchdog enabled");
        let probes = health.probes();
        let status = lifecycle.watchdog.clone();
        let notifier = lifecycle.notifier;
        let token = token.child_token();
        let counted = metrics.clone();
        subsystems.spawn("watchdog", async move {
            let end = move |cycle| match cycle {
                watchdog::Cycle::Passed => {
                    notifier.watchdog();
                    counted.watchdog_pings.inc();
                }
                watchdog::Cycle::Missed => counted.watchdog_missed.inc(),
            };
            watchdog::run(interval, probes, end, status, token).await;
            Ok::<(), SubsystemError>(())
        });
    }

    lifecycle.set_phase(Phase::Ready);
    // Log first: whoever reacts to READY=1 then finds the line already written.
    tracing::info!(
        version = VERSION,
        pid = lifecycle.pid,
        elapsed_ms = startup.started.elapsed().as_millis(),
        "ready"
    );
    notifier.ready(&lifecycle.ready_line());
    events.publish(Event::Ready);
    Ok(Running {
        lifecycle,
        agent,
        storage,
        events,
        run,
        subsystems,
        token,
        hooks,
        hooks_token,
        socket,
        state_lock,
    })
}

/// Creates the state directory (0700: it holds the database and keys) and locks it. An existing
/// directory (made by systemd's `StateDirectory=` or an administrator) is left as it is.
/// Where the vault's key comes from: the process environment and `config`.
fn vault_inputs(config: &crate::config::Config, paths: &Paths, euid: u32) -> SourceInputs {
    SourceInputs {
        credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|dir| !dir.is_empty())
            .map(std::path::PathBuf::from),
        key_file: config.vault.key_file.clone(),
        passphrase: std::env::var(vault::source::PASSPHRASE_ENV)
            .ok()
            .filter(|passphrase| !passphrase.is_empty())
            .map(zeroize::Zeroizing::new),
        passphrase_file: config.vault.passphrase_file.clone(),
        state_dir: paths.state_dir.clone(),
        euid,
    }
}

/// `blufiod restore ARCHIVE`: the restore of a running daemon, done while none runs. Holds the
/// state directory's lock throughout, so it refuses while a daemon runs there; never opens the
/// database in place, which may be what is broken.
pub async fn restore_offline(
    source: &ConfigSource,
    loaded: &Loaded,
    archive: &Path,
    options: RestoreOptions,
) -> Result<Restored, DaemonError> {
    let config = &loaded.config;
    let euid = nix::unistd::geteuid().as_raw();
    let paths = Paths::resolve(config, &source.path, |name| std::env::var_os(name), euid);
    let _state_lock = lock_state_dir(&paths.state_dir)?;
    let file = std::fs::File::open(archive).map_err(|source| DaemonError::ReadArchive {
        path: archive.to_owned(),
        source,
    })?;
    crate::backup::restore::restore_offline(
        std::io::BufReader::new(file),
        &BackupPaths {
            state_dir: paths.state_dir.clone(),
            database: paths.database.clone(),
            config: paths.config.clone(),
        },
        &config.gateway,
        &vault_inputs(config, &paths, euid),
        options,
    )
    .await
    .map_err(DaemonError::Restore)
}

fn lock_state_dir(dir: &Path) -> Result<LockFile, DaemonError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DaemonError::CreateStateDir {
            path: dir.to_owned(),
            source,
        })?;
    if let Some(problem) = crate::paths::private_dir_problem(dir, nix::unistd::geteuid().as_raw()) {
        return Err(DaemonError::UnsafeStateDir {
            path: dir.to_owned(),
            problem,
        });
    }
    LockFile::acquire(&dir.join("blufiod.lock")).map_err(DaemonError::LockState)
}

impl Running {
    /// Stops everything under the configured timeout: subsystems first, then the turns (which
    /// record their calls), then storage. Only a clean stop records itself and removes the socket.
    async fn drain(mut self, clean: bool) {
        let drain_timeout = Duration::from_secs(self.lifecycle.config().config.daemon.shutdown_timeout_secs);
        self.lifecycle.set_phase(Phase::Stopping);
        self.events.publish(Event::Stopping);
        self.lifecycle
            .notifier
            .stopping(&format!("stopping: draining (up to {}s)", drain_timeout.as_secs()));
        // Still serving: a pre_stop hook may call blufioctl.
        if tokio::time::timeout(drain_timeout, self.hooks.run("pre_stop", Vec::new()))
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?drain_timeout, "pre_stop hooks did not finish within the shutdown timeout");
        }
        self.token.cancel();
        let drained = tokio::time::timeout(drain_timeout, async {
            while let Some(ended) = self.subsystems.next().await {
                match ended {
                    Ok(name) => tracing::info!(subsystem = name, "stopped"),
                    Err(error) => tracing::warn!(error = %crate::error_chain(&error), "stopped with an error"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(timeout = ?drain_timeout, "drain timed out; abandoning the remaining work");
            self.subsystems.tasks.abort_all();
        }
        // Turns saw the cancelled token too; let them record their calls before storage closes.
        if tokio::time::timeout(drain_timeout, self.agent.wait_for_turns())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?drain_timeout, "turns did not stop in time");
        }
        if clean {
            if let Err(error) = self.storage.record_clean_stop(self.run).await {
                tracing::warn!(error = %crate::error_chain(&error), "cannot record the clean stop");
            }
        } else {
            // Left for the next start to replace.
            self.socket.keep_file();
        }
        drop(self.socket);
        self.storage.close().await;
        let post_stop = vec![("CLEAN", if clean { "1" } else { "0" }.to_owned())];
        if tokio::time::timeout(drain_timeout, self.hooks.run("post_stop", post_stop))
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?drain_timeout, "post_stop hooks did not finish within the shutdown timeout");
        }
        self.hooks_token.cancel();
        drop(self.state_lock);
        tracing::info!("stopped");
    }
}

/// Reloads the configuration on each SIGHUP until cancelled. A failed reload is logged and
/// reported to systemd; the daemon keeps running on its previous configuration.
async fn reload_on_sighup(
    lifecycle: Arc<Lifecycle>,
    mut sighup: Signal,
    token: CancellationToken,
) -> Result<(), SubsystemError> {
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            received = sighup.recv() => {
                if received.is_none() {
                    return Err("the SIGHUP stream ended".into());
                }
                tracing::info!("SIGHUP received; reloading the configuration");
                // Errors are logged and reported by reload itself.
                let _ = lifecycle.reload().await;
            }
        }
    }
}

/// Reopens `log.file` on each SIGUSR1 until cancelled (logrotate's `postrotate`). A failed reopen
/// is logged, to the file still open, and the daemon keeps writing there.
async fn reopen_on_sigusr1(
    log: LogHandle,
    mut sigusr1: Signal,
    token: CancellationToken,
) -> Result<(), SubsystemError> {
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            received = sigusr1.recv() => {
                if received.is_none() {
                    return Err("the SIGUSR1 stream ended".into());
                }
                match log.reopen() {
                    Ok(Some(path)) => tracing::info!(file = %path.display(), "SIGUSR1 received; log file reopened"),
                    Ok(None) => tracing::info!("SIGUSR1 received; there is no log.file to reopen"),
                    Err(error) => tracing::error!(error = %crate::error_chain(&error), "SIGUSR1 received; keeping the log file already open"),
                }
            }
        }
    }
}

/// The doctor's `config` check: the file on disk still loads (the next reload or restart reads
/// it), and no change waits for a restart.
fn config_finding(live: &LiveConfig) -> Finding {
    if let Some(problems) = live.file_problems() {
        return Finding::fail(
            format!(
                "the config file no longer loads ({}); blufiod runs on its last good configuration",
                problems.join("; ")
            ),
            "fix the file (`blufioctl config validate` shows each problem), then `systemctl reload blufiod`",
        );
    }
    let pending = live.pending_restart();
    if !pending.is_empty() {
        return Finding::warn(
            format!("changed and waiting for a restart: {}", pending.join(", ")),
            "`systemctl restart blufiod` applies them",
        );
    }
    Finding::ok("the config file loads, and every change is applied")
}

/// Days before a gateway certificate's end from which the doctor warns.
const CERT_WARN_DAYS: u64 = 14;

/// The doctor's `gateway` check: off, listening for the registered devices, listening for
/// nobody (no device registered, so no request can authenticate), or serving a certificate that
/// expires within [`CERT_WARN_DAYS`] (a warning) or has expired (a failure).
fn register_gateway_check(health: &Health, info: Option<crate::gateway::GatewayInfo>, devices: Devices) {
    health.register(Check::new("gateway", move || {
        let (info, devices) = (info.clone(), devices.clone());
        async move {
            let Some(info) = info else {
                return Finding::ok("off (gateway.listen is unset)");
            };
            let listening = format!("listening on {}://{}", info.scheme, info.address);
            let renew = match &info.cert_source {
                Some(crate::gateway::tls::CertSource::Files { .. }) => {
                    "renew gateway.cert_file and gateway.key_file, then `systemctl reload blufiod`"
                }
                _ => "delete the self-signed tls/cert.pem and tls/key.pem in the state directory and reload; clients must then trust the new fingerprint",
            };
            let validity = info.cert.as_ref().and_then(|cert| cert.not_after()).map(|not_after| {
                match not_after.duration_since(std::time::SystemTime::now()) {
                    Ok(left) => (left.as_secs() / 86_400, true),
                    Err(past) => (past.duration().as_secs() / 86_400, false),
                }
            });
            match validity {
                Some((days, false)) => {
                    return Finding::fail(
                        format!("{listening} with a certificate that expired {days} day(s) ago: clients refuse it"),
                        renew,
                    );
                }
                Some((days, true)) if days < CERT_WARN_DAYS => {
                    return Finding::warn(
                        format!("{listening} with a certificate that expires in {days} day(s)"),
                        renew,
                    );
                }
                _ => {}
            }
            let valid = validity.map_or_else(String::new, |(days, _)| format!(", certificate valid {days} more days"));
            match devices.count_active().await {
                Ok(0) => Finding::warn(
                    format!("{listening}{valid}, but no device is registered, so nobody can use it"),
                    "register one: `blufioctl device add NAME --key-out FILE`",
                ),
                Ok(count) => Finding::ok(format!("{listening} for {count} registered device(s){valid}")),
                Err(error) => Finding::fail(crate::error_chain(&error), "see the storage check and the log"),
            }
        }
    }));
}

/// The doctor's view of the watchdog: fed in time, starved (systemd restarts the daemon once a
/// ping is two intervals late), or absent where systemd supervises the daemon without one.
fn watchdog_finding(seen: &watchdog::WatchdogSnapshot, under_systemd: bool) -> Finding {
    let Some(interval) = seen.interval else {
        return if under_systemd {
            Finding::warn(
                "systemd supervises blufiod without a watchdog (no WatchdogSec=), so a hung daemon is never restarted",
                "use the shipped unit, which sets WatchdogSec=; `systemctl cat blufiod` shows what runs",
            )
        } else {
            Finding::ok("not under systemd: no watchdog to feed")
        };
    };
    let timeout = interval * 2;
    let why = seen
        .last_failure
        .clone()
        .unwrap_or_else(|| "a liveness check is not passing".to_owned());
    let hint = "see the log for the stuck part; the database's disk and locks come first";
    match seen.since_last_ping {
        Some(age) if age <= timeout => Finding::ok(format!(
            "systemd's watchdog is fed every {interval:?}; last ping {:.1} s ago",
            age.as_secs_f64()
        )),
        Some(age) => Finding::fail(
            format!(
                "no watchdog ping for {:.1} s: systemd restarts blufiod after {timeout:?} ({why})",
                age.as_secs_f64()
            ),
            hint,
        ),
        None => Finding::fail(format!("no watchdog ping yet ({why})"), hint),
    }
}

/// The daemon's own checks: liveness (the watchdog feeds systemd only while all pass) and
/// readiness (`/ready`).
fn register_checks(health: &Health, lifecycle: &Arc<Lifecycle>, storage: &Storage, agent: &Arc<Agent>) {
    // The scheduler runs a freshly spawned task: no worker is wedged by blocking code.
    health.register(
        Check::new("runtime", || async {
            match tokio::spawn(async {}).await {
                Ok(()) => Finding::ok("the runtime schedules tasks"),
                Err(error) => Finding::fail(
                    format!("a spawned task did not complete: {error}"),
                    "see the log for a panic",
                ),
            }
        })
        .liveness(),
    );
    // The single database writer is free and answers, and a reader can be had.
    let probed = storage.clone();
    health.register(
        Check::new("storage", move || {
            let storage = probed.clone();
            async move {
                let outcome = match storage.probe_writer().await {
                    Ok(()) => storage.probe_reader().await,
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(()) => Finding::ok("the writer and a reader answer"),
                    Err(error) => Finding::fail(
                        crate::error_chain(&error),
                        "check the disk and the database file's permissions; see the log",
                    ),
                }
            }
        })
        .liveness()
        .readiness("the database is not reachable"),
    );
    // The database's schema is the one this build migrates to.
    let versioned = storage.clone();
    health.register(Check::new("schema", move || {
        let storage = versioned.clone();
        async move {
            let ours = crate::storage::current_schema_version();
            match storage.schema_version().await {
                Ok((version, false)) if version == ours => {
                    Finding::ok(format!("schema version {version}, this build's"))
                }
                Ok((version, failed)) => Finding::fail(
                    format!(
                        "schema version {version}, this build's is {ours}{}",
                        if failed {
                            "; a migration is recorded as failed"
                        } else {
                            ""
                        }
                    ),
                    "restart blufiod to migrate; if that fails, restore a backup taken by this version",
                ),
                Err(error) => Finding::fail(crate::error_chain(&error), "see the storage check and the log"),
            }
        }
    }));
    // The whole database reads back consistently: too slow for every status call.
    let checked = storage.clone();
    health.register(
        Check::new("integrity", move || {
            let storage = checked.clone();
            async move {
                match storage.integrity_problems().await {
                    Ok(None) => Finding::ok("the database passes SQLite's integrity check"),
                    Ok(Some(problems)) => Finding::fail(
                        format!("the database is damaged: {problems}"),
                        "stop blufiod and restore the database from a backup",
                    ),
                    Err(error) => Finding::fail(crate::error_chain(&error), "see the log"),
                }
            }
        })
        .deep()
        // It reads every page: callers cannot make it run back to back.
        .at_most_every(Duration::from_secs(60)),
    );
    // The control socket accepts a connection and serves a health check.
    let socket = lifecycle.paths.socket.clone();
    health.register(
        Check::new("control", move || {
            let socket = socket.clone();
            async move {
                match control::probe(&socket).await {
                    Ok(()) => Finding::ok("the control socket serves"),
                    Err(error) => Finding::fail(error, "check the socket path and its directory"),
                }
            }
        })
        .liveness(),
    );
    let phase = lifecycle.clone();
    health.register(
        Check::new("phase", move || {
            let phase = phase.phase();
            async move {
                match phase {
                    Phase::Ready | Phase::Reloading => Finding::ok("serving"),
                    Phase::Starting => Finding::fail("starting", "wait for startup to finish"),
                    Phase::Stopping => Finding::fail("stopping", "the daemon is shutting down"),
                }
            }
        })
        .readiness("the daemon is not serving yet or is stopping"),
    );
    let agent = agent.clone();
    health.register(
        Check::new("provider", move || {
            let problem = agent.status().provider_problem;
            async move {
                match problem {
                    None => Finding::ok("configured"),
                    Some(problem) => Finding::fail("the LLM provider is not configured", problem),
                }
            }
        })
        .readiness("the LLM provider is not configured"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_check_tells_fed_from_starved_and_missing() {
        use crate::health::Level;
        let seen = |interval: Option<u64>, age: Option<u64>| watchdog::WatchdogSnapshot {
            interval: interval.map(Duration::from_millis),
            since_last_ping: age.map(Duration::from_millis),
            last_failure: Some("storage failed: the writer is stuck".to_owned()),
        };
        assert_eq!(watchdog_finding(&seen(None, None), false).level, Level::Ok);
        assert_eq!(watchdog_finding(&seen(None, None), true).level, Level::Warn);
        let fed = watchdog_finding(&seen(Some(200), Some(150)), true);
        assert_eq!(fed.level, Level::Ok, "{fed:?}");
        assert!(fed.detail.contains("fed every 200ms"), "{fed:?}");
        let starved = watchdog_finding(&seen(Some(200), Some(450)), true);
        assert_eq!(starved.level, Level::Fail, "{starved:?}");
        assert!(
            starved.detail.contains("storage failed: the writer is stuck"),
            "{starved:?}"
        );
        assert_eq!(watchdog_finding(&seen(Some(200), None), true).level, Level::Fail);
    }

    #[tokio::test]
    async fn a_panicking_subsystem_is_reported_by_name() {
        let mut subsystems = Subsystems::new();
        subsystems.spawn("doomed", async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<(), SubsystemError>(())
        });
        let ended = subsystems.next().await.unwrap();
        assert!(
            matches!(ended, Err(DaemonError::SubsystemPanicked { name: "doomed" })),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_subsystem_keeps_its_error_chain() {
        let mut subsystems = Subsystems::new();
        subsystems.spawn("storage", async { Err::<(), _>(std::io::Error::other("disk full")) });
        let Some(Err(error)) = subsystems.next().await else {
            panic!("expected a failure");
        };
        assert_eq!(crate::error_chain(&error), "subsystem storage failed: disk full");
    }
}
