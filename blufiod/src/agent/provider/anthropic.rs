//! The Anthropic Messages API adapter: builds `POST /v1/messages` with prompt-cache
//! breakpoints on the system prompt and the tool list, and decodes its streamed events.
//!
//! It must never send a request without an API key, log the key, or follow a redirect with it;
//! anything the stream sends out of protocol order becomes [`ProviderError::Malformed`], never a
//! panic.

use std::future::Future;
use std::pin::Pin;

use serde::ser::{SerializeSeq as _, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::{
    ChatRequest, Completion, ContentBlock, Decoder, HttpCall, Message, ModelList, Provider, ProviderError,
    ProviderSettings, Role, StopReason, StreamEvent, Usage, failed_stream, http_client, list_models, secret_header,
};
use crate::config::{ProviderKind, Secret};

/// The Anthropic Messages API.
pub struct Anthropic {
    settings: ProviderSettings,
    client: reqwest::Client,
}

impl Anthropic {
    /// An adapter with its own HTTP client.
    pub fn new(settings: ProviderSettings) -> Self {
        let client = http_client(&settings);
        Self { settings, client }
    }

    /// The key and the API version every call carries.
    fn auth_headers(&self) -> Result<reqwest::header::HeaderMap, ProviderError> {
        let kind = ProviderKind::Anthropic;
        let api_key = self
            .settings
            .api_key
            .as_ref()
            .map(Secret::expose)
            .ok_or(ProviderError::MissingApiKey {
                kind: kind.as_str(),
                env: kind.api_key_env(),
            })?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-key", secret_header(kind.as_str(), api_key)?);
        let version = reqwest::header::HeaderValue::from_str(&self.settings.anthropic_version).map_err(|_| {
            ProviderError::Malformed {
                reason: "provider.anthropic_version is not a valid header value".to_owned(),
            }
        })?;
        headers.insert("anthropic-version", version);
        Ok(headers)
    }

    fn prepare(&self, request: &ChatRequest<'_>) -> Result<HttpCall, ProviderError> {
        HttpCall::json(
            &self.client,
            &self.settings,
            format!("{}/v1/messages", self.settings.base_url),
            self.auth_headers()?,
            &request_body(request),
            request.approximate_bytes(),
        )
    }
}

impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn stream(&self, request: ChatRequest<'_>) -> tokio::sync::mpsc::Receiver<Result<StreamEvent, ProviderError>> {
        match self.prepare(&request) {
            Ok(call) => call.spawn(AnthropicDecoder::default()),
            Err(error) => failed_stream(error),
        }
    }

    fn list_models(&self) -> Pin<Box<dyn Future<Output = Result<ModelList, ProviderError>> + Send + 'static>> {
        let headers = self.auth_headers();
        let (client, url) = (self.client.clone(), format!("{}/v1/models", self.settings.base_url));
        Box::pin(async move { list_models(client, url, headers?).await })
    }
}

/// The JSON body of a streamed Messages call, serialized straight from the request (no JSON
/// value tree: a long conversation would be a map and a few strings allocated per block, on
/// every call).
fn request_body<'a>(request: &'a ChatRequest<'a>) -> RequestJson<'a> {
    RequestJson { request }
}

/// `{"type": "ephemeral"}`: a prompt-cache breakpoint.
struct Ephemeral;

impl Serialize for Ephemeral {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_struct("CacheControl", 1)?;
        map.serialize_field("type", "ephemeral")?;
        map.end()
    }
}

struct RequestJson<'a> {
    request: &'a ChatRequest<'a>,
}

impl Serialize for RequestJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let request = self.request;
        let mut body = serializer.serialize_struct("Request", 6)?;
        body.serialize_field("model", &request.model)?;
        body.serialize_field("max_tokens", &request.max_tokens)?;
        // The API rejects an empty text block, so an empty system prompt is left out.
        // Breakpoint 1: everything up to the end of the system prompt (tools come first in the
        // cache prefix) is cached.
        if request.system.is_empty() {
            body.skip_field("system")?;
        } else {
            body.serialize_field("system", &[SystemJson(&request.system)])?;
        }
        // Breakpoint 2: the tool list, which is stable across turns, so it is cached even when
        // the system prompt is absent.
        if request.tools.is_empty() {
            body.skip_field("tools")?;
        } else {
            let tools = List {
                items: &request.tools,
                breakpoint: true,
            };
            body.serialize_field("tools", &tools)?;
        }
        // Breakpoint 3: the conversation so far. History is only ever appended to (and trimmed
        // from the oldest end when over budget), so the next call of this turn, and the next
        // turn, read this prefix from the cache instead of paying for it again.
        let messages = List {
            items: &request.messages,
            breakpoint: true,
        };
        body.serialize_field("messages", &messages)?;
        body.serialize_field("stream", &true)?;
        body.end()
    }
}

