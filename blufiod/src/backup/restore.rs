//! Restores: an archive is received and verified in full (every member's SHA-256, the
//! database's integrity, a schema no newer than this build's, a vault the daemon's key opens)
//! before anything changes. Then, online, new changes are refused and running turns finish; the
//! current database is kept as a safety copy (`<state>/pre-restore-<time>.db`, a hard link: no
//! copy is made) and the restored one is renamed over it, so the database file is always whole,
//! old or new; the database is reopened and migrated, the vault reopened, and work resumes.
//!
//! A marker (`<state>/restore.json`) is written before the swap and removed after it, so a start
//! after a crash in between can say which database it found ([`recover`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blufio_proto::backup::{self as archive, ArchiveError, Manifest};
use serde::{Deserialize, Serialize};

use super::Backups;
use crate::events::Event;
use crate::storage::{StorageError, current_schema_version, drop_vault_in, inspect_database};
use crate::util::unix_now;
use crate::vault::{Vault, VaultError};

/// Safety copies: `pre-restore-<unix seconds>.db` in the state directory.
const SAFETY_PREFIX: &str = "pre-restore-";
const SAFETY_SUFFIX: &str = ".db";
/// The marker of a swap in progress.
const MARKER: &str = "restore.json";
/// Where a received archive's database waits, in the state directory.
const INCOMING: &str = "restore-incoming.db";

/// Why a restore was refused or failed. Each names the step.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A backup or restore is already running.
    #[error("a backup or restore is already running; try again when it ends")]
    Busy,
    /// The archive is damaged or not a backup.
    #[error("the archive is refused, nothing was changed")]
    Archive(#[source] ArchiveError),
    /// The archive holds no database.
    #[error("the archive holds no database (blufio.db); nothing was changed")]
    NoDatabase,
    /// The received database fails its integrity check.
    #[error("the archive's database fails SQLite's integrity check ({problems}); nothing was changed")]
    Integrity {
        /// What the check said.
        problems: String,
    },
    /// The archive comes from a newer blufiod.
    #[error(
        "the archive's database has schema version {archive}, newer than this blufiod's {ours}: restore it with blufiod {version} or newer; nothing was changed"
    )]
    NewerSchema {
        /// The archive's schema.
        archive: i64,
        /// Ours.
        ours: i64,
        /// The version that wrote it.
        version: String,
    },
    /// The daemon's vault key does not open the archive's vault.
    #[error(
        "this blufiod's vault key does not open the archive's secrets (sealed with a {sealed_with} key): supply that key, or restore with --without-secrets and store the secrets again; nothing was changed"
    )]
    ForeignVault {
        /// The kind of key that sealed the archive's vault.
        sealed_with: String,
    },
    /// The archive's config file is invalid.
    #[error("the archive's config file is invalid ({problems}); restore without it; nothing was changed")]
    Config {
        /// What is wrong.
        problems: String,
    },
    /// Turns did not finish in time.
    #[error(
        "{running} turns were still running after {waited:?}; nothing was changed: retry when they end (`blufioctl status`)"
    )]
    TurnsRunning {
        /// How many.
        running: usize,
        /// How long the restore waited.
        waited: Duration,
    },
    /// A file step failed.
    #[error("cannot {operation} {path}")]
    File {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A database step failed.
    #[error("cannot {operation}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        #[source]
        source: StorageError,
    },
    /// The vault could not be checked or reopened.
    #[error("cannot {operation}")]
    Vault {
        /// What was being done.
        operation: &'static str,
        #[source]
        source: VaultError,
    },
}

impl RestoreError {
    /// Whether the archive (or the request) is at fault, rather than the daemon.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Archive(_) | Self::NoDatabase | Self::Integrity { .. } | Self::Config { .. }
        )
    }
}

/// What a restore asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Go on although the daemon's key does not open the archive's vault: drop its secrets.
    pub without_secrets: bool,
    /// Install the archive's config file too.
    pub restore_config: bool,
}

