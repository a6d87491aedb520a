//! The agent: sessions, the turn loop, LLM providers, tools, and the cost ledger with hard
//! budget caps.
//!
//! A turn: persist the inbound message (only then is the caller told `Accepted`) → take the
//! session's lock (turns of one session run in order) → take one of `max_concurrent_turns`
//! slots → assemble the context → reserve the worst-case cost → stream the provider's answer →
//! write the ledger row and settle → run requested tools → call again, up to
//! `max_tool_iterations` → persist the answer → `Completed`. Every failure is recorded on the
//! turn and reported to the caller; nothing persisted is ever rolled back.
//!
//! Memory: only per-session locks live in memory, in a cache bounded by `max_cached_sessions`
//! (idle entries are evicted); history is read from the database for each turn and trimmed to
//! `context_tokens`. Waiting turns are bounded by `max_queued_turns`; beyond that callers are
//! told to retry.

pub mod budget;
mod context;
mod histories;
pub mod model;
pub mod provider;
pub mod tools;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::budget::{Budget, BudgetError, BudgetSnapshot, Period};
use self::context::StoredBlocks;
use self::model::{
    Channel, ContentBlock, Message, ModelUsage, Role, Session, SessionState, SessionUsage, StopReason, ToolPhase,
    TurnEvent, TurnSummary, Usage, UsageReport, UsageTotals,
};
use self::provider::{Provider, ProviderError, ProviderSettings, StreamEvent};
use self::tools::Tools;
use crate::config::ConfigHandle;
use crate::config::{Config, Principal, ProviderConfig, ToolsConfig};
use crate::events::{Event, EventBus};
use crate::health::{Check, Finding, Health, Level};
use crate::memory::Monitor;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use crate::storage::{self, LedgerEntry, NewMessage, SessionRecord, Storage, StorageError, StorageErrorKind, TurnEnd};

/// The share of a budget cap from which `doctor`'s budget check warns.
const BUDGET_WARN_SHARE: f64 = 0.8;
/// How often `doctor` may really ask the provider; runs between reuse the last answer.
const PROVIDER_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the clock check may ask the provider: the clock does not drift in a minute.
const CLOCK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// A clock off by more than this gets a warning: the provider's `Date` has whole seconds, so a
/// smaller offset is noise.
const CLOCK_WARN_SECS: f64 = 5.0;

/// The clock check's verdict on `offset` (the provider's clock ahead of ours, in seconds). It
/// fails once signed requests would be refused: half of `skew_secs` (`gateway.max_clock_skew_secs`)
/// leaves a client's own error no room.
fn clock_verdict(kind: &str, offset: Option<f64>, skew_secs: u64) -> Finding {
    let Some(offset) = offset else {
        return Finding::warn(
            format!("not checked: {kind} sent no readable Date header"),
            "compare `date -u` with a trusted clock",
        );
    };
    let said = if offset >= 0.0 {
        format!("this machine's clock is {offset:.1} s behind {kind}'s")
    } else {
        format!("this machine's clock is {:.1} s ahead of {kind}'s", -offset)
    };
    let hint = "turn on time synchronization: `timedatectl set-ntp true` (systemd-timesyncd), or chrony";
    #[allow(clippy::cast_precision_loss, reason = "a skew of seconds is far below 2^52")]
    let fail_at = skew_secs as f64 / 2.0;
    if offset.abs() >= fail_at.max(CLOCK_WARN_SECS) {
        Finding::fail(
            format!(
                "{said}: signed requests from clients in step would be refused (gateway.max_clock_skew_secs = {skew_secs})"
            ),
            hint,
        )
    } else if offset.abs() > CLOCK_WARN_SECS {
        Finding::warn(said, hint)
    } else {
        Finding::ok(said)
    }
}
/// Longest inbound message, in bytes. Far above any typed message; it bounds what one request can
/// make the daemon store and send.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Earlier messages a caller may bring with a turn (as many as one turn reads back).
const MAX_EARLIER_MESSAGES: usize = HISTORY_MESSAGES as usize;
/// Events buffered per streaming caller; a slow reader slows its own turn, nothing else.
const TURN_EVENT_BUFFER: usize = 64;
/// Longest session id accepted (they are UUIDs, 36 bytes).
const MAX_SESSION_ID_BYTES: usize = 64;

/// A session id as errors show it: cut to [`MAX_SESSION_ID_BYTES`] characters, so that a caller
/// cannot make an error (a gRPC status, a log line) as long as what it sent.
fn shortened(id: &str) -> std::borrow::Cow<'_, str> {
    match id.char_indices().nth(MAX_SESSION_ID_BYTES) {
        Some((end, _)) => format!("{}…", &id[..end]).into(),
        None => id.into(),
    }
}
/// Longest session title, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// Messages read back per turn before trimming to the token budget.
const HISTORY_MESSAGES: u32 = 1_000;
/// Characters of a tool result echoed in `ToolActivity.summary`.
const TOOL_SUMMARY_CHARS: usize = 200;

/// Errors of agent operations, each mapped to a precise status by the control plane.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such session.
    #[error("no session {:?}; list sessions with `blufioctl sessions list`", shortened(.id))]
    SessionNotFound {
        /// The id given.
        id: String,
    },
    /// The message is empty or too long.
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// What is wrong.
        reason: String,
    },
    /// The provider cannot be called as configured.
    #[error("the provider is not usable: {problem}")]
    ProviderNotConfigured {
        /// What is missing and how to fix it.
        problem: String,
    },
    /// A budget cap or a missing price stopped the call.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// Too many turns are waiting.
    #[error("{waiting} turns are already waiting for one of {slots} slots; retry in a few seconds")]
    QueueFull {
        /// Turns waiting.
        waiting: usize,
        /// Concurrent turn slots.
        slots: usize,
    },
    /// The session has a turn in flight.
    #[error("session {id:?} has a turn in flight; wait for it to finish")]
    SessionBusy {
        /// The session.
        id: String,
    },
    /// The provider call failed.
    #[error("the provider call failed")]
    Provider(#[from] ProviderError),
    /// The database failed.
    #[error("storage failed")]
    Storage(#[from] StorageError),
    /// The database holds a value this version does not know (it was changed outside blufiod).
    #[error("the database holds {what}, which this version of blufiod does not know; restore it from a backup")]
    Stored {
        /// What was found.
        what: String,
    },
    /// The daemon is stopping.
    #[error("blufiod is shutting down; the message is stored and the turn is marked interrupted")]
    ShuttingDown,
    /// A restore is replacing the database.
    #[error("blufiod is restoring a backup; nothing was stored: retry in a few seconds")]
    Restoring,
    /// The daemon is near its memory limit.
    #[error(
        "blufiod uses {rss_mib} MiB of its {limit_mib} MiB limit (memory.limit_mib), so new turns and sessions are refused until its memory falls; retry in a few seconds, or raise memory.limit_mib"
    )]
    MemoryPressure {
        /// Resident set in MiB.
        rss_mib: u64,
        /// The limit in MiB.
        limit_mib: u64,
    },
}

/// What kind of failure an [`AgentError`] is: the one thing each transport maps from (to a gRPC
/// code, to an HTTP problem), and the stable name events and metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such session.
    SessionNotFound,
    /// The message is empty or too large.
    InvalidMessage,
    /// The provider has no key or model.
    ProviderNotConfigured,
    /// The model has no price.
    UnpricedModel,
    /// A budget cap would be exceeded.
    BudgetExhausted,
    /// The turn queue is full.
    QueueFull,
    /// The session is running a turn.
    SessionBusy,
    /// The provider call failed.
    ProviderFailed,
    /// The daemon is stopping.
    ShuttingDown,
    /// Memory is under pressure.
    MemoryPressure,
    /// A restore is replacing the database.
    Restoring,
    /// The disk is full.
    StorageFull,
    /// The database failed otherwise.
    StorageFailed,
}

impl ErrorKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionNotFound => "session_not_found",
            Self::InvalidMessage => "invalid_message",
            Self::ProviderNotConfigured => "provider_not_configured",
            Self::UnpricedModel => "unpriced_model",
            Self::BudgetExhausted => "budget_exhausted",
            Self::QueueFull => "queue_full",
            Self::SessionBusy => "session_busy",
            Self::ProviderFailed => "provider_failed",
            Self::ShuttingDown => "shutting_down",
            Self::MemoryPressure => "memory_pressure",
            Self::Restoring => "restoring",
            Self::StorageFull => "storage_full",
            Self::StorageFailed => "storage_failed",
        }
    }
}

impl AgentError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::SessionNotFound { .. } => ErrorKind::SessionNotFound,
            Self::InvalidMessage { .. } => ErrorKind::InvalidMessage,
            Self::ProviderNotConfigured { .. } => ErrorKind::ProviderNotConfigured,
            Self::Budget(BudgetError::Unpriced { .. }) => ErrorKind::UnpricedModel,
            Self::Budget(_) => ErrorKind::BudgetExhausted,
            Self::QueueFull { .. } => ErrorKind::QueueFull,
            Self::SessionBusy { .. } => ErrorKind::SessionBusy,
            Self::Provider(_) => ErrorKind::ProviderFailed,
            Self::ShuttingDown => ErrorKind::ShuttingDown,
            Self::MemoryPressure { .. } => ErrorKind::MemoryPressure,
            Self::Restoring => ErrorKind::Restoring,
            Self::Storage(error) => match error.kind() {
                StorageErrorKind::Full => ErrorKind::StorageFull,
                StorageErrorKind::Duplicate | StorageErrorKind::MissingParent | StorageErrorKind::Other => {
                    ErrorKind::StorageFailed
                }
            },
            Self::Stored { .. } => ErrorKind::StorageFailed,
        }
    }
}

