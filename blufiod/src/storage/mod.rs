//! Durable state in SQLite: one file in the state directory, WAL journal, embedded migrations,
//! exactly one writer connection and a small pool of read-only connections.
//!
//! Callers see only [`Storage`] and plain Rust types; no sqlx type crosses this boundary, so a
//! PostgreSQL backend can be added behind the same methods. Nothing else in the daemon opens the
//! database file.

mod agent;
mod backup;
mod batch;
mod checkpoint;
mod devices;
pub mod space;
mod vault;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{RwLock, RwLockWriteGuard};

/// The schema, embedded in the binary: (version, description, SQL). Append only; never edit a
/// migration that has shipped (sqlx checks their checksums).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "daemon runs", include_str!("migrations/0001_daemon_runs.sql")),
    (2, "agent", include_str!("migrations/0002_agent.sql")),
    (3, "devices", include_str!("migrations/0003_devices.sql")),
    (4, "vault", include_str!("migrations/0004_vault.sql")),
    (5, "history order", include_str!("migrations/0005_history_order.sql")),
    (
        6,
        "ledger day index",
        include_str!("migrations/0006_ledger_day_index.sql"),
    ),
    (
        7,
        "turns by session",
        include_str!("migrations/0007_turns_by_session.sql"),
    ),
];

pub use agent::{LedgerEntry, MessageRecord, NewMessage, SessionRecord, TurnEnd, UsageReport, UsageTotals};
pub use backup::{check_integrity, current_schema_version, drop_vault_in, read_database_facts, schema_objects};
pub use devices::DeviceRecord;
pub use vault::{SlotName, VaultEntryRecord, VaultSlotRecord};

/// How storage is opened.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The database file.
    pub path: PathBuf,
    /// How long a statement waits for a lock.
    pub busy_timeout: Duration,
    /// Read-only connections in the pool.
    pub read_connections: u32,
    /// Whether each commit is synced to disk before it returns (`synchronous=FULL`), rather than
    /// only handed to the operating system (`NORMAL`).
    pub full_sync: bool,
}

