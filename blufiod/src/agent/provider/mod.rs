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

// Shared with the integration tests; included once here for both adapters' unit tests.
#[cfg(test)]
#[path = "../../../testkit/src/fake_provider.rs"]
#[allow(dead_code, reason = "the adapters' tests use part of the fake")]
mod fake_provider;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use super::model::{ContentBlock, StopReason, Usage};
use crate::config::{ProviderConfig, ProviderKind, Secret};

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

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said: shared, so that each turn's copy of a long conversation costs a reference
    /// per message, not a copy of every text.
    pub content: Arc<[ContentBlock]>,
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

/// One call to the model. It borrows the conversation, prompt and tools from the turn: an
/// adapter encodes its request body before [`Provider::stream`] returns, so nothing is copied.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest<'a> {
    /// Model name.
    pub model: String,
    /// System prompt. Adapters that support prompt caching mark it (and the tool list) as a
    /// cache breakpoint; it must stay byte-identical between turns for the cache to hit.
    pub system: Cow<'a, str>,
    /// The conversation, oldest first. The last message is the user's (or tool results).
    pub messages: Cow<'a, [Message]>,
    /// Tools on offer (may be empty).
    pub tools: Cow<'a, [ToolSpec]>,
    /// Output token limit.
    pub max_tokens: u32,
}

impl ChatRequest<'_> {
    /// About the size of the request's JSON: its texts, plus a little per message, block and
    /// tool (tool inputs and schemas count as a guess). Sizes the encoding buffer once, rather than
    /// doubling it, copy after copy, as a long conversation is written.
    pub fn approximate_bytes(&self) -> usize {
        const PER_ITEM: usize = 64;
        const PER_JSON_VALUE: usize = 256;
        let blocks = |content: &[ContentBlock]| -> usize {
            content
                .iter()
                .map(|block| {
                    PER_ITEM
                        + match block {
                            ContentBlock::Text { text } => text.len(),
                            ContentBlock::ToolUse { id, name, .. } => id.len() + name.len() + PER_JSON_VALUE,
                            ContentBlock::ToolResult {
                                tool_use_id, content, ..
                            } => tool_use_id.len() + content.len(),
                        }
                })
                .sum()
        };
        let tools: usize = self
            .tools
            .iter()
            .map(|tool| PER_ITEM + tool.name.len() + tool.description.len() + PER_JSON_VALUE)
            .sum();
        let messages: usize = self
            .messages
            .iter()
            .map(|message| PER_ITEM + blocks(&message.content))
            .sum();
        PER_ITEM + self.model.len() + self.system.len() + tools + messages
    }
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
    /// An attempt failed before the answer started and the call is tried again (counted on
    /// the metrics; nothing of the answer was delivered).
    Retrying,
    /// Bytes of a tool call's input arrived (the input itself comes assembled in `Completed`):
    /// a call that ends before then is still charged for them.
    ToolInputStreamed(usize),
    /// The call finished; always the last event of a successful stream.
    Completed(Completion),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No API key is configured.
    #[error(
        "no API key for the {kind} provider: put it in the vault (`blufioctl config set-secret {kind}`, then `blufioctl config set provider.api_key secret:{kind}`) or set ${env} in blufiod's environment"
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
        /// The URL called, with any user info and query masked.
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
    /// The answer passed [`MAX_ANSWER_BYTES`].
    #[error(
        "the provider's answer passed {limit} bytes, more than any answer within provider.max_tokens; the call was stopped (check provider.base_url: is it the provider, or a proxy gone wrong?)"
    )]
    AnswerTooLarge {
        /// The bound.
        limit: usize,
    },
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
    /// The configured API key cannot be sent in an HTTP header (it has control characters).
    #[error("the {kind} API key contains characters that cannot be sent in an HTTP header: check provider.api_key")]
    InvalidApiKey {
        /// Provider kind name.
        kind: &'static str,
    },
}