/// Numbers for `GetStatus`.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// Sessions with a turn running or waiting.
    pub active_sessions: usize,
    /// Turns running.
    pub turns_in_flight: usize,
    /// Turns waiting for a slot or for their session.
    pub turns_queued: usize,
    /// Provider kind.
    pub provider: &'static str,
    /// Model.
    pub model: String,
    /// Why the provider cannot be called, if it cannot.
    pub provider_problem: Option<String>,
    /// Where the provider's key comes from (never the key); `None` when there is none.
    pub provider_key_source: Option<String>,
    /// Spend.
    pub budget: BudgetSnapshot,
}

/// What the agent is built from, handed over by the composition root.
#[derive(Debug)]
pub struct AgentDeps {
    /// The database.
    pub storage: Storage,
    /// The live configuration.
    pub config: ConfigHandle,
    /// The one secrets resolver (provider keys).
    pub secrets: Arc<Secrets>,
    /// Where turn and budget events go.
    pub events: Arc<EventBus>,
    /// Where calls, tokens and spend are counted.
    pub metrics: Arc<Metrics>,
    /// The memory monitor: refuses new turns at the limit.
    pub memory: Arc<Monitor>,
    /// The state directory (the file tools' default root).
    pub state_dir: PathBuf,
    /// Cancelled at shutdown: turns stop, leaving their ledger rows written.
    pub token: CancellationToken,
}

/// A provider client with the config and the vault generation it was built for.
type CachedProvider = (ProviderConfig, u64, Arc<dyn Provider>);

/// The agent.
pub struct Agent {
    storage: Storage,
    config: ConfigHandle,
    state_dir: PathBuf,
    events: Arc<EventBus>,
    secrets: Arc<Secrets>,
    metrics: Arc<Metrics>,
    memory: Arc<Monitor>,
    budget: Budget,
    slots: Arc<Semaphore>,
    slot_count: usize,
    max_queued: usize,
    queued: AtomicUsize,
    running: AtomicUsize,
    /// Whether the last turn that reached the provider failed on it: `ProviderDown` is published
    /// once when this turns true, and a completed turn clears it.
    provider_down: std::sync::atomic::AtomicBool,
    /// Held (read) by every change from its admission until its turn is spawned; `true` while a
    /// restore replaces the database (it takes the write side, so it waits for those changes).
    admission: tokio::sync::RwLock<bool>,
    sessions: Mutex<SessionLocks>,
    /// Recent sessions' messages, decoded, so that a session's next turn need not read them.
    histories: histories::Histories,
    /// The provider client, with the config and the vault generation it was built for.
    provider: Mutex<Option<CachedProvider>>,
    tools: Mutex<Option<(ToolsConfig, Arc<Tools>)>>,
    token: CancellationToken,
    turns: TaskTracker,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Agent")
            .field("running", &self.running)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

/// Per-session locks, bounded: idle entries beyond `capacity` are evicted, oldest use first.
struct SessionLocks {
    capacity: usize,
    clock: u64,
    entries: HashMap<String, (Arc<tokio::sync::Mutex<()>>, u64)>,
}

impl SessionLocks {
    /// Drops every entry nobody holds; returns how many went.
    fn drop_idle(&mut self) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (lock, _)| Arc::strong_count(lock) > 1);
        self.entries.shrink_to_fit();
        before - self.entries.len()
    }

    fn lock_for(&mut self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.clock += 1;
        let clock = self.clock;
        let lock = {
            let entry = self
                .entries
                .entry(id.to_owned())
                .or_insert_with(|| (Arc::default(), clock));
            entry.1 = clock;
            entry.0.clone()
        };
        while self.entries.len() > self.capacity {
            // Only entries nobody holds can go; if every entry is in use the map briefly exceeds
            // its capacity, bounded by the running and queued turns.
            let idle = self
                .entries
                .iter()
                .filter(|(_, (lock, _))| Arc::strong_count(lock) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone());
            match idle {
                Some(key) => {
                    self.entries.remove(&key);
                }
                None => break,
            }
        }
        lock
    }

    fn active(&self) -> usize {
        self.entries
            .values()
            .filter(|(lock, _)| Arc::strong_count(lock) > 1)
            .count()
    }

    /// When the latest turn of a session was accepted (the registry's clock then), while any
    /// turn of it is in flight.
    fn last_accepted(&self, id: &str) -> Option<u64> {
        self.entries.get(id).map(|(_, used)| *used)
    }

    fn is_busy(&self, id: &str) -> bool {
        self.entries
            .get(id)
            .is_some_and(|(lock, _)| Arc::strong_count(lock) > 1 || lock.try_lock().is_err())
    }
}

impl Agent {
    /// Builds the agent over its storage, marking turns a crash left running as interrupted and
    /// loading today's and this month's spend from the ledger.
    pub async fn start(deps: AgentDeps) -> Result<Self, StorageError> {
        let AgentDeps {
            storage,
            config,
            secrets,
            events,
            metrics,
            memory,
            state_dir,
            token,
        } = deps;
        let interrupted = storage.interrupt_running_turns().await?;
        if interrupted > 0 {
            tracing::warn!(
                turns = interrupted,
                "turns interrupted by the previous shutdown are marked interrupted"
            );
        }
        let period = Period::now();
        let (spent_day, spent_month) = storage.spend(&period.day, &period.month).await?;
        let snapshot = config.get();
        let agent = &snapshot.config.agent;
        let slot_count = usize::try_from(agent.max_concurrent_turns).unwrap_or(1).max(1);
        Ok(Self {
            storage,
            config,
            state_dir,
            events,
            secrets,
            metrics,
            memory,
            budget: Budget::new(&period, spent_day, spent_month),
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count,
            max_queued: usize::try_from(agent.max_queued_turns).unwrap_or(0),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            provider_down: std::sync::atomic::AtomicBool::new(false),
            admission: tokio::sync::RwLock::new(false),
            sessions: Mutex::new(SessionLocks {
                capacity: usize::try_from(agent.max_cached_sessions).unwrap_or(1).max(1),
                clock: 0,
                entries: HashMap::new(),
            }),
            histories: histories::Histories::default(),
            provider: Mutex::new(None),
            tools: Mutex::new(None),
            token,
            turns: TaskTracker::new(),
        })
    }

    /// Refuses, on `config set` and reload, an `agent.system_prompt_file` the agent could not
    /// use (missing, unreadable, not a regular file, too large, not UTF-8): otherwise every turn
    /// would fall back to the default prompt with only a log line to say so.
    pub fn register_live_check(live: &crate::config::LiveConfig) {
        live.on_check("system-prompt-file", |new| match &new.config.agent.system_prompt_file {
            Some(path) => context::read_prompt_file(path).map(drop).map_err(|problem| {
                format!("agent.system_prompt_file: {problem}; create the file (UTF-8 text) or unset the key")
            }),
            None => Ok(()),
        });
    }

    /// Registers the agent's figures (spend against the caps, turns, active sessions) on the
    /// daemon's metrics, read at each scrape.
    pub fn register_metrics(self: &Arc<Self>, metrics: &Metrics) {
        let agent = Arc::downgrade(self);
        metrics.register_scraped(
            &[
                (
                    "budget_reserved_usd",
                    "Worst-case cost reserved by provider calls in flight, in US dollars.",
                ),
                ("turns_in_flight", "Agent turns running."),
                ("turns_queued", "Agent turns waiting for a slot."),
                ("active_sessions", "Sessions with a turn running or waiting."),
            ],
            move || {
                let status = agent.upgrade()?.status();
                Some(vec![
                    status.budget.reserved_usd,
                    status.turns_in_flight as f64,
                    status.turns_queued as f64,
                    status.active_sessions as f64,
                ])
            },
        );
        // By period; a period without a cap has no cap and no remaining series.
        /// A gauge's value from a period's cap and spend (`None`: no series).
        type ByPeriod = fn(f64, f64) -> Option<f64>;
        let by_period: [((&str, &str), ByPeriod); 3] = [
            (
                ("budget_spent_usd", "Spend in the current period (UTC) in US dollars."),
                |_, spent| Some(spent),
            ),
            (
                (
                    "budget_cap_usd",
                    "The budget cap of the period in US dollars (capped periods only).",
                ),
                |cap, _| (cap > 0.0).then_some(cap),
            ),
            (
                (
                    "budget_remaining_usd",
                    "What the period's cap leaves to spend, in US dollars (capped periods only).",
                ),
                |cap, spent| (cap > 0.0).then_some((cap - spent).max(0.0)),
            ),
        ];
        for (gauge, value) in by_period {
            let agent = Arc::downgrade(self);
            metrics.register_scraped_by(gauge, "period", move || {
                let agent = agent.upgrade()?;
                let status = agent.status();
                let caps = agent.config.get().config.budget.clone();
                let periods = [
                    ("daily", caps.daily_usd, status.budget.today_usd),
                    ("monthly", caps.monthly_usd, status.budget.month_usd),
                ];
                Some(
                    periods
                        .into_iter()
                        .filter_map(|(period, cap, spent)| Some((period, value(cap, spent)?)))
                        .collect(),
                )
            });
        }
    }