/// A received, verified archive, waiting in the state directory.
#[derive(Debug)]
pub struct Received {
    /// Its manifest.
    pub manifest: Manifest,
    database: PathBuf,
    config: Option<Vec<u8>>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl Drop for Received {
    fn drop(&mut self) {
        // Gone once swapped in; otherwise nothing may stay behind.
        let _ = std::fs::remove_file(&self.database);
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// Where the replaced database is kept.
    pub safety_copy: PathBuf,
    /// The archive's schema version and the database's after migrating.
    pub schema_from: i64,
    /// See `schema_from`.
    pub schema_now: i64,
    /// Whether the secrets came back.
    pub secrets_restored: bool,
    /// Whether the config file was installed.
    pub config_restored: bool,
    /// Whether the TLS key pair was installed.
    pub tls_restored: bool,
    /// Turns that were running when the restore began (they finished).
    pub turns_finished: usize,
}

/// What the marker records.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    archive_created_at: i64,
    safety_copy: PathBuf,
}

/// Safety copies in `state_dir`, oldest first, with their times.
pub fn safety_copies(state_dir: &Path) -> Vec<(PathBuf, i64)> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut copies: Vec<(PathBuf, i64)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let at = name
                .strip_prefix(SAFETY_PREFIX)?
                .strip_suffix(SAFETY_SUFFIX)?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((entry.path(), at))
        })
        .collect();
    copies.sort_by_key(|(_, at)| *at);
    copies
}

fn file_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.to_owned();
    move |source| RestoreError::File {
        operation,
        path,
        source,
    }
}

/// Reads an archive from `reader` (blocking), verifying every member, and keeps its database in
/// `state_dir`. Nothing is used unless the whole archive verified.
pub fn receive(reader: impl Read, state_dir: &Path) -> Result<Received, RestoreError> {
    let database = state_dir.join(INCOMING);
    let _ = std::fs::remove_file(&database);
    let mut received = Received {
        manifest: placeholder_manifest(),
        database: database.clone(),
        config: None,
        tls: None,
    };
    let mut cert = None;
    let mut key = None;
    let manifest = archive::verify(reader, |member, data| {
        if member.name == archive::DATABASE {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_private()
                .open(&database)?;
            let copied = std::io::copy(data, &mut file)?;
            file.sync_all()?;
            return Ok(copied);
        }
        let mut bytes = Vec::new();
        data.take(1024 * 1024).read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        match member.name.as_str() {
            archive::CONFIG => received.config = Some(bytes),
            archive::TLS_CERT => cert = Some(bytes),
            archive::TLS_KEY => key = Some(bytes),
            _ => {}
        }
        Ok(size)
    })
    .map_err(|error| match error {
        ArchiveError::Io(source) if source.kind() != std::io::ErrorKind::InvalidData => RestoreError::File {
            operation: "receive the archive into",
            path: database.clone(),
            source,
        },
        error => RestoreError::Archive(error),
    })?;
    if !manifest.members.iter().any(|member| member.name == archive::DATABASE) {
        return Err(RestoreError::NoDatabase);
    }
    received.manifest = manifest;
    received.tls = cert.zip(key);
    Ok(received)
}

