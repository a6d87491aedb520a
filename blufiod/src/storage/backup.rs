//! Snapshots and database files from elsewhere: an online snapshot taken while work goes on, and
//! what a database file holds (integrity, schema, vault), read without changing it.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use super::vault::{SlotName, VaultSlotRecord};
use super::{MIGRATIONS, Storage, StorageError};

/// What a database file holds, read without changing it.
#[derive(Debug, Clone)]
pub struct DatabaseFacts {
    /// `None` when `PRAGMA integrity_check` says `ok`, else its first problems.
    pub integrity_problems: Option<String>,
    /// The last migration applied (0 for a database without blufio's schema).
    pub schema_version: i64,
    /// The vault's key slots (none when it has no vault).
    pub vault_slots: Vec<VaultSlotRecord>,
    /// Entries in the vault.
    pub vault_entries: u64,
}

/// The schema version this build migrates to.
pub fn current_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, ..)| *version)
}

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |source| StorageError::Query { operation, source }
}

impl Storage {
    /// Writes a consistent snapshot of the database to `path`, which must not exist, while work
    /// goes on: SQLite's online backup API on a connection of its own that holds one read
    /// transaction for the whole copy, so the writer is never held, its commits never restart
    /// the copy, and the snapshot holds exactly the transactions committed before it began. (It
    /// measured faster than `VACUUM INTO` and kept a busy writer's rate; see docs/benchmarks.md.)
    pub async fn snapshot_into(&self, path: &Path) -> Result<(), StorageError> {
        // Held for the whole copy: a pause (a restore, the shutdown) waits for it.
        let _pools = self.pools.read().await;
        let source = self.options.path.clone();
        let target = path.to_owned();
        let busy = self.options.busy_timeout;
        tokio::task::spawn_blocking(move || online_backup(&source, &target, busy))
            .await
            .expect("the snapshot task panicked")
    }
}

/// Copies the database at `source` to `target` with the online backup API, 4 MiB at a time.
fn online_backup(source: &Path, target: &Path, busy: std::time::Duration) -> Result<(), StorageError> {
    use rusqlite::{Connection, OpenFlags};
    let failed = |operation| move |source| StorageError::Snapshot { operation, source };
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed("open the database for a snapshot"))?;
    from.busy_timeout(busy)
        .map_err(failed("open the database for a snapshot"))?;
    // The read transaction fixes what the copy sees.
    from.execute_batch("BEGIN")
        .and_then(|()| from.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())))
        .map_err(failed("begin the snapshot's read transaction"))?;
    // Never over an existing file: the backup API would replace its content.
    if std::fs::symlink_metadata(target).is_ok() {
        return Err(StorageError::Snapshot {
            operation: "create the snapshot file (it exists)",
            source: rusqlite::Error::InvalidPath(target.to_owned()),
        });
    }
    let mut to = Connection::open(target).map_err(failed("create the snapshot file"))?;
    rusqlite::backup::Backup::new(&from, &mut to)
        .and_then(|backup| backup.run_to_completion(1024, std::time::Duration::from_millis(1), None))
        .map_err(failed("copy the database into the snapshot"))?;
    to.close().map_err(|(_, source)| StorageError::Snapshot {
        operation: "close the snapshot",
        source,
    })?;
    from.execute_batch("COMMIT")
        .map_err(failed("end the snapshot's read transaction"))?;
    Ok(())
}