    /// Registers what the agent caches with the memory monitor, to drop at the warn level: idle
    /// session locks, kept session histories (read again by the next turn), and the provider and
    /// tool clients with their idle connections (rebuilt by the next turn).
    pub fn register_shedders(self: &Arc<Self>, memory: &Monitor) {
        let agent = Arc::downgrade(self);
        memory.on_shed("session-histories", move || {
            agent.upgrade().map_or(0, |agent| agent.histories.clear())
        });
        let agent = Arc::downgrade(self);
        memory.on_shed("session-locks", move || {
            agent.upgrade().map_or(0, |agent| {
                agent.sessions.lock().expect("session locks poisoned").drop_idle()
            })
        });
        let agent = Arc::downgrade(self);
        memory.on_shed("provider-clients", move || {
            let Some(agent) = agent.upgrade() else { return 0 };
            let provider = agent.provider.lock().expect("provider cache poisoned").take();
            let tools = agent.tools.lock().expect("tools cache poisoned").take();
            usize::from(provider.is_some()) + usize::from(tools.is_some())
        });
    }

    /// Waits for every turn task to end. Called after the shutdown token is cancelled, so turns
    /// are already stopping: each writes its ledger row for a call in flight and leaves its turn
    /// marked running, which the next start turns into `interrupted`.
    pub async fn wait_for_turns(&self) {
        self.turns.close();
        self.turns.wait().await;
    }

    /// Creates an empty session.
    pub async fn create_session(&self, title: &str) -> Result<Session, AgentError> {
        let _admitted = self.admit_change().await?;
        self.create_admitted_session(title).await
    }

    /// Creates a session for a change already admitted.
    async fn create_admitted_session(&self, title: &str) -> Result<Session, AgentError> {
        self.admit_memory()?;
        let id = uuid::Uuid::now_v7().to_string();
        session_of(self.storage.create_session(&id, &session_title(title)).await?)
    }

    /// A page of sessions and the cursor of the next page.
    pub async fn list_sessions(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Session>, Option<String>), AgentError> {
        let parsed = match cursor {
            None => None,
            Some(cursor) => Some(parse_cursor(cursor).ok_or_else(|| AgentError::InvalidMessage {
                reason: format!("{cursor:?} is not a cursor from a previous ListSessions reply"),
            })?),
        };
        let sessions = self
            .storage
            .list_sessions(limit, parsed.as_ref().map(|(at, id)| (*at, id.as_str())))
            .await?;
        let next = (sessions.len() == limit as usize)
            .then(|| sessions.last().map(|last| format!("{}:{}", last.updated_at, last.id)))
            .flatten();
        Ok((sessions.into_iter().map(session_of).collect::<Result<_, _>>()?, next))
    }

    /// One session with a page of its messages: the latest `limit` (and at most 2 MiB of them),
    /// or those before the message `cursor` (the `next_cursor` of the later page). Also returns
    /// the cursor of the page before this one, when older messages remain.
    pub async fn get_session(
        &self,
        id: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Session, Vec<Message>, Option<String>), AgentError> {
        let session = session_of(self.session(id).await?)?;
        let page = self
            .storage
            .message_page(id, cursor, limit)
            .await?
            .ok_or_else(|| AgentError::InvalidMessage {
                reason: format!(
                    "{:?} is not a message of session {:?}; pass the next_cursor of the page before",
                    shortened(cursor.unwrap_or_default()),
                    shortened(id)
                ),
            })?;
        let next_cursor = page
            .more
            .then(|| page.messages.first().map(|first| first.id.clone()))
            .flatten();
        let messages = page
            .messages
            .into_iter()
            .map(|record| {
                Ok(Message {
                    blocks: StoredBlocks::decode(&record.content_json),
                    role: Role::parse(&record.role).ok_or_else(|| AgentError::Stored {
                        what: format!("a message with role {:?}", record.role),
                    })?,
                    id: record.id,
                    created_at: record.created_at,
                })
            })
            .collect::<Result<_, AgentError>>()?;
        Ok((session, messages, next_cursor))
    }

    /// Deletes a session that has no turn in flight.
    pub async fn delete_session(&self, id: &str) -> Result<(), AgentError> {
        let _admitted = self.admit_change().await?;
        if self.sessions.lock().expect("session locks poisoned").is_busy(id) {
            return Err(AgentError::SessionBusy { id: id.to_owned() });
        }
        if self.storage.delete_session(id).await? {
            self.histories.forget(id);
            Ok(())
        } else {
            Err(AgentError::SessionNotFound { id: id.to_owned() })
        }
    }

