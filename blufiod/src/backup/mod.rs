//! Backups: an online snapshot of the database taken while the daemon serves, checked, and
//! packed into one archive (`blufio_proto::backup`: a tar file with a manifest of SHA-256s) that
//! is streamed to a client or written by the daemon itself on a schedule. Restores are in
//! [`restore`].
//!
//! One backup or restore runs at a time. The snapshot is made with SQLite's online backup API
//! under one read transaction (the writer is never held, and the snapshot holds exactly the
//! transactions committed before it began) into a private temporary directory in the state
//! directory, removed whatever happens. A scheduled archive is written beside its final name,
//! fsynced and renamed, so a failed backup never leaves a file under a backup's name.

pub mod restore;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blufio_proto::backup::{self as archive, ArchiveError, DaemonIdentity, Manifest, Member, VaultSummary};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigHandle;
use crate::events::{Event, EventBus};
use crate::health::{Check, Finding, Health};
use crate::metrics::Metrics;
use crate::storage::{
    Storage, StorageError, StorageErrorKind, check_integrity, current_schema_version, read_database_facts,
};
use crate::util::unix_now;

/// The file name of a scheduled backup: `blufio-backup-20261130T142000Z.tar`.
const FILE_PREFIX: &str = "blufio-backup-";
const FILE_SUFFIX: &str = ".tar";
/// When no backup exists yet, the first scheduled one comes this long after the start.
const FIRST_BACKUP_DELAY: Duration = Duration::from_secs(60);
/// How long a client's backup waits for another backup or restore to end before it is refused.
const PLACE_WAIT: Duration = Duration::from_secs(2);
/// Bytes per chunk streamed to a client (under the control socket's message limit).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Why a backup failed. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A backup or restore is already running.
    #[error("a backup or restore is already running; try again when it ends")]
    Busy,
    /// The temporary directory for the snapshot cannot be made.
    #[error("cannot make a temporary directory for the snapshot in {dir}")]
    TempDir {
        /// The state directory.
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The snapshot could not be taken (a full disk, most often).
    #[error("cannot take the snapshot in {dir}{}", if *.full { ": the disk is full; free space there (the snapshot needs about the database's size) and try again" } else { "" })]
    Snapshot {
        /// Where it was being written.
        dir: PathBuf,
        /// Whether the disk was full.
        full: bool,
        #[source]
        source: StorageError,
    },
    /// The snapshot failed its integrity check.
    #[error(
        "the snapshot fails SQLite's integrity check ({problems}); the live database may be damaged: run `blufioctl status` and restore a good backup"
    )]
    Integrity {
        /// What the check said.
        problems: String,
    },
    /// A file that goes into the archive cannot be read.
    #[error("cannot read {path} for the archive")]
    Read {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The archive cannot be written.
    #[error("cannot write the archive {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The archive format failed.
    #[error("cannot build the archive")]
    Archive(#[from] ArchiveError),
    /// A client given the snapshot's descriptor did not end its call in time.
    #[error(
        "the client kept the snapshot for more than {} s, so it was emptied; back up to a faster disk, or with `blufioctl backup --stream`",
        .after.as_secs()
    )]
    HandoverDeadline {
        /// How long the client had.
        after: Duration,
    },
    /// The backup directory could let another user replace or remove backups.
    #[error("backup.dir {dir}: {problem}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl BackupError {
    /// Whether the failure is a full disk (or quota).
    pub fn is_full(&self) -> bool {
        match self {
            Self::Snapshot { full, .. } => *full,
            Self::Write { source, .. } | Self::TempDir { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// What goes into an archive besides the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Contents {
    /// The config file (its secrets are `secret:` references).
    pub config: bool,
    /// The gateway's TLS certificate and private key.
    pub tls: bool,
}

/// Where the backup subsystem finds what it copies.
#[derive(Debug, Clone)]
pub struct BackupPaths {
    /// The state directory (snapshots are made there; default backup directory beneath it).
    pub state_dir: PathBuf,
    /// The database file.
    pub database: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

/// What the backup subsystem is given by the composition root.
#[derive(Debug, Clone)]
pub struct BackupDeps {
    /// The database.
    pub storage: Storage,
    /// The configuration (the schedule, the TLS files).
    pub config: ConfigHandle,
    /// The paths.
    pub paths: BackupPaths,
    /// Where finished backups are announced.
    pub events: Arc<EventBus>,
    /// blufiod's uid: the owner the backup directory and the backups in it must have.
    pub owner: u32,
}

/// The last backup's outcome, for status, metrics and the health check.
#[derive(Debug, Clone, Default)]
pub struct LastBackup {
    /// Unix seconds of the last success.
    pub success_at: Option<i64>,
    /// Its archive's size.
    pub size_bytes: u64,
    /// How long it took.
    pub duration: Duration,
    /// The last failure and when, unless a success came after it.
    pub error: Option<(String, i64)>,
}

/// A snapshot file in a private temporary directory, and the one backup place it holds. The
/// snapshot is emptied, then removed, when this is dropped.
#[derive(Debug)]
struct Snapshot {
    dir: tempfile::TempDir,
    /// The snapshot, opened for writing before any descriptor of it is handed out: emptied
    /// through it on drop, which no holder of a descriptor (a lease, a changed mode) can stop.
    emptied_by: std::fs::File,
    /// The archive's members other than the database, whole: (name, bytes).
    extra: Vec<(String, Vec<u8>)>,
    started: Instant,
    /// No other backup or restore runs while this one exists.
    _running: tokio::sync::OwnedMutexGuard<()>,
}

impl Snapshot {
    fn path(&self) -> PathBuf {
        self.dir.path().join(archive::DATABASE)
    }

    fn open(&self) -> Result<std::fs::File, BackupError> {
        let path = self.path();
        std::fs::File::open(&path).map_err(|source| BackupError::Read { path, source })
    }
}

impl Drop for Snapshot {
    /// Empties the snapshot before its directory goes: removing the name alone would leave the
    /// data, and its disk space, to any descriptor of it a client still holds. Blocks for a
    /// while on a large snapshot.
    fn drop(&mut self) {
        if let Err(error) = self.emptied_by.set_len(0) {
            tracing::warn!(path = %self.path().display(), %error, "cannot empty the backup snapshot");
        }
    }
}

/// A snapshot taken, with its manifest, whose integrity check and hash have not run yet: the
/// manifest lists [`archive::PENDING_SHA256`] for the database. [`Unchecked::check`] makes it a
/// [`Prepared`]; until then only a client that copies while the daemon checks
/// (`check_alongside`) may see it, and that client keeps nothing before the check passed.
#[derive(Debug)]
pub struct Unchecked {
    /// The archive's manifest, the database's hash pending.
    pub manifest: Manifest,
    /// The archive's exact size (the same once the hash is filled in).
    pub archive_bytes: u64,
    snapshot: Snapshot,
}

impl Unchecked {
    /// The snapshot, opened read-only, to hand to a client that builds the archive itself.
    /// Emptied when this, or the [`Prepared`] it becomes, is dropped.
    pub fn open_snapshot(&self) -> Result<std::fs::File, BackupError> {
        self.snapshot.open()
    }

    /// The archive's members other than the database, whole: (name, bytes).
    pub fn small_members(&self) -> &[(String, Vec<u8>)] {
        &self.snapshot.extra
    }

    /// Runs `PRAGMA integrity_check` on the snapshot and hashes it, each on a low-priority
    /// thread of its own, at once; fills the hash into the manifest.
    pub async fn check(self) -> Result<Prepared, BackupError> {
        let Self {
            mut manifest,
            archive_bytes,
            snapshot,
        } = self;
        let path = snapshot.path();
        let hashing = {
            let path = path.clone();
            crate::util::background("blufio-hash", move || {
                std::fs::File::open(&path).and_then(archive::sha256_of)
            })
        };
        let (problems, hashed) = tokio::join!(check_integrity(&path), hashing);
        let problems = problems.map_err(|source| BackupError::Snapshot {
            dir: snapshot.dir.path().to_owned(),
            full: false,
            source,
        })?;
        if let Some(problems) = problems {
            return Err(BackupError::Integrity { problems });
        }
        let (sha256, bytes) = hashed.map_err(|source| BackupError::Read {
            path: path.clone(),
            source,
        })?;
        let database = manifest
            .members
            .iter_mut()
            .find(|member| member.name == archive::DATABASE)
            .expect("every manifest lists the database");
        if database.bytes != bytes {
            return Err(BackupError::Read {
                path,
                source: std::io::Error::other(format!(
                    "the snapshot changed size while it was checked ({} bytes, then {bytes})",
                    database.bytes
                )),
            });
        }
        database.sha256 = sha256;
        debug_assert_eq!(archive::archive_size(&manifest), archive_bytes);
        Ok(Prepared {
            manifest,
            archive_bytes,
            snapshot,
        })
    }
}

/// A snapshot, checked, with its manifest: ready to be written as an archive any number of times.
/// The snapshot file is emptied and removed when this is dropped.
#[derive(Debug)]
pub struct Prepared {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// The archive's exact size.
    pub archive_bytes: u64,
    snapshot: Snapshot,
}

impl Prepared {
    /// The checked snapshot, opened read-only, to hand to a client that builds the archive
    /// itself. Emptied when this is dropped, so a descriptor kept longer reads nothing.
    pub fn open_snapshot(&self) -> Result<std::fs::File, BackupError> {
        self.snapshot.open()
    }

    /// The archive's members other than the database, whole: (name, bytes).
    pub fn small_members(&self) -> &[(String, Vec<u8>)] {
        &self.snapshot.extra
    }

    /// Writes the archive to `out` (blocking: it reads the snapshot file).
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, BackupError> {
        let snapshot = self.snapshot.path();
        Ok(archive::write(out, &self.manifest, |name| {
            if name == archive::DATABASE {
                // Whole chunks per read: the archive writer copies in small pieces.
                let file = std::fs::File::open(&snapshot)?;
                Ok(Box::new(std::io::BufReader::with_capacity(CHUNK_BYTES, file)) as Box<dyn Read>)
            } else {
                let (_, bytes) = self
                    .small_members()
                    .iter()
                    .find(|(member, _)| member == name)
                    .ok_or_else(|| std::io::Error::other(format!("no member {name}")))?;
                Ok(Box::new(&bytes[..]) as Box<dyn Read>)
            }
        })?)
    }
}

/// Empties and removes the snapshot directories a daemon that was killed left in `state_dir`
/// (`.backup-*`): a descriptor of one a client still held would otherwise read it, and they
/// would hold their disk space for good. Run at start, under the state directory's lock.
pub fn remove_stale_snapshots(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !is_dir || !name.to_string_lossy().starts_with(".backup-") {
            continue;
        }
        let dir = entry.path();
        if let Ok(files) = std::fs::read_dir(&dir) {
            for file in files.flatten() {
                if file.file_type().is_ok_and(|kind| kind.is_file()) {
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                        .open(file.path())
                        .and_then(|file| file.set_len(0));
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed a backup snapshot a stopped run left"),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot remove a backup snapshot a stopped run left")
            }
        }
    }
}

/// Where a backup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A file the daemon wrote (a scheduled backup).
    File(PathBuf),
    /// The archive streamed to a client.
    Streamed,
    /// The snapshot's descriptor passed to a client that built the archive.
    HandedOver,
}

/// The backup subsystem. Made once by the root.
#[derive(Debug)]
pub struct Backups {
    deps: BackupDeps,
    /// Held by a backup from its snapshot to its last byte, and by a restore from its first
    /// received byte to its end: one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
    last: Mutex<LastBackup>,
    restore_phase: tokio::sync::watch::Sender<Option<&'static str>>,
    failures: Mutex<Option<prometheus::IntCounter>>,
}

impl Backups {
    /// The subsystem; the last scheduled backup in the directory counts as the last success.
    pub fn new(deps: BackupDeps) -> Arc<Self> {
        let backups = Self {
            deps,
            running: Arc::new(tokio::sync::Mutex::new(())),
            last: Mutex::default(),
            restore_phase: tokio::sync::watch::Sender::new(None),
            failures: Mutex::new(None),
        };
        if let Some((path, at)) = backups.scheduled_files().last() {
            let mut last = backups.last.lock().expect("backup state poisoned");
            last.success_at = Some(*at);
            last.size_bytes = std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        }
        Arc::new(backups)
    }

    /// The directory scheduled backups go to.
    pub fn dir(&self) -> PathBuf {
        self.deps
            .config
            .get()
            .config
            .backup
            .dir
            .clone()
            .unwrap_or_else(|| self.deps.paths.state_dir.join("backups"))
    }

    /// Takes a snapshot and makes the manifest of an archive of it and of `contents`, to be
    /// checked next ([`Unchecked::check`]). Waits up to [`PLACE_WAIT`] for the one place: a
    /// client's hand-over ends only when the daemon hears its call end, a moment after the
    /// client is done, and a backup run right after it must not be refused for that.
    pub async fn take(&self, contents: Contents) -> Result<Unchecked, BackupError> {
        let running = tokio::time::timeout(PLACE_WAIT, self.running.clone().lock_owned())
            .await
            .map_err(|_| BackupError::Busy)?;
        self.take_locked(contents, running).await
    }

    async fn take_locked(
        &self,
        contents: Contents,
        running: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Unchecked, BackupError> {
        let started = Instant::now();
        let state_dir = &self.deps.paths.state_dir;
        let dir = tempfile::Builder::new()
            .prefix(".backup-")
            .tempdir_in(state_dir)
            .map_err(|source| BackupError::TempDir {
                dir: state_dir.clone(),
                source,
            })?;
        let path = dir.path().join(archive::DATABASE);
        let snapshot_failed = |full, source| BackupError::Snapshot {
            dir: state_dir.clone(),
            full,
            source,
        };
        self.deps
            .storage
            .snapshot_into(&path)
            .await
            .map_err(|source| snapshot_failed(source.kind() == StorageErrorKind::Full, source))?;
        let emptied_by = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| BackupError::Read {
                path: path.clone(),
                source,
            })?;
        let bytes = emptied_by
            .metadata()
            .map_err(|source| BackupError::Read {
                path: path.clone(),
                source,
            })?
            .len();
        let mut snapshot = Snapshot {
            dir,
            emptied_by,
            extra: Vec::new(),
            started,
            _running: running,
        };
        let facts = match read_database_facts(&path).await {
            Ok(facts) => facts,
            // A damaged snapshot explains itself best through the check.
            Err(source) => {
                return Err(match check_integrity(&path).await {
                    Ok(Some(problems)) => BackupError::Integrity { problems },
                    _ => snapshot_failed(false, source),
                });
            }
        };
        let mut members = vec![Member {
            name: archive::DATABASE.to_owned(),
            bytes,
            sha256: archive::PENDING_SHA256.to_owned(),
        }];
        let config = self.deps.config.get();
        let mut add = |name: &str, path: &Path, required: bool| -> Result<(), BackupError> {
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(BackupError::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            let (sha256, size) = archive::sha256_of(&bytes[..]).expect("reading memory cannot fail");
            members.push(Member {
                name: name.to_owned(),
                bytes: size,
                sha256,
            });
            snapshot.extra.push((name.to_owned(), bytes));
            Ok(())
        };
        if contents.config {
            add(archive::CONFIG, &self.deps.paths.config, false)?;
        }
        if contents.tls {
            let (cert, key) = tls_files(&config.config.gateway, state_dir);
            add(archive::TLS_CERT, &cert, true)?;
            add(archive::TLS_KEY, &key, true)?;
        }
        let manifest = Manifest {
            format: archive::FORMAT.to_owned(),
            format_version: archive::FORMAT_VERSION,
            blufio_version: crate::lifecycle::VERSION.to_owned(),
            schema_version: facts.schema_version,
            created_at: unix_now(),
            daemon: DaemonIdentity {
                hostname: nix::unistd::gethostname()
                    .ok()
                    .and_then(|name| name.into_string().ok())
                    .unwrap_or_default(),
                database_path: self.deps.paths.database.display().to_string(),
            },
            members,
            vault: facts.current_slot().map(|slot| VaultSummary {
                sealed_with: slot.source.clone(),
                entries: facts.vault_entries,
            }),
        };
        debug_assert!(manifest.schema_version <= current_schema_version());
        Ok(Unchecked {
            archive_bytes: archive::archive_size(&manifest),
            manifest,
            snapshot,
        })
    }

    /// Records the outcome of a backup: status, metrics, the event, the log.
    pub fn finish(&self, outcome: Result<(&Prepared, Destination), &BackupError>) {
        let mut last = self.last.lock().expect("backup state poisoned");
        match outcome {
            Ok((prepared, destination)) => {
                let (path, shown) = match destination {
                    Destination::File(path) => {
                        let shown = path.display().to_string();
                        (Some(path), shown)
                    }
                    Destination::Streamed => (None, "streamed to a client".to_owned()),
                    Destination::HandedOver => (None, "built by a client from the snapshot's descriptor".to_owned()),
                };
                last.success_at = Some(prepared.manifest.created_at);
                last.size_bytes = prepared.archive_bytes;
                last.duration = prepared.snapshot.started.elapsed();
                last.error = None;
                tracing::info!(
                    path = %shown,
                    bytes = prepared.archive_bytes,
                    seconds = last.duration.as_secs_f64(),
                    "backup finished"
                );
                self.deps.events.publish(Event::BackupFinished {
                    path,
                    bytes: prepared.archive_bytes,
                });
            }
            Err(error) => {
                let line = crate::error_chain(error);
                tracing::error!(error = %line, "backup failed");
                if let Some(failures) = &*self.failures.lock().expect("backup state poisoned") {
                    failures.inc();
                }
                last.error = Some((line.clone(), unix_now()));
                self.deps.events.publish(Event::BackupFailed { error: line });
            }
        }
    }

    /// Records the outcome of a client's backup: the owner's counts as the daemon's last backup
    /// ([`Self::finish`]); a control-group member's is only logged, so that a member can neither
    /// clear the alarm of failing scheduled backups, nor postpone them, nor raise one.
    pub fn finish_client(&self, by_owner: bool, outcome: Result<(&Prepared, Destination), &BackupError>) {
        if by_owner {
            return self.finish(outcome);
        }
        match outcome {
            Ok((prepared, _)) => tracing::info!(
                bytes = prepared.archive_bytes,
                seconds = prepared.snapshot.started.elapsed().as_secs_f64(),
                "a control-group member's backup finished (streamed; not counted as the daemon's last backup)"
            ),
            Err(error) => tracing::warn!(error = %crate::error_chain(error), "a control-group member's backup failed"),
        }
    }

    /// Takes a backup into the backup directory (the scheduled kind) and applies retention.
    pub async fn backup_to_dir(&self) -> Result<PathBuf, BackupError> {
        // Another backup or restore running is not a failure: the next interval tries again.
        let running = self.running.clone().try_lock_owned().map_err(|_| BackupError::Busy)?;
        let dir = self.dir();
        let result = async {
            check_backup_dir(&dir, self.deps.owner)?;
            let prepared = self
                .take_locked(
                    Contents {
                        config: true,
                        tls: false,
                    },
                    running,
                )
                .await?
                .check()
                .await?;
            let path = dir.join(file_name(prepared.manifest.created_at));
            let written = {
                let dir = dir.clone();
                let path = path.clone();
                crate::util::background("blufio-backup-write", move || {
                    write_file(&prepared, &dir, &path).map(|()| prepared)
                })
                .await
            };
            let prepared = written?;
            Ok::<_, BackupError>((prepared, path))
        }
        .await;
        match result {
            Ok((prepared, path)) => {
                self.finish(Ok((&prepared, Destination::File(path.clone()))));
                self.apply_retention();
                Ok(path)
            }
            Err(error) => {
                self.finish(Err(&error));
                Err(error)
            }
        }
    }

    /// Scheduled backups in the directory, oldest first, with their times: regular files of
    /// blufiod's own whose names carry a time not in the future (a planted or mistimed name must
    /// neither stop the schedule nor make retention remove real backups).
    fn scheduled_files(&self) -> Vec<(PathBuf, i64)> {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let latest = unix_now() + 3_600;
        let mut files: Vec<(PathBuf, i64)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let at = parse_file_name(&name).filter(|at| *at <= latest)?;
                let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
                (metadata.is_file() && metadata.uid() == self.deps.owner).then(|| (entry.path(), at))
            })
            .collect();
        files.sort_by_key(|(_, at)| *at);
        files
    }

    /// Removes the oldest scheduled backups beyond `backup.keep`, and the oldest safety copies of
    /// restores beyond it.
    pub fn apply_retention(&self) {
        let keep = self.deps.config.get().config.backup.keep as usize;
        let files = self.scheduled_files();
        let safety = restore::safety_copies(&self.deps.paths.state_dir);
        for list in [files, safety] {
            for (path, _) in list.iter().take(list.len().saturating_sub(keep)) {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::info!(path = %path.display(), keep, "old backup removed"),
                    Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove an old backup"),
                }
            }
        }
    }

    /// The last outcome.
    pub fn last(&self) -> LastBackup {
        self.last.lock().expect("backup state poisoned").clone()
    }

    /// The schedule, in words.
    pub fn schedule(&self) -> String {
        let config = self.deps.config.get();
        let backup = &config.config.backup;
        if backup.interval_secs == 0 {
            return "off".to_owned();
        }
        format!(
            "every {} into {}, keeping {}",
            words(Duration::from_secs(backup.interval_secs)),
            self.dir().display(),
            backup.keep
        )
    }

    /// The phase of a restore in progress.
    pub fn restore_phase(&self) -> Option<&'static str> {
        *self.restore_phase.borrow()
    }

    /// Follows the phases of restores.
    pub fn restore_phases(&self) -> tokio::sync::watch::Receiver<Option<&'static str>> {
        self.restore_phase.subscribe()
    }

    fn set_restore_phase(&self, phase: Option<&'static str>) {
        self.restore_phase.send_replace(phase);
    }

    /// Registers the backup metrics.
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) {
        *self.failures.lock().expect("backup state poisoned") =
            Some(metrics.counter("backup_failures_total", "Backups (scheduled or requested) that failed."));
        let backups = Arc::downgrade(self);
        metrics.register_scraped(
            &[
                (
                    "backup_last_success_timestamp_seconds",
                    "When the last backup succeeded, in seconds since the Unix epoch (0: never).",
                ),
                (
                    "backup_last_duration_seconds",
                    "How long the last successful backup took.",
                ),
                (
                    "backup_last_size_bytes",
                    "The size of the last successful backup's archive.",
                ),
            ],
            move || {
                let last = backups.upgrade()?.last();
                Some(vec![
                    last.success_at.unwrap_or(0) as f64,
                    last.duration.as_secs_f64(),
                    last.size_bytes as f64,
                ])
            },
        );
    }

    /// Registers the `backup` health check: a warning when the last success is older than twice
    /// the interval (or there is none after that long), or the last attempt failed.
    pub fn register_checks(self: &Arc<Self>, health: &Health, started: Instant) {
        let backups = Arc::downgrade(self);
        health.register(Check::new("backup", move || {
            let backups = backups.clone();
            async move {
                let Some(backups) = backups.upgrade() else {
                    return Finding::ok("stopping");
                };
                backups.finding(unix_now(), started.elapsed())
            }
        }));
    }

    fn finding(&self, now: i64, uptime: Duration) -> Finding {
        let interval = self.deps.config.get().config.backup.interval_secs;
        let last = self.last();
        if let Some((error, _)) = &last.error {
            return Finding::warn(
                format!("the last backup failed: {error}"),
                "fix what it says (often disk space in the backup directory), then `blufioctl backup` or wait for the next one",
            );
        }
        if interval == 0 {
            return Finding::ok("scheduled backups are off (backup.interval_secs = 0)");
        }
        let overdue = i64::try_from(interval.saturating_mul(2)).unwrap_or(i64::MAX);
        match last.success_at {
            Some(at) if now - at > overdue => Finding::warn(
                format!(
                    "the last backup is {} old, over twice the interval",
                    words(Duration::from_secs((now - at).unsigned_abs()))
                ),
                "see the log for why scheduled backups fail, or take one with `blufioctl backup`",
            ),
            None if uptime.as_secs() > interval.saturating_mul(2) => Finding::warn(
                "no backup yet",
                "see the log for why scheduled backups fail, or take one with `blufioctl backup`",
            ),
            Some(at) => Finding::ok(format!(
                "last backup {} ago",
                words(Duration::from_secs((now - at).unsigned_abs()))
            )),
            None => Finding::ok("no backup yet; the first is scheduled"),
        }
    }

    /// Takes scheduled backups until `token` is cancelled. The configuration is read at each
    /// step, so a change of `backup.*` applies to the next one.
    pub async fn run_schedule(self: Arc<Self>, changed: Arc<tokio::sync::Notify>, token: CancellationToken) {
        loop {
            let interval = self.deps.config.get().config.backup.interval_secs;
            let wait = if interval == 0 {
                None
            } else {
                // From the last attempt, success or failure: a failure is retried an interval
                // later, never in a loop.
                let last = self.last();
                let attempted = last.success_at.max(last.error.as_ref().map(|(_, at)| *at));
                Some(match attempted {
                    Some(at) => {
                        let due = at.saturating_add(i64::try_from(interval).unwrap_or(i64::MAX));
                        Duration::from_secs(u64::try_from(due - unix_now()).unwrap_or(0))
                    }
                    None => FIRST_BACKUP_DELAY.min(Duration::from_secs(interval)),
                })
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = changed.notified() => continue,
                () = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            // A failure is recorded (status, metrics, event, log) by `backup_to_dir`. When another
            // backup or restore holds the place, the next try comes a minute later.
            if let Err(BackupError::Busy) = self.backup_to_dir().await {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(FIRST_BACKUP_DELAY) => {}
                }
            }
        }
    }
}

