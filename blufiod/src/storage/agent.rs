//! Sessions, messages, turns and the cost ledger. Message content is stored as JSON text that
//! the agent owns; this module never interprets it.

use futures_util::TryStreamExt as _;
use sqlx::AssertSqlSafe;

use sqlx::Connection as _;

use super::batch::WriteBatch;
use super::{Storage, StorageError, unix_now};

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Model of the latest turn.
    pub model: String,
    /// `idle`, `running` or `interrupted`.
    pub state: String,
    /// Messages stored.
    pub message_count: i64,
}

/// A message to store.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Id.
    pub id: &'a str,
    /// Session.
    pub session_id: &'a str,
    /// The turn it belongs to.
    pub turn_id: &'a str,
    /// `user`, `assistant` or `tool`.
    pub role: &'a str,
    /// JSON array of content blocks.
    pub content_json: &'a str,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Id.
    pub id: String,
    /// The turn it belongs to.
    pub turn_id: String,
    /// `user`, `assistant` or `tool`.
    pub role: String,
    /// JSON array of content blocks.
    pub content_json: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// The answer is stored.
    Completed,
    /// An error ended it.
    Failed,
    /// The caller went away.
    Cancelled,
}

impl TurnEnd {
    fn as_str(self) -> &'static str {
        match self {
            TurnEnd::Completed => "completed",
            TurnEnd::Failed => "failed",
            TurnEnd::Cancelled => "cancelled",
        }
    }
}

/// One provider call for the ledger.
#[derive(Debug, Clone)]
pub struct LedgerEntry<'a> {
    /// Session.
    pub session_id: &'a str,
    /// Turn.
    pub turn_id: &'a str,
    /// Provider kind.
    pub provider: &'a str,
    /// Model.
    pub model: &'a str,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache write tokens.
    pub cache_creation_tokens: u64,
    /// Cache read tokens.
    pub cache_read_tokens: u64,
    /// Cost in millionths of a dollar.
    pub cost_micros: i64,
    /// Whether the call completed.
    pub ok: bool,
    /// UTC day `YYYY-MM-DD` the call is charged to.
    pub day: &'a str,
    /// UTC month `YYYY-MM` the call is charged to.
    pub month: &'a str,
}

/// Tokens and cost of a group of calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Calls.
    pub calls: i64,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache write tokens.
    pub cache_creation_tokens: i64,
    /// Cache read tokens.
    pub cache_read_tokens: i64,
    /// Cost in millionths of a dollar.
    pub cost_micros: i64,
}

/// Usage grouped three ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// Per UTC day, oldest first.
    pub days: Vec<(String, UsageTotals)>,
    /// Per (provider, model), most expensive first.
    pub models: Vec<(String, String, UsageTotals)>,
    /// Per session (id, title or empty when deleted), most expensive first.
    pub sessions: Vec<(String, String, UsageTotals)>,
}

/// Largest page of sessions or messages one query returns.
pub const MAX_PAGE: u32 = 2_000;

/// Most content a page of messages holds (the messages' JSON), well under the 4 MiB a stock gRPC
/// client accepts in one reply even as text re-encoded for the wire.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The latest page of a session's messages (session, limit). Two statements rather than one with
/// `? IS NULL OR ...`: a plan that depends on whether a parameter is NULL makes SQLite prepare the
/// statement again at every use.
const PAGE_LATEST: &str = "SELECT id, turn_id, role, content, created_at FROM messages \
     WHERE session_id = ? AND turn_seq IS NOT NULL \
     ORDER BY turn_seq DESC, seq DESC LIMIT ?";
/// The page before a message (session, message, session, limit). The cursor's place is looked up
/// in the statement: `(turn_seq, seq)` is the order of `messages_by_session_turn`, so the page is
/// one backwards range scan of that index.
const PAGE_BEFORE: &str = "SELECT id, turn_id, role, content, created_at FROM messages \
     WHERE session_id = ? AND turn_seq IS NOT NULL \
     AND (turn_seq, seq) < (SELECT turn_seq, seq FROM messages WHERE id = ? AND session_id = ?) \
     ORDER BY turn_seq DESC, seq DESC LIMIT ?";

