//! The write-ahead log copied back into the database off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the log past its threshold:
//! that commit, and every write queued behind the one writer, waits while the pages are copied
//! and both files are synced. Under a stream of turns those stalls were the writer's largest
//! wait (docs/benchmarks.md, "The checkpoint off the write path").
//!
//! Here a task checkpoints on a connection of its own, in `PASSIVE` mode (it never blocks the
//! writer or a reader), once [`COMMITS_PER_CHECKPOINT`] uses of the writer have gathered or
//! [`GATHER`] after the first of them, whichever comes first.
//!
//! The log's size: SQLite starts the log over from its beginning only when a write finds every
//! frame already copied. Under a steady stream of writes the task's copy is always a few frames
//! behind, so the log keeps growing until the writer's own automatic checkpoint, kept at
//! [`BACKSTOP_PAGES`], copies the rest in the commit path (little is left to copy by then; the
//! syncs remain) and the log starts over. So under load the log grows to about 16 MiB, and
//! `journal_size_limit` keeps the file at that size. When the writes stop, the task's next
//! checkpoint finds no commit arriving during it and truncates the log (`TRUNCATE`) once it is
//! over [`TRUNCATE_PAGES`], so an idle daemon keeps no large log.
//!
//! Durability does not change: a commit is in the log before it returns, whoever copies it later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Pools, Storage, StorageError};

/// Uses of the writer (nearly all of them commits) that start a checkpoint at once. A turn is two
/// commits of about ten pages each, so this is about SQLite's own default of 1,000 pages.
pub(super) const COMMITS_PER_CHECKPOINT: u64 = 100;
/// How long fewer commits wait to be checkpointed.
const GATHER: Duration = Duration::from_secs(1);
/// The writer's own automatic checkpoint, in pages of log (16 MiB of 4 KiB pages): four times
/// what the task lets gather. Also the log file's size limit (`journal_size_limit`).
pub(super) const BACKSTOP_PAGES: u32 = 4_000;
/// The log file's size limit (`journal_size_limit`): the backstop's pages, at SQLite's default
/// page size of 4 KiB, so that under load the file neither grows past them nor is cut and grown
/// again at every restart of the log.
pub(super) const LOG_LIMIT_BYTES: u64 = BACKSTOP_PAGES as u64 * 4096;
/// Pages of log past which an idle checkpoint truncates the file.
const TRUNCATE_PAGES: i64 = 1_000;

/// Commits not yet checkpointed, shared by every generation of the pools (a restore reopens them).
#[derive(Debug, Default)]
pub(super) struct Commits {
    pending: AtomicU64,
    gathered: Notify,
}

impl Commits {
    /// Counts one use of the writer; wakes the task at the first and at the threshold only, so a
    /// commit costs an atomic add and not a task wake-up.
    pub(super) fn committed(&self) {
        let pending = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if pending == 1 || pending == COMMITS_PER_CHECKPOINT {
            self.gathered.notify_one();
        }
    }

    /// Whether no commit arrived since the last [`Commits::due`].
    fn quiet(&self) -> bool {
        self.pending.load(Ordering::Relaxed) == 0
    }

    /// Waits until commits are due a checkpoint; `false` once `token` is cancelled.
    async fn due(&self, token: &CancellationToken) -> bool {
        tokio::select! {
            () = token.cancelled() => return false,
            () = self.gathered.notified() => {}
        }
        if self.pending.load(Ordering::Relaxed) < COMMITS_PER_CHECKPOINT {
            tokio::select! {
                () = token.cancelled() => return false,
                () = self.gathered.notified() => {}
                () = tokio::time::sleep(GATHER) => {}
            }
        }
        // Commits from here on are counted for the next checkpoint (this one may take them too).
        self.pending.store(0, Ordering::Relaxed);
        true
    }
}

/// What one `PRAGMA wal_checkpoint(PASSIVE)` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    /// Pages in the log.
    pub log_pages: i64,
    /// Pages of it now in the database file.
    pub copied_pages: i64,
}