    /// Gives a session a new title (trimmed, at most 200 characters).
    pub async fn rename_session(&self, id: &str, title: &str) -> Result<Session, AgentError> {
        let _admitted = self.admit_change().await?;
        let title = title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
            return Err(AgentError::InvalidMessage {
                reason: format!("a session title is 1 to {MAX_TITLE_CHARS} characters"),
            });
        }
        if !self.storage.rename_session(id, title).await? {
            return Err(AgentError::SessionNotFound { id: id.to_owned() });
        }
        session_of(self.session(id).await?)
    }

    /// Deletes the sessions not updated for `days` days (none with a turn in flight); their
    /// spend stays in the ledger. Returns how many went.
    pub async fn prune_sessions(&self, days: u32) -> Result<u64, AgentError> {
        let _admitted = self.admit_change().await?;
        let before = crate::util::unix_now() - i64::from(days) * 86_400;
        let pruned = self.storage.prune_sessions(before).await?;
        if pruned > 0 {
            self.histories.clear();
            tracing::info!(sessions = pruned, days, "old sessions pruned");
        }
        Ok(pruned)
    }

    /// Applies `agent.session_retention_days` until `token` is cancelled: at once, every hour,
    /// and whenever `changed` is notified (the key changed).
    pub async fn keep_retention(
        self: Arc<Self>,
        changed: Arc<tokio::sync::Notify>,
        token: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
        loop {
            let days = self.config.get().config.agent.session_retention_days;
            if days > 0
                && let Err(error) = self.prune_sessions(days).await
            {
                tracing::warn!(error = %crate::error_chain(&error), "cannot prune old sessions; retrying later");
            }
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(EVERY) => {}
                () = changed.notified() => {}
            }
        }
    }

    /// Usage since `days` days ago (UTC) and the budget now.
    pub async fn usage(&self, days: u32) -> Result<(UsageReport, BudgetSnapshot), AgentError> {
        let now = time::OffsetDateTime::now_utc();
        let first = now - time::Duration::days(i64::from(days.saturating_sub(1)));
        let report = self.storage.usage_report(&Period::of(first).day).await?;
        Ok((report_of(report), self.budget.snapshot(&Period::of(now))))
    }

    /// Sessions stored.
    pub async fn count_sessions(&self) -> Result<u64, AgentError> {
        Ok(self.storage.count_sessions().await?)
    }

    /// Registers the agent's health checks: `provider_api`, the provider's model list fetched
    /// with the configured key (no tokens, no spend), for `doctor`. Never part of readiness or
    /// liveness: those must not depend on somebody else's API.
    pub fn register_checks(self: &Arc<Self>, health: &Health) {
        let agent = self.clone();
        health.register(
            Check::new("provider_api", move || {
                let agent = agent.clone();
                async move { agent.provider_api_finding().await }
            })
            // Doctor runs come from read-only callers too: they must not spend the owner's
            // provider rate limit.
            .at_most_every(PROVIDER_CHECK_INTERVAL),
        );
        let agent = self.clone();
        health.register(Check::new("pricing", move || {
            let finding = agent.pricing_finding();
            async move { finding }
        }));
        let agent = self.clone();
        health.register(
            Check::new("clock", move || {
                let agent = agent.clone();
                async move { agent.clock_finding().await }
            })
            .deep()
            .at_most_every(CLOCK_CHECK_INTERVAL),
        );
        let agent = self.clone();
        health.register(Check::new("budget", move || {
            let finding = agent.budget_finding();
            async move { finding }
        }));
    }

    /// This machine's clock against the provider's `Date` (from its free model list): signed
    /// requests are judged by it (`gateway.max_clock_skew_secs`), and so are the day and month
    /// a turn's spend counts in.
    async fn clock_finding(&self) -> Finding {
        let config = self.config.get();
        let Ok(provider) = self.provider_for(&config.config) else {
            return Finding::warn(
                "not checked: the provider is not usable yet",
                "configure the provider first (the provider check says how)",
            );
        };
        let kind = config.config.provider.kind.as_str();
        let list = match provider.list_models().await {
            Ok(list) => list,
            Err(error) => {
                return Finding::warn(
                    format!("not checked: {kind} did not answer ({})", crate::error_chain(&error)),
                    "the provider_api check says why",
                );
            }
        };
        let skew = config.config.gateway.max_clock_skew_secs;
        clock_verdict(kind, list.clock_offset, skew)
    }

    /// Whether the configured model has a price: without one every turn is refused.
    fn pricing_finding(&self) -> Finding {
        let config = self.config.get();
        let model = config.config.provider.model();
        match budget::price_of(&config.config.pricing, &model) {
            Ok(price) => Finding::ok(format!(
                "{model} costs ${} in and ${} out per million tokens",
                price.input, price.output
            )),
            Err(error) => Finding::fail(
                error.to_string(),
                format!(
                    "`blufioctl config set pricing.\"{model}\".input PRICE` and `... .output PRICE` (USD per million tokens)"
                ),
            ),
        }
    }

    /// Spend against the caps: a warning from 80 % of a cap, a failure when one is reached
    /// (turns are refused until the period ends).
    fn budget_finding(&self) -> Finding {
        let config = self.config.get();
        let caps = &config.config.budget;
        let spent = self.budget.snapshot(&Period::now());
        let mut worst = Finding::ok(format!(
            "${:.2} today, ${:.2} this month ({})",
            spent.today_usd,
            spent.month_usd,
            match (caps.daily_usd > 0.0, caps.monthly_usd > 0.0) {
                (false, false) => "no caps".to_owned(),
                _ => format!(
                    "caps ${:.2} a day, ${:.2} a month; 0 is none",
                    caps.daily_usd, caps.monthly_usd
                ),
            }
        ));
        for (which, key, used, cap) in [
            (
                "daily",
                "budget.daily_usd",
                spent.today_usd + spent.reserved_usd,
                caps.daily_usd,
            ),
            (
                "monthly",
                "budget.monthly_usd",
                spent.month_usd + spent.reserved_usd,
                caps.monthly_usd,
            ),
        ] {
            if cap <= 0.0 {
                continue;
            }
            let share = used / cap;
            if share >= 1.0 {
                return Finding::fail(
                    format!(
                        "the {which} budget is exhausted: ${used:.2} of ${cap:.2}; turns are refused until it resets"
                    ),
                    format!("raise {key} (`blufioctl config set {key} N`) or wait for the next period"),
                );
            }
            if share >= BUDGET_WARN_SHARE && worst.level == Level::Ok {
                worst = Finding::warn(
                    format!(
                        "{:.0} % of the {which} budget is used: ${used:.2} of ${cap:.2}",
                        share * 100.0
                    ),
                    format!("raise {key} if that is expected (`blufioctl usage` shows where it went)"),
                );
            }
        }
        worst
    }

    async fn provider_api_finding(&self) -> Finding {
        let config = self.config.get();
        let provider = match self.provider_for(&config.config) {
            Ok(provider) => provider,
            // The `provider` check already says what is missing and how to fix it.
            Err(_) => {
                return Finding::warn(
                    "not checked: the provider is not usable yet",
                    "configure the provider first (the provider check says how)",
                );
            }
        };
        let kind = config.config.provider.kind.as_str();
        match provider.list_models().await {
            Ok(list) => {
                let took = format!("{} ms", list.latency.as_millis());
                let model = config.config.provider.model();
                if list.models.is_empty() || list.models.contains(&model) {
                    Finding::ok(format!(
                        "{kind} answered in {took} and accepted the key ({} models listed)",
                        list.models.len()
                    ))
                } else {
                    let listed: Vec<&str> = list.models.iter().take(5).map(String::as_str).collect();
                    Finding::warn(
                        format!("{kind} answered in {took} and accepted the key, but does not list the model {model}"),
                        format!(
                            "check provider.model (`blufioctl config set provider.model NAME`); it lists {}",
                            listed.join(", ")
                        ),
                    )
                }
            }
            // Without the provider's message: some echo part of the key, and read-only
            // callers see this.
            Err(ProviderError::Http { status, .. }) if status == 401 || status == 403 => Finding::fail(
                format!("{kind} refused the key (HTTP {status})"),
                format!(
                    "store the right key: `blufioctl config set-secret {kind}` (provider.api_key names it as secret:{kind})"
                ),
            ),
            Err(error @ ProviderError::Http { .. }) => Finding::fail(
                crate::error_chain(&error),
                "turns fail the same way; see the provider's status page",
            ),
            Err(error) => Finding::fail(
                crate::error_chain(&error),
                "check provider.base_url, and this machine's network and DNS",
            ),
        }
    }

    /// Numbers for `GetStatus`.
    pub fn status(&self) -> AgentStatus {
        let config = self.config.get();
        let provider = &config.config.provider;
        AgentStatus {
            active_sessions: self.sessions.lock().expect("session locks poisoned").active(),
            turns_in_flight: self.running.load(Ordering::Relaxed),
            turns_queued: self.queued.load(Ordering::Relaxed),
            provider: provider.kind.as_str(),
            model: provider.model(),
            provider_problem: provider_problem(&config.config, &self.secrets).err(),
            provider_key_source: self
                .secrets
                .provider_key_source(&config.config.provider)
                .map(|source| source.describe()),
            budget: self.budget.snapshot(&Period::now()),
        }
    }

    async fn session(&self, id: &str) -> Result<SessionRecord, AgentError> {
        self.storage
            .get_session(id)
            .await?
            .ok_or_else(|| AgentError::SessionNotFound { id: id.to_owned() })
    }

    /// Accepts a message: checks it, stores it durably, then runs the turn in the background.
    /// The returned channel starts with `Accepted`; dropping it cancels the turn (the message
    /// stays stored).
    pub async fn send_message(
        self: &Arc<Self>,
        channel: Channel,
        principal: Principal,
        session_id: Option<&str>,
        text: &str,
    ) -> Result<mpsc::Receiver<TurnEvent>, AgentError> {
        self.send(TurnRequest {
            channel,
            principal,
            session_id,
            earlier: Vec::new(),
            text,
            system: None,
        })
        .await
    }

    /// Accepts a turn: like [`Agent::send_message`], with what an OpenAI-style caller may bring:
    /// the conversation before the message (stored in a new session with it, as the history the
    /// turn answers) and system text for this turn (after the daemon's own prompt).
    ///
    /// Every refusal is counted on `blufio_errors_total` by its kind.
    pub async fn send(self: &Arc<Self>, request: TurnRequest<'_>) -> Result<mpsc::Receiver<TurnEvent>, AgentError> {
        let channel = request.channel;
        let accepted = self.accept(request).await;
        match &accepted {
            Ok(_) => self
                .metrics
                .messages
                .with_label_values(&["inbound", channel.as_str()])
                .inc(),
            Err(error) => self.count_error(error),
        }
        accepted
    }

    async fn accept(self: &Arc<Self>, request: TurnRequest<'_>) -> Result<mpsc::Receiver<TurnEvent>, AgentError> {
        // Held until the turn is spawned: a restore waits for the message to be stored and the
        // turn to count as running.
        let _admitted = self.admit_change().await?;
        let TurnRequest {
            channel,
            principal,
            session_id,
            earlier,
            text,
            system,
        } = request;
        if session_id.is_some() && !earlier.is_empty() {
            return Err(AgentError::InvalidMessage {
                reason: "a conversation can be brought only to a new session; an existing one has its own history"
                    .to_owned(),
            });
        }
        if earlier.len() > MAX_EARLIER_MESSAGES {
            return Err(AgentError::InvalidMessage {
                reason: format!(
                    "the conversation has {} earlier messages; at most {MAX_EARLIER_MESSAGES} are taken",
                    earlier.len()
                ),
            });
        }
        let brought: usize = earlier.iter().map(|(_, text)| text.len()).sum::<usize>() + system.map_or(0, str::len);
        if brought > MAX_MESSAGE_BYTES {
            return Err(AgentError::InvalidMessage {
                reason: format!(
                    "the earlier messages and system text are {brought} bytes; the limit is {MAX_MESSAGE_BYTES}; send a shorter conversation"
                ),
            });
        }
        if text.trim().is_empty() {
            return Err(AgentError::InvalidMessage {
                reason: "the message is empty".to_owned(),
            });
        }
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(AgentError::InvalidMessage {
                reason: format!(
                    "the message is {} bytes; the limit is {MAX_MESSAGE_BYTES}; send a shorter message or a file",
                    text.len()
                ),
            });
        }
        if self.token.is_cancelled() {
            return Err(AgentError::ShuttingDown);
        }
        let config = self.config.get();
        if let Err(problem) = provider_problem(&config.config, &self.secrets) {
            return Err(AgentError::ProviderNotConfigured { problem });
        }
        self.admit_memory()?;
        // Refuse early when no call could fit: there is no point storing a message that cannot
        // be answered. The real reservation happens per call.
        let model = config.config.provider.model();
        let price = budget::price_of(&config.config.pricing, &model)?;
        self.budget
            .check(
                budget::worst_case(0, config.config.provider.max_tokens, price),
                &config.config.budget,
                &Period::now(),
            )
            .inspect_err(|error| {
                if let BudgetError::Exhausted { which, .. } = error {
                    self.events.publish(Event::BudgetExhausted { period: which });
                }
            })?;
        // Take a place in the queue before anything is stored, atomically, so that concurrent
        // callers cannot all slip past the bound. Free slots count as places: those turns start
        // at once. Turns waiting for their session count as queued too.
        let capacity = self.max_queued + self.slots.available_permits();
        if let Err(waiting) = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
            (queued < capacity).then_some(queued + 1)
        }) {
            return Err(AgentError::QueueFull {
                waiting,
                slots: self.slot_count,
            });
        }
        let place = QueuePlace(&self.queued);

        // A new session is created in the transaction that stores its first message: no
        // snapshot or crash can hold a session without it.
        let (session_id, new_title) = match session_id {
            // No read first: the transaction that stores the message finds out, since its turn
            // refers to the session (a foreign key). Session ids are UUIDs; a longer one is no id.
            Some(id) if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES => {
                return Err(AgentError::SessionNotFound { id: id.to_owned() });
            }
            Some(id) => (id.to_owned(), None),
            None => {
                self.admit_memory()?;
                // A brought conversation is titled by its first message from the owner.
                let first = earlier
                    .iter()
                    .find(|(role, _)| *role == Role::User)
                    .map_or(text, |(_, first)| first.as_str());
                (uuid::Uuid::now_v7().to_string(), Some(session_title(first)))
            }
        };
        // Held from here until the turn ends, so that the session counts as busy (and cannot be
        // deleted) from the moment its message is stored. Alone: no other turn of the session is
        // in flight, so every earlier turn of it has ended (see `histories`).
        let (session_lock, alone, accepted_at) = {
            let mut locks = self.sessions.lock().expect("session locks poisoned");
            let lock = locks.lock_for(&session_id);
            let alone = Arc::strong_count(&lock) == 2;
            (lock, alone, locks.last_accepted(&session_id).unwrap_or_default())
        };
        let epoch = self.storage.epoch();
        let inbound = vec![ContentBlock::Text { text: text.to_owned() }];
        // A new session's history is exactly what is stored below: the turn takes it from here
        // rather than reading it back (the same last HISTORY_MESSAGES messages).
        let known_history = new_title.is_some().then(|| {
            let mut transcript = histories::Transcript::new(HISTORY_MESSAGES as usize, epoch);
            let skip = (earlier.len() + 1).saturating_sub(HISTORY_MESSAGES as usize);
            for (role, text) in earlier.iter().skip(skip) {
                transcript.push(*role, vec![ContentBlock::Text { text: text.clone() }]);
            }
            transcript.push(Role::User, inbound.clone());
            transcript
        });
        let turn_id = uuid::Uuid::now_v7().to_string();
        let message_id = uuid::Uuid::now_v7().to_string();
        let content = StoredBlocks::encode(&inbound);
        let earlier: Vec<(String, &'static str, String)> = earlier
            .iter()
            .map(|(role, text)| {
                (
                    uuid::Uuid::now_v7().to_string(),
                    role.as_str(),
                    StoredBlocks::encode(&[ContentBlock::Text { text: text.clone() }]),
                )
            })
            .collect();
        let earlier: Vec<NewMessage<'_>> = earlier
            .iter()
            .map(|(id, role, content)| NewMessage {
                id,
                session_id: &session_id,
                turn_id: &turn_id,
                role,
                content_json: content,
            })
            .collect();
        self.storage
            .begin_turn(
                new_title.as_deref().map(|title| (session_id.as_str(), title)),
                &earlier,
                NewMessage {
                    id: &message_id,
                    session_id: &session_id,
                    turn_id: &turn_id,
                    role: Role::User.as_str(),
                    content_json: &content,
                },
            )
            .await
            .map_err(|error| match error.kind() {
                StorageErrorKind::MissingParent => AgentError::SessionNotFound { id: session_id.clone() },
                _ => error.into(),
            })?;
        // Turns take their place in the history in the order their messages were stored, which
        // can differ from the order they were accepted in: alone only if no other turn of the
        // session was accepted since this one, so that every other turn's messages come before
        // its own.
        let accepted = Acceptance {
            alone: alone
                && self
                    .sessions
                    .lock()
                    .expect("session locks poisoned")
                    .last_accepted(&session_id)
                    == Some(accepted_at),
            at: accepted_at,
        };

        let (events, receiver) = mpsc::channel(TURN_EVENT_BUFFER);
        events
            .send(TurnEvent::Accepted {
                session_id: session_id.clone(),
                message_id,
            })
            .await
            .ok();
        // The turn task now owns the queue place and gives it up when the turn starts.
        std::mem::forget(place);
        let agent = self.clone();
        let accepted = AcceptedTurn {
            channel,
            principal,
            session_id,
            turn_id,
            system: system.map(str::to_owned),
            history: known_history,
            inbound,
            accepted,
        };
        self.turns.spawn(async move {
            agent.run_turn(session_lock, accepted, events).await;
        });
        Ok(receiver)
    }

    /// Runs one accepted turn to its end and records how it ended.
    async fn run_turn(
        self: Arc<Self>,
        session_lock: Arc<tokio::sync::Mutex<()>>,
        accepted: AcceptedTurn,
        events: mpsc::Sender<TurnEvent>,
    ) {
        let AcceptedTurn {
            channel,
            principal,
            session_id,
            turn_id,
            system,
            history,
            inbound,
            accepted,
        } = accepted;
        // Whatever happens next, the session's kept transcript is this turn's to use or drop: no
        // turn may put one back while this one is in flight (see `histories`).
        let kept = self.histories.take(&session_id);
        let source = if history.is_some() { "new" } else { "kept" };
        let history = history.or_else(|| {
            // Alone, the kept transcript holds every earlier message; this turn's is the only
            // one after it.
            let mut kept = kept.filter(|kept| accepted.alone && kept.epoch() == self.storage.epoch())?;
            kept.push(Role::User, inbound);
            Some(kept)
        });
        let source = if history.is_some() { source } else { "read" };
        let admitted = async {
            let guard = session_lock.lock().await;
            let permit = self.slots.clone().acquire_owned().await;
            (guard, permit)
        };
        let (guard, permit) = tokio::select! {
            admitted = admitted => admitted,
            () = events.closed() => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.end_turn(&session_id, &turn_id, TurnEnd::Cancelled, Some("the caller went away before the turn started")).await;
                return;
            }
            () = self.token.cancelled() => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                // Left as running: the next start marks it interrupted.
                let _ = events.send(TurnEvent::Failed(AgentError::ShuttingDown)).await;
                return;
            }
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let Ok(permit) = permit else {
            return;
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        self.metrics.turn_histories.with_label_values(&[source]).inc();
        // The body watches for a departed caller and for shutdown itself, so that a call in
        // flight is always written to the ledger before the turn stops.
        let ids = TurnIds {
            session_id: &session_id,
            turn_id: &turn_id,
            principal,
        };
        let outcome = self.turn_body(ids, system.as_deref(), history, &events, &permit).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        let last = match outcome {
            Ok((summary, end_recorded, transcript)) => {
                if !end_recorded {
                    self.end_turn(&session_id, &turn_id, TurnEnd::Completed, None).await;
                }
                self.keep_transcript(&session_id, &session_lock, accepted, transcript);
                self.provider_down.store(false, Ordering::Relaxed);
                self.events.publish(Event::TurnFinished {
                    session_id: session_id.clone(),
                    model: summary.model.clone(),
                    cost_micros: summary.cost_micros,
                });
                self.metrics
                    .messages
                    .with_label_values(&["outbound", channel.as_str()])
                    .inc();
                Some(TurnEvent::Completed(summary))
            }
            Err(TurnStop::Cancelled) => {
                tracing::info!(session = %session_id, turn = %turn_id, "turn cancelled by the caller");
                self.end_turn(
                    &session_id,
                    &turn_id,
                    TurnEnd::Cancelled,
                    Some("cancelled by the caller"),
                )
                .await;
                None
            }
            // Left as running on purpose: the next start marks it interrupted.
            Err(TurnStop::ShuttingDown) => Some(TurnEvent::Failed(AgentError::ShuttingDown)),
            Err(TurnStop::Failed(error)) => {
                let message = crate::error_chain(&error);
                tracing::warn!(session = %session_id, turn = %turn_id, error = %message, "turn failed");
                self.end_turn(&session_id, &turn_id, TurnEnd::Failed, Some(&message))
                    .await;
                self.publish_failure(&session_id, &error);
                Some(TurnEvent::Failed(error))
            }
        };
        // Everything is stored: the session is free before the caller hears of the end, so that
        // its next message finds no turn of this one in flight (and can use what was kept).
        drop(guard);
        drop(session_lock);
        if let Some(last) = last {
            let _ = events.send(last).await;
        }
    }

    /// Keeps a completed turn's transcript for the session's next turn, unless another turn of
    /// the session is in flight or was accepted since this one (its message is stored after
    /// this turn's, even if it was cancelled before it started), a restore replaced the
    /// database, or memory is short.
    fn keep_transcript(
        &self,
        session_id: &str,
        session_lock: &Arc<tokio::sync::Mutex<()>>,
        accepted: Acceptance,
        transcript: histories::Transcript,
    ) {
        // Not under the registry's lock: at the warn level the memory check runs the shedders,
        // one of which takes that lock.
        if !accepted.alone || self.memory.admit().is_err() {
            return;
        }
        // Under the registry's lock, so that a turn accepted from now on takes the transcript
        // out again when it starts, and one accepted before is seen here. Nothing else is locked
        // inside it but the transcripts' own lock.
        let locks = self.sessions.lock().expect("session locks poisoned");
        if Arc::strong_count(session_lock) == 2
            && locks.last_accepted(session_id) == Some(accepted.at)
            && transcript.epoch() == self.storage.epoch()
        {
            self.histories.keep(session_id, transcript);
        }
    }

    /// Tells the event bus that a turn of `session_id` failed (and that a cap refused it), and
    /// counts the failure.
    fn publish_failure(&self, session_id: &str, error: &AgentError) {
        self.count_error(error);
        if let AgentError::Budget(BudgetError::Exhausted { which, .. }) = error {
            self.events.publish(Event::BudgetExhausted { period: which });
        }
        if error.kind() == ErrorKind::ProviderFailed && !self.provider_down.swap(true, Ordering::Relaxed) {
            self.events.publish(Event::ProviderDown {
                provider: self.config.get().config.provider.kind.as_str(),
                error: crate::error_chain(error),
            });
        }
        self.events.publish(Event::TurnFailed {
            session_id: session_id.to_owned(),
            kind: error.kind().as_str(),
        });
    }

    /// Counts an error on `blufio_errors_total` by its kind (a fixed set).
    fn count_error(&self, error: &AgentError) {
        self.metrics.errors.with_label_values(&[error.kind().as_str()]).inc();
    }

    /// Admits a change unless a restore is replacing the database; the guard holds the restore
    /// back until the change (and the spawn of its turn) is done.
    async fn admit_change(&self) -> Result<tokio::sync::RwLockReadGuard<'_, bool>, AgentError> {
        let admitted = self.admission.read().await;
        if *admitted {
            return Err(AgentError::Restoring);
        }
        Ok(admitted)
    }

    /// Refuses new changes (turns, sessions) until [`Agent::end_restore`], after every change
    /// already admitted has been stored and its turn spawned. Returns the turns then running.
    pub async fn begin_restore(&self) -> usize {
        *self.admission.write().await = true;
        self.turns.len()
    }

    /// Waits up to `timeout` for the running turns to end; whether they all did.
    pub async fn wait_for_running_turns(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.turns.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Accepts changes again, with the budget's spend read from the (restored) database.
    pub async fn end_restore(&self) -> Result<(), AgentError> {
        let mut admission = self.admission.write().await;
        let period = Period::now();
        let reloaded = self.storage.spend(&period.day, &period.month).await;
        *admission = false;
        // The epoch moved with the swap, so kept transcripts are unusable already; free them.
        self.histories.clear();
        let (spent_day, spent_month) = reloaded?;
        self.budget.reset(&period, spent_day, spent_month);
        Ok(())
    }

    /// Refuses new work while memory is at the limit level.
    fn admit_memory(&self) -> Result<(), AgentError> {
        self.memory.admit().map_err(|refused| AgentError::MemoryPressure {
            rss_mib: refused.rss_mib,
            limit_mib: refused.limit_mib,
        })
    }

    async fn end_turn(&self, session_id: &str, turn_id: &str, end: TurnEnd, error: Option<&str>) {
        if let Err(error) = self.storage.finish_turn(session_id, turn_id, end, error).await {
            tracing::error!(error = %crate::error_chain(&error), turn = %turn_id, "cannot record the end of a turn");
        }
    }

    /// The provider calls and tool runs of one turn: prepare, then call the provider and run the
    /// tools it asks for, until it answers or `agent.max_tool_iterations` is reached. Returns the
    /// summary and whether the turn's end is already stored (with the last answer).
    async fn turn_body(
        &self,
        ids: TurnIds<'_>,
        system: Option<&str>,
        history: Option<histories::Transcript>,
        events: &mpsc::Sender<TurnEvent>,
        _permit: &OwnedSemaphorePermit,
    ) -> Result<(TurnSummary, bool, histories::Transcript), TurnStop> {
        let mut turn = self.prepare_turn(ids, system, history).await?;
        let mut summary = TurnSummary {
            message_id: String::new(),
            usage: Usage::default(),
            cost_micros: 0,
            provider_calls: 0,
            stop_reason: StopReason::EndTurn,
            model: turn.model.clone(),
        };
        loop {
            let (completion, recorded) = self.call_provider(&mut turn, ids, events, &mut summary).await?;
            summary.message_id = recorded.answer_id;
            turn.transcript.push_stored(Role::Assistant, &completion.content);
            turn.history.push_assistant(completion.content.clone());
            if recorded.end_recorded {
                // The answer ends the turn, and the turn's end was stored with it.
                summary.stop_reason = completion.stop_reason;
                return Ok((summary, true, turn.transcript));
            }
            let calls: Vec<(String, String, serde_json::Value)> = completion
                .content
                .iter()
                .filter_map(|block| match block {
                    ContentBlock::ToolUse { id, name, input } => Some((id.clone(), name.clone(), input.clone())),
                    _ => None,
                })
                .collect();
            let limit_reached = summary.provider_calls >= turn.config.config.agent.max_tool_iterations;
            let results = self
                .run_tools(&turn.tools, ids.principal, calls, limit_reached, events)
                .await?;
            let results_id = uuid::Uuid::now_v7().to_string();
            self.store(ids, &results_id, Role::Tool, &results, &summary.model)
                .await?;
            turn.transcript.push_stored(Role::Tool, &results);
            turn.history.push_tool_results(results);
            if limit_reached {
                summary.stop_reason = StopReason::ToolLimit;
                return Ok((summary, false, turn.transcript));
            }
        }
    }

    /// What the turn works with, fixed at its start: the configuration, provider, tools, price
    /// and the history it answers.
    async fn prepare_turn(
        &self,
        ids: TurnIds<'_>,
        extra_system: Option<&str>,
        known_history: Option<histories::Transcript>,
    ) -> Result<Turn, TurnStop> {
        let config = self.config.get();
        let provider = self.provider_for(&config.config).map_err(TurnStop::Failed)?;
        let tools = self.tools_for(&config.config.tools);
        let model = config.config.provider.model();
        let price =
            *budget::price_of(&config.config.pricing, &model).map_err(|error| TurnStop::Failed(error.into()))?;
        let transcript = match known_history {
            Some(transcript) => transcript,
            None => {
                // The epoch before the read: a restore during it makes the copy unusable later.
                let epoch = self.storage.epoch();
                let records = self
                    .storage
                    .history_of_turn(ids.session_id, ids.turn_id, HISTORY_MESSAGES)
                    .await
                    .map_err(|error| TurnStop::Failed(error.into()))?;
                histories::Transcript::from_records(&records, HISTORY_MESSAGES as usize, epoch)
            }
        };
        Ok(Turn {
            system: match extra_system.filter(|extra| !extra.trim().is_empty()) {
                // The daemon's prompt first and unchanged, so that a provider's prompt cache
                // still matches it.
                Some(extra) => format!("{}\n\n{extra}", context::system_prompt(&config.config.agent)),
                None => context::system_prompt(&config.config.agent),
            },
            specs: tools.specs(ids.principal),
            history: transcript.history(),
            transcript,
            config,
            provider,
            tools,
            model,
            price,
        })
    }

    /// One provider call under a budget reservation, streamed to the caller, with its ledger row
    /// written whatever happens (a call that never completed is charged its estimated input and
    /// the output seen).
    async fn call_provider(
        &self,
        turn: &mut Turn,
        ids: TurnIds<'_>,
        events: &mpsc::Sender<TurnEvent>,
        summary: &mut TurnSummary,
    ) -> Result<(provider::Completion, Recorded), TurnStop> {
        let config = &turn.config.config;
        let request = provider::ChatRequest {
            model: turn.model.clone(),
            system: turn.system.as_str().into(),
            messages: turn.history.context(config.agent.context_tokens).into(),
            tools: turn.specs.as_slice().into(),
            max_tokens: config.provider.max_tokens,
        };
        let estimate = context::estimate_request_tokens(&request);
        let reservation = self
            .budget
            .reserve(
                budget::worst_case(estimate, request.max_tokens, &turn.price),
                &config.budget,
                &Period::now(),
            )
            .map_err(|error| TurnStop::Failed(error.into()))?;
        let period = reservation.period().clone();
        summary.provider_calls += 1;
        let max_tokens = request.max_tokens;
        let mut seen = Seen::default();
        let sent = std::time::Instant::now();
        let streamed = stream_call(turn.provider.as_ref(), request, events, &self.token, &mut seen).await;
        let latency = sent.elapsed();
        let streamed_bytes = seen.bytes;
        let (usage, ok) = match &streamed {
            Ok(completion) => (completion.usage, true),
            // The answer never completed, so the provider's count is unknown. Providers bill the
            // input and whatever output they produced even for a broken stream: charge the
            // estimated input and the output seen so far, so that cancelling a turn cannot hide
            // spend.
            Err(_) => (
                Usage {
                    input_tokens: estimate,
                    output_tokens: streamed_bytes.div_ceil(3).min(u64::from(max_tokens)),
                    ..Usage::default()
                },
                false,
            ),
        };
        let cost = budget::cost_of(&usage, &turn.price);
        if let Ok(completion) = &streamed
            && !completion.model.is_empty()
        {
            summary.model.clone_from(&completion.model);
        }
        let entry = LedgerEntry {
            session_id: ids.session_id,
            turn_id: ids.turn_id,
            provider: turn.provider.kind().as_str(),
            model: &turn.model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_creation_tokens: usage.cache_creation_input_tokens,
            cache_read_tokens: usage.cache_read_input_tokens,
            cost_micros: cost,
            ok,
            day: &period.day,
            month: &period.month,
        };
        let recorded = match &streamed {
            Ok(completion) => self.record_answer(&entry, ids, completion, &summary.model).await,
            Err(_) => self.storage.record_call(&entry).await.map(|()| Recorded::default()),
        };
        reservation.settle(cost);
        self.count_call(turn, &usage, cost, ok, latency);
        let labels = [turn.provider.kind().as_str(), turn.model.as_str()];
        if seen.retries > 0 {
            self.metrics
                .provider_retries
                .with_label_values(&labels)
                .inc_by(seen.retries);
        }
        if let Some(first) = seen.first_token {
            self.metrics
                .time_to_first_token
                .with_label_values(&[turn.model.as_str()])
                .observe(first.duration_since(sent).as_secs_f64());
        }
        summary.cost_micros += cost;
        summary.usage.add(&usage);
        let recorded = recorded.map_err(|error| TurnStop::Failed(error.into()))?;
        Ok((streamed?, recorded))
    }

    /// Stores a completed call's answer with its ledger row in one transaction, and the turn's
    /// end too when the answer ends it. If that fails, the ledger row is still written alone:
    /// every dispatched call keeps its row.
    async fn record_answer(
        &self,
        entry: &LedgerEntry<'_>,
        ids: TurnIds<'_>,
        completion: &provider::Completion,
        model: &str,
    ) -> Result<Recorded, StorageError> {
        let answer_id = uuid::Uuid::now_v7().to_string();
        let content = StoredBlocks::encode(&completion.content);
        let answer = NewMessage {
            id: &answer_id,
            session_id: ids.session_id,
            turn_id: ids.turn_id,
            role: Role::Assistant.as_str(),
            content_json: &content,
        };
        let end = ends_turn(completion).then_some(TurnEnd::Completed);
        match self.storage.record_answer(entry, answer, model, end).await {
            Ok(()) => Ok(Recorded {
                answer_id,
                end_recorded: end.is_some(),
            }),
            Err(error) => {
                if let Err(ledger) = self.storage.record_call(entry).await {
                    tracing::error!(error = %crate::error_chain(&ledger), turn = %ids.turn_id, "cannot write a provider call's ledger row");
                }
                Err(error)
            }
        }
    }

    /// Counts one provider call on the metrics, under the configured model (a fixed set: never
    /// what a provider answered).
    fn count_call(&self, turn: &Turn, usage: &Usage, cost: budget::Micros, ok: bool, latency: std::time::Duration) {
        let model = turn.model.as_str();
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_creation_input_tokens),
        ] {
            self.metrics.tokens.with_label_values(&[model, kind]).inc_by(count);
        }
        self.metrics
            .cost_usd
            .with_label_values(&[model])
            .inc_by(budget::dollars(cost));
        self.metrics
            .provider_requests
            .with_label_values(&[turn.provider.kind().as_str(), model, if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.metrics
                .response_latency
                .with_label_values(&[model])
                .observe(latency.as_secs_f64());
        }
    }

    /// Runs the tool calls the model asked for, in order, telling the caller as each starts and
    /// finishes. Past the iteration limit none runs: each gets an error result instead.
    async fn run_tools(
        &self,
        tools: &Tools,
        principal: Principal,
        calls: Vec<(String, String, serde_json::Value)>,
        limit_reached: bool,
        events: &mpsc::Sender<TurnEvent>,
    ) -> Result<Vec<ContentBlock>, TurnStop> {
        let mut results = Vec::with_capacity(calls.len());
        for (id, name, input) in calls {
            let outcome;
            let output = if limit_reached {
                outcome = "not_run";
                tools::ToolOutput {
                    content: "not run: the turn reached agent.max_tool_iterations".to_owned(),
                    is_error: true,
                }
            } else {
                if events.is_closed() {
                    return Err(TurnStop::Cancelled);
                }
                let _ = events
                    .send(TurnEvent::Tool {
                        id: id.clone(),
                        name: name.clone(),
                        phase: ToolPhase::Started,
                        is_error: false,
                        summary: String::new(),
                    })
                    .await;
                let output = tools.call(&name, &input, principal, &self.token).await;
                let _ = events
                    .send(TurnEvent::Tool {
                        id: id.clone(),
                        name: name.clone(),
                        phase: ToolPhase::Finished,
                        is_error: output.is_error,
                        summary: output.content.chars().take(TOOL_SUMMARY_CHARS).collect(),
                    })
                    .await;
                outcome = if output.is_error { "error" } else { "ok" };
                output
            };
            self.metrics
                .tool_calls
                .with_label_values(&[tools::label(&name), outcome])
                .inc();
            results.push(ContentBlock::ToolResult {
                tool_use_id: id,
                content: output.content,
                is_error: output.is_error,
            });
        }
        Ok(results)
    }

    async fn store(
        &self,
        ids: TurnIds<'_>,
        id: &str,
        role: Role,
        blocks: &[ContentBlock],
        model: &str,
    ) -> Result<(), TurnStop> {
        let content = StoredBlocks::encode(blocks);
        self.storage
            .append_message(
                NewMessage {
                    id,
                    session_id: ids.session_id,
                    turn_id: ids.turn_id,
                    role: role.as_str(),
                    content_json: &content,
                },
                model,
            )
            .await
            .map_err(|error| TurnStop::Failed(error.into()))
    }

    /// The provider for the current config, rebuilt only when the config changed.
    fn provider_for(&self, config: &Config) -> Result<Arc<dyn Provider>, AgentError> {
        let mut cached = self.provider.lock().expect("provider cache poisoned");
        // A secret changed in the vault changes the generation, so the next turn uses it.
        let generation = self.secrets.generation();
        if let Some((built_for, built_at, provider)) = cached.as_ref()
            && *built_for == config.provider
            && *built_at == generation
        {
            return Ok(provider.clone());
        }
        provider_problem(config, &self.secrets).map_err(|problem| AgentError::ProviderNotConfigured { problem })?;
        let key = self
            .secrets
            .provider_key(&config.provider)
            .map_err(|error| AgentError::ProviderNotConfigured {
                problem: crate::error_chain(&error),
            })?;
        let settings = ProviderSettings::from_config(&config.provider, key.as_ref().map(|key| &key.value));
        let settings_url = settings.base_url.clone();
        let provider: Arc<dyn Provider> = provider::build(config.provider.kind, settings).into();
        tracing::info!(
            provider = config.provider.kind.as_str(),
            base_url = %crate::config::mask_url_credentials(&settings_url),
            key = key.as_ref().map_or_else(|| "none".to_owned(), |key| key.source.describe()),
            "provider client built"
        );
        *cached = Some((config.provider.clone(), generation, provider.clone()));
        Ok(provider)
    }

    /// The tools for the current config, rebuilt only when the config changed.
    fn tools_for(&self, config: &ToolsConfig) -> Arc<Tools> {
        let mut cached = self.tools.lock().expect("tools cache poisoned");
        if let Some((built_for, tools)) = cached.as_ref()
            && built_for == config
        {
            return tools.clone();
        }
        let tools = Arc::new(Tools::from_config(config, &self.state_dir));
        *cached = Some((config.clone(), tools.clone()));
        tools
    }
}