/// A list whose last element carries the cache breakpoint when `breakpoint`.
struct List<'a, T> {
    items: &'a [T],
    breakpoint: bool,
}

/// One element of a [`List`], with the breakpoint or not.
struct Marked<'a, T> {
    item: &'a T,
    breakpoint: bool,
}

impl<'a, T> Serialize for List<'a, T>
where
    Marked<'a, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.items.len()))?;
        let last = self.items.len().wrapping_sub(1);
        for (index, item) in self.items.iter().enumerate() {
            seq.serialize_element(&Marked {
                item,
                breakpoint: self.breakpoint && index == last,
            })?;
        }
        seq.end()
    }
}

struct SystemJson<'a>(&'a str);

impl Serialize for SystemJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut block = serializer.serialize_struct("System", 3)?;
        block.serialize_field("type", "text")?;
        block.serialize_field("text", self.0)?;
        block.serialize_field("cache_control", &Ephemeral)?;
        block.end()
    }
}

/// `cache_control` when `breakpoint`, else nothing.
fn cache_control<S: SerializeStruct>(object: &mut S, breakpoint: bool) -> Result<(), S::Error> {
    if breakpoint {
        object.serialize_field("cache_control", &Ephemeral)
    } else {
        object.skip_field("cache_control")
    }
}

impl Serialize for Marked<'_, super::ToolSpec> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tool = serializer.serialize_struct("Tool", 4)?;
        tool.serialize_field("name", &self.item.name)?;
        tool.serialize_field("description", &self.item.description)?;
        tool.serialize_field("input_schema", &self.item.input_schema)?;
        cache_control(&mut tool, self.breakpoint)?;
        tool.end()
    }
}

impl Serialize for Marked<'_, Message> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let role = match self.item.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut message = serializer.serialize_struct("Message", 2)?;
        message.serialize_field("role", role)?;
        // The last message's last block is the conversation's breakpoint.
        let content = List {
            items: &self.item.content,
            breakpoint: self.breakpoint,
        };
        message.serialize_field("content", &content)?;
        message.end()
    }
}

impl Serialize for Marked<'_, ContentBlock> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut json = serializer.serialize_struct("Block", 5)?;
        match self.item {
            ContentBlock::Text { text } => {
                json.serialize_field("type", "text")?;
                json.serialize_field("text", text)?;
            }
            ContentBlock::ToolUse { id, name, input } => {
                json.serialize_field("type", "tool_use")?;
                json.serialize_field("id", id)?;
                json.serialize_field("name", name)?;
                json.serialize_field("input", input)?;
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                json.serialize_field("type", "tool_result")?;
                json.serialize_field("tool_use_id", tool_use_id)?;
                json.serialize_field("content", content)?;
                json.serialize_field("is_error", is_error)?;
            }
        }
        cache_control(&mut json, self.breakpoint)?;
        json.end()
    }
}

/// Events of the Messages stream, by their `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: WireError,
    },
    /// Anthropic's versioning policy allows new event types; they are skipped.
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Token counts; any field may be absent or null depending on the event and API version.
#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    /// Thinking and server-side blocks, which the turn loop does not use.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking, signature and citation deltas.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// A content block being assembled.
enum Block {
    Text(String),
    ToolUse { id: String, name: String, json: String },
    Ignored,
}

struct OpenBlock {
    block: Block,
    /// The block's input once `content_block_stop` parsed it (tool calls only).
    input: Option<Value>,
    closed: bool,
}

/// The Messages stream's state machine.
#[derive(Default)]
struct AnthropicDecoder {
    started: bool,
    model: String,
    usage: Usage,
    blocks: Vec<OpenBlock>,
    stop_reason: Option<StopReason>,
    /// Text and tool input received.
    answer_bytes: usize,
}