/// A page of a session's messages.
#[derive(Debug)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<MessageRecord>,
    /// Older messages remain: ask again with the first message's id as `before`.
    pub more: bool,
}

// Queries below are assembled with `format!` only from the constant column lists here; every
// value is bound, which is why wrapping them in `AssertSqlSafe` is sound.

/// Row shape of [`SESSION_COLUMNS`].
type SessionRow = (String, String, i64, i64, String, String, i64);

impl From<SessionRow> for SessionRecord {
    fn from((id, title, created_at, updated_at, model, state, message_count): SessionRow) -> Self {
        Self {
            id,
            title,
            created_at,
            updated_at,
            model,
            state,
            message_count,
        }
    }
}

/// Row shape of a usage group: two key columns, then the totals.
type UsageRow = (String, String, i64, i64, i64, i64, i64, i64);

fn split_usage_row(row: UsageRow) -> (String, String, UsageTotals) {
    let (a, b, calls, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_micros) = row;
    (
        a,
        b,
        UsageTotals {
            calls,
            input_tokens,
            output_tokens,
            cache_creation_tokens,
            cache_read_tokens,
            cost_micros,
        },
    )
}

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |source| StorageError::Query { operation, source }
}

const SESSION_COLUMNS: &str = "s.id, s.title, s.created_at, s.updated_at, s.model, s.state, \
     (SELECT count(*) FROM messages m WHERE m.session_id = s.id) AS message_count";

impl Storage {
    /// Creates an empty session.
    pub async fn create_session(&self, id: &str, title: &str) -> Result<SessionRecord, StorageError> {
        let pools = self.pools.read().await;
        let now = unix_now();
        sqlx::query("INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(title)
            .bind(now)
            .bind(now)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("create a session"))?;
        Ok(SessionRecord {
            id: id.to_owned(),
            title: title.to_owned(),
            created_at: now,
            updated_at: now,
            model: String::new(),
            state: "idle".to_owned(),
            message_count: 0,
        })
    }