/// A place in the turn queue, given back when dropped (on every early return of
/// `send_message`).
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a caller asks a turn to answer (see [`Agent::send`]).
#[derive(Debug)]
pub struct TurnRequest<'a> {
    /// Where the message came from (a metric label).
    pub channel: Channel,
    /// Who asked: decides the tools the turn is offered.
    pub principal: Principal,
    /// The session to continue; a new one when `None`.
    pub session_id: Option<&'a str>,
    /// The conversation before `text`, oldest first (only for a new session).
    pub earlier: Vec<(Role, String)>,
    /// The message to answer.
    pub text: &'a str,
    /// System text for this turn, after the daemon's own prompt.
    pub system: Option<&'a str>,
}

/// A turn stored and queued, handed to the task that runs it.
struct AcceptedTurn {
    channel: Channel,
    principal: Principal,
    session_id: String,
    turn_id: String,
    system: Option<String>,
    /// The history the turn answers, when it is known without reading it (a new session).
    history: Option<histories::Transcript>,
    /// The message the turn answers, as stored.
    inbound: Vec<ContentBlock>,
    /// Whether the turn was alone in its session, and when it was accepted.
    accepted: Acceptance,
}

/// When a turn was accepted, and whether it was alone in its session: no other turn of it in
/// flight when it was accepted, nor accepted after it until its message was stored. Only such a
/// turn may use or keep the session's transcript (see `histories`).
#[derive(Debug, Clone, Copy)]
struct Acceptance {
    alone: bool,
    /// The session registry's clock when it was accepted.
    at: u64,
}