fn malformed(reason: impl Into<String>) -> ProviderError {
    ProviderError::Malformed { reason: reason.into() }
}

impl AnthropicDecoder {
    fn apply_usage(&mut self, usage: &WireUsage) {
        // message_delta counts are cumulative, so the latest value wins.
        if let Some(tokens) = usage.input_tokens {
            self.usage.input_tokens = tokens;
        }
        if let Some(tokens) = usage.output_tokens {
            self.usage.output_tokens = tokens;
        }
        if let Some(tokens) = usage.cache_creation_input_tokens {
            self.usage.cache_creation_input_tokens = tokens;
        }
        if let Some(tokens) = usage.cache_read_input_tokens {
            self.usage.cache_read_input_tokens = tokens;
        }
    }

    fn open_block(&mut self, index: usize, event: &str) -> Result<&mut OpenBlock, ProviderError> {
        match self.blocks.get_mut(index) {
            Some(block) if !block.closed => Ok(block),
            Some(_) => Err(malformed(format!("{event} for closed content block {index}"))),
            None => Err(malformed(format!("{event} for unknown content block {index}"))),
        }
    }

    fn complete(&mut self) -> Result<Completion, ProviderError> {
        let stop_reason = self
            .stop_reason
            .take()
            .ok_or_else(|| malformed("message_stop without a stop_reason"))?;
        let mut content = Vec::new();
        for open in std::mem::take(&mut self.blocks) {
            if !open.closed {
                return Err(malformed("message_stop with an open content block"));
            }
            match (open.block, open.input) {
                // The API rejects empty text blocks when the answer is sent back next turn.
                (Block::Text(text), _) if text.is_empty() => {}
                (Block::Text(text), _) => content.push(ContentBlock::Text { text }),
                (Block::ToolUse { id, name, .. }, Some(input)) => {
                    content.push(ContentBlock::ToolUse { id, name, input })
                }
                (Block::ToolUse { .. }, None) | (Block::Ignored, _) => {}
            }
        }
        Ok(Completion {
            content,
            stop_reason,
            usage: self.usage,
            model: std::mem::take(&mut self.model),
        })
    }
}

