//! Snapshots and database files from elsewhere: an online snapshot taken while work goes on, and
//! what a database file holds (integrity, schema, vault), read without changing it.

use std::path::Path;

use super::vault::{SlotName, VaultSlotRecord};
use super::{MIGRATIONS, Storage, StorageError};

/// What a database file holds, read without changing it (and without checking its integrity:
/// [`check_integrity`]).
#[derive(Debug, Clone)]
pub struct DatabaseFacts {
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

impl Storage {
    /// Writes a consistent snapshot of the database to `path`, which must not exist, while work
    /// goes on: SQLite's online backup API on a connection of its own that holds one read
    /// transaction for the whole copy, so the writer is never held, its commits never restart
    /// the copy, and the snapshot holds exactly the transactions committed before it began. (It
    /// measured faster than `VACUUM INTO` and kept a busy writer's rate; see docs/benchmarks.md.)
    /// The copy runs on a low-priority thread ([`crate::util::background`]).
    pub async fn snapshot_into(&self, path: &Path) -> Result<(), StorageError> {
        // Held for the whole copy: a pause (a restore, the shutdown) waits for it.
        let _pools = self.pools.read().await;
        let source = self.options.path.clone();
        let target = path.to_owned();
        let busy = self.options.busy_timeout;
        crate::util::background("blufio-snapshot", move || online_backup(&source, &target, busy)).await
    }
}

/// Copies the database at `source` to `target` with the online backup API, in one step: the
/// held read transaction already keeps the writer free, so there is nothing to yield for. The
/// target is a scratch file until the caller checks it: no journal and no fsync while it fills.
fn online_backup(source: &Path, target: &Path, busy: std::time::Duration) -> Result<(), StorageError> {
    use rusqlite::{Connection, OpenFlags};
    let failed = |operation| {
        move |source| StorageError::File {
            operation,
            path: target.to_owned(),
            source,
        }
    };
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
        return Err(failed("create the snapshot file (it exists)")(
            rusqlite::Error::InvalidPath(target.to_owned()),
        ));
    }
    let mut to = Connection::open(target).map_err(failed("create the snapshot file"))?;
    to.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")
        .map_err(failed("set up the snapshot file"))?;
    let step = rusqlite::backup::Backup::new(&from, &mut to)
        .and_then(|backup| backup.step(-1))
        .map_err(failed("copy the database into the snapshot"))?;
    if step != rusqlite::backup::StepResult::Done {
        // With the read transaction held, one step of every page either copies all or fails.
        return Err(failed("copy the database into the snapshot")(
            rusqlite::Error::InvalidQuery,
        ));
    }
    to.close().map_err(|(_, source)| failed("close the snapshot")(source))?;
    from.execute_batch("COMMIT")
        .map_err(failed("end the snapshot's read transaction"))?;
    Ok(())
}

/// Opens the database file at `path` read-only and immutable: nothing is written, and no WAL or
/// lock file is made beside it.
fn open_read_only(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    use rusqlite::OpenFlags;
    // A URI, for `immutable`: every byte outside the unreserved set is percent-encoded.
    let mut uri = String::from("file:");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => uri.push(char::from(*byte)),
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    rusqlite::Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StorageError::File {
        operation: "open a database file read-only",
        path: path.to_owned(),
        source,
    })
}

/// Runs `PRAGMA integrity_check` on the database file at `path` without changing it: `Ok(None)`
/// when it says `ok`, else its first problems. It runs on a low-priority thread: the check reads
/// every page.
pub async fn check_integrity(path: &Path) -> Result<Option<String>, StorageError> {
    let path = path.to_owned();
    crate::util::background("blufio-inspect", move || {
        let problems = open_read_only(&path)?
            .prepare("PRAGMA integrity_check(10)")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|source| StorageError::File {
                operation: "check a database file's integrity",
                path: path.clone(),
                source,
            })?;
        Ok((problems != ["ok"]).then(|| problems.join("; ")))
    })
    .await
}