/// A model provider.
pub trait Provider: Send + Sync + 'static {
    /// The provider kind (`anthropic` or `openai`), for the ledger.
    fn kind(&self) -> ProviderKind;

    /// Starts a streamed call. The returned channel yields events and ends after
    /// `Completed` or after the first error; dropping it cancels the call.
    fn stream(&self, request: ChatRequest<'_>) -> mpsc::Receiver<Result<StreamEvent, ProviderError>>;

    /// Lists the provider's models (`GET /v1/models`): whether it answers and accepts the key,
    /// at no cost.
    fn list_models(&self) -> Pin<Box<dyn Future<Output = Result<ModelList, ProviderError>> + Send + 'static>>;
}

/// Settings common to both adapters, resolved from config (the key from config or environment).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Base URL without trailing slash.
    pub base_url: String,
    /// API key, if any.
    pub api_key: Option<Secret>,
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
    /// Settings from config, with the API key the secrets resolver found
    /// ([`crate::secrets::Secrets::provider_key`], the one place a key is resolved).
    pub fn from_config(config: &ProviderConfig, api_key: Option<&Secret>) -> Self {
        let api_key = api_key.cloned();
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

/// Installs rustls' ring crypto provider once per process; reqwest is built without one.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds the provider for `kind`.
pub fn build(kind: ProviderKind, settings: ProviderSettings) -> Box<dyn Provider> {
    match kind {
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(settings)),
        ProviderKind::Openai => Box::new(openai::OpenAi::new(settings)),
    }
}

// The transport both adapters share: one HTTP client, retries before the answer starts, the
// total and idle timeouts, and the SSE read loop. The adapters only build the request and
// decode events.

/// HTTP statuses worth retrying: rate limits, transient server failures, Anthropic's overload.
const RETRYABLE_STATUSES: [u16; 5] = [429, 500, 502, 503, 529];

/// Longest backoff between two attempts when the server does not say (`retry-after` wins).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Most of an error body read to find the provider's message; error bodies are small JSON.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Idle connections to the provider kept for reuse.
const IDLE_CONNECTIONS: usize = 8;

/// Builds an adapter's HTTP client; one per adapter so connections are reused across calls.
fn http_client(settings: &ProviderSettings) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        // After a burst of concurrent turns reqwest would keep every connection idle for 90 s
        // (measured: 100 of them held 3.4 MiB for up to three minutes); a few cover steady use.
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        // A redirect would resend the API key (`x-api-key` is not stripped) to another host.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("blufiod/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building fails only when the TLS backend cannot initialise, which the installed
        // crypto provider rules out: a defect of the build, not a runtime condition.
        .expect("build the provider's HTTP client")
}

/// Turns an API key into a header value that `Debug` and logs never show.
fn secret_header(kind: &'static str, value: &str) -> Result<reqwest::header::HeaderValue, ProviderError> {
    let mut header =
        reqwest::header::HeaderValue::from_str(value).map_err(|_| ProviderError::InvalidApiKey { kind })?;
    header.set_sensitive(true);
    Ok(header)
}

/// The wire-protocol half of an adapter: turns SSE events into stream events.
trait Decoder: Send + 'static {
    /// Handles one event, appending what to deliver to `out`. Returns `true` once the answer is
    /// complete (the last event appended is then [`StreamEvent::Completed`]).
    fn decode(&mut self, event: &sse::SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, ProviderError>;

    /// Bytes of answer held so far: its text and its tool calls' input JSON.
    fn answer_bytes(&self) -> usize;
}

/// Most answer one call may stream (text and tool inputs together). A model kept within
/// `provider.max_tokens` stays far below (a token is a few bytes); a broken or hostile provider
/// would otherwise grow the daemon's memory, and a stored message, without bound.
pub const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;

/// One prepared streamed call.
struct HttpCall {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
    request_timeout: Duration,
    idle_timeout: Duration,
    max_retries: u32,
    retry_base_delay: Duration,
}