impl Decoder for AnthropicDecoder {
    fn answer_bytes(&self) -> usize {
        self.answer_bytes
    }

    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, ProviderError> {
        let wire: WireEvent = serde_json::from_str(&event.data)
            .map_err(|error| malformed(format!("invalid {} event: {error}", event.event)))?;
        match wire {
            WireEvent::Ping | WireEvent::Unknown => return Ok(false),
            WireEvent::Error { error } => {
                return Err(ProviderError::Stream {
                    kind: error.kind,
                    message: error.message,
                });
            }
            WireEvent::MessageStart { .. } if self.started => return Err(malformed("a second message_start")),
            WireEvent::MessageStart { .. } => {}
            _ if !self.started => return Err(malformed(format!("{} before message_start", event.event))),
            _ => {}
        }
        match wire {
            WireEvent::MessageStart { message } => {
                self.started = true;
                self.model = message.model;
                if let Some(usage) = &message.usage {
                    self.apply_usage(usage);
                }
            }
            WireEvent::ContentBlockStart { index, content_block } => {
                if index != self.blocks.len() {
                    return Err(malformed(format!(
                        "content block {index} started, expected {}",
                        self.blocks.len()
                    )));
                }
                let block = match content_block {
                    WireBlock::Text { text } => {
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta(text.clone()));
                        }
                        Block::Text(text)
                    }
                    WireBlock::ToolUse { id, name } => {
                        out.push(StreamEvent::ToolUseStarted {
                            id: id.clone(),
                            name: name.clone(),
                        });
                        Block::ToolUse {
                            id,
                            name,
                            json: String::new(),
                        }
                    }
                    WireBlock::Other => Block::Ignored,
                };
                self.blocks.push(OpenBlock {
                    block,
                    input: None,
                    closed: false,
                });
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                self.answer_bytes += match &delta {
                    WireDelta::TextDelta { text } => text.len(),
                    WireDelta::InputJsonDelta { partial_json } => partial_json.len(),
                    WireDelta::Other => 0,
                };
                let open = self.open_block(index, "content_block_delta")?;
                match (&mut open.block, delta) {
                    (Block::Text(text), WireDelta::TextDelta { text: piece }) => {
                        text.push_str(&piece);
                        if !piece.is_empty() {
                            out.push(StreamEvent::TextDelta(piece));
                        }
                    }
                    (Block::ToolUse { json, .. }, WireDelta::InputJsonDelta { partial_json }) => {
                        json.push_str(&partial_json);
                    }
                    (_, WireDelta::Other) | (Block::Ignored, _) => {}
                    (_, WireDelta::TextDelta { .. }) => return Err(malformed("text_delta for a non-text block")),
                    (_, WireDelta::InputJsonDelta { .. }) => {
                        return Err(malformed("input_json_delta for a non-tool_use block"));
                    }
                }
            }
            WireEvent::ContentBlockStop { index } => {
                let open = self.open_block(index, "content_block_stop")?;
                open.closed = true;
                if let Block::ToolUse { json, name, .. } = &open.block {
                    // A tool without parameters streams no input at all.
                    let input = if json.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(json)
                            .map_err(|error| malformed(format!("invalid input JSON for tool {name}: {error}")))?
                    };
                    if !input.is_object() {
                        return Err(malformed(format!("the input of tool {name} is not a JSON object")));
                    }
                    open.input = Some(input);
                }
            }
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(match reason.as_str() {
                        "end_turn" => StopReason::EndTurn,
                        "tool_use" => StopReason::ToolUse,
                        "max_tokens" => StopReason::MaxTokens,
                        _ => StopReason::Other(reason),
                    });
                }
                if let Some(usage) = &usage {
                    self.apply_usage(usage);
                }
            }
            WireEvent::MessageStop => {
                out.push(StreamEvent::Completed(self.complete()?));
                return Ok(true);
            }
            WireEvent::Ping | WireEvent::Unknown | WireEvent::Error { .. } => {}
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{collect, completion};
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::agent::provider::ToolSpec;
    use crate::agent::provider::fake_provider::{FakeProvider, FakeUsage, Script};

    const KEY: &str = "sk-ant-test-key";

    fn settings(fake: &FakeProvider) -> ProviderSettings {
        ProviderSettings {
            base_url: fake.url(),
            api_key: Some(Secret(KEY.to_owned())),
            anthropic_version: "2023-06-01".to_owned(),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(10),
        }
    }

    fn text(text: &str) -> ContentBlock {
        ContentBlock::Text { text: text.to_owned() }
    }

    /// A conversation with a finished tool round, so every block kind is encoded.
    fn request() -> ChatRequest<'static> {
        ChatRequest {
            model: "claude-test".to_owned(),
            system: "You are a test.".into(),
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![text("what time is it?")].into(),
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        text("Let me check."),
                        ContentBlock::ToolUse {
                            id: "toolu_1".to_owned(),
                            name: "get_time".to_owned(),
                            input: json!({"zone": "UTC"}),
                        },
                    ]
                    .into(),
                },
                Message {
                    role: Role::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "toolu_1".to_owned(),
                        content: "12:00".to_owned(),
                        is_error: false,
                    }]
                    .into(),
                },
            ]
            .into(),
            tools: vec![
                ToolSpec {
                    name: "get_time".to_owned(),
                    description: "Tells the time.".to_owned(),
                    input_schema: json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
                },
                ToolSpec {
                    name: "echo".to_owned(),
                    description: "Echoes.".to_owned(),
                    input_schema: json!({"type": "object"}),
                },
            ]
            .into(),
            max_tokens: 256,
        }
    }

    #[tokio::test]
    async fn streams_text_deltas_in_order_and_completes_with_usage() {
        let fake = FakeProvider::start();
        let usage = FakeUsage {
            input: 11,
            output: 7,
            cache_creation: 500,
            cache_read: 1200,
        };
        fake.push(Script::Text {
            text: "Hello, wörld! 😀".to_owned(),
            chunks: 4,
            usage,
        });
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::TextDelta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), 4);
        assert_eq!(deltas.concat(), "Hello, wörld! 😀");
        let completion = completion(&events);
        assert_eq!(completion.content, vec![text("Hello, wörld! 😀")]);
        assert_eq!(completion.stop_reason, StopReason::EndTurn);
        assert_eq!(completion.model, "claude-test");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 11,
                output_tokens: 7,
                cache_creation_input_tokens: 500,
                cache_read_input_tokens: 1200,
            }
        );
    }

    #[tokio::test]
    async fn tool_use_input_is_assembled_from_fragments() {
        let fake = FakeProvider::start();
        let input = json!({"zone": "Europe/Paris", "formats": ["iso", "unix"], "nested": {"deep": true}});
        fake.push(Script::tool_use("toolu_9", "get_time", input.clone()));
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            events[0],
            StreamEvent::ToolUseStarted {
                id: "toolu_9".to_owned(),
                name: "get_time".to_owned()
            }
        );
        // Its fragments are counted as they come, so that a call cut before `Completed` is
        // charged for them (reported: a dropped stream charged 1.9 MB of input as 192 bytes).
        let streamed: usize = events
            .iter()
            .map(|event| match event {
                StreamEvent::ToolInputStreamed(bytes) => *bytes,
                _ => 0,
            })
            .sum();
        assert_eq!(streamed, input.to_string().len(), "{events:?}");
        let completion = completion(&events);
        assert_eq!(completion.stop_reason, StopReason::ToolUse);
        assert_eq!(
            completion.content,
            vec![ContentBlock::ToolUse {
                id: "toolu_9".to_owned(),
                name: "get_time".to_owned(),
                input
            }]
        );
    }

    #[tokio::test]
    async fn request_has_headers_cache_breakpoints_and_block_shapes() {
        let fake = FakeProvider::start();
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        // The fake's default answer echoes the last user text, skipping the tool result.
        assert_eq!(
            completion(&events).content,
            vec![text("fake answer to: what time is it?")]
        );
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let sent = &requests[0];
        assert_eq!(sent.path, "/v1/messages");
        assert_eq!(sent.header("x-api-key"), Some(KEY));
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("authorization"), None);
        let body = &sent.body;
        assert_eq!(body["model"], "claude-test");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["system"],
            json!([{"type": "text", "text": "You are a test.", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            body["tools"][0].get("cache_control"),
            None,
            "only the last tool is a breakpoint"
        );
        assert_eq!(body["tools"][0]["input_schema"]["properties"]["zone"]["type"], "string");
        assert_eq!(
            body["tools"][1],
            json!({
                "name": "echo",
                "description": "Echoes.",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"},
            })
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "what time is it?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {"zone": "UTC"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00", "is_error": false,
                     "cache_control": {"type": "ephemeral"}},
                ]},
            ])
        );
    }

    #[tokio::test]
    async fn no_tools_means_no_tools_key() {
        let fake = FakeProvider::start();
        let mut request = request();
        request.tools.to_mut().clear();
        let (_, error) = collect(Anthropic::new(settings(&fake)).stream(request)).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(fake.requests()[0].body.get("tools"), None);
    }

    #[test]
    fn the_size_hint_holds_a_long_conversation_without_growing() {
        let mut request = request();
        request.messages = (0..200)
            .map(|index| Message {
                role: if index % 2 == 0 { Role::User } else { Role::Assistant },
                content: vec![text(&"a \"word\" ".repeat(index % 50 + 1))].into(),
            })
            .collect::<Vec<_>>()
            .into();
        let encoded = serde_json::to_vec(&request_body(&request)).expect("serializes");
        let hint = request.approximate_bytes();
        assert!(
            encoded.len() <= hint + hint / 8,
            "{} bytes against a hint of {hint}",
            encoded.len()
        );
        assert!(hint < 2 * encoded.len(), "a hint of {hint} for {} bytes", encoded.len());
    }

    #[test]
    fn the_body_marks_only_the_last_block_of_the_last_message_and_omits_an_empty_system() {
        let mut request = request();
        request.system.to_mut().clear();
        request.tools.to_mut().clear();
        request.messages = vec![
            Message {
                role: Role::User,
                content: vec![text("one"), text("two")].into(),
            },
            Message {
                role: Role::Assistant,
                content: vec![text("three")].into(),
            },
            Message {
                role: Role::User,
                content: vec![text("four"), text("five")].into(),
            },
        ]
        .into();
        let body = serde_json::to_value(request_body(&request)).expect("serializes");
        assert_eq!(
            body,
            json!({
                "model": "claude-test",
                "max_tokens": 256,
                "stream": true,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "four"},
                        {"type": "text", "text": "five", "cache_control": {"type": "ephemeral"}},
                    ]},
                ],
            })
        );
    }

    #[tokio::test]
    async fn rate_limit_is_retried_after_the_servers_delay() {
        let fake = FakeProvider::start();
        fake.push(Script::http_error(429, "slow down", Some(1)));
        fake.push(Script::text("finally", 1));
        let started = Instant::now();
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(completion(&events).content, vec![text("finally")]);
        assert_eq!(fake.request_count(), 2);
        // The base delay is 10 ms: waiting a second shows retry-after was honoured.
        assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn retries_stop_after_max_retries() {
        let fake = FakeProvider::start();
        for _ in 0..3 {
            fake.push(Script::http_error(529, "Overloaded", None));
        }
        fake.push(Script::text("too late", 1));
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert_eq!(
            events,
            vec![StreamEvent::Retrying, StreamEvent::Retrying],
            "each retry is announced, and nothing of an answer arrived"
        );
        match error {
            Some(ProviderError::Http { status: 529, message }) => assert_eq!(message, "Overloaded"),
            other => panic!("expected Http 529, got {other:?}"),
        }
        assert_eq!(fake.request_count(), 3, "one try and two retries");
    }

    #[tokio::test]
    async fn bad_request_is_not_retried_and_carries_the_message() {
        let fake = FakeProvider::start();
        fake.push(Script::http_error(400, "messages: roles must alternate", None));
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert!(events.is_empty());
        match error {
            Some(ProviderError::Http { status: 400, message }) => {
                assert_eq!(message, "messages: roles must alternate");
            }
            other => panic!("expected Http 400, got {other:?}"),
        }
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn error_event_mid_stream_is_a_stream_error() {
        let fake = FakeProvider::start();
        fake.push(Script::StreamError {
            after_chunks: 2,
            error_type: "overloaded_error".to_owned(),
            message: "Overloaded".to_owned(),
        });
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert_eq!(
            events,
            vec![
                StreamEvent::TextDelta("chunk 0 ".to_owned()),
                StreamEvent::TextDelta("chunk 1 ".to_owned())
            ]
        );
        match error {
            Some(ProviderError::Stream { kind, message }) => {
                assert_eq!((kind.as_str(), message.as_str()), ("overloaded_error", "Overloaded"));
            }
            other => panic!("expected Stream, got {other:?}"),
        }
        assert_eq!(fake.request_count(), 1, "no retry once the answer started");
    }

    #[tokio::test]
    async fn stream_ending_early_is_truncated() {
        let fake = FakeProvider::start();
        fake.push(Script::Truncated { after_chunks: 1 });
        let (events, error) = collect(Anthropic::new(settings(&fake)).stream(request())).await;
        assert_eq!(events.len(), 1);
        assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
    }

    #[tokio::test]
    async fn silent_stream_hits_the_idle_timeout() {
        let fake = FakeProvider::start();
        fake.push(Script::Stall { after_chunks: 1 });
        let mut settings = settings(&fake);
        settings.idle_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let (events, error) = collect(Anthropic::new(settings).stream(request())).await;
        assert_eq!(events.len(), 1);
        assert!(
            matches!(error, Some(ProviderError::IdleTimeout(timeout)) if timeout == Duration::from_millis(300)),
            "{error:?}"
        );
        // The stall lasts for ever; only the idle timeout can have ended it.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn slow_stream_hits_the_total_timeout() {
        let fake = FakeProvider::start();
        fake.push(Script::Delay {
            // Fourteen events 300 ms apart (4.2 s): the first deltas arrive well within the
            // 1.5 s deadline even on a busy machine, the end cannot.
            per_chunk: Duration::from_millis(300),
            then: Box::new(Script::text("one two three four five six seven eight", 8)),
        });
        let mut settings = settings(&fake);
        settings.request_timeout = Duration::from_millis(1500);
        let (events, error) = collect(Anthropic::new(settings).stream(request())).await;
        assert!(!events.is_empty(), "some deltas arrive before the deadline");
        assert!(matches!(error, Some(ProviderError::Timeout(_))), "{error:?}");
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_the_call() {
        let fake = FakeProvider::start();
        // About 0.9 s of stream if it were read to the end.
        fake.push(Script::Delay {
            per_chunk: Duration::from_millis(10),
            then: Box::new(Script::text(&"word ".repeat(80), 80)),
        });
        let mut receiver = Anthropic::new(settings(&fake)).stream(request());
        assert!(matches!(receiver.recv().await, Some(Ok(StreamEvent::TextDelta(_)))));
        drop(receiver);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // The fake counts a response only once its last byte went out.
        assert!(fake.service_times().is_empty(), "the stream was read to the end");
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn missing_key_fails_without_a_request() {
        let fake = FakeProvider::start();
        let mut settings = settings(&fake);
        settings.api_key = None;
        let (events, error) = collect(Anthropic::new(settings).stream(request())).await;
        assert!(events.is_empty());
        assert!(
            matches!(
                error,
                Some(ProviderError::MissingApiKey {
                    kind: "anthropic",
                    env: "ANTHROPIC_API_KEY"
                })
            ),
            "{error:?}"
        );
        assert_eq!(fake.request_count(), 0);
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error_after_retries() {
        // A port that was free a moment ago: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fake = FakeProvider::start();
        let mut settings = settings(&fake);
        settings.base_url = format!("http://127.0.0.1:{port}");
        let (_, error) = collect(Anthropic::new(settings).stream(request())).await;
        assert!(matches!(error, Some(ProviderError::Connect { .. })), "{error:?}");
    }

    fn decode_all(events: &[(&str, serde_json::Value)]) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut decoder = AnthropicDecoder::default();
        let mut out = Vec::new();
        for (name, data) in events {
            let event = SseEvent {
                event: (*name).to_owned(),
                data: data.to_string(),
                id: None,
            };
            decoder.decode(&event, &mut out)?;
        }
        Ok(out)
    }

    fn start() -> (&'static str, serde_json::Value) {
        (
            "message_start",
            json!({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 1}}}),
        )
    }

    #[test]
    fn events_out_of_order_are_malformed() {
        let delta = (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
        );
        let cases = [
            vec![delta.clone()],
            vec![start(), delta.clone()],
            vec![start(), start()],
            vec![start(), ("message_stop", json!({"type": "message_stop"}))],
            vec![
                start(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text"}}),
                ),
            ],
        ];
        for case in cases {
            let result = decode_all(&case);
            assert!(
                matches!(result, Err(ProviderError::Malformed { .. })),
                "{case:?}: {result:?}"
            );
        }
    }

    #[test]
    fn invalid_json_and_bad_tool_input_are_malformed() {
        let mut decoder = AnthropicDecoder::default();
        let event = SseEvent {
            event: "message_start".to_owned(),
            data: "{not json".to_owned(),
            id: None,
        };
        let result = decoder.decode(&event, &mut Vec::new());
        assert!(matches!(result, Err(ProviderError::Malformed { .. })), "{result:?}");

        let tool = |partial: &str| {
            decode_all(&[
                start(),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "input_json_delta", "partial_json": partial}}),
                ),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            ])
        };
        assert!(matches!(tool("{\"a\":"), Err(ProviderError::Malformed { .. })));
        assert!(matches!(tool("[1]"), Err(ProviderError::Malformed { .. })));
        assert!(tool("").is_ok(), "an empty input is {{}}");
    }

    #[test]
    fn unknown_events_and_blocks_are_skipped() {
        let out = decode_all(&[
            start(),
            ("future_event", json!({"type": "future_event"})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "thinking_delta", "thinking": "hm"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "refusal"}, "usage": {"output_tokens": 3}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ])
        .unwrap();
        let [StreamEvent::Completed(completion)] = out.as_slice() else {
            panic!("expected only Completed, got {out:?}");
        };
        assert!(completion.content.is_empty());
        assert_eq!(completion.stop_reason, StopReason::Other("refusal".to_owned()));
        assert_eq!(completion.usage.output_tokens, 3);
        assert_eq!(completion.usage.input_tokens, 1);
    }
}