/// Errors from storage, each naming the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The directory for the database cannot be created.
    #[error("cannot create database directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Opening the database failed.
    #[error("cannot open database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot migrate database {path} to the current schema")]
    Migrate {
        /// The database file.
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A row would duplicate a unique value.
    #[error("database operation failed: {operation}: already exists")]
    Duplicate {
        /// What was being done.
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Work on a database file outside the daemon's pools failed: a snapshot (SQLite's online
    /// backup), or reading or changing a snapshot or an archive's database.
    #[error("database operation failed: {operation} ({path})")]
    File {
        /// What was being done.
        operation: &'static str,
        /// The file worked on.
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database operation failed: {operation}")]
    Query {
        /// What was being done.
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// What kind of failure a [`StorageError`] is, so that callers never look inside the database
/// library's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The disk (or the database's size limit) is full.
    Full,
    /// A unique value already exists.
    Duplicate,
    /// A row refers to one that does not exist (a foreign key): a message for a session that is
    /// not there.
    MissingParent,
    /// Anything else.
    Other,
}

impl StorageError {
    /// For a [`StorageError::Duplicate`], the column whose value already exists (`"name"`,
    /// `"keyid"`), when the database says.
    pub fn duplicate_column(&self) -> Option<&'static str> {
        let Self::Duplicate { source, .. } = self else {
            return None;
        };
        let message = source.as_database_error()?.message().to_owned();
        ["keyid", "name"]
            .into_iter()
            .find(|column| message.contains(&format!(".{column}")))
    }

    /// The kind of failure.
    pub fn kind(&self) -> StorageErrorKind {
        if let Self::File {
            source: rusqlite::Error::SqliteFailure(failure, _),
            ..
        } = self
        {
            return if failure.code == rusqlite::ErrorCode::DiskFull {
                StorageErrorKind::Full
            } else {
                StorageErrorKind::Other
            };
        }
        let source = match self {
            Self::Duplicate { .. } => return StorageErrorKind::Duplicate,
            Self::Open { source, .. } | Self::Query { source, .. } => source,
            _ => return StorageErrorKind::Other,
        };
        let Some(database) = source.as_database_error() else {
            return StorageErrorKind::Other;
        };
        // SQLITE_FULL (13), however the driver words it.
        if database.code().as_deref() == Some("13") || database.message().contains("full") {
            StorageErrorKind::Full
        } else if database.kind() == sqlx::error::ErrorKind::ForeignKeyViolation {
            StorageErrorKind::MissingParent
        } else {
            StorageErrorKind::Other
        }
    }
}

/// Identifies one run of the daemon in the `daemon_runs` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunId(i64);

/// The database. Cheap to clone: every clone is a handle on the same pools, which one lock
/// owns. Each method holds a read guard for its whole unit of work (a query or a transaction)
/// and never takes a second guard while holding one, so [`Storage::pause`] waits for the work in
/// flight, holds new work back, and can swap the file under every handle at once.
#[derive(Debug, Clone)]
pub struct Storage {
    pools: Arc<RwLock<Pools>>,
    options: StorageOptions,
    /// This run's row in `daemon_runs` (id, pid, version, start), carried into a restored
    /// database.
    run: Arc<std::sync::Mutex<Option<RunRecord>>>,
    /// Bumped when a pause begins and when the file has been reopened: a copy of the database's
    /// contents kept in memory is valid only for the epoch it was read at (see
    /// [`Storage::epoch`]).
    epoch: Arc<AtomicU64>,
    /// Commits not yet checkpointed (see `checkpoint.rs`).
    commits: Arc<checkpoint::Commits>,
}

/// This run's row in `daemon_runs`.
#[derive(Debug, Clone)]
struct RunRecord {
    id: i64,
    pid: u32,
    version: String,
    started_at: i64,
}

/// The connections: exactly one writer, a few read-only readers, and one that only checkpoints.
#[derive(Debug)]
struct Pools {
    /// The one writer, held directly rather than in a pool: a pool pings a connection on its
    /// thread each time it is given back, one more round trip for every write (see `batch.rs`).
    writer: tokio::sync::Mutex<Slot>,
    reader: SqlitePool,
    /// Copies the log back into the database, off the write path (see `checkpoint.rs`).
    checkpointer: tokio::sync::Mutex<Slot>,
    /// Counts the writer's uses for the checkpoints.
    commits: Arc<checkpoint::Commits>,
}

/// A connection held outside a pool: the writer's, the checkpointer's.
#[derive(Debug)]
struct Slot {
    /// The connection; `None` after a failure left it unusable (reopened at the next use) or
    /// once closed.
    connection: Option<SqliteConnection>,
    /// How to open it again.
    options: SqliteConnectOptions,
    /// Closed for good: work fails with a closed-pool error.
    closed: bool,
}

/// The writer, held for one unit of work (see [`Pools::writer`]): a connection is open in it.
/// Giving it back counts a commit for the checkpoints.
struct WriterGuard<'a>(tokio::sync::MutexGuard<'a, Slot>, &'a checkpoint::Commits);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.1.committed();
    }
}

impl WriterGuard<'_> {
    /// Drops the connection after a failure left it in an unknown state (a transaction that
    /// could not be rolled back); the next use opens it again.
    fn discard(mut self) {
        self.0.connection = None;
    }
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.0.connection.as_ref().expect("a writer guard holds a connection")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.0.connection.as_mut().expect("a writer guard holds a connection")
    }
}

/// Every handle's database work held back, with the work that was in flight finished. Dropping
/// it lets the held work run.
#[derive(Debug)]
pub struct Paused<'a> {
    pools: RwLockWriteGuard<'a, Pools>,
    options: &'a StorageOptions,
    epoch: &'a AtomicU64,
    commits: &'a Arc<checkpoint::Commits>,
}

impl Paused<'_> {
    /// Closes the database (checkpointing the WAL), lets `replace` change the file at `path`
    /// (for example rename a restored copy over it), then opens and migrates it again. On any
    /// failure the database at `path` is opened as it then is, or the error says why not.
    pub async fn reopen_with<T, E>(
        &mut self,
        replace: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<Result<T, E>, StorageError> {
        self.pools.close().await;
        let replaced = replace(&self.options.path);
        let reopened = Pools::open(self.options, self.commits.clone()).await;
        // Whatever is in the file now, copies read before are stale.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *self.pools = reopened?;
        Ok(replaced)
    }
}

impl Storage {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(options: &StorageOptions) -> Result<Self, StorageError> {
        let commits = Arc::<checkpoint::Commits>::default();
        Ok(Self {
            pools: Arc::new(RwLock::new(Pools::open(options, commits.clone()).await?)),
            options: options.clone(),
            run: Arc::default(),
            epoch: Arc::default(),
            commits,
        })
    }