fn placeholder_manifest() -> Manifest {
    Manifest {
        format: String::new(),
        format_version: 0,
        blufio_version: String::new(),
        schema_version: 0,
        created_at: 0,
        daemon: archive::DaemonIdentity {
            hostname: String::new(),
            database_path: String::new(),
        },
        members: Vec::new(),
        vault: None,
    }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

/// Checks a received archive against this daemon: integrity, schema, vault, config. Drops the
/// archive's secrets when `without_secrets` and the key does not open them. Returns whether the
/// secrets are kept.
pub async fn check(received: &Received, vault: &Vault, options: RestoreOptions) -> Result<bool, RestoreError> {
    // A member that is not a SQLite database at all is the archive's fault.
    let facts = inspect_database(&received.database)
        .await
        .map_err(|error| RestoreError::Integrity {
            problems: format!("it cannot be read as a SQLite database: {}", crate::error_chain(&error)),
        })?;
    if let Some(problems) = facts.integrity_problems {
        return Err(RestoreError::Integrity { problems });
    }
    let ours = current_schema_version();
    if facts.schema_version > ours {
        return Err(RestoreError::NewerSchema {
            archive: facts.schema_version,
            ours,
            version: received.manifest.blufio_version.clone(),
        });
    }
    if options.restore_config
        && let Some(config) = &received.config
    {
        let text = String::from_utf8_lossy(config);
        if let Err(error) = crate::config::load_from(Some(&text), None, false) {
            return Err(RestoreError::Config {
                problems: crate::error_chain(&error),
            });
        }
    }
    let Some(current) = facts.current_slot() else {
        return Ok(true);
    };
    let opens = vault.opens(&facts.vault_slots).map_err(|source| RestoreError::Vault {
        operation: "read the vault key to check the archive's secrets",
        source,
    })?;
    if opens {
        return Ok(true);
    }
    if !options.without_secrets {
        return Err(RestoreError::ForeignVault {
            sealed_with: current.source.clone(),
        });
    }
    drop_vault_in(&received.database)
        .await
        .map_err(|source| RestoreError::Storage {
            operation: "drop the archive's secrets",
            source,
        })?;
    Ok(false)
}

/// Swaps `received`'s database in for the one at `database`: the marker, a hard link of the
/// current file as the safety copy, the WAL and shared-memory files of the closed database
/// removed, the rename, an fsync of the directory, the marker removed. Runs with the database
/// closed. Returns the safety copy.
pub fn swap(received: &Received, database: &Path) -> Result<PathBuf, RestoreError> {
    let dir = database.parent().unwrap_or(Path::new("."));
    let now = unix_now();
    // Two restores in one second keep two copies.
    let safety = (1..)
        .map(|n| {
            let suffix = if n == 1 { String::new() } else { format!("-{n}") };
            dir.join(format!("{SAFETY_PREFIX}{now}{suffix}{SAFETY_SUFFIX}"))
        })
        .find(|path| !path.exists())
        .expect("names are unbounded");
    let marker = dir.join(MARKER);
    let text = serde_json::to_vec(&Marker {
        archive_created_at: received.manifest.created_at,
        safety_copy: safety.clone(),
    })
    .expect("the marker serializes");
    crate::util::write_atomically(&marker, &text, crate::util::FileMode::Exactly(0o600))
        .map_err(file_error("write the restore marker", &marker))?;
    crate::util::crash_point("restore-marked");
    if database.exists() {
        std::fs::hard_link(database, &safety).map_err(file_error("keep the safety copy", &safety))?;
    }
    crate::util::crash_point("restore-linked");
    for suffix in ["-wal", "-shm"] {
        let mut side = database.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_error("remove the old database's", Path::new(&side))(error));
            }
            _ => {}
        }
    }
    std::fs::rename(&received.database, database).map_err(file_error("swap in the restored database", database))?;
    crate::util::crash_point("restore-renamed");
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(file_error("sync the state directory", dir))?;
    Ok(safety)
}

/// At start, before the database opens: finishes what a crash during a swap left, and says which
/// database the daemon runs on.
pub fn recover(database: &Path) {
    let dir = database.parent().unwrap_or(Path::new("."));
    let marker = dir.join(MARKER);
    let Ok(text) = std::fs::read(&marker) else {
        return;
    };
    let incoming = dir.join(INCOMING);
    match serde_json::from_slice::<Marker>(&text) {
        Ok(recorded) if incoming.exists() => tracing::warn!(
            safety_copy = %recorded.safety_copy.display(),
            "a restore was interrupted before its database was swapped in: blufiod runs on the database it had; restore again"
        ),
        Ok(recorded) => tracing::warn!(
            archive_created_at = recorded.archive_created_at,
            safety_copy = %recorded.safety_copy.display(),
            "a restore was interrupted after its database was swapped in: blufiod runs on the restored database (the previous one is the safety copy)"
        ),
        Err(error) => tracing::warn!(%error, "a restore marker cannot be read; blufiod runs on the database it finds"),
    }
    let _ = std::fs::remove_file(&incoming);
    let _ = std::fs::remove_file(&marker);
}

/// Removes the marker after a swap finished.
fn clear_marker(database: &Path) {
    let dir = database.parent().unwrap_or(Path::new("."));
    let _ = std::fs::remove_file(dir.join(MARKER));
}

/// What an online restore needs beyond the backup subsystem.
pub struct Online<'a> {
    /// The agent, whose changes are held back; `None` for `blufiod restore` while no daemon runs.
    pub agent: Option<&'a crate::agent::Agent>,
    /// The vault, reopened on the restored database.
    pub vault: &'a Vault,
    /// How long running turns may take to finish.
    pub turn_timeout: Duration,
}

impl Backups {
    /// Receives an archive from `reader` into the state directory; the restore phase says so.
    pub fn receive(&self, reader: impl Read) -> Result<Received, RestoreError> {
        receive(reader, &self.deps.paths.state_dir)
    }