    /// One session.
    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StorageError> {
        let pools = self.pools.read().await;
        let row: Option<SessionRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?"
        )))
        .bind(id)
        .fetch_optional(&pools.reader)
        .await
        .map_err(query_error("read a session"))?;
        Ok(row.map(SessionRecord::from))
    }

    /// Sessions by most recent update, after `cursor` (`updated_at`, `id`) when given.
    pub async fn list_sessions(
        &self,
        limit: u32,
        cursor: Option<(i64, &str)>,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        let pools = self.pools.read().await;
        let limit = i64::from(limit.min(MAX_PAGE));
        let (updated_at, id) = cursor.unwrap_or((i64::MAX, ""));
        let rows: Vec<SessionRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s \
             WHERE (s.updated_at, s.id) < (?, ?) OR ? \
             ORDER BY s.updated_at DESC, s.id DESC LIMIT ?"
        )))
        .bind(updated_at)
        .bind(id)
        .bind(cursor.is_none())
        .bind(limit)
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("list sessions"))?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    /// Sessions stored.
    pub async fn count_sessions(&self) -> Result<u64, StorageError> {
        let pools = self.pools.read().await;
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
            .fetch_one(&pools.reader)
            .await
            .map_err(query_error("count sessions"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes a session with its messages and turns; returns whether it existed.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StorageError> {
        let pools = self.pools.read().await;
        let done = sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("delete a session"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets a session's title; `false` when there is no such session.
    pub async fn rename_session(&self, id: &str, title: &str) -> Result<bool, StorageError> {
        let pools = self.pools.read().await;
        let done = sqlx::query("UPDATE sessions SET title = ? WHERE id = ?")
            .bind(title)
            .bind(id)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("rename a session"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the sessions last updated before `before` (unix seconds) that have no turn
    /// running, with their messages; their ledger rows stay. Returns how many went.
    pub async fn prune_sessions(&self, before: i64) -> Result<u64, StorageError> {
        let pools = self.pools.read().await;
        let done = sqlx::query("DELETE FROM sessions WHERE updated_at < ? AND state != 'running'")
            .bind(before)
            .execute(&mut *pools.writer().await?)
            .await
            .map_err(query_error("prune old sessions"))?;
        Ok(done.rows_affected())
    }

    /// Stores the inbound message of a new turn, the turn itself (running) and marks the
    /// session running, in one transaction: once this returns the message is durable.
    /// `earlier` is a conversation the caller brought, oldest first (usually none): it is stored
    /// in the same turn before the inbound message, in the same transaction. `new_session`
    /// (id, title) creates the session in that transaction too, so no session is ever stored
    /// without its first message.
    pub async fn begin_turn(
        &self,
        new_session: Option<(&str, &str)>,
        earlier: &[NewMessage<'_>],
        inbound: NewMessage<'_>,
    ) -> Result<(), StorageError> {
        let now = unix_now();
        let mut batch = WriteBatch::new();
        if let Some((id, title)) = new_session {
            batch
                .statement("INSERT INTO sessions (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(title)
                .bind(now)
                .bind(now);
        }
        // The turn first: its messages take their place in the order of turns from its row.
        batch
            .statement(
                "INSERT INTO turns (id, session_id, inbound_message_id, state, started_at) VALUES (?, ?, ?, 'running', ?)",
            )
            .bind(inbound.turn_id)
            .bind(inbound.session_id)
            .bind(inbound.id)
            .bind(now);
        for message in earlier {
            insert_message(&mut batch, *message, now);
        }
        insert_message(&mut batch, inbound, now);
        batch
            .statement("UPDATE sessions SET state = 'running', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(inbound.session_id);
        let pools = self.pools.read().await;
        batch.run(&pools, "store a turn's message").await
    }

    /// Appends a message (an answer or tool results) to a running turn.
    pub async fn append_message(&self, message: NewMessage<'_>, model: &str) -> Result<(), StorageError> {
        let now = unix_now();
        let mut batch = WriteBatch::new();
        insert_message(&mut batch, message, now);
        touch_session(&mut batch, message.session_id, model, now);
        let pools = self.pools.read().await;
        batch.run(&pools, "store a message").await
    }

    /// Writes a provider call's ledger row together with the answer it produced (and the
    /// session's touch) in one transaction; when the answer ends the turn, the turn's `end` too.
    pub async fn record_answer(
        &self,
        entry: &LedgerEntry<'_>,
        answer: NewMessage<'_>,
        model: &str,
        end: Option<TurnEnd>,
    ) -> Result<(), StorageError> {
        let now = unix_now();
        let mut batch = WriteBatch::new();
        ledger_row(&mut batch, entry, now);
        insert_message(&mut batch, answer, now);
        touch_session(&mut batch, answer.session_id, model, now);
        if let Some(end) = end {
            end_turn(&mut batch, answer.session_id, answer.turn_id, end, None, now);
        }
        let pools = self.pools.read().await;
        batch.run(&pools, "store an answer with its ledger row").await
    }

    /// Ends a turn and sets its session idle.
    pub async fn finish_turn(
        &self,
        session_id: &str,
        turn_id: &str,
        end: TurnEnd,
        error: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        end_turn(&mut batch, session_id, turn_id, end, error, unix_now());
        let pools = self.pools.read().await;
        batch.run(&pools, "finish a turn").await
    }

    /// Marks turns left running by a crash as interrupted (their sessions too); returns how
    /// many there were. Called once at startup, before any new turn.
    pub async fn interrupt_running_turns(&self) -> Result<u64, StorageError> {
        let pools = self.pools.read().await;
        let now = unix_now();
        let mut writer = pools.writer().await?;
        let mut transaction = writer.begin().await.map_err(query_error("begin recovery"))?;
        let done = sqlx::query(
            "UPDATE turns SET state = 'interrupted', finished_at = ?, \
             error = 'the daemon stopped during the turn' WHERE state = 'running'",
        )
        .bind(now)
        .execute(&mut *transaction)
        .await
        .map_err(query_error("mark interrupted turns"))?;
        sqlx::query("UPDATE sessions SET state = 'interrupted' WHERE state = 'running'")
            .execute(&mut *transaction)
            .await
            .map_err(query_error("mark interrupted sessions"))?;
        transaction.commit().await.map_err(query_error("commit recovery"))?;
        Ok(done.rows_affected())
    }

    /// A page of a session's messages: the latest `limit` of them older than the message
    /// `before` (all when `None`), oldest first, in turn order (a message sent while an earlier
    /// turn was still running follows that turn's answer, not its middle). A page also ends
    /// before its content passes [`MAX_PAGE_BYTES`], so that neither the daemon nor a client
    /// holds an unbounded answer; it always holds at least one message when any is left. `None`
    /// when `before` is not a message of this session.
    pub async fn message_page(
        &self,
        session_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Option<MessagePage>, StorageError> {
        let pools = self.pools.read().await;
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let query = match before {
            None => sqlx::query_as(PAGE_LATEST).bind(session_id),
            Some(before) => sqlx::query_as(PAGE_BEFORE)
                .bind(session_id)
                .bind(before)
                .bind(session_id),
        };
        // One row past the page tells whether there are more; rows are streamed, so the page's
        // byte bound is also what the daemon holds.
        let mut rows = query.bind(limit as i64 + 1).fetch(&pools.reader);
        let mut messages = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        while let Some(row) = rows.try_next().await.map_err(query_error("read a page of messages"))? {
            let (id, turn_id, role, content_json, created_at): (String, String, String, String, i64) = row;
            let size = content_json.len() + id.len() + turn_id.len();
            if messages.len() == limit || (!messages.is_empty() && bytes + size > MAX_PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            messages.push(MessageRecord {
                id,
                turn_id,
                role,
                content_json,
                created_at,
            });
        }
        drop(rows);
        // An empty page before a cursor: the cursor was the first message, or is not one of
        // this session's (asked only then, so a page is one query).
        if let Some(before) = before
            && messages.is_empty()
        {
            let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM messages WHERE id = ? AND session_id = ?")
                .bind(before)
                .bind(session_id)
                .fetch_optional(&pools.reader)
                .await
                .map_err(query_error("find a page's cursor"))?;
            if known.is_none() {
                return Ok(None);
            }
        }
        messages.reverse();
        Ok(Some(MessagePage { messages, more }))
    }

    /// The latest `limit` messages of turns up to and including `turn_id`, oldest first in turn
    /// order: the history a turn answers, without messages of turns queued behind it.
    pub async fn history_of_turn(
        &self,
        session_id: &str,
        turn_id: &str,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        // Walks `messages_by_session_turn` backwards: no join, no sort. A message without a turn
        // row (none is stored so) is left out, as the join with `turns` once left it out.
        const UNTIL: &str = "SELECT id, turn_id, role, content, created_at FROM messages \
             WHERE session_id = ? AND turn_seq <= (SELECT rowid FROM turns WHERE id = ?) \
             ORDER BY turn_seq DESC, seq DESC LIMIT ?";
        let pools = self.pools.read().await;
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(UNTIL)
            .bind(session_id)
            .bind(turn_id)
            .bind(i64::from(limit.min(MAX_PAGE)))
            .fetch_all(&pools.reader)
            .await
            .map_err(query_error("read messages"))?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|(id, turn_id, role, content_json, created_at)| MessageRecord {
                id,
                turn_id,
                role,
                content_json,
                created_at,
            })
            .collect())
    }

    /// Writes a ledger row.
    pub async fn record_call(&self, entry: &LedgerEntry<'_>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        ledger_row(&mut batch, entry, unix_now());
        let pools = self.pools.read().await;
        batch.run(&pools, "write a ledger row").await
    }

    /// Money spent on `day` and in `month`, in millionths of a dollar.
    pub async fn spend(&self, day: &str, month: &str) -> Result<(i64, i64), StorageError> {
        let pools = self.pools.read().await;
        // The month as its range of days, so that the one ledger index (on `day`) serves it.
        sqlx::query_as(
            "SELECT coalesce(sum(CASE WHEN day = ? THEN cost_micros END), 0), coalesce(sum(cost_micros), 0) \
             FROM ledger WHERE day BETWEEN ? AND ?",
        )
        .bind(day)
        .bind(format!("{month}-01"))
        .bind(format!("{month}-31"))
        .fetch_one(&mut *pools.writer().await?)
        .await
        .map_err(query_error("sum the ledger"))
    }

    /// Usage on and after `first_day` (`YYYY-MM-DD`).
    pub async fn usage_report(&self, first_day: &str) -> Result<UsageReport, StorageError> {
        let pools = self.pools.read().await;
        const TOTALS: &str = "count(*), sum(input_tokens), sum(output_tokens), sum(cache_creation_tokens), \
             sum(cache_read_tokens), sum(cost_micros)";
        let days: Vec<UsageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT day AS a, '' AS b, {TOTALS} FROM ledger WHERE day >= ? GROUP BY day ORDER BY day"
        )))
        .bind(first_day)
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("report usage per day"))?;
        let models: Vec<UsageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT provider AS a, model AS b, {TOTALS} FROM ledger WHERE day >= ? \
             GROUP BY provider, model ORDER BY sum(cost_micros) DESC"
        )))
        .bind(first_day)
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("report usage per model"))?;
        let sessions: Vec<UsageRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT l.session_id AS a, coalesce(s.title, '') AS b, {TOTALS} FROM ledger l \
             LEFT JOIN sessions s ON s.id = l.session_id WHERE l.day >= ? \
             GROUP BY l.session_id ORDER BY sum(l.cost_micros) DESC LIMIT 50"
        )))
        .bind(first_day)
        .fetch_all(&pools.reader)
        .await
        .map_err(query_error("report usage per session"))?;
        Ok(UsageReport {
            days: days
                .into_iter()
                .map(|row| {
                    let (day, _, totals) = split_usage_row(row);
                    (day, totals)
                })
                .collect(),
            models: models.into_iter().map(split_usage_row).collect(),
            sessions: sessions.into_iter().map(split_usage_row).collect(),
        })
    }
}