/// Why `dir` would let another user replace or remove backups, if it would: it must be a
/// directory (not a link) of root or `owner` that nobody else may write. A missing one is made
/// 0700.
fn check_backup_dir(dir: &Path, owner: u32) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt as _;
    let refuse = |problem: String| BackupError::Dir {
        dir: dir.to_owned(),
        problem,
    };
    let metadata = match std::fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(refuse(format!("cannot stat it: {error}"))),
    };
    if !metadata.is_dir() {
        return Err(refuse(
            "is not a directory (a link is not followed); name the directory itself".to_owned(),
        ));
    }
    if metadata.uid() != 0 && metadata.uid() != owner {
        return Err(refuse(format!(
            "belongs to uid {}, who could replace or remove the backups; use a directory of blufiod's user",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "(mode {mode:04o}) may be written by other users, who could replace or remove the backups; `chmod go-w` it"
        )));
    }
    Ok(())
}

/// The gateway's TLS certificate and key files.
pub fn tls_files(gateway: &crate::config::GatewayConfig, state_dir: &Path) -> (PathBuf, PathBuf) {
    match (&gateway.cert_file, &gateway.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = state_dir.join("tls");
            (
                dir.join(crate::gateway::tls::SELF_SIGNED_CERT_FILE),
                dir.join(crate::gateway::tls::SELF_SIGNED_KEY_FILE),
            )
        }
    }
}

