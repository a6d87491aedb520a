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
use crate::storage::{
    Storage, StorageError, StorageOptions, check_integrity, current_schema_version, drop_vault_in, read_database_facts,
    schema_objects,
};
use crate::util::unix_now;
use crate::vault::{SourceInputs, Vault, VaultError};

/// Safety copies: `pre-restore-<unix seconds>.db` in the state directory.
const SAFETY_PREFIX: &str = "pre-restore-";
const SAFETY_SUFFIX: &str = ".db";
/// The marker of a swap in progress.
const MARKER: &str = "restore.json";
/// Where a received archive's database waits, in the state directory (with a random middle).
const INCOMING_PREFIX: &str = "restore-incoming-";
/// The largest config or TLS member taken from an archive.
const MAX_SMALL_MEMBER: u64 = 1024 * 1024;

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
        "the archive's database has schema version {archive}, newer than this blufiod's {ours}: restore it with a newer blufiod; nothing was changed"
    )]
    NewerSchema {
        /// The archive's schema.
        archive: i64,
        /// Ours.
        ours: i64,
    },
    /// The archive's database is not one blufio can use as it is.
    #[error("the archive's database {problem}; nothing was changed")]
    Unusable {
        /// What is wrong.
        problem: String,
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
            Self::Archive(_) | Self::NoDatabase | Self::Integrity { .. } | Self::Unusable { .. } | Self::Config { .. }
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
    /// Install the archive's TLS key pair too.
    pub restore_tls: bool,
}

/// A received, verified archive, waiting in the state directory.
#[derive(Debug)]
pub struct Received {
    /// Its manifest.
    pub manifest: Manifest,
    /// The database, removed on drop unless it was swapped in.
    database: Option<tempfile::TempPath>,
    config: Option<Vec<u8>>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    /// No other backup or restore runs while this one exists (online).
    running: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Received {
    fn database(&self) -> &Path {
        self.database
            .as_deref()
            .expect("the database is present until swapped in")
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
    incoming: PathBuf,
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
/// `state_dir` under a name of its own. Nothing is used unless the whole archive verified.
pub fn receive(reader: impl Read, state_dir: &Path) -> Result<Received, RestoreError> {
    let file = tempfile::Builder::new()
        .prefix(INCOMING_PREFIX)
        .suffix(".db")
        .tempfile_in(state_dir)
        .map_err(file_error("make a file for the archive's database in", state_dir))?;
    let (mut file, database) = file.into_parts();
    let mut config = None;
    let mut cert = None;
    let mut key = None;
    let mut database_seen = false;
    let manifest = archive::verify(reader, |member, data| {
        if member.name == archive::DATABASE {
            if std::mem::replace(&mut database_seen, true) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "two database members",
                ));
            }
            let copied = std::io::copy(data, &mut file)?;
            file.sync_all()?;
            return Ok(copied);
        }
        if member.bytes > MAX_SMALL_MEMBER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "member {} has {} bytes, more than a config or TLS file may",
                    member.name, member.bytes
                ),
            ));
        }
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        match member.name.as_str() {
            archive::CONFIG => config = Some(bytes),
            archive::TLS_CERT => cert = Some(bytes),
            archive::TLS_KEY => key = Some(bytes),
            _ => {}
        }
        Ok(size)
    })
    .map_err(|error| match error {
        ArchiveError::Io(source) if source.kind() != std::io::ErrorKind::InvalidData => RestoreError::File {
            operation: "receive the archive into",
            path: database.to_path_buf(),
            source,
        },
        error => RestoreError::Archive(error),
    })?;
    if !database_seen {
        return Err(RestoreError::NoDatabase);
    }
    Ok(Received {
        manifest,
        database: Some(database),
        config,
        tls: cert.zip(key),
        running: None,
    })
}