/// The session and turn a piece of turn work belongs to, and who asked for the turn.
#[derive(Clone, Copy)]
struct TurnIds<'a> {
    session_id: &'a str,
    turn_id: &'a str,
    principal: Principal,
}

/// What a running turn works with (see [`Agent::prepare_turn`]).
struct Turn {
    config: Arc<crate::config::Loaded>,
    provider: Arc<dyn Provider>,
    tools: Arc<Tools>,
    model: String,
    price: crate::config::ModelPrice,
    system: String,
    specs: Vec<provider::ToolSpec>,
    history: context::History,
    /// The session's messages as stored, kept in step with `history` (see `histories`).
    transcript: histories::Transcript,
}

/// What [`Agent::record_answer`] wrote.
#[derive(Debug, Default)]
struct Recorded {
    /// The stored answer's message id.
    answer_id: String,
    /// Whether the turn's end was stored with it.
    end_recorded: bool,
}

/// Whether the model's answer ends the turn: it asks for no tool.
fn ends_turn(completion: &provider::Completion) -> bool {
    completion.stop_reason != StopReason::ToolUse
        || !completion
            .content
            .iter()
            .any(|block| matches!(block, ContentBlock::ToolUse { .. }))
}

/// Why a running turn stopped early.
enum TurnStop {
    Cancelled,
    ShuttingDown,
    Failed(AgentError),
}