    /// Restores `received` into the running daemon (see the module's documentation).
    pub async fn restore(
        &self,
        received: Received,
        options: RestoreOptions,
        online: Online<'_>,
    ) -> Result<Restored, RestoreError> {
        let _running = self.running.try_lock().map_err(|_| RestoreError::Busy)?;
        let result = self.restore_locked(&received, options, &online).await;
        self.set_restore_phase(None);
        match &result {
            Ok(restored) => {
                tracing::info!(
                    archive_created_at = restored.manifest.created_at,
                    safety_copy = %restored.safety_copy.display(),
                    "restored a backup"
                );
                self.deps.events.publish(Event::Restored {
                    created_at: restored.manifest.created_at,
                    safety_copy: restored.safety_copy.clone(),
                });
                self.apply_retention();
            }
            Err(error) => tracing::error!(error = %crate::error_chain(error), "restore failed"),
        }
        result
    }

    async fn restore_locked(
        &self,
        received: &Received,
        options: RestoreOptions,
        online: &Online<'_>,
    ) -> Result<Restored, RestoreError> {
        self.set_restore_phase(Some("verifying"));
        let secrets_restored = check(received, online.vault, options).await?;
        self.set_restore_phase(Some("waiting for turns"));
        let turns_finished = match online.agent {
            Some(agent) => agent.begin_restore().await,
            None => 0,
        };
        let result = async {
            let finished = match online.agent {
                Some(agent) => agent.wait_for_running_turns(online.turn_timeout).await,
                None => true,
            };
            if !finished {
                return Err(RestoreError::TurnsRunning {
                    running: turns_finished,
                    waited: online.turn_timeout,
                });
            }
            self.set_restore_phase(Some("swapping"));
            let database = self.deps.paths.database.clone();
            let mut paused = self.deps.storage.pause().await;
            let swapped = paused
                .reopen_with(|path| swap(received, path))
                .await
                .map_err(|source| RestoreError::Storage {
                    operation: "reopen the restored database",
                    source,
                })?;
            drop(paused);
            let safety_copy = swapped?;
            clear_marker(&database);
            self.set_restore_phase(Some("migrating"));
            online.vault.reload().await.map_err(|source| RestoreError::Vault {
                operation: "reopen the vault on the restored database",
                source,
            })?;
            Ok(safety_copy)
        }
        .await;
        // Changes resume whatever happened; the budget is read from the database now in place.
        if let Some(agent) = online.agent
            && let Err(error) = agent.end_restore().await
        {
            tracing::error!(error = %crate::error_chain(&error), "cannot read the restored spend");
        }
        let safety_copy = result?;
        let config_restored = self.install_config(received, options)?;
        let tls_restored = self.install_tls(received)?;
        Ok(Restored {
            manifest: received.manifest.clone(),
            safety_copy,
            schema_from: received.manifest.schema_version,
            schema_now: current_schema_version(),
            secrets_restored,
            config_restored,
            tls_restored,
            turns_finished,
        })
    }

    fn install_config(&self, received: &Received, options: RestoreOptions) -> Result<bool, RestoreError> {
        let (true, Some(config)) = (options.restore_config, &received.config) else {
            return Ok(false);
        };
        let path = &self.deps.paths.config;
        crate::util::write_atomically(path, config, crate::util::FileMode::KeepOr(0o640))
            .map_err(file_error("install the archive's config file as", path))?;
        tracing::info!(path = %path.display(), "installed the archive's config file; `systemctl reload blufiod` applies it");
        Ok(true)
    }

    fn install_tls(&self, received: &Received) -> Result<bool, RestoreError> {
        let Some((cert, key)) = &received.tls else {
            return Ok(false);
        };
        let config = self.deps.config.get();
        let (cert_path, key_path) = super::tls_files(&config.config.gateway, &self.deps.paths.state_dir);
        crate::util::write_atomically(&key_path, key, crate::util::FileMode::Exactly(0o600))
            .map_err(file_error("install the archive's TLS key as", &key_path))?;
        crate::util::write_atomically(&cert_path, cert, crate::util::FileMode::KeepOr(0o644))
            .map_err(file_error("install the archive's TLS certificate as", &cert_path))?;
        tracing::info!(cert = %cert_path.display(), "installed the archive's TLS key pair; `systemctl reload blufiod` serves it");
        Ok(true)
    }
}
