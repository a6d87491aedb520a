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
    /// goes on: `VACUUM INTO` on a read connection, one read transaction, so the writer is never
    /// held and the snapshot holds exactly the transactions committed before it began. The copy is
    /// compacted and needs no WAL.
    pub async fn snapshot_into(&self, path: &Path) -> Result<(), StorageError> {
        let pools = self.pools.read().await;
        let target = path.to_str().ok_or_else(|| StorageError::Query {
            operation: "take a snapshot",
            source: sqlx::Error::Protocol(format!("{} is not UTF-8", path.display())),
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&pools.reader)
            .await
            .map_err(query_error("take a snapshot of the database"))?;
        Ok(())
    }
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