impl From<ProviderError> for TurnStop {
    fn from(error: ProviderError) -> Self {
        TurnStop::Failed(error.into())
    }
}

/// What [`stream_call`] saw of a call, whether or not it completed.
#[derive(Debug, Default)]
struct Seen {
    /// The answer so far: its text, and a rough size per tool call whose input streams unseen,
    /// for charging a call that never completes.
    bytes: u64,
    /// When the first piece of the answer arrived.
    first_token: Option<std::time::Instant>,
    /// Attempts the provider retried before the answer started.
    retries: u64,
}

/// Streams one provider call, forwarding text to the caller. Stops (dropping the provider's
/// stream, which aborts the request) when the caller goes away or the daemon shuts down.
async fn stream_call(
    provider: &dyn Provider,
    request: provider::ChatRequest<'_>,
    events: &mpsc::Sender<TurnEvent>,
    token: &CancellationToken,
    seen: &mut Seen,
) -> Result<provider::Completion, TurnStop> {
    /// Bytes charged for a tool call whose input was streamed but not seen.
    const TOOL_CALL_BYTES: u64 = 192;
    let mut stream = provider.stream(request);
    loop {
        let event = tokio::select! {
            event = stream.recv() => event,
            () = events.closed() => return Err(TurnStop::Cancelled),
            () = token.cancelled() => return Err(TurnStop::ShuttingDown),
        };
        match event {
            None => return Err(ProviderError::Truncated.into()),
            Some(Err(ProviderError::AnswerTooLarge { limit })) => {
                // The provider produced at least that much, tool input included, which the events
                // do not carry: charge it.
                seen.bytes = seen.bytes.max(limit as u64);
                return Err(ProviderError::AnswerTooLarge { limit }.into());
            }
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(StreamEvent::TextDelta(text))) => {
                seen.bytes += text.len() as u64;
                seen.first_token.get_or_insert_with(std::time::Instant::now);
                // If the caller is gone, the select above notices on the next event.
                let _ = events.send(TurnEvent::TextDelta(text)).await;
            }
            Some(Ok(StreamEvent::ToolUseStarted { .. })) => {
                seen.bytes += TOOL_CALL_BYTES;
                seen.first_token.get_or_insert_with(std::time::Instant::now);
            }
            Some(Ok(StreamEvent::Retrying)) => seen.retries += 1,
            Some(Ok(StreamEvent::ToolInputStreamed(bytes))) => seen.bytes += bytes as u64,
            Some(Ok(StreamEvent::Completed(completion))) => {
                seen.first_token.get_or_insert_with(std::time::Instant::now);
                return Ok(completion);
            }
        }
    }
}