impl Storage {
    /// Checkpoints the log as commits gather (see the module's documentation) until `token` is
    /// cancelled. A failure is logged and retried at the next commits; the writer's backstop
    /// bounds the log meanwhile.
    pub async fn keep_checkpointing(&self, token: CancellationToken) {
        let mut failing = false;
        while self.commits.due(&token).await {
            let outcome = self.pools.read().await.checkpoint(&self.commits).await;
            match outcome {
                Ok(done) => {
                    if failing {
                        tracing::info!(log_pages = done.log_pages, "checkpoints work again");
                    }
                    failing = false;
                    tracing::trace!(
                        log_pages = done.log_pages,
                        copied_pages = done.copied_pages,
                        "checkpointed"
                    );
                }
                // Once per run of failures: the next commits retry it.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(error = %crate::error_chain(&error), "cannot checkpoint the database's log; the writer's own checkpoint bounds it meanwhile");
                }
                Err(error) => tracing::debug!(error = %crate::error_chain(&error), "checkpoint failed again"),
            }
        }
    }

    /// Checkpoints the log now, the way the task does.
    #[cfg(test)]
    pub async fn checkpoint(&self) -> Result<Checkpointed, StorageError> {
        self.pools.read().await.checkpoint(&self.commits).await
    }
}

impl Pools {
    /// One passive checkpoint on the checkpoint connection, opened at its first use (most starts
    /// never need it before the first turn), then, if no commit arrived meanwhile and the log is
    /// large, a truncating one (see the module's documentation). A failed connection is dropped
    /// and opened again next time.
    async fn checkpoint(&self, commits: &Commits) -> Result<Checkpointed, StorageError> {
        let mut guard = self.checkpointer.lock().await;
        let slot = &mut *guard;
        if slot.closed {
            return Err(StorageError::Query {
                operation: "checkpoint the log",
                source: sqlx::Error::PoolClosed,
            });
        }
        let connection = match &mut slot.connection {
            Some(connection) => connection,
            empty => empty.insert(SqliteConnection::connect_with(&slot.options).await.map_err(|source| {
                StorageError::Query {
                    operation: "open the checkpoint connection",
                    source,
                }
            })?),
        };
        let outcome: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *connection)
            .await;
        if let Ok((_, log_pages, copied_pages)) = outcome
            && log_pages >= TRUNCATE_PAGES
            && copied_pages == log_pages
            && commits.quiet()
        {
            // Every frame is already copied: this only starts the log over and cuts the file.
            // The connection never waits (no busy timeout): a write or a reader in the way makes
            // it give up at once, and the next quiet checkpoint tries again.
            let truncated: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *connection)
                .await;
            if let Err(error) = truncated {
                tracing::debug!(%error, "the log was not truncated; the next quiet checkpoint tries again");
            }
        }
        match outcome {
            Ok((_busy, log_pages, copied_pages)) => Ok(Checkpointed {
                log_pages,
                copied_pages,
            }),
            Err(source) => {
                slot.connection = None;
                Err(StorageError::Query {
                    operation: "checkpoint the log",
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::open_in as open;
    use super::*;

    /// The runs recorded in the database file alone, as a copy of it without its log reads
    /// them: only what a checkpoint copied there. `None` while the file has no such table yet (or
    /// was copied mid-write).
    fn runs_in_the_file_alone(database: &Path, scratch: &Path) -> Option<i64> {
        let copy = scratch.join("alone.db");
        std::fs::copy(database, &copy).ok()?;
        let connection = rusqlite::Connection::open(&copy).ok()?;
        let runs = connection
            .query_row("SELECT count(*) FROM daemon_runs", [], |row| row.get(0))
            .ok();
        drop(connection);
        std::fs::remove_file(&copy).ok();
        runs
    }

    #[tokio::test]
    async fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        let database = dir.path().join("blufio.db");
        // The migrations and this commit are far below the writer's backstop: they stay in the
        // log unless the task copies them.
        storage.record_start(1, "test").await.unwrap();
        tokio::time::sleep(GATHER * 2).await;
        assert_eq!(
            runs_in_the_file_alone(&database, scratch.path()),
            None,
            "nothing checkpoints without the task"
        );

        let token = CancellationToken::new();
        let task = tokio::spawn({
            let storage = storage.clone();
            let token = token.clone();
            async move { storage.keep_checkpointing(token).await }
        });
        storage.record_start(2, "test").await.unwrap();
        let deadline = tokio::time::Instant::now() + GATHER * 10;
        while runs_in_the_file_alone(&database, scratch.path()) != Some(2) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task did not checkpoint both runs into the file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops when cancelled")
            .unwrap();
    }

    #[tokio::test]
    async fn a_large_log_is_truncated_once_the_writes_stop() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        let wal = dir.path().join("blufio.db-wal");
        // About 6 MiB of log: past TRUNCATE_PAGES, below the writer's backstop. Written before
        // the task starts, so that none of it is checkpointed yet.
        storage.create_session("s", "big").await.unwrap();
        let content = format!("[{{\"type\":\"text\",\"text\":\"{}\"}}]", "x".repeat(200_000));
        for turn in 0..30 {
            let (turn, message) = (format!("t{turn}"), format!("m{turn}"));
            storage
                .begin_turn(
                    None,
                    &[],
                    crate::storage::NewMessage {
                        id: &message,
                        session_id: "s",
                        turn_id: &turn,
                        role: "user",
                        content_json: &content,
                    },
                )
                .await
                .unwrap();
        }
        let size = || std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
        assert!(size() > 4 * 1024 * 1024, "the log holds the writes: {} bytes", size());
        let token = CancellationToken::new();
        let task = tokio::spawn({
            let storage = storage.clone();
            let token = token.clone();
            async move { storage.keep_checkpointing(token).await }
        });
        let deadline = tokio::time::Instant::now() + GATHER * 10;
        while size() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle log was not truncated: {} bytes",
                size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing was lost: the database file holds every turn.
        assert_eq!(storage.get_session("s").await.unwrap().unwrap().message_count, 30);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn enough_commits_checkpoint_at_once_and_fewer_wait_to_gather() {
        let commits = Commits::default();
        let token = CancellationToken::new();
        commits.committed();
        // One commit waits up to GATHER for more.
        let started = tokio::time::Instant::now();
        assert!(commits.due(&token).await);
        assert!(
            started.elapsed() >= GATHER,
            "a lone commit waited {:?}",
            started.elapsed()
        );
        // A full batch does not.
        for _ in 0..COMMITS_PER_CHECKPOINT {
            commits.committed();
        }
        let started = tokio::time::Instant::now();
        assert!(commits.due(&token).await);
        assert!(
            started.elapsed() < GATHER / 2,
            "a full batch waited {:?}",
            started.elapsed()
        );
        assert_eq!(commits.pending.load(Ordering::Relaxed), 0);
        // Cancelled, it says so at once, even with commits pending.
        commits.committed();
        token.cancel();
        assert!(!commits.due(&token).await);
    }

    #[tokio::test]
    async fn a_closed_database_refuses_checkpoints_and_a_reopened_one_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        storage.record_start(1, "test").await.unwrap();
        let done = storage.checkpoint().await.unwrap();
        assert_eq!(done.log_pages, done.copied_pages, "{done:?}");
        assert!(done.log_pages > 0, "{done:?}");
        {
            let mut paused = storage.pause().await;
            paused.reopen_with(|_| Ok::<(), ()>(())).await.unwrap().unwrap();
        }
        storage.record_start(2, "test").await.unwrap();
        let again = storage.checkpoint().await.unwrap();
        assert!(again.log_pages > 0, "the reopened database checkpoints: {again:?}");
        storage.close().await;
        let closed = storage.checkpoint().await.unwrap_err();
        assert!(closed.to_string().contains("checkpoint the log"), "{closed}");
    }
}