/// Checks a received archive against this daemon before anything changes: a blufio database
/// whose integrity holds, a schema no newer than this build's, which migrates to it and then
/// holds exactly the objects this build makes (no trigger or view of the archive's own), a vault
/// whose every entry the key from `inputs` opens (else, with `without_secrets`, the vault is
/// dropped from the copy), and, when asked for, a valid config file and TLS key pair. The copy is
/// migrated here, so the swap cannot fail on it. Returns whether the secrets are kept.
pub async fn check(received: &Received, inputs: &SourceInputs, options: RestoreOptions) -> Result<bool, RestoreError> {
    let path = received.database();
    let unreadable = |error: StorageError| RestoreError::Integrity {
        problems: format!("it cannot be read as a SQLite database: {}", crate::error_chain(&error)),
    };
    if let Some(problems) = check_integrity(path).await.map_err(unreadable)? {
        return Err(RestoreError::Integrity { problems });
    }
    let facts = read_database_facts(path).await.map_err(unreadable)?;
    if facts.schema_version == 0 {
        return Err(RestoreError::Unusable {
            problem: "holds no blufio schema (an empty or foreign SQLite file)".to_owned(),
        });
    }
    let ours = current_schema_version();
    if facts.schema_version > ours {
        return Err(RestoreError::NewerSchema {
            archive: facts.schema_version,
            ours,
        });
    }
    let copy = Storage::open(&StorageOptions {
        path: path.to_owned(),
        busy_timeout: Duration::from_secs(5),
        read_connections: 1,
        full_sync: false,
    })
    .await
    .map_err(|error| RestoreError::Unusable {
        problem: format!("cannot be migrated: {}", crate::error_chain(&error)),
    })?;
    let opens = if facts.current_slot().is_some() {
        let checked = crate::vault::opens_whole(&copy, inputs).await;
        copy.close().await;
        checked.map_err(|error| match error {
            VaultError::Damaged { .. } => RestoreError::Unusable {
                problem: format!("holds a damaged vault: {}", crate::error_chain(&error)),
            },
            source => RestoreError::Vault {
                operation: "read the vault key to check the archive's secrets",
                source,
            },
        })?
    } else {
        copy.close().await;
        true
    };
    check_schema(path).await?;
    if let (true, Some(config)) = (options.restore_config, &received.config) {
        let text = String::from_utf8_lossy(config);
        if let Err(error) = crate::config::load_from(Some(&text), None, false) {
            return Err(RestoreError::Config {
                problems: crate::error_chain(&error),
            });
        }
    }
    if options.restore_tls {
        check_tls(received)?;
    }
    if opens {
        return Ok(true);
    }
    if !options.without_secrets {
        return Err(RestoreError::ForeignVault {
            sealed_with: facts.current_slot().map(|slot| slot.source.clone()).unwrap_or_default(),
        });
    }
    drop_vault_in(path).await.map_err(|source| RestoreError::Storage {
        operation: "drop the archive's secrets",
        source,
    })?;
    Ok(false)
}

/// Refuses a migrated copy whose schema differs from the one this build makes: an archive's own
/// trigger could undo a revocation, a view or table could hide anything.
async fn check_schema(path: &Path) -> Result<(), RestoreError> {
    let fresh_dir =
        tempfile::tempdir().map_err(file_error("make a directory for a fresh schema in", Path::new("/tmp")))?;
    let fresh = fresh_dir.path().join("fresh.db");
    Storage::open(&StorageOptions {
        path: fresh.clone(),
        busy_timeout: Duration::from_secs(5),
        read_connections: 1,
        full_sync: false,
    })
    .await
    .map_err(|source| RestoreError::Storage {
        operation: "make a fresh schema to compare with",
        source,
    })?
    .close()
    .await;
    let read_error = |source| RestoreError::Storage {
        operation: "read a schema",
        source,
    };
    let expected = schema_objects(&fresh).await.map_err(read_error)?;
    let found = schema_objects(path).await.map_err(|source| RestoreError::Storage {
        operation: "read a schema",
        source,
    })?;
    let strangers: Vec<String> = found
        .difference(&expected)
        .map(|(kind, name, _)| format!("{kind} {name}"))
        .collect();
    if !strangers.is_empty() {
        return Err(RestoreError::Unusable {
            problem: format!(
                "holds schema objects blufio does not make ({}): it was changed outside blufio",
                strangers.join(", ")
            ),
        });
    }
    Ok(())
}