    /// Which contents of the database an in-memory copy was read from: a copy read at another
    /// epoch than the current one is stale, because a restore may have replaced the file. Read the
    /// epoch before the copy.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Waits for the database work in flight to finish and holds new work back until the
    /// returned guard is dropped. Never call it while holding a result that borrows storage.
    pub async fn pause(&self) -> Paused<'_> {
        let pools = self.pools.write().await;
        // From here on, copies go back to the database, which waits for the pause to end.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Paused {
            pools,
            options: &self.options,
            epoch: &self.epoch,
            commits: &self.commits,
        }
    }

    /// Waits for the work in flight, then closes the pools, checkpointing the WAL. Work that
    /// comes later fails with a closed-pool error.
    pub async fn close(&self) {
        let paused = self.pause().await;
        paused.pools.close().await;
    }
}

/// The writer, opened on a database whose schema is already `migrator`'s: every migration
/// applied, successfully, with the checksum it has here, and no other. That is what the migrator
/// itself checks before it finds nothing to do, in one query instead of three and with no pool
/// to make and close. `None` for anything else (no file yet, a migration to apply, a failed or
/// unknown one, an error): the migrator then runs and says what is wrong.
async fn open_if_current(options: &SqliteConnectOptions, migrator: &Migrator) -> Option<SqliteConnection> {
    // A first start has nothing to compare: straight to the migrator.
    if !options.get_filename().exists() {
        return None;
    }
    let mut writer = SqliteConnection::connect_with(options).await.ok()?;
    let applied: Result<Vec<(i64, Vec<u8>, bool)>, _> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut writer)
            .await;
    let current = applied.is_ok_and(|applied| {
        applied.len() == migrator.iter().count()
            && applied
                .iter()
                .zip(migrator.iter())
                .all(|((version, checksum, success), migration)| {
                    *success && *version == migration.version && *checksum == *migration.checksum
                })
    });
    if current {
        Some(writer)
    } else {
        let _ = writer.close().await;
        None
    }
}

/// sqlx's migrator for `migrations` (all of [`MIGRATIONS`], or the first few in a test of an
/// upgrade).
fn migrator(migrations: &[(i64, &str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).to_owned().into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Pools {
    /// Opens (creating if needed) and migrates the database.
    async fn open(options: &StorageOptions, commits: Arc<checkpoint::Commits>) -> Result<Self, StorageError> {
        let path = options.path.clone();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|source| StorageError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only a power loss can lose
            // the last transactions, never corrupt the file. FULL syncs the log at each commit.
            .synchronous(if options.full_sync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let open_error = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        // SQLite's own checkpoint stays in the writer only as a backstop (see `checkpoint.rs`).
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string())
            .pragma("journal_size_limit", checkpoint::LOG_LIMIT_BYTES.to_string());
        let migrator = migrator(MIGRATIONS);
        let writer = match open_if_current(&writer_options, &migrator).await {
            Some(writer) => writer,
            None => {
                // The writer is opened in a one-connection pool for the migrator (whose future
                // is `Send` only over a pool), then taken out of it.
                let migrating = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(writer_options.clone())
                    .await
                    .map_err(open_error)?;
                migrator.run(&migrating).await.map_err(|source| StorageError::Migrate {
                    path: path.clone(),
                    source,
                })?;
                let writer = migrating.acquire().await.map_err(open_error)?.detach();
                migrating.close().await;
                writer
            }
        };
        // No ping before each use: a SQLite connection is a file handle that does not go stale,
        // and the ping is one more round trip to the connection's thread per query. Opened at
        // the first read: the start reads through the writer, so no reader waits for it.
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.read_connections)
            .min_connections(0)
            .connect_lazy_with(base.clone().read_only(true));
        Ok(Self {
            writer: tokio::sync::Mutex::new(Slot {
                connection: Some(writer),
                options: writer_options,
                closed: false,
            }),
            reader,
            checkpointer: tokio::sync::Mutex::new(Slot {
                connection: None,
                // Never waits: a truncating checkpoint that finds a write or a reader in its way
                // gives up at once rather than hold writes back while it waits.
                options: base.busy_timeout(Duration::ZERO),
                closed: false,
            }),
            commits,
        })
    }

    /// The writer, once the write in progress is done; opened again if a failure dropped it.
    async fn writer(&self) -> Result<WriterGuard<'_>, StorageError> {
        let mut slot = self.writer.lock().await;
        if slot.closed {
            return Err(StorageError::Query {
                operation: "reach the database writer",
                source: sqlx::Error::PoolClosed,
            });
        }
        if slot.connection.is_none() {
            let connection =
                SqliteConnection::connect_with(&slot.options)
                    .await
                    .map_err(|source| StorageError::Query {
                        operation: "open the database writer again",
                        source,
                    })?;
            slot.connection = Some(connection);
        }
        Ok(WriterGuard(slot, &self.commits))
    }

    /// Closes every connection, the writer last, checkpointing the WAL; later work fails with a
    /// closed-pool error.
    async fn close(&self) {
        self.reader.close().await;
        for (slot, name) in [(&self.checkpointer, "checkpoint connection"), (&self.writer, "writer")] {
            let connection = {
                let mut slot = slot.lock().await;
                slot.closed = true;
                slot.connection.take()
            };
            if let Some(connection) = connection
                && let Err(error) = connection.close().await
            {
                tracing::warn!(error = %error, "closing the database {name} failed");
            }
        }
    }
}

