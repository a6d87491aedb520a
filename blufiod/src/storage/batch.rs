//! Write transactions sent to the writer's thread in one trip.
//!
//! sqlx runs each SQLite connection on its own thread; every statement, `BEGIN` and `COMMIT` is a
//! round trip to it, two context switches each. A turn's four small transactions made about 19
//! of them, and the switches, not SQLite, were most of the writer's time. A [`WriteBatch`] sends
//! `BEGIN IMMEDIATE`, its statements and `COMMIT` as one multi-statement query (sqlx binds the
//! `?` placeholders across the statements in order), so a transaction is one trip.
//!
//! The transaction is all or nothing as before: when a statement or the commit fails, the batch
//! rolls back on the same connection before it is given back, and a connection that cannot roll
//! back is closed rather than reused inside a broken transaction.

use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Arguments as _, AssertSqlSafe, Encode, Sqlite, Type};

use super::{Pools, StorageError};

/// Statements for one write transaction, with their arguments in order.
#[derive(Debug, Default)]
pub(super) struct WriteBatch {
    sql: String,
    args: SqliteArguments,
    /// The first argument that could not be encoded (none of the types used can fail).
    encode_error: Option<sqlx::error::BoxDynError>,
}

impl WriteBatch {
    /// An empty batch.
    pub(super) fn new() -> Self {
        Self {
            sql: String::from("BEGIN IMMEDIATE;\n"),
            ..Self::default()
        }
    }

    /// Appends one statement (without its `;`); bind its `?` placeholders next, in order.
    pub(super) fn statement(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self
    }

    /// Binds the next `?` placeholder.
    pub(super) fn bind<'q, T: Encode<'q, Sqlite> + Type<Sqlite>>(&mut self, value: T) -> &mut Self {
        if let Err(error) = self.args.add(value)
            && self.encode_error.is_none()
        {
            self.encode_error = Some(error);
        }
        self
    }

    /// Runs the batch in one transaction on the single writer; `operation` names it in errors.
    pub(super) async fn run(self, pools: &Pools, operation: &'static str) -> Result<(), StorageError> {
        if let Some(encode) = self.encode_error {
            return Err(StorageError::Query {
                operation,
                source: sqlx::Error::Encode(encode),
            });
        }
        let mut writer = pools.writer().await?;
        let mut sql = self.sql;
        sql.push_str("COMMIT;");
        let outcome = sqlx::query_with(AssertSqlSafe(sql), self.args)
            .execute(&mut *writer)
            .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(failed) => {
                if !roll_back(&mut writer).await {
                    writer.discard();
                }
                Err(duplicate_or(failed, operation))
            }
        }
    }
}

/// Undoes a failed batch. A statement that failed leaves the transaction open (a failed `COMMIT`
/// too, when SQLite was busy): roll it back so the connection is clean for the next write.
/// Whether the connection is usable.
async fn roll_back(connection: &mut SqliteConnection) -> bool {
    // Outside a transaction (a `BEGIN` that failed, or one SQLite already rolled back) SQLite
    // refuses: nothing to undo, and the connection is fine.
    match sqlx::raw_sql("ROLLBACK").execute(connection).await {
        Ok(_) => true,
        Err(error) => {
            let outside = error
                .as_database_error()
                .is_some_and(|database| database.message().contains("no transaction is active"));
            if !outside {
                tracing::warn!(error = %error, "cannot roll back a failed write; the writer is opened again");
            }
            outside
        }
    }
}

/// The error of a failed batch, with a unique-constraint violation told apart.
fn duplicate_or(source: sqlx::Error, operation: &'static str) -> StorageError {
    match &source {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StorageError::Duplicate { operation, source }
        }
        _ => StorageError::Query { operation, source },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use super::super::StorageOptions;
    use super::*;

    async fn pools(dir: &std::path::Path) -> Pools {
        let pools = Pools::open(
            &StorageOptions {
                path: dir.join("batch.db"),
                busy_timeout: Duration::from_secs(1),
                read_connections: 1,
                full_sync: false,
            },
            Arc::default(),
        )
        .await
        .unwrap();
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
            .execute(&mut *pools.writer().await.unwrap())
            .await
            .unwrap();
        pools
    }

    async fn names(pools: &Pools) -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM t ORDER BY id")
            .fetch_all(&pools.reader)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_binds_across_statements_and_commits_whole() {
        let dir = tempfile::tempdir().unwrap();
        let pools = pools(dir.path()).await;
        let mut batch = WriteBatch::new();
        batch
            .statement("INSERT INTO t (name) VALUES (?)")
            .bind("a")
            .statement("INSERT INTO t (name) VALUES (?), (?)")
            .bind("b")
            .bind("c")
            .statement("UPDATE t SET name = ? WHERE name = ?")
            .bind("c2")
            .bind("c");
        batch.run(&pools, "write three rows").await.unwrap();
        assert_eq!(names(&pools).await, ["a", "b", "c2"]);
    }

    #[tokio::test]
    async fn a_failed_statement_undoes_the_batch_and_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let pools = pools(dir.path()).await;
        let mut first = WriteBatch::new();
        first.statement("INSERT INTO t (name) VALUES (?)").bind("taken");
        first.run(&pools, "write a row").await.unwrap();

        let mut failing = WriteBatch::new();
        failing
            .statement("INSERT INTO t (name) VALUES (?)")
            .bind("new")
            .statement("INSERT INTO t (name) VALUES (?)")
            .bind("taken");
        let error = failing.run(&pools, "write two rows").await.unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::Duplicate {
                    operation: "write two rows",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(names(&pools).await, ["taken"], "the first insert was rolled back");

        // The writer is out of the transaction: the next batch commits on its own.
        let error = sqlx::raw_sql("ROLLBACK")
            .execute(&mut *pools.writer().await.unwrap())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no transaction is active"), "{error}");
        let mut next = WriteBatch::new();
        next.statement("INSERT INTO t (name) VALUES (?)").bind("after");
        next.run(&pools, "write a row").await.unwrap();
        assert_eq!(names(&pools).await, ["taken", "after"]);
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let pools = pools(dir.path()).await;
        pools.close().await;
        let mut batch = WriteBatch::new();
        batch.statement("INSERT INTO t (name) VALUES (?)").bind("late");
        let error = batch.run(&pools, "write late").await.unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::Query {
                    source: sqlx::Error::PoolClosed,
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