/// Writes `prepared` to `path` in `dir`: a private temporary file beside it, fsync, rename, fsync
/// of the directory. On any failure no file is left under `path`.
fn write_file(prepared: &Prepared, dir: &Path, path: &Path) -> Result<(), BackupError> {
    let failed = |source| BackupError::Write {
        path: path.to_owned(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| BackupError::Write {
                path: dir.to_owned(),
                source,
            })?;
    }
    let temporary = tempfile::Builder::new()
        .prefix(".tmp-blufio-backup-")
        .tempfile_in(dir)
        .map_err(failed)?;
    let file = prepared.write_to(std::io::BufWriter::with_capacity(CHUNK_BYTES, temporary))?;
    let temporary = file.into_inner().map_err(|error| failed(error.into_error()))?;
    temporary.as_file().sync_all().map_err(failed)?;
    temporary.persist(path).map_err(|error| failed(error.error))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)?;
    Ok(())
}

fn file_name(at: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{FILE_PREFIX}{:04}{:02}{:02}T{:02}{:02}{:02}Z{FILE_SUFFIX}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

fn parse_file_name(name: &str) -> Option<i64> {
    let stamp = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (date, clock) = stamp.strip_suffix('Z')?.split_once('T')?;
    if date.len() != 8 || clock.len() != 6 || !date.chars().chain(clock.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let number = |text: &str, at: usize, len: usize| text[at..at + len].parse::<u16>().ok();
    let date = time::Date::from_calendar_date(
        i32::from(number(date, 0, 4)?),
        time::Month::try_from(u8::try_from(number(date, 4, 2)?).ok()?).ok()?,
        u8::try_from(number(date, 6, 2)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(number(clock, 0, 2)?).ok()?,
        u8::try_from(number(clock, 2, 2)?).ok()?,
        u8::try_from(number(clock, 4, 2)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp())
}

/// A duration in the largest whole unit: `90 s`, `5 min`, `3 h`, `2 d`.
fn words(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7_200 => format!("{} min", secs / 60),
        7_200..172_800 => format!("{} h", secs / 3_600),
        _ => format!("{} d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_runs_snapshots_are_emptied_and_removed_at_start_and_nothing_else() {
        use std::io::Read as _;
        let state = tempfile::tempdir().unwrap();
        let stale = state.path().join(".backup-Ab12Cd");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("blufio.db"), vec![7u8; 64 * 1024]).unwrap();
        // A client's descriptor of it, kept across the daemon's death.
        let held = std::fs::File::open(stale.join("blufio.db")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("keep.db"), b"not the daemon's").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), state.path().join(".backup-link")).unwrap();
        std::fs::create_dir(state.path().join("backups")).unwrap();
        std::fs::write(state.path().join("blufio.db"), b"live").unwrap();

        remove_stale_snapshots(state.path());

        assert!(!stale.exists());
        let mut rest = Vec::new();
        (&held).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes still readable", rest.len());
        assert_eq!(
            std::fs::read(elsewhere.path().join("keep.db")).unwrap(),
            b"not the daemon's",
            "a link is not followed"
        );
        assert!(state.path().join("backups").is_dir());
        assert_eq!(std::fs::read(state.path().join("blufio.db")).unwrap(), b"live");
    }

    #[test]
    fn file_names_carry_their_time_and_sort_by_it() {
        let name = file_name(1_764_512_400);
        assert_eq!(name, "blufio-backup-20251130T142000Z.tar");
        assert_eq!(parse_file_name(&name), Some(1_764_512_400));
        assert_eq!(parse_file_name("blufio-backup-junk.tar"), None);
        assert_eq!(parse_file_name(".tmp-blufio-backup-x"), None);
    }
}