impl Storage {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// Bytes on disk: the database file plus its write-ahead log.
    pub fn size_bytes(&self) -> u64 {
        let size = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0);
        let path = &self.options.path;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        size(path) + size(Path::new(&wal))
    }

    /// Records the start of this run and reports whether the previous run ended uncleanly.
    pub async fn record_start(&self, pid: u32, version: &str) -> Result<(RunId, bool), StorageError> {
        let pools = self.pools.read().await;
        let query_error = |operation| move |source| StorageError::Query { operation, source };
        let mut writer = pools.writer().await?;
        let mut transaction = writer.begin().await.map_err(query_error("begin run record"))?;
        let previous: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT stopped_at FROM daemon_runs ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *transaction)
                .await
                .map_err(query_error("read the previous run"))?;
        let previous_unclean = matches!(previous, Some((None,)));
        let (id,): (i64,) =
            sqlx::query_as("INSERT INTO daemon_runs (pid, version, started_at) VALUES (?, ?, ?) RETURNING id")
                .bind(i64::from(pid))
                .bind(version)
                .bind(unix_now())
                .fetch_one(&mut *transaction)
                .await
                .map_err(query_error("record this run"))?;
        transaction.commit().await.map_err(query_error("commit run record"))?;
        *self.run.lock().expect("run record poisoned") = Some(RunRecord {
            id,
            pid,
            version: version.to_owned(),
            started_at: unix_now(),
        });
        Ok((RunId(id), previous_unclean))
    }

    /// Records this run in a database that was swapped in (a restore): the runs the snapshot
    /// saw as running are closed, and this one is written under its id, so that its clean stop
    /// is recorded and the next start does not call it unclean.
    pub async fn carry_run_over(&self) -> Result<(), StorageError> {
        let Some(RunRecord {
            id,
            pid,
            version,
            started_at,
        }) = self.run.lock().expect("run record poisoned").clone()
        else {
            return Ok(());
        };
        let pools = self.pools.read().await;
        let query_error = |operation| move |source| StorageError::Query { operation, source };
        let mut writer = pools.writer().await?;
        let mut transaction = writer.begin().await.map_err(query_error("begin run record"))?;
        sqlx::query("UPDATE daemon_runs SET stopped_at = ? WHERE stopped_at IS NULL")
            .bind(unix_now())
            .execute(&mut *transaction)
            .await
            .map_err(query_error("close the restored runs"))?;
        sqlx::query("INSERT OR REPLACE INTO daemon_runs (id, pid, version, started_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(i64::from(pid))
            .bind(&version)
            .bind(started_at)
            .execute(&mut *transaction)
            .await
            .map_err(query_error("record this run"))?;
        transaction.commit().await.map_err(query_error("commit run record"))
    }

    /// Marks this run as cleanly stopped.
    pub async fn record_clean_stop(&self, run: RunId) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        sqlx::query("UPDATE daemon_runs SET stopped_at = ? WHERE id = ?")
            .bind(unix_now())
            .bind(run.0)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(|source| StorageError::Query {
                operation: "record a clean stop",
                source,
            })?;
        Ok(())
    }

    /// Proves that the writer connection is free and answers: the watchdog's storage probe.
    pub async fn probe_writer(&self) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        sqlx::query("SELECT 1")
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(|source| StorageError::Query {
                operation: "probe the writer",
                source,
            })?;
        Ok(())
    }

    /// Asks SQLite to free what each idle connection caches (its page cache): the memory
    /// monitor's shedding at the warn level. Connections in use are left alone, and the next
    /// queries refill the caches from the OS's. Returns how many connections shrank.
    pub async fn shrink_memory(&self) -> usize {
        let pools = self.pools.read().await;
        let mut shrunk = 0;
        let shrink = "PRAGMA shrink_memory";
        for slot in [&pools.writer, &pools.checkpointer] {
            if let Ok(mut slot) = slot.try_lock()
                && let Some(connection) = slot.connection.as_mut()
                && sqlx::query(shrink).execute(connection).await.is_ok()
            {
                shrunk += 1;
            }
        }
        let reader = &pools.reader;
        let held: Vec<_> = std::iter::from_fn(|| reader.try_acquire())
            .take(reader.num_idle())
            .collect();
        for mut connection in held {
            if sqlx::query(shrink).execute(&mut *connection).await.is_ok() {
                shrunk += 1;
            }
        }
        shrunk
    }

    /// SQLite's `integrity_check` on the live database, through a reader: `Ok(None)` when the
    /// database is sound, else the first problems it reports.
    pub async fn integrity_problems(&self) -> Result<Option<String>, StorageError> {
        let pools = self.pools.read().await;
        let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check(10)")
            .fetch_all(&pools.reader)
            .await
            .map_err(|source| StorageError::Query {
                operation: "check the database's integrity",
                source,
            })?;
        let problems: Vec<String> = rows.into_iter().map(|(row,)| row).collect();
        Ok((problems != ["ok"]).then(|| problems.join("; ")))
    }

    /// Proves that a read connection can be had and answers.
    pub async fn probe_reader(&self) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        sqlx::query("SELECT count(*) FROM daemon_runs")
            .execute(&pools.reader)
            .await
            .map_err(|source| StorageError::Query {
                operation: "probe a reader",
                source,
            })?;
        Ok(())
    }

    /// The last migration applied to the open database, and whether any migration is recorded
    /// as failed.
    pub async fn schema_version(&self) -> Result<(i64, bool), StorageError> {
        let pools = self.pools.read().await;
        let (version, failed): (Option<i64>, i64) = sqlx::query_as(
            "SELECT max(CASE WHEN success THEN version END), count(*) FILTER (WHERE NOT success) FROM _sqlx_migrations",
        )
        .fetch_one(&pools.reader)
        .await
        .map_err(|source| StorageError::Query {
            operation: "read the schema version",
            source,
        })?;
        Ok((version.unwrap_or(0), failed > 0))
    }
}