/// Reads what the database file at `path` holds without changing it: the schema version, the
/// vault. A few small queries; a damaged file may fail them, so a caller that has not checked
/// its integrity ([`check_integrity`]) says so when it reports such a failure.
pub async fn read_database_facts(path: &Path) -> Result<DatabaseFacts, StorageError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || facts_blocking(&path))
        .await
        .expect("the database facts task panicked")
}

fn facts_blocking(path: &Path) -> Result<DatabaseFacts, StorageError> {
    let connection = open_read_only(path)?;
    let failed = |operation| {
        move |source| StorageError::File {
            operation,
            path: path.to_owned(),
            source,
        }
    };
    let has = |table: &str| {
        connection
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get::<_, i64>(0),
            )
            .map(|count| count > 0)
            .map_err(failed("read a database file's tables"))
    };
    let schema_version = if has("_sqlx_migrations")? {
        connection
            .query_row("SELECT max(version) FROM _sqlx_migrations WHERE success", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
            .map_err(failed("read a database file's schema version"))?
            .unwrap_or(0)
    } else {
        0
    };
    let (vault_slots, vault_entries) = if has("vault_slots")? {
        let slots = connection
            .prepare(super::vault::SELECT_SLOTS)
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        Ok(VaultSlotRecord::from((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                            row.get(7)?,
                            row.get(8)?,
                            row.get(9)?,
                            row.get(10)?,
                        )))
                    })?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(failed("read a database file's vault"))?;
        let entries = connection
            .query_row("SELECT count(*) FROM vault_entries", [], |row| row.get::<_, i64>(0))
            .map_err(failed("read a database file's vault"))?;
        (slots, u64::try_from(entries).unwrap_or(0))
    } else {
        (Vec::new(), 0)
    };
    Ok(DatabaseFacts {
        schema_version,
        vault_slots,
        vault_entries,
    })
}

/// Every object of the schema of the database at `path` (type, name, SQL), besides SQLite's
/// own: what a restore compares with the schema this build makes.
pub async fn schema_objects(path: &Path) -> Result<std::collections::BTreeSet<(String, String, String)>, StorageError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        open_read_only(&path)?
            .prepare("SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        ))
                    })?
                    .collect()
            })
            .map_err(|source| StorageError::File {
                operation: "read a database file's schema",
                path: path.clone(),
                source,
            })
    })
    .await
    .expect("the schema reading task panicked")
}

/// Removes the vault (slots and entries) from the database file at `path`: a restore without
/// secrets, whose vault the daemon's key cannot open.
pub async fn drop_vault_in(path: &Path) -> Result<(), StorageError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let failed = |source| StorageError::File {
            operation: "drop a restored database's secrets",
            path: path.clone(),
            source,
        };
        let connection = rusqlite::Connection::open(&path).map_err(failed)?;
        connection
            .execute_batch("BEGIN; DELETE FROM vault_entries; DELETE FROM vault_slots; COMMIT")
            .map_err(failed)?;
        connection.close().map_err(|(_, source)| failed(source))
    })
    .await
    .expect("the vault dropping task panicked")
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
            full_sync: false,
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
        assert_eq!(check_integrity(&snapshot).await.unwrap(), None);
        let facts = read_database_facts(&snapshot).await.unwrap();
        assert_eq!(facts.schema_version, current_schema_version());
        let copy = Storage::open(&StorageOptions {
            path: snapshot.clone(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 1,
            full_sync: false,
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
        copy.close().await;

        // A file whose name holds URI syntax is read as itself, and nothing appears beside it.
        let odd = dir.path().join("a ?b=c #d %41 é.db");
        std::fs::copy(&snapshot, &odd).unwrap();
        let before: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(check_integrity(&odd).await.unwrap(), None);
        let facts = read_database_facts(&odd).await.unwrap();
        assert_eq!(facts.schema_version, current_schema_version());
        let objects = schema_objects(&odd).await.unwrap();
        assert!(
            objects
                .iter()
                .any(|(kind, name, _)| kind == "table" && name == "sessions"),
            "{objects:?}"
        );
        let after: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(before.len(), after.len(), "{after:?}");
    }
}