impl HttpCall {
    fn new(
        client: &reqwest::Client,
        settings: &ProviderSettings,
        url: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> Self {
        Self {
            client: client.clone(),
            url,
            headers,
            body: body.into(),
            request_timeout: settings.request_timeout,
            idle_timeout: settings.idle_timeout,
            max_retries: settings.max_retries,
            retry_base_delay: settings.retry_base_delay,
        }
    }

    /// A streamed JSON POST: adds the content negotiation headers both APIs expect and encodes
    /// `body`.
    fn json(
        client: &reqwest::Client,
        settings: &ProviderSettings,
        url: String,
        mut headers: reqwest::header::HeaderMap,
        body: &impl serde::Serialize,
        size_hint: usize,
    ) -> Result<Self, ProviderError> {
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("text/event-stream"),
        );
        // An eighth more than the hint leaves room for escapes and what the hint guessed.
        let mut encoded = Vec::with_capacity(size_hint + size_hint / 8);
        serde_json::to_writer(&mut encoded, body).map_err(|error| ProviderError::Malformed {
            reason: format!("cannot encode the request: {error}"),
        })?;
        let body = encoded;
        Ok(Self::new(client, settings, url, headers, body))
    }

    /// Runs the call on a task; the receiver gets the decoded events and at most one error.
    fn spawn(self, decoder: impl Decoder) -> mpsc::Receiver<Result<StreamEvent, ProviderError>> {
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(async move {
            let total = self.request_timeout;
            let outcome = tokio::select! {
                // Nobody listens any more: stop at once and free the connection.
                () = sender.closed() => return,
                outcome = tokio::time::timeout(total, self.run(decoder, &sender)) => outcome,
            };
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_elapsed) => ProviderError::Timeout(total),
            };
            tracing::debug!(url = %crate::config::mask_url_credentials(&self.url), error = %error, "provider call failed");
            let _ = sender.send(Err(error)).await;
        });
        receiver
    }

    async fn run(
        &self,
        mut decoder: impl Decoder,
        sender: &mpsc::Sender<Result<StreamEvent, ProviderError>>,
    ) -> Result<(), ProviderError> {
        // Config ranges keep this far from overflow; if it ever were not, no deadline is the
        // only sound reading of "longer than an Instant can hold".
        let deadline = Instant::now()
            .checked_add(self.request_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let response = self.send_with_retries(deadline, sender).await?;
        if let Some(content_type) = response.headers().get(reqwest::header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or_default();
            if !content_type.starts_with("text/event-stream") {
                return Err(ProviderError::Malformed {
                    reason: format!("expected an event stream, got content-type {content_type:?}"),
                });
            }
        }
        let mut body = response.bytes_stream();
        let mut parser = sse::SseParser::new();
        let mut out = Vec::new();
        loop {
            // No answer is ever retried from here on: part of it may already be delivered.
            let chunk = match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Err(_elapsed) => return Err(ProviderError::IdleTimeout(self.idle_timeout)),
                Ok(None) => return Err(ProviderError::Truncated),
                Ok(Some(Err(source))) => return Err(ProviderError::Read { source }),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let events = parser.feed(&chunk).map_err(|error| ProviderError::Malformed {
                reason: error.to_string(),
            })?;
            for event in events {
                let before = decoder.answer_bytes();
                let done = decoder.decode(&event, &mut out)?;
                let after = decoder.answer_bytes();
                if after > MAX_ANSWER_BYTES {
                    return Err(ProviderError::AnswerTooLarge {
                        limit: MAX_ANSWER_BYTES,
                    });
                }
                // What the answer grew by beyond the text delivered is tool input; said first, so
                // that `Completed` stays last.
                let text: usize = out
                    .iter()
                    .map(|item| match item {
                        StreamEvent::TextDelta(text) => text.len(),
                        _ => 0,
                    })
                    .sum();
                if let Some(input) = (after - before).checked_sub(text).filter(|input| *input > 0) {
                    out.insert(0, StreamEvent::ToolInputStreamed(input));
                }
                for item in out.drain(..) {
                    if sender.send(Ok(item)).await.is_err() {
                        return Ok(());
                    }
                }
                if done {
                    return Ok(());
                }
            }
        }
    }

    /// Sends the request until it gets a success status, retrying transient failures while
    /// time is left before `deadline`.
    async fn send_with_retries(
        &self,
        deadline: Instant,
        sender: &mpsc::Sender<Result<StreamEvent, ProviderError>>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut attempt = 0;
        loop {
            let request = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(self.body.clone());
            let (error, server_delay) = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = retry_after(response.headers());
                    let error = self.http_error(response).await;
                    if !RETRYABLE_STATUSES.contains(&status) {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                // A request that cannot even be built will not get better by retrying.
                Err(source) if source.is_builder() => {
                    return Err(ProviderError::Connect {
                        url: crate::config::mask_url_credentials(&self.url),
                        source: source.without_url(),
                    });
                }
                Err(source) => (
                    ProviderError::Connect {
                        url: crate::config::mask_url_credentials(&self.url),
                        source: source.without_url(),
                    },
                    None,
                ),
            };
            if attempt >= self.max_retries {
                return Err(error);
            }
            let delay = server_delay.unwrap_or_else(|| backoff(self.retry_base_delay, attempt));
            // Waiting past the deadline only to time out would hide the real cause.
            if Instant::now()
                .checked_add(delay)
                .is_none_or(|resume| resume >= deadline)
            {
                return Err(error);
            }
            attempt += 1;
            tracing::warn!(
                attempt,
                max_retries = self.max_retries,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "provider call failed before the answer started; retrying"
            );
            // Nobody listening is noticed by the caller's select; the retry still waits.
            let _ = sender.send(Ok(StreamEvent::Retrying)).await;
            tokio::time::sleep(delay).await;
        }
    }

    async fn http_error(&self, response: reqwest::Response) -> ProviderError {
        http_error(response, self.idle_timeout).await
    }
}