/// A stored session in the agent's model.
fn session_of(record: SessionRecord) -> Result<Session, AgentError> {
    Ok(Session {
        state: SessionState::parse(&record.state).ok_or_else(|| AgentError::Stored {
            what: format!("a session in state {:?}", record.state),
        })?,
        id: record.id,
        title: record.title,
        created_at: record.created_at,
        updated_at: record.updated_at,
        model: record.model,
        message_count: u64::try_from(record.message_count).unwrap_or(0),
    })
}

/// Ledger totals in the agent's model (counts are never negative).
fn totals_of(totals: &storage::UsageTotals) -> UsageTotals {
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    UsageTotals {
        calls: count(totals.calls),
        usage: Usage {
            input_tokens: count(totals.input_tokens),
            output_tokens: count(totals.output_tokens),
            cache_creation_input_tokens: count(totals.cache_creation_tokens),
            cache_read_input_tokens: count(totals.cache_read_tokens),
        },
        cost_micros: totals.cost_micros,
    }
}

fn report_of(report: storage::UsageReport) -> UsageReport {
    UsageReport {
        days: report
            .days
            .iter()
            .map(|(day, totals)| (day.clone(), totals_of(totals)))
            .collect(),
        models: report
            .models
            .into_iter()
            .map(|(provider, model, totals)| ModelUsage {
                provider,
                model,
                totals: totals_of(&totals),
            })
            .collect(),
        sessions: report
            .sessions
            .into_iter()
            .map(|(session_id, title, totals)| SessionUsage {
                session_id,
                // A live session's title is never empty (an empty one becomes "new session").
                deleted: title.is_empty(),
                title,
                totals: totals_of(&totals),
            })
            .collect(),
    }
}

/// The stored title of a new session titled `title`: trimmed and cut to length, or "new session".
fn session_title(title: &str) -> String {
    let title = title.trim();
    title_of(if title.is_empty() { "new session" } else { title })
}

/// Why the configured provider cannot be called, with the fix.
pub fn provider_problem(config: &Config, secrets: &Secrets) -> Result<(), String> {
    let provider = &config.provider;
    let has_key = secrets
        .provider_key(provider)
        .map_err(|error| crate::error_chain(&error))?
        .is_some();
    let official = provider.base_url() == provider.kind.default_base_url();
    // Local OpenAI-compatible servers (Ollama, llama.cpp, vLLM) need no key.
    if !has_key && (provider.kind == crate::config::ProviderKind::Anthropic || official) {
        return Err(format!(
            "no API key for the {kind} provider: put it in the vault (`blufioctl config set-secret {kind}`, then `blufioctl config set provider.api_key secret:{kind}`) or set {} in blufiod's environment",
            provider.kind.api_key_env(),
            kind = provider.kind.as_str(),
        ));
    }
    let model = provider.model();
    budget::price_of(&config.pricing, &model).map_err(|error| error.to_string())?;
    Ok(())
}

/// A session title from the first words of a message.
fn title_of(text: &str) -> String {
    const TITLE_CHARS: usize = 60;
    let line = text.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() <= TITLE_CHARS {
        return line.to_owned();
    }
    let cut: String = line.chars().take(TITLE_CHARS).collect();
    format!("{}…", cut.trim_end())
}

fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (at, id) = cursor.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_verdict_warns_past_five_seconds_and_fails_where_signatures_would() {
        use crate::health::Level;
        let level = |offset| clock_verdict("anthropic", offset, 300).level;
        assert_eq!(level(Some(0.7)), Level::Ok);
        assert_eq!(level(Some(-4.9)), Level::Ok);
        assert_eq!(level(Some(6.0)), Level::Warn);
        assert_eq!(level(Some(-149.0)), Level::Warn);
        assert_eq!(level(Some(150.0)), Level::Fail);
        assert_eq!(level(None), Level::Warn);
        let behind = clock_verdict("anthropic", Some(151.2), 300);
        assert!(
            behind.detail.contains("151.2 s behind anthropic's"),
            "{}",
            behind.detail
        );
        assert!(behind.hint.as_deref().unwrap_or_default().contains("timedatectl"));
        let ahead = clock_verdict("openai", Some(-8.0), 300);
        assert!(ahead.detail.contains("8.0 s ahead of openai's"), "{}", ahead.detail);
        // A tight skew still warns first: under 5 s is noise.
        assert_eq!(clock_verdict("x", Some(4.0), 2).level, Level::Ok);
        assert_eq!(clock_verdict("x", Some(5.5), 2).level, Level::Fail);
    }

    #[test]
    fn titles_are_the_first_line_cut_to_sixty_chars() {
        assert_eq!(title_of("\n  hello there\nsecond"), "hello there");
        let long = "a".repeat(100);
        assert_eq!(title_of(&long).chars().count(), 61);
        assert!(title_of(&long).ends_with('…'));
    }

    #[test]
    fn session_locks_evict_idle_entries_beyond_capacity() {
        let mut locks = SessionLocks {
            capacity: 2,
            clock: 0,
            entries: HashMap::new(),
        };
        let held = locks.lock_for("a");
        drop(locks.lock_for("b"));
        drop(locks.lock_for("c"));
        assert_eq!(locks.entries.len(), 2, "idle b was evicted, held a stays");
        assert!(locks.entries.contains_key("a") && locks.entries.contains_key("c"));
        assert_eq!(locks.active(), 1);
        assert!(locks.is_busy("a"));
        drop(held);
        assert!(!locks.is_busy("a"));
    }

    #[test]
    fn a_missing_session_is_named_at_most_64_characters_long() {
        let long = "é".repeat(1_000);
        let shown = AgentError::SessionNotFound { id: long }.to_string();
        assert!(
            shown.starts_with(&format!("no session \"{}…\"", "é".repeat(64))),
            "{shown}"
        );
        assert!(shown.chars().count() < 150, "{shown}");
        let short = AgentError::SessionNotFound { id: "s1".into() }.to_string();
        assert!(short.starts_with("no session \"s1\";"), "{short}");
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor("1700000000:abc"), Some((1_700_000_000, "abc".to_owned())));
        assert_eq!(parse_cursor("nope"), None);
    }
}