/// Refuses a TLS key pair that does not load.
fn check_tls(received: &Received) -> Result<(), RestoreError> {
    let Some((cert, key)) = &received.tls else {
        return Ok(());
    };
    let dir = tempfile::tempdir().map_err(file_error("make a directory for the TLS check in", Path::new("/tmp")))?;
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).map_err(file_error("write", &cert_path))?;
    std::fs::write(&key_path, key).map_err(file_error("write", &key_path))?;
    crate::gateway::tls::ReloadableCert::load(&crate::gateway::tls::CertSource::Files {
        cert: cert_path,
        key: key_path,
    })
    .map_err(|error| RestoreError::Unusable {
        problem: format!(
            "comes with a TLS key pair that does not load: {}",
            crate::error_chain(&error)
        ),
    })?;
    Ok(())
}

/// The name of the safety copy of `database` made now.
fn safety_path(database: &Path) -> PathBuf {
    let dir = database.parent().unwrap_or(Path::new("."));
    let now = unix_now();
    // Two restores in one second keep two copies.
    (1..)
        .map(|n| {
            let suffix = if n == 1 { String::new() } else { format!("-{n}") };
            dir.join(format!("{SAFETY_PREFIX}{now}{suffix}{SAFETY_SUFFIX}"))
        })
        .find(|path| !path.exists())
        .expect("names are unbounded")
}

/// Swaps `received`'s database in for the one at `database`, which is closed: the marker, a hard
/// link of the current file as `safety`, the closed database's WAL and shared-memory files
/// removed, the rename, an fsync of the directory. The marker is removed by the caller once the
/// restored database is open.
fn swap(received: &mut Received, database: &Path, safety: &Path) -> Result<(), RestoreError> {
    let dir = database.parent().unwrap_or(Path::new("."));
    let marker = dir.join(MARKER);
    let text = serde_json::to_vec(&Marker {
        archive_created_at: received.manifest.created_at,
        incoming: received.database().to_owned(),
        safety_copy: safety.to_owned(),
    })
    .expect("the marker serializes");
    crate::util::write_atomically(&marker, &text, crate::util::FileMode::Exactly(0o600))
        .map_err(file_error("write the restore marker", &marker))?;
    crate::util::crash_point("restore-marked");
    if database.exists() {
        std::fs::hard_link(database, safety).map_err(file_error("keep the safety copy", safety))?;
    }
    crate::util::crash_point("restore-linked");
    remove_side_files(database)?;
    std::fs::rename(received.database(), database).map_err(file_error("swap in the restored database", database))?;
    // Swapped in: the file is not removed when `received` goes.
    if let Some(path) = received.database.take() {
        let _ = path.keep();
    }
    crate::util::crash_point("restore-renamed");
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(file_error("sync the state directory", dir))?;
    Ok(())
}

/// Removes the WAL and shared-memory files of the closed database at `database`.
fn remove_side_files(database: &Path) -> Result<(), RestoreError> {
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
    Ok(())
}

/// Puts the safety copy back at `database` after a swapped-in database could not be used.
fn roll_back(database: &Path, safety: &Path) -> Result<(), RestoreError> {
    remove_side_files(database)?;
    std::fs::rename(safety, database).map_err(file_error("put the previous database back from", safety))
}

