//! LLM providers: one trait, two wire protocols (Anthropic Messages, OpenAI-compatible Chat
//! Completions), both streamed.
//!
//! A provider turns a [`ChatRequest`] into a bounded channel of [`StreamEvent`]s ending with
//! exactly one [`StreamEvent::Completed`] or one error. It retries only before any part of the
//! answer was delivered, enforces a total and an idle timeout, and never panics on what the
//! network sends: malformed or truncated streams become [`ProviderError`]s. A provider never
//! touches storage, budgets or tools; the turn loop does.

mod anthropic;
mod openai;
mod sse;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{ProviderConfig, ProviderKind};

/// Events buffered between a provider's task and the turn loop; the task waits when it is full,
/// so a slow consumer slows the read from the network instead of growing memory.
pub const EVENT_BUFFER: usize = 64;

/// Who said something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The owner (and tool results, which the APIs send as user content).
    User,
    /// The model.
    Assistant,
}

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

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: Vec<ContentBlock>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its input object.
    pub input_schema: serde_json::Value,
}

/// One call to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// System prompt. Adapters that support prompt caching mark it (and the tool list) as a
    /// cache breakpoint; it must stay byte-identical between turns for the cache to hit.
    pub system: String,
    /// The conversation, oldest first. The last message is the user's (or tool results).
    pub messages: Vec<Message>,
    /// Tools on offer (may be empty).
    pub tools: Vec<ToolSpec>,
    /// Output token limit.
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A final answer.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit `max_tokens`.
    MaxTokens,
    /// Anything else the provider reported.
    Other(String),
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

/// A finished call.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer's blocks in order (text and tool calls), fully assembled.
    pub content: Vec<ContentBlock>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Token counts.
    pub usage: Usage,
    /// The model that answered, as the provider reported it.
    pub model: String,
}

/// What a provider streams.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of answer text.
    TextDelta(String),
    /// The model started a tool call (its input streams on and arrives assembled in
    /// `Completed`).
    ToolUseStarted {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// The call finished; always the last event of a successful stream.
    Completed(Completion),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No API key is configured.
    #[error(
        "no API key for the {kind} provider: set provider.api_key (blufioctl config set provider.api_key KEY) or ${env} in blufiod's environment"
    )]
    MissingApiKey {
        /// Provider kind name.
        kind: &'static str,
        /// The environment variable that would do.
        env: &'static str,
    },
    /// The request could not be sent or the connection failed.
    #[error("cannot reach the provider at {url}")]
    Connect {
        /// The URL called.
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an HTTP error.
    #[error("the provider answered HTTP {status}: {message}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The provider's error message (or body excerpt).
        message: String,
    },
    /// The provider reported an error inside the stream.
    #[error("the provider reported an error mid-stream ({kind}): {message}")]
    Stream {
        /// Error type, for example `overloaded_error`.
        kind: String,
        /// Message.
        message: String,
    },
    /// The stream did not follow the protocol.
    #[error("the provider's stream is malformed: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The stream ended before the answer was complete.
    #[error("the provider's stream ended before the answer was complete")]
    Truncated,
    /// The whole call took too long.
    #[error("the provider call took longer than {0:?}")]
    Timeout(Duration),
    /// The stream was silent for too long.
    #[error("the provider's stream was silent for {0:?}")]
    IdleTimeout(Duration),
    /// Reading the response body failed.
    #[error("reading the provider's response failed")]
    Read {
        #[source]
        source: reqwest::Error,
    },
}

/// A model provider.
pub trait Provider: Send + Sync + 'static {
    /// The provider kind (`anthropic` or `openai`), for the ledger.
    fn kind(&self) -> ProviderKind;

    /// Starts a streamed call. The returned channel yields events and ends after
    /// `Completed` or after the first error; dropping it cancels the call.
    fn stream(&self, request: ChatRequest) -> mpsc::Receiver<Result<StreamEvent, ProviderError>>;
}

/// Settings common to both adapters, resolved from config (the key from config or environment).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Base URL without trailing slash.
    pub base_url: String,
    /// API key, if any.
    pub api_key: Option<String>,
    /// `anthropic-version` header.
    pub anthropic_version: String,
    /// Total time limit of one call.
    pub request_timeout: Duration,
    /// Longest silence of a stream.
    pub idle_timeout: Duration,
    /// Connection time limit.
    pub connect_timeout: Duration,
    /// Retries before the answer started.
    pub max_retries: u32,
    /// First retry delay.
    pub retry_base_delay: Duration,
}

impl ProviderSettings {
    /// Resolves settings from config, reading the API key from `env` when the config has none.
    pub fn from_config(config: &ProviderConfig, env: impl Fn(&str) -> Option<String>) -> Self {
        let api_key = config
            .api_key
            .as_ref()
            .map(|key| key.expose().to_owned())
            .filter(|key| !key.is_empty())
            .or_else(|| env(config.kind.api_key_env()).filter(|key| !key.is_empty()));
        Self {
            base_url: config.base_url(),
            api_key,
            anthropic_version: config.anthropic_version.clone(),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            max_retries: config.max_retries,
            retry_base_delay: Duration::from_millis(config.retry_base_delay_ms),
        }
    }
}

/// Builds the provider for `kind`.
pub fn build(kind: ProviderKind, settings: ProviderSettings) -> Box<dyn Provider> {
    match kind {
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(settings)),
        ProviderKind::Openai => Box::new(openai::OpenAi::new(settings)),
    }
}