/// Reads what the database file at `path` holds without changing it (opened read-only and
/// immutable: no WAL or lock files are made beside it).
pub async fn inspect_database(path: &Path) -> Result<DatabaseFacts, StorageError> {
    let open_error = |source| StorageError::Open {
        path: path.to_owned(),
        source,
    };
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true)
        .connect()
        .await
        .map_err(open_error)?;
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check(10)")
        .fetch_all(&mut connection)
        .await
        .map_err(query_error("check a database file's integrity"))?;
    let problems: Vec<String> = rows.into_iter().map(|(row,)| row).collect();
    let integrity_problems = (problems != ["ok"]).then(|| problems.join("; "));
    let has = |table: &'static str| {
        sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?").bind(table)
    };
    let (migrations,) = has("_sqlx_migrations")
        .fetch_one(&mut connection)
        .await
        .map_err(query_error("read a database file's tables"))?;
    let schema_version = if migrations > 0 {
        let (version,): (Option<i64>,) = sqlx::query_as("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut connection)
            .await
            .map_err(query_error("read a database file's schema version"))?;
        version.unwrap_or(0)
    } else {
        0
    };
    let (vault,) = has("vault_slots")
        .fetch_one(&mut connection)
        .await
        .map_err(query_error("read a database file's tables"))?;
    let (vault_slots, vault_entries) = if vault > 0 {
        let rows: Vec<super::vault::SlotRow> = sqlx::query_as(super::vault::SELECT_SLOTS)
            .fetch_all(&mut connection)
            .await
            .map_err(query_error("read a database file's vault"))?;
        let (entries,): (i64,) = sqlx::query_as("SELECT count(*) FROM vault_entries")
            .fetch_one(&mut connection)
            .await
            .map_err(query_error("read a database file's vault"))?;
        (
            rows.into_iter().map(VaultSlotRecord::from).collect(),
            u64::try_from(entries).unwrap_or(0),
        )
    } else {
        (Vec::new(), 0)
    };
    Ok(DatabaseFacts {
        integrity_problems,
        schema_version,
        vault_slots,
        vault_entries,
    })
}

/// Every object of the schema of the database at `path` (type, name, SQL), besides SQLite's
/// own: what a restore compares with the schema this build makes.
pub async fn schema_objects(path: &Path) -> Result<std::collections::BTreeSet<(String, String, String)>, StorageError> {
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true)
        .connect()
        .await
        .map_err(|source| StorageError::Open {
            path: path.to_owned(),
            source,
        })?;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
            .fetch_all(&mut connection)
            .await
            .map_err(query_error("read a database file's schema"))?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, sql)| (kind, name, sql.unwrap_or_default()))
        .collect())
}

/// Removes the vault (slots and entries) from the database file at `path`: a restore without
/// secrets, whose vault the daemon's key cannot open.
pub async fn drop_vault_in(path: &Path) -> Result<(), StorageError> {
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .map_err(|source| StorageError::Open {
            path: path.to_owned(),
            source,
        })?;
    sqlx::query("DELETE FROM vault_entries")
        .execute(&mut connection)
        .await
        .map_err(query_error("drop a restored database's secrets"))?;
    sqlx::query("DELETE FROM vault_slots")
        .execute(&mut connection)
        .await
        .map_err(query_error("drop a restored database's secrets"))?;
    connection
        .close()
        .await
        .map_err(query_error("close a restored database"))?;
    Ok(())
}

impl DatabaseFacts {
    /// The slot that opens the vault, if there is one.
    pub fn current_slot(&self) -> Option<&VaultSlotRecord> {
        self.vault_slots.iter().find(|slot| slot.slot == SlotName::Current)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::StorageOptions;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_under_a_writer_is_whole_and_holds_what_was_committed_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            path: dir.path().join("blufio.db"),
            busy_timeout: Duration::from_secs(5),
            read_connections: 2,
        })
        .await
        .unwrap();
        for index in 0..200 {
            storage
                .create_session(&format!("before-{index}"), "before")
                .await
                .unwrap();
        }
        let writing = storage.clone();
        let writer = tokio::spawn(async move {
            for index in 0..2_000 {
                writing
                    .create_session(&format!("during-{index}"), "during")
                    .await
                    .unwrap();
            }
        });
        let snapshot = dir.path().join("snapshot.db");
        storage.snapshot_into(&snapshot).await.unwrap();
        writer.await.unwrap();
        let facts = inspect_database(&snapshot).await.unwrap();
        assert_eq!(facts.integrity_problems, None);
        assert_eq!(facts.schema_version, current_schema_version());
        let copy = Storage::open(&StorageOptions {
            path: snapshot.clone(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 1,
        })
        .await
        .unwrap();
        let copied = copy.count_sessions().await.unwrap();
        assert!(
            (200..=2_200).contains(&copied),
            "every session committed before the snapshot, and no more than exist: {copied}"
        );
        assert_eq!(storage.count_sessions().await.unwrap(), 2_200);
        // A target that exists is refused, not overwritten.
        assert!(storage.snapshot_into(&snapshot).await.is_err());
        assert_eq!(copy.count_sessions().await.unwrap(), copied);
    }
}