/// At start, before the database opens: finishes what a crash during a restore left, and says
/// which database the daemon runs on.
pub fn recover(database: &Path) {
    let dir = database.parent().unwrap_or(Path::new("."));
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read(&marker) {
        match serde_json::from_slice::<Marker>(&text) {
            Ok(recorded) if recorded.incoming.exists() => tracing::warn!(
                safety_copy = %recorded.safety_copy.display(),
                "a restore was interrupted before its database was swapped in: blufiod runs on the database it had; restore again"
            ),
            Ok(recorded) => tracing::warn!(
                archive_created_at = recorded.archive_created_at,
                safety_copy = %recorded.safety_copy.display(),
                "a restore was interrupted after its database was swapped in: blufiod runs on the restored database (the previous one is the safety copy)"
            ),
            Err(error) => {
                tracing::warn!(%error, "a restore marker cannot be read; blufiod runs on the database it finds")
            }
        }
        let _ = std::fs::remove_file(&marker);
    }
    // Received databases a crash left behind.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(INCOMING_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn clear_marker(database: &Path) {
    let dir = database.parent().unwrap_or(Path::new("."));
    let _ = std::fs::remove_file(dir.join(MARKER));
}

/// Installs the archive's config file at `path`.
fn install_config(received: &Received, path: &Path) -> Result<bool, RestoreError> {
    let Some(config) = &received.config else {
        return Ok(false);
    };
    crate::util::write_atomically(path, config, crate::util::FileMode::KeepOr(0o640))
        .map_err(file_error("install the archive's config file as", path))?;
    tracing::info!(path = %path.display(), "installed the archive's config file; `systemctl reload blufiod` applies it");
    Ok(true)
}

/// Installs the archive's TLS key pair as `cert_path` and `key_path`.
fn install_tls(received: &Received, cert_path: &Path, key_path: &Path) -> Result<bool, RestoreError> {
    let Some((cert, key)) = &received.tls else {
        return Ok(false);
    };
    crate::util::write_atomically(key_path, key, crate::util::FileMode::Exactly(0o600))
        .map_err(file_error("install the archive's TLS key as", key_path))?;
    crate::util::write_atomically(cert_path, cert, crate::util::FileMode::KeepOr(0o644))
        .map_err(file_error("install the archive's TLS certificate as", cert_path))?;
    tracing::info!(cert = %cert_path.display(), "installed the archive's TLS key pair; `systemctl reload blufiod` serves it");
    Ok(true)
}

/// `blufiod restore`: with no daemon running (the caller holds the state directory's lock), the
/// same checks and swap on the files, without opening the database in place (which may be the
/// very thing that is broken).
pub async fn restore_offline(
    reader: impl Read + Send + 'static,
    paths: &super::BackupPaths,
    gateway: &crate::config::GatewayConfig,
    inputs: &SourceInputs,
    options: RestoreOptions,
) -> Result<Restored, RestoreError> {
    recover(&paths.database);
    let state_dir = paths.state_dir.clone();
    let mut received = tokio::task::spawn_blocking(move || receive(reader, &state_dir))
        .await
        .expect("receiving an archive panicked")?;
    let secrets_restored = check(&received, inputs, options).await?;
    let safety = safety_path(&paths.database);
    swap(&mut received, &paths.database, &safety)?;
    clear_marker(&paths.database);
    let config_restored = options.restore_config && install_config(&received, &paths.config)?;
    let (cert, key) = super::tls_files(gateway, &paths.state_dir);
    let tls_restored = options.restore_tls && install_tls(&received, &cert, &key)?;
    Ok(Restored {
        manifest: received.manifest.clone(),
        safety_copy: safety,
        schema_from: received.manifest.schema_version,
        schema_now: current_schema_version(),
        secrets_restored,
        config_restored,
        tls_restored,
        turns_finished: 0,
    })
}

/// What an online restore needs beyond the backup subsystem.
pub struct Online<'a> {
    /// The agent, whose changes are held back.
    pub agent: &'a crate::agent::Agent,
    /// The vault, reopened on the restored database.
    pub vault: &'a Vault,
    /// How long running turns may take to finish.
    pub turn_timeout: Duration,
}