/// Reads a bounded prefix of an error response and extracts the provider's message; each read
/// may take `idle_timeout`.
async fn http_error(mut response: reqwest::Response, idle_timeout: Duration) -> ProviderError {
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match tokio::time::timeout(idle_timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            // A body that fails or stalls still leaves the status to report.
            _ => break,
        }
    }
    ProviderError::Http {
        status: status.as_u16(),
        message: error_message(&body).unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
    }
}

/// What a provider's model listing showed: the API answers and accepts the key.
#[derive(Debug, Clone)]
pub struct ModelList {
    /// The model ids of the first page.
    pub models: Vec<String>,
    /// How long the call took.
    pub latency: Duration,
    /// How far the provider's clock (its `Date` header, whole seconds) is ahead of this
    /// machine's at the middle of the call, in seconds; `None` without a readable `Date`.
    pub clock_offset: Option<f64>,
}

/// The longest a model listing may take: it is a health check, never part of a turn.
pub const LIST_MODELS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest model listing read.
const MAX_LIST_BYTES: usize = 1024 * 1024;

/// `GET url` (the API's model list) with the adapter's authentication `headers`, once, without
/// retries: it costs no tokens and spends nothing.
async fn list_models(
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
) -> Result<ModelList, ProviderError> {
    let started = Instant::now();
    let sent_at = std::time::SystemTime::now();
    let call = async {
        let response = client
            .get(&url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| ProviderError::Connect {
                url: crate::config::mask_url_credentials(&url),
                source: source.without_url(),
            })?;
        if !response.status().is_success() {
            return Err(http_error(response, LIST_MODELS_TIMEOUT).await);
        }
        let clock_offset = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok())
            .map(|date| clock_offset(date, sent_at, std::time::SystemTime::now()));
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| ProviderError::Read {
            source: source.without_url(),
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_LIST_BYTES {
                return Err(ProviderError::Malformed {
                    reason: format!("the model list is larger than {MAX_LIST_BYTES} bytes"),
                });
            }
        }
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|error| ProviderError::Malformed {
            reason: format!("the model list is not JSON: {error}"),
        })?;
        let models = value
            .get("data")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| ProviderError::Malformed {
                reason: "the model list has no `data` array".to_owned(),
            })?
            .iter()
            .filter_map(|model| model.get("id").and_then(serde_json::Value::as_str).map(str::to_owned))
            .collect();
        Ok(ModelList {
            models,
            latency: started.elapsed(),
            clock_offset,
        })
    };
    tokio::time::timeout(LIST_MODELS_TIMEOUT, call)
        .await
        .unwrap_or(Err(ProviderError::Timeout(LIST_MODELS_TIMEOUT)))
}