/// A provider call's ledger row.
fn ledger_row(batch: &mut WriteBatch, entry: &LedgerEntry<'_>, now: i64) {
    let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    batch
        .statement(
            "INSERT INTO ledger (at, day, month, session_id, turn_id, provider, model, input_tokens, output_tokens, \
             cache_creation_tokens, cache_read_tokens, cost_micros, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now)
        .bind(entry.day)
        .bind(entry.month)
        .bind(entry.session_id)
        .bind(entry.turn_id)
        .bind(entry.provider)
        .bind(entry.model)
        .bind(as_i64(entry.input_tokens))
        .bind(as_i64(entry.output_tokens))
        .bind(as_i64(entry.cache_creation_tokens))
        .bind(as_i64(entry.cache_read_tokens))
        .bind(entry.cost_micros)
        .bind(if entry.ok { "ok" } else { "failed" });
}

/// A session's latest activity and model.
fn touch_session(batch: &mut WriteBatch, session_id: &str, model: &str, now: i64) {
    batch
        .statement("UPDATE sessions SET updated_at = ?, model = ? WHERE id = ?")
        .bind(now)
        .bind(model)
        .bind(session_id);
}

/// A turn's end, and its session idle unless another turn of it is still running.
fn end_turn(batch: &mut WriteBatch, session_id: &str, turn_id: &str, end: TurnEnd, error: Option<&str>, now: i64) {
    batch
        .statement("UPDATE turns SET state = ?, error = ?, finished_at = ? WHERE id = ?")
        .bind(end.as_str())
        .bind(error)
        .bind(now)
        .bind(turn_id)
        // Another turn of the session may already be stored and waiting: the session is idle
        // only when none is left running.
        .statement(
            "UPDATE sessions SET updated_at = ?, state = CASE WHEN EXISTS \
             (SELECT 1 FROM turns WHERE session_id = ? AND state = 'running') THEN 'running' ELSE 'idle' END \
             WHERE id = ?",
        )
        .bind(now)
        .bind(session_id)
        .bind(session_id);
}

/// Stores a message of a turn whose row is already stored (earlier in the same batch or before):
/// `turn_seq` is that row's place in the order of turns.
fn insert_message(batch: &mut WriteBatch, message: NewMessage<'_>, now: i64) {
    batch
        .statement(
            "INSERT INTO messages (id, session_id, turn_id, role, content, created_at, turn_seq) \
             VALUES (?, ?, ?, ?, ?, ?, (SELECT rowid FROM turns WHERE id = ?))",
        )
        .bind(message.id)
        .bind(message.session_id)
        .bind(message.turn_id)
        .bind(message.role)
        .bind(message.content_json)
        .bind(now)
        .bind(message.turn_id);
}

#[cfg(test)]
mod tests {
    use super::super::open_in as open;
    use super::*;

    fn message<'a>(id: &'a str, turn: &'a str, role: &'a str) -> NewMessage<'a> {
        NewMessage {
            id,
            session_id: "s1",
            turn_id: turn,
            role,
            content_json: "[]",
        }
    }

    #[tokio::test]
    async fn a_turn_stores_messages_in_order_and_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        storage.create_session("s1", "hello").await.unwrap();
        storage
            .begin_turn(None, &[], message("m1", "t1", "user"))
            .await
            .unwrap();
        assert_eq!(storage.get_session("s1").await.unwrap().unwrap().state, "running");
        storage
            .append_message(message("m2", "t1", "assistant"), "model-x")
            .await
            .unwrap();
        storage.finish_turn("s1", "t1", TurnEnd::Completed, None).await.unwrap();
        storage
            .begin_turn(None, &[], message("m3", "t2", "user"))
            .await
            .unwrap();
        storage.close().await;

        // The second turn was in flight when the daemon died.
        let storage = open(dir.path()).await;
        assert_eq!(storage.interrupt_running_turns().await.unwrap(), 1);
        let session = storage.get_session("s1").await.unwrap().unwrap();
        assert_eq!(session.state, "interrupted");
        assert_eq!(session.model, "model-x");
        assert_eq!(session.message_count, 3);
        let ids: Vec<String> = storage
            .message_page("s1", None, 10)
            .await
            .unwrap()
            .unwrap()
            .messages
            .into_iter()
            .map(|message| message.id)
            .collect();
        assert_eq!(
            ids,
            ["m1", "m2", "m3"],
            "the inbound message of the interrupted turn is kept"
        );
        assert_eq!(
            storage.message_page("s1", None, 2).await.unwrap().unwrap().messages[0].id,
            "m2"
        );
    }

    /// Session s1's turn A (a1, a2, then a3, a4) with turn B's message b1 arriving while A still
    /// runs its tools: in turn order, a1 a2 a3 a4 b1.
    async fn interleave_two_turns(storage: &Storage) {
        storage
            .begin_turn(None, &[], message("a1", "tA", "user"))
            .await
            .unwrap();
        storage
            .append_message(message("a2", "tA", "assistant"), "m")
            .await
            .unwrap();
        storage
            .begin_turn(None, &[], message("b1", "tB", "user"))
            .await
            .unwrap();
        storage.append_message(message("a3", "tA", "tool"), "m").await.unwrap();
        storage
            .append_message(message("a4", "tA", "assistant"), "m")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_message_queued_during_a_turn_follows_that_turn() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        storage.create_session("s1", "t").await.unwrap();
        interleave_two_turns(&storage).await;
        storage.finish_turn("s1", "tA", TurnEnd::Completed, None).await.unwrap();
        assert_eq!(
            storage.get_session("s1").await.unwrap().unwrap().state,
            "running",
            "turn B is still to run"
        );
        let ids = |records: Vec<MessageRecord>| records.into_iter().map(|record| record.id).collect::<Vec<_>>();
        assert_eq!(
            ids(storage.message_page("s1", None, 10).await.unwrap().unwrap().messages),
            ["a1", "a2", "a3", "a4", "b1"]
        );
        assert_eq!(
            ids(storage.history_of_turn("s1", "tA", 10).await.unwrap()),
            ["a1", "a2", "a3", "a4"]
        );
        storage.finish_turn("s1", "tB", TurnEnd::Completed, None).await.unwrap();
        assert_eq!(storage.get_session("s1").await.unwrap().unwrap().state, "idle");
    }

    #[tokio::test]
    async fn messages_page_back_in_turn_order_within_a_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        storage.create_session("s1", "t").await.unwrap();
        storage.create_session("s2", "t").await.unwrap();
        interleave_two_turns(&storage).await;
        let page = |before: Option<&'static str>, limit| {
            let storage = &storage;
            async move {
                let page = storage.message_page("s1", before, limit).await.unwrap().unwrap();
                let ids: Vec<String> = page.messages.into_iter().map(|record| record.id).collect();
                (ids, page.more)
            }
        };
        assert_eq!(page(None, 2).await, (vec!["a4".into(), "b1".into()], true));
        assert_eq!(page(Some("a4"), 2).await, (vec!["a2".into(), "a3".into()], true));
        assert_eq!(page(Some("a2"), 2).await, (vec!["a1".into()], false));
        assert_eq!(page(Some("a1"), 2).await, (vec![], false));
        assert!(!page(None, 5).await.1, "exactly the limit left: no more");
        // A cursor of another session, or of none, is no cursor.
        assert!(storage.message_page("s2", Some("a1"), 2).await.unwrap().is_none());
        assert!(storage.message_page("s1", Some("zz"), 2).await.unwrap().is_none());

        // Large messages end a page before MAX_PAGE_BYTES, and one larger than that still comes
        // alone rather than never.
        let big = format!("[\"{}\"]", "x".repeat(MAX_PAGE_BYTES / 3));
        let huge = format!("[\"{}\"]", "y".repeat(MAX_PAGE_BYTES + 1));
        let session2 = |id: &'static str, turn: &'static str, content: &'static str| NewMessage {
            session_id: "s2",
            content_json: content,
            ..message(id, turn, "user")
        };
        let (big, huge): (&'static str, &'static str) = (big.leak(), huge.leak());
        storage.begin_turn(None, &[], session2("h1", "tH", huge)).await.unwrap();
        for (id, turn) in [("g1", "tG1"), ("g2", "tG2"), ("g3", "tG3")] {
            storage.begin_turn(None, &[], session2(id, turn, big)).await.unwrap();
        }
        let first = storage.message_page("s2", None, 100).await.unwrap().unwrap();
        let ids: Vec<&str> = first.messages.iter().map(|record| record.id.as_str()).collect();
        assert_eq!((ids, first.more), (vec!["g2", "g3"], true));
        let second = storage.message_page("s2", Some("g2"), 100).await.unwrap().unwrap();
        let ids: Vec<&str> = second.messages.iter().map(|record| record.id.as_str()).collect();
        assert_eq!((ids, second.more), (vec!["g1"], true));
        let last = storage.message_page("s2", Some("g1"), 100).await.unwrap().unwrap();
        let ids: Vec<&str> = last.messages.iter().map(|record| record.id.as_str()).collect();
        assert_eq!((ids, last.more), (vec!["h1"], false));
    }

    #[tokio::test]
    async fn a_sessions_turns_and_pages_are_found_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        let plan = |sql: &'static str, binds: &'static [&'static str]| {
            let storage = &storage;
            async move {
                let pools = storage.pools.read().await;
                let mut query = sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
                for bind in binds {
                    query = query.bind(*bind);
                }
                let rows: Vec<(i64, i64, i64, String)> = query.fetch_all(&pools.reader).await.unwrap();
                rows.into_iter().map(|row| row.3).collect::<Vec<_>>().join("; ")
            }
        };
        // What deleting a session cascades to: no scan of every turn.
        let cascade = plan("DELETE FROM turns WHERE session_id = ?", &["s1"]).await;
        assert!(cascade.contains("INDEX turns_by_session (session_id=?)"), "{cascade}");
        // A page is one range of the session's index, bounded by the cursor's turn when paging
        // back; no sort.
        let latest = plan(PAGE_LATEST, &["s1", "10"]).await;
        assert!(
            latest.starts_with("SEARCH messages USING INDEX messages_by_session_turn (session_id=? AND turn_seq>?)"),
            "{latest}"
        );
        let before = plan(PAGE_BEFORE, &["s1", "m1", "s1", "10"]).await;
        assert!(
            before.starts_with(
                "SEARCH messages USING INDEX messages_by_session_turn (session_id=? AND turn_seq>? AND turn_seq<?)"
            ),
            "{before}"
        );
        assert!(!format!("{latest}{before}").contains("TEMP B-TREE"));
    }

    #[tokio::test]
    async fn sessions_page_by_update_and_delete_cascades() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        for index in 0..5 {
            storage.create_session(&format!("s{index}"), "t").await.unwrap();
        }
        let first = storage.list_sessions(2, None).await.unwrap();
        assert_eq!(first.len(), 2);
        let last = first.last().unwrap();
        let rest = storage
            .list_sessions(10, Some((last.updated_at, &last.id)))
            .await
            .unwrap();
        assert_eq!(first.len() + rest.len(), 5);
        assert!(rest.iter().all(|session| !first.contains(session)));
        storage
            .begin_turn(None, &[], message("m1", "t1", "user"))
            .await
            .unwrap();
        assert!(storage.delete_session("s1").await.unwrap());
        assert!(!storage.delete_session("s1").await.unwrap());
        assert!(
            storage
                .message_page("s1", None, 10)
                .await
                .unwrap()
                .unwrap()
                .messages
                .is_empty()
        );
        assert_eq!(storage.count_sessions().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn the_ledger_sums_by_day_month_model_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path()).await;
        storage.create_session("s1", "budget talk").await.unwrap();
        let entry = |day: &'static str, model: &'static str, cost_micros| LedgerEntry {
            session_id: "s1",
            turn_id: "t",
            provider: "anthropic",
            model,
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_tokens: 1,
            cache_read_tokens: 2,
            cost_micros,
            ok: true,
            day,
            month: &day[..7],
        };
        storage.record_call(&entry("2026-11-27", "a", 100)).await.unwrap();
        storage.record_call(&entry("2026-11-28", "a", 250)).await.unwrap();
        storage.record_call(&entry("2026-11-28", "b", 1_000)).await.unwrap();
        storage.record_call(&entry("2026-10-31", "b", 7)).await.unwrap();
        assert_eq!(storage.spend("2026-11-28", "2026-11").await.unwrap(), (1_250, 1_350));
        let report = storage.usage_report("2026-11-28").await.unwrap();
        assert_eq!(report.days.len(), 1);
        assert_eq!(report.days[0].1.cost_micros, 1_250);
        assert_eq!(report.days[0].1.calls, 2);
        assert_eq!(report.models[0].1, "b", "most expensive first");
        assert_eq!(report.sessions[0].1, "budget talk");
        assert_eq!(report.sessions[0].2.cache_read_tokens, 4);
        // A month is its first to last day (the one index is on `day`), nothing after it.
        storage.record_call(&entry("2026-12-01", "b", 50_000)).await.unwrap();
        assert_eq!(storage.spend("2026-11-30", "2026-11").await.unwrap(), (0, 1_350));
        assert_eq!(storage.spend("2026-12-01", "2026-12").await.unwrap(), (50_000, 50_000));
    }
}