impl Backups {
    /// Receives an archive from `reader` into the state directory (blocking), holding the one
    /// backup-or-restore place from the first byte: the restore phase says "receiving".
    pub fn receive(&self, reader: impl Read) -> Result<Received, RestoreError> {
        let running = self.running.clone().try_lock_owned().map_err(|_| RestoreError::Busy)?;
        self.set_restore_phase(Some("receiving"));
        let result = receive(reader, &self.deps.paths.state_dir);
        if result.is_err() {
            self.set_restore_phase(None);
        }
        let mut received = result?;
        received.running = Some(running);
        Ok(received)
    }

    /// Restores `received` into the running daemon (see the module's documentation).
    pub async fn restore(
        &self,
        mut received: Received,
        options: RestoreOptions,
        online: Online<'_>,
    ) -> Result<Restored, RestoreError> {
        let result = self.restore_received(&mut received, options, &online).await;
        self.set_restore_phase(None);
        self.apply_retention();
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
            }
            Err(error) => tracing::error!(error = %crate::error_chain(error), "restore failed"),
        }
        result
    }

    async fn restore_received(
        &self,
        received: &mut Received,
        options: RestoreOptions,
        online: &Online<'_>,
    ) -> Result<Restored, RestoreError> {
        self.set_restore_phase(Some("verifying"));
        let secrets_restored = check(received, online.vault.inputs(), options).await?;
        self.set_restore_phase(Some("waiting for turns"));
        let turns_finished = online.agent.begin_restore().await;
        let result = self.swap_in(received, online, turns_finished).await;
        // Changes resume whatever happened; the budget is read from the database now in place.
        if let Err(error) = online.agent.end_restore().await {
            tracing::error!(error = %crate::error_chain(&error), "cannot read the restored spend");
        }
        let safety_copy = result?;
        let config_restored = options.restore_config && install_config(received, &self.deps.paths.config)?;
        let config = self.deps.config.get();
        let (cert, key) = super::tls_files(&config.config.gateway, &self.deps.paths.state_dir);
        let tls_restored = options.restore_tls && install_tls(received, &cert, &key)?;
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

    /// Waits for the turns, swaps the database under a pause, reopens the vault; puts the
    /// previous database back if the restored one cannot be opened after all.
    async fn swap_in(
        &self,
        received: &mut Received,
        online: &Online<'_>,
        running: usize,
    ) -> Result<PathBuf, RestoreError> {
        if !online.agent.wait_for_running_turns(online.turn_timeout).await {
            return Err(RestoreError::TurnsRunning {
                running,
                waited: online.turn_timeout,
            });
        }
        self.set_restore_phase(Some("swapping"));
        let database = self.deps.paths.database.clone();
        let safety = safety_path(&database);
        let mut paused = self.deps.storage.pause().await;
        let swapped = match paused.reopen_with(|path| swap(received, path, &safety)).await {
            Ok(swapped) => swapped,
            Err(source) => {
                // The restored file would not open: the previous one goes back.
                let back = paused.reopen_with(|path| roll_back(path, &safety)).await;
                clear_marker(&database);
                tracing::error!(
                    put_back = back.is_ok(),
                    "the restored database would not open; the previous one is back"
                );
                return Err(RestoreError::Storage {
                    operation: "open the restored database",
                    source,
                });
            }
        };
        drop(paused);
        swapped?;
        clear_marker(&database);
        self.set_restore_phase(Some("migrating"));
        if let Err(error) = self.deps.storage.carry_run_over().await {
            tracing::warn!(error = %crate::error_chain(&error), "cannot record this run in the restored database");
        }
        online.vault.reload().await.map_err(|source| RestoreError::Vault {
            operation: "reopen the vault on the restored database",
            source,
        })?;
        Ok(safety)
    }
}