/// Creates `dir` and its parents with mode 0700 (state may hold keys); an existing directory is
/// left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

use crate::util::unix_now;

/// Storage on `<dir>/blufio.db`, for the tests of this module's parts.
#[cfg(test)]
async fn open_in(dir: &Path) -> Storage {
    Storage::open(&StorageOptions {
        path: dir.join("blufio.db"),
        busy_timeout: Duration::from_secs(1),
        read_connections: 2,
        full_sync: false,
    })
    .await
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of every migration as it shipped. Migrations are append-only: a database that
    /// applied one keeps sqlx's checksum of it, so an edited migration would stop every existing
    /// daemon from starting. Add a line when a new migration ships; never change one.
    const SHIPPED: &[(&str, &str)] = &[
        (
            "0001_daemon_runs.sql",
            "fc0b4ea121721eccd708e7c237484557982be54fbbce7c0747db40c824453a3d",
        ),
        (
            "0002_agent.sql",
            "533f4c1587b62dd8ef1eff5e783dcb48f7c0b1883e53bebc6e96ed126bc43555",
        ),
        (
            "0003_devices.sql",
            "a33d67bf2c103814e775003e699952ab32c4084ba4811e0f2c4bcc5fe9af3908",
        ),
        (
            "0004_vault.sql",
            "82e38231d771cc40afdb404577e613d5d2e3fac20eb1fdb40a5c570666dbd8f1",
        ),
        (
            "0005_history_order.sql",
            "e69607102475a57164f93a9f285671404fd590f5cb9f86896302eda1a978a863",
        ),
        (
            "0006_ledger_day_index.sql",
            "6764dc19f17cc3860f86069c2a603627daea17eab269f49d2a983540267ad08e",
        ),
        (
            "0007_turns_by_session.sql",
            "dba145b28428b076d7581a02b494a32dcc9ed25645bf9e674c0aa6b5a4df7503",
        ),
    ];

    #[test]
    fn migrations_are_append_only() {
        use sha2::Digest as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage/migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for (index, (name, checksum)) in SHIPPED.iter().enumerate() {
            assert_eq!(
                files.get(index).map(String::as_str),
                Some(*name),
                "shipped migrations are never removed or renamed"
            );
            let text = std::fs::read(dir.join(name)).unwrap();
            let actual: String = sha2::Sha256::digest(&text)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert_eq!(
                actual, *checksum,
                "{name} changed after it shipped; add a new migration instead"
            );
        }
        assert_eq!(
            files.len(),
            SHIPPED.len(),
            "a new migration: add its checksum to SHIPPED when it ships"
        );
    }

    fn options(dir: &Path) -> StorageOptions {
        StorageOptions {
            path: dir.join("nested/blufio.db"),
            busy_timeout: Duration::from_secs(1),
            read_connections: 2,
            full_sync: false,
        }
    }

    /// A database of schema 4, with a message of a later turn stored before an earlier turn's
    /// answer (a message sent while a turn runs), read back in turn order after the upgrade.
    #[tokio::test]
    async fn the_history_order_migration_keeps_turn_order_for_stored_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
            .await
            .unwrap();
        migrator(&MIGRATIONS[..4]).run(&old).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO sessions (id, title, created_at, updated_at) VALUES ('s1', 't', 0, 0);
             INSERT INTO turns (id, session_id, inbound_message_id, state, started_at) VALUES ('t1', 's1', 'm1', 'completed', 0);
             INSERT INTO messages (id, session_id, turn_id, role, content, created_at) VALUES ('m1', 's1', 't1', 'user', '[]', 0);
             INSERT INTO turns (id, session_id, inbound_message_id, state, started_at) VALUES ('t2', 's1', 'm2', 'running', 0);
             INSERT INTO messages (id, session_id, turn_id, role, content, created_at) VALUES ('m2', 's1', 't2', 'user', '[]', 0);
             INSERT INTO messages (id, session_id, turn_id, role, content, created_at) VALUES ('m3', 's1', 't1', 'assistant', '[]', 0);",
        )
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let storage = Storage::open(&StorageOptions {
            path,
            busy_timeout: Duration::from_secs(1),
            read_connections: 1,
            full_sync: false,
        })
        .await
        .unwrap();
        let ids = |records: Vec<MessageRecord>| records.into_iter().map(|record| record.id).collect::<Vec<_>>();
        assert_eq!(
            ids(storage.message_page("s1", None, 10).await.unwrap().unwrap().messages),
            ["m1", "m3", "m2"]
        );
        assert_eq!(
            ids(storage.history_of_turn("s1", "t1", 10).await.unwrap()),
            ["m1", "m3"]
        );
        // A message stored after the upgrade takes its turn's place too.
        storage
            .append_message(
                NewMessage {
                    id: "m4",
                    session_id: "s1",
                    turn_id: "t2",
                    role: "assistant",
                    content_json: "[]",
                },
                "model",
            )
            .await
            .unwrap();
        assert_eq!(
            ids(storage.history_of_turn("s1", "t2", 10).await.unwrap()),
            ["m1", "m3", "m2", "m4"]
        );
        assert_eq!(
            ids(storage.message_page("s1", None, 2).await.unwrap().unwrap().messages),
            ["m2", "m4"]
        );
    }

    #[tokio::test]
    async fn runs_are_recorded_and_unclean_ends_detected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&options(dir.path())).await.unwrap();
        let (first, unclean) = storage.record_start(1, "0.1.0").await.unwrap();
        assert!(!unclean, "a fresh database has no previous run");
        storage.close().await;

        // The first run never recorded a clean stop: the second start must say so.
        let storage = Storage::open(&options(dir.path())).await.unwrap();
        let (second, unclean) = storage.record_start(2, "0.1.0").await.unwrap();
        assert!(unclean);
        assert_ne!(first, second);
        storage.record_clean_stop(second).await.unwrap();
        storage.probe_writer().await.unwrap();
        storage.probe_reader().await.unwrap();
        assert!(storage.size_bytes() > 0);
        storage.close().await;

        let storage = Storage::open(&options(dir.path())).await.unwrap();
        let (_, unclean) = storage.record_start(3, "0.1.0").await.unwrap();
        assert!(!unclean, "the second run stopped cleanly");
    }

    /// The start skips the migrator only on a schema that is exactly this binary's: a changed,
    /// failed, missing or unknown migration still reaches the migrator and its error.
    #[tokio::test]
    async fn only_an_exactly_current_schema_skips_the_migrator() {
        use sqlx::migrate::MigrateError;

        let dir = tempfile::tempdir().unwrap();
        let path = options(dir.path()).path;
        Storage::open(&options(dir.path())).await.unwrap().close().await;
        let tamper = |sql: &str| {
            let connection = rusqlite::Connection::open(&path).unwrap();
            connection.execute_batch(sql).unwrap();
        };
        let reopened = || async { Storage::open(&options(dir.path())).await };
        let migrator_error = || async {
            match reopened().await {
                Err(StorageError::Migrate { source, .. }) => source,
                other => panic!("expected the migrator's error, got {other:?}"),
            }
        };
        // Current: opens, and the writer and a (lazily opened) reader both answer.
        let storage = reopened().await.unwrap();
        storage.probe_writer().await.unwrap();
        storage.probe_reader().await.unwrap();
        storage.close().await;

        tamper("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2");
        let changed = migrator_error().await;
        assert!(matches!(changed, MigrateError::VersionMismatch(2)), "{changed:?}");

        tamper(&format!(
            "UPDATE _sqlx_migrations SET checksum = x'{}' WHERE version = 2",
            migrator(MIGRATIONS)
                .iter()
                .find(|migration| migration.version == 2)
                .unwrap()
                .checksum
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        ));
        reopened().await.unwrap().close().await;

        tamper("UPDATE _sqlx_migrations SET success = false WHERE version = 3");
        let failed = migrator_error().await;
        assert!(matches!(failed, MigrateError::Dirty(3)), "{failed:?}");

        tamper(
            "UPDATE _sqlx_migrations SET success = true WHERE version = 3; \
             INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from a newer blufio', true, x'00', 0)",
        );
        let newer = migrator_error().await;
        assert!(matches!(newer, MigrateError::VersionMissing(99)), "{newer:?}");
    }

    #[tokio::test]
    async fn full_sync_is_the_writers_synchronous_setting() {
        for (full_sync, expected) in [(false, 1), (true, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(&StorageOptions {
                full_sync,
                ..options(dir.path())
            })
            .await
            .unwrap();
            let (synchronous,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut *storage.pools.read().await.writer().await.unwrap())
                .await
                .unwrap();
            assert_eq!(synchronous, expected, "full_sync = {full_sync}");
        }
    }

    #[tokio::test]
    async fn database_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&options(dir.path())).await.unwrap();
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&mut *storage.pools.read().await.writer().await.unwrap())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_pause_holds_every_handle_and_a_reopen_swaps_the_file_under_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        // The file to swap in: a database with one session.
        let other = dir.path().join("other");
        let restored = Storage::open(&options(&other)).await.unwrap();
        restored.create_session("from-the-copy", "copy").await.unwrap();
        restored.close().await;

        let storage = Storage::open(&options(dir.path())).await.unwrap();
        storage.create_session("original", "live").await.unwrap();
        let handle = storage.clone();
        let mut paused = storage.pause().await;
        let held = tokio::spawn(async move { handle.count_sessions().await });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "work on another handle waits while paused");
        let swapped = paused
            .reopen_with(|path| {
                std::fs::rename(other.join("nested/blufio.db"), path)?;
                // The old WAL belongs to the old file.
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                match std::fs::remove_file(&wal) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
                    _ => Ok(()),
                }
            })
            .await
            .unwrap();
        swapped.unwrap();
        drop(paused);
        assert_eq!(held.await.unwrap().unwrap(), 1);
        assert!(storage.get_session("from-the-copy").await.unwrap().is_some());
        assert!(storage.get_session("original").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unwritable_location_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let error = Storage::open(&StorageOptions {
            path: file.join("blufio.db"),
            ..options(dir.path())
        })
        .await
        .unwrap_err();
        assert!(matches!(error, StorageError::CreateDir { .. }), "{error:?}");
        assert!(error.to_string().contains("not-a-dir"));
    }
}