/// How far `date` (whole seconds, sent by a server between `sent` and `received`) is ahead of
/// the middle of that interval. A server's `Date` is truncated to the second, so half a second is
/// added: the offset of a server in step is then within ±0.5 s plus half the round trip.
fn clock_offset(date: std::time::SystemTime, sent: std::time::SystemTime, received: std::time::SystemTime) -> f64 {
    let seconds = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
    };
    seconds(date) + 0.5 - (seconds(sent) + seconds(received)) / 2.0
}

/// `retry-after` in seconds (the form both providers use); HTTP dates are ignored.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// Exponential backoff: `base`, `2 * base`, `4 * base`, ... capped at [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt)).min(MAX_BACKOFF)
}

/// The message of a `{"error":{"type","message"}}` body (both providers' shape), else a short
/// excerpt of the body as text.
fn error_message(body: &[u8]) -> Option<String> {
    const EXCERPT_CHARS: usize = 300;
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = value.get("error");
        let message = error
            .and_then(|error| error.get("message"))
            .and_then(serde_json::Value::as_str)
            // Some OpenAI-compatible servers send `{"error": "text"}`.
            .or_else(|| error.and_then(serde_json::Value::as_str));
        if let Some(message) = message {
            return Some(message.to_owned());
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(EXCERPT_CHARS).collect())
}

/// A stream that fails at once, for calls rejected before any request is made.
fn failed_stream(error: ProviderError) -> mpsc::Receiver<Result<StreamEvent, ProviderError>> {
    let (sender, receiver) = mpsc::channel(1);
    // Cannot fail: the channel is new, has room for one item, and its receiver is alive.
    let _ = sender.try_send(Err(error));
    receiver
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_clock_offset_is_measured_from_the_middle_of_the_call() {
        let at = |seconds: f64| UNIX_EPOCH + Duration::from_secs_f64(seconds);
        // A server in step, whose whole-second Date was cut from 1000.9.
        let offset = super::clock_offset(at(1000.0), at(1000.6), at(1001.2));
        assert!((offset - (-0.4)).abs() < 1e-9, "{offset}");
        // A server two minutes ahead.
        let offset = super::clock_offset(at(1120.0), at(1000.0), at(1000.2));
        assert!((offset - 120.4).abs() < 1e-9, "{offset}");
    }
}

/// Helpers shared by the adapters' tests.
#[cfg(test)]
mod testing {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::{Completion, ProviderError, StreamEvent};

    /// Everything the stream yields: the events, then the error if it ended with one.
    pub async fn collect(
        mut receiver: mpsc::Receiver<Result<StreamEvent, ProviderError>>,
    ) -> (Vec<StreamEvent>, Option<ProviderError>) {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, receiver.recv()).await {
            match item {
                Ok(event) => events.push(event),
                Err(error) => {
                    // Nothing may follow an error.
                    assert!(receiver.recv().await.is_none(), "an item after the error");
                    return (events, Some(error));
                }
            }
        }
        (events, None)
    }

    /// The `Completed` that must end `events`.
    pub fn completion(events: &[StreamEvent]) -> &Completion {
        match events.last() {
            Some(StreamEvent::Completed(completion)) => completion,
            other => panic!("expected Completed last, got {other:?}"),
        }
    }
}
