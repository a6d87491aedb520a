//! The agent's model: the types its callers see. The transports (control, gateway) convert these
//! and nothing else; storage rows and provider wire types stay inside the agent, and every field
//! with a fixed set of values is an enum here, named on the wire by `as_str`.

use super::budget::Micros;

/// One block of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// The model asks for a tool call.
    ToolUse {
        /// Provider-assigned call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments (a JSON object).
        input: serde_json::Value,
    },
    /// The result of a tool call, sent back to the model.
    ToolResult {
        /// The call id it answers.
        tool_use_id: String,
        /// The result text.
        content: String,
        /// Whether the tool failed.
        is_error: bool,
    },
}

/// Why a call, or a turn, stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A final answer.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit `max_tokens`.
    MaxTokens,
    /// The turn reached `agent.max_tool_iterations` (never a provider's reason).
    ToolLimit,
    /// Anything else the provider reported.
    Other(String),
}

impl StopReason {
    /// The wire name: `end_turn`, `tool_use`, `max_tokens`, `tool_limit` or the provider's own.
    pub fn as_str(&self) -> &str {
        match self {
            Self::EndTurn => "end_turn",
            Self::ToolUse => "tool_use",
            Self::MaxTokens => "max_tokens",
            Self::ToolLimit => "tool_limit",
            Self::Other(other) => other,
        }
    }
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

/// Who wrote a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The owner.
    User,
    /// The model.
    Assistant,
    /// Tool results sent back to the model.
    Tool,
}

impl Role {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// The role a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::User, Self::Assistant, Self::Tool]
            .into_iter()
            .find(|role| role.as_str() == name)
    }
}

/// Where a message came from and its answer goes: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channel {
    /// The control socket (`blufioctl chat`, gRPC tools).
    #[default]
    Control,
    /// The HTTPS gateway.
    Gateway,
}

impl Channel {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Gateway => "gateway",
        }
    }
}

/// What a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No turn running.
    Idle,
    /// A turn is running or waiting.
    Running,
    /// The daemon stopped during its last turn.
    Interrupted,
}

impl SessionState {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Interrupted => "interrupted",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Idle, Self::Running, Self::Interrupted]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// A conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Id (UUIDv7).
    pub id: String,
    /// Title.
    pub title: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Model of the latest turn (empty before the first).
    pub model: String,
    /// What it is doing.
    pub state: SessionState,
    /// Messages stored.
    pub message_count: u64,
}

/// A stored message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Id.
    pub id: String,
    /// Who wrote it.
    pub role: Role,
    /// Blocks.
    pub blocks: Vec<ContentBlock>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Where a tool call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPhase {
    /// It is running.
    Started,
    /// It returned.
    Finished,
}

impl ToolPhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Finished => "finished",
        }
    }
}

/// What a caller of `send_message` receives.
#[derive(Debug)]
pub enum TurnEvent {
    /// The inbound message is durable.
    Accepted {
        /// The session (new or given).
        session_id: String,
        /// The stored message.
        message_id: String,
    },
    /// A piece of the answer.
    TextDelta(String),
    /// A tool started or finished.
    Tool {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Started or finished.
        phase: ToolPhase,
        /// Whether it failed (when finished).
        is_error: bool,
        /// Start of the result (when finished).
        summary: String,
    },
    /// The turn is over.
    Completed(TurnSummary),
    /// The turn failed; the stream ends.
    Failed(super::AgentError),
}

/// Totals of a finished turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSummary {
    /// The stored final answer.
    pub message_id: String,
    /// Tokens over all calls.
    pub usage: Usage,
    /// Cost over all calls, micro-dollars.
    pub cost_micros: Micros,
    /// Provider calls made.
    pub provider_calls: u32,
    /// Why the turn stopped.
    pub stop_reason: StopReason,
    /// The model.
    pub model: String,
}

impl Usage {
    /// Adds another call's counts.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
    }
}

/// Spend of a group of provider calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageTotals {
    /// Calls made.
    pub calls: u64,
    /// Tokens.
    pub usage: Usage,
    /// Cost, micro-dollars.
    pub cost_micros: Micros,
}

/// Spend per model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUsage {
    /// Provider kind.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Totals.
    pub totals: UsageTotals,
}

/// Spend per session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUsage {
    /// Session id.
    pub session_id: String,
    /// Its title (empty once deleted).
    pub title: String,
    /// Whether the session has been deleted since (its ledger rows stay).
    pub deleted: bool,
    /// Totals.
    pub totals: UsageTotals,
}

/// Spend over a span of days.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageReport {
    /// Per UTC day (`YYYY-MM-DD`), oldest first.
    pub days: Vec<(String, UsageTotals)>,
    /// Per model, most expensive first.
    pub models: Vec<ModelUsage>,
    /// Per session, most expensive first.
    pub sessions: Vec<SessionUsage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_unknown_ones_are_refused() {
        for role in [Role::User, Role::Assistant, Role::Tool] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        for state in [SessionState::Idle, SessionState::Running, SessionState::Interrupted] {
            assert_eq!(SessionState::parse(state.as_str()), Some(state));
        }
        assert_eq!(Role::parse("system"), None);
        assert_eq!(SessionState::parse("done"), None);
        assert_eq!(StopReason::ToolLimit.as_str(), "tool_limit");
        assert_eq!(StopReason::Other("pause_turn".into()).as_str(), "pause_turn");
    }
}
