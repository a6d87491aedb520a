//! The OpenAI-compatible Chat Completions adapter (OpenAI, Ollama, vLLM, llama.cpp,
//! OpenRouter): builds `POST {base_url}/chat/completions` and decodes its streamed chunks.
//!
//! A missing API key is allowed (local servers need none; no `Authorization` header is sent
//! then). It must never log the key or follow a redirect with it; anything the stream sends out
//! of protocol order becomes [`ProviderError::Malformed`], never a panic.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::{
    ChatRequest, Completion, ContentBlock, Decoder, HttpCall, Message, ModelList, Provider, ProviderError,
    ProviderSettings, Role, StopReason, StreamEvent, Usage, failed_stream, http_client, list_models, secret_header,
};
use crate::config::ProviderKind;

/// An OpenAI-compatible Chat Completions server.
pub struct OpenAi {
    settings: ProviderSettings,
    client: reqwest::Client,
}

impl OpenAi {
    /// An adapter with its own HTTP client.
    pub fn new(settings: ProviderSettings) -> Self {
        let client = http_client(&settings);
        Self { settings, client }
    }

    /// The bearer key, when there is one (a local server may need none).
    fn auth_headers(&self) -> Result<reqwest::header::HeaderMap, ProviderError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(api_key) = &self.settings.api_key {
            let bearer = zeroize::Zeroizing::new(format!("Bearer {}", api_key.expose()));
            let value = secret_header(ProviderKind::Openai.as_str(), &bearer)?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(headers)
    }

    fn prepare(&self, request: &ChatRequest<'_>) -> Result<HttpCall, ProviderError> {
        HttpCall::json(
            &self.client,
            &self.settings,
            format!("{}/chat/completions", self.settings.base_url),
            self.auth_headers()?,
            &request_body(request),
            request.approximate_bytes(),
        )
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn stream(&self, request: ChatRequest<'_>) -> tokio::sync::mpsc::Receiver<Result<StreamEvent, ProviderError>> {
        match self.prepare(&request) {
            Ok(call) => call.spawn(OpenAiDecoder::default()),
            Err(error) => failed_stream(error),
        }
    }

    fn list_models(&self) -> Pin<Box<dyn Future<Output = Result<ModelList, ProviderError>> + Send + 'static>> {
        let headers = self.auth_headers();
        let (client, url) = (self.client.clone(), format!("{}/models", self.settings.base_url));
        Box::pin(async move { list_models(client, url, headers?).await })
    }
}

/// The JSON body of a streamed Chat Completions call, borrowing from the request (no JSON value
/// tree per message).
fn request_body<'a>(request: &'a ChatRequest<'_>) -> RequestJson<'a> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        messages.push(MessageJson::System {
            content: &request.system,
        });
    }
    for message in request.messages.iter() {
        push_message_json(message, &mut messages);
    }
    RequestJson {
        model: &request.model,
        max_tokens: request.max_tokens,
        messages,
        stream: true,
        // Without this the stream carries no token counts and the ledger would be blind.
        stream_options: StreamOptions { include_usage: true },
        tools: request
            .tools
            .iter()
            .map(|tool| ToolJson {
                kind: "function",
                function: FunctionJson {
                    name: &tool.name,
                    description: &tool.description,
                    parameters: &tool.input_schema,
                },
            })
            .collect(),
    }
}

#[derive(Serialize)]
struct RequestJson<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<MessageJson<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolJson<'a>>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ToolJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionJson<'a>,
}

#[derive(Serialize)]
struct FunctionJson<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum MessageJson<'a> {
    System {
        content: &'a str,
    },
    User {
        content: Cow<'a, str>,
    },
    Assistant {
        /// `null` when the answer is only tool calls.
        content: Option<Cow<'a, str>>,
        // Some compatible servers reject an empty `tool_calls` array.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallJson<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: Cow<'a, str>,
    },
}

#[derive(Serialize)]
struct ToolCallJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallJson<'a>,
}

#[derive(Serialize)]
struct CallJson<'a> {
    name: &'a str,
    arguments: String,
}

/// Appends one conversation message as Chat Completions messages: tool results become `tool`
/// messages of their own, placed first because they must directly follow the assistant message
/// that asked for them.
fn push_message_json<'a>(message: &'a Message, messages: &mut Vec<MessageJson<'a>>) {
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for block in message.content.iter() {
        match block {
            ContentBlock::Text { text } => texts.push(text.as_str()),
            ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCallJson {
                id,
                kind: "function",
                function: CallJson {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                // The API has no error flag, so the model learns of the failure from the text.
                let content = if *is_error {
                    Cow::Owned(format!("[tool error] {content}"))
                } else {
                    Cow::Borrowed(content.as_str())
                };
                messages.push(MessageJson::Tool {
                    tool_call_id: tool_use_id,
                    content,
                });
            }
        }
    }
    let text: Cow<'a, str> = match texts.as_slice() {
        [] => Cow::Borrowed(""),
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.join("\n\n")),
    };
    match message.role {
        Role::User => {
            if !text.is_empty() {
                messages.push(MessageJson::User { content: text });
            }
        }
        Role::Assistant => messages.push(MessageJson::Assistant {
            content: (!text.is_empty()).then_some(text),
            tool_calls,
        }),
    }
}

/// One streamed chunk; every field is optional because compatible servers differ.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// A tool call being assembled.
struct ToolCall {
    /// The `index` the server gave it.
    wire_index: usize,
    id: String,
    name: String,
    arguments: String,
    started: bool,
}

/// The answer's parts in the order they first appeared.
enum Part {
    Text(String),
    /// Position in [`OpenAiDecoder::tool_calls`].
    Tool(usize),
}

/// The Chat Completions stream's state machine.
#[derive(Default)]
struct OpenAiDecoder {
    model: String,
    parts: Vec<Part>,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<String>,
    usage: Usage,
    /// Text and tool arguments received.
    answer_bytes: usize,
}

fn malformed(reason: impl Into<String>) -> ProviderError {
    ProviderError::Malformed { reason: reason.into() }
}

impl OpenAiDecoder {
    fn push_text(&mut self, piece: &str) {
        self.answer_bytes += piece.len();
        if let Some(Part::Text(text)) = self.parts.last_mut() {
            text.push_str(piece);
        } else {
            self.parts.push(Part::Text(piece.to_owned()));
        }
    }

    /// The position of the call a delta belongs to, creating it when new.
    fn tool_call_for(&mut self, delta: &WireToolCall) -> usize {
        let wire_index = match delta.index {
            Some(index) => index,
            // Servers that omit `index` stream calls one after another: a new id starts a new one.
            None => match (self.tool_calls.last(), &delta.id) {
                (Some(last), Some(id)) if !last.id.is_empty() && &last.id != id => last.wire_index + 1,
                (Some(last), _) => last.wire_index,
                (None, _) => 0,
            },
        };
        if let Some(position) = self.tool_calls.iter().position(|call| call.wire_index == wire_index) {
            return position;
        }
        self.tool_calls.push(ToolCall {
            wire_index,
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
            started: false,
        });
        let position = self.tool_calls.len() - 1;
        self.parts.push(Part::Tool(position));
        position
    }

    fn apply_tool_call(&mut self, delta: WireToolCall, out: &mut Vec<StreamEvent>) {
        if let Some(arguments) = delta.function.as_ref().and_then(|function| function.arguments.as_ref()) {
            self.answer_bytes += arguments.len();
        }
        let position = self.tool_call_for(&delta);
        let call = &mut self.tool_calls[position];
        if let Some(id) = delta.id.filter(|id| !id.is_empty())
            && call.id.is_empty()
        {
            call.id = id;
        }
        if let Some(function) = delta.function {
            // The name comes whole in the first delta; some servers repeat it in later ones.
            if let Some(name) = function.name.filter(|name| !name.is_empty())
                && call.name.is_empty()
            {
                call.name = name;
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
        if !call.started && !call.name.is_empty() {
            call.started = true;
            if call.id.is_empty() {
                // Some local servers send no id; the turn loop needs one to pair the result.
                call.id = format!("call_{position}");
            }
            out.push(StreamEvent::ToolUseStarted {
                id: call.id.clone(),
                name: call.name.clone(),
            });
        }
    }

    fn complete(&mut self) -> Result<Completion, ProviderError> {
        let Some(reason) = self.finish_reason.take() else {
            return Err(ProviderError::Truncated);
        };
        let mut content = Vec::new();
        for part in std::mem::take(&mut self.parts) {
            match part {
                Part::Text(text) if text.is_empty() => {}
                Part::Text(text) => content.push(ContentBlock::Text { text }),
                Part::Tool(position) => {
                    let call = &mut self.tool_calls[position];
                    if call.name.is_empty() {
                        return Err(malformed("a tool call without a name"));
                    }
                    // A tool without parameters may stream no arguments at all.
                    let input: Value = if call.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&call.arguments).map_err(|error| {
                            malformed(format!("invalid arguments JSON for tool {}: {error}", call.name))
                        })?
                    };
                    if !input.is_object() {
                        return Err(malformed(format!(
                            "the arguments of tool {} are not a JSON object",
                            call.name
                        )));
                    }
                    content.push(ContentBlock::ToolUse {
                        id: std::mem::take(&mut call.id),
                        name: std::mem::take(&mut call.name),
                        input,
                    });
                }
            }
        }
        let stop_reason = match reason.as_str() {
            "stop" if !self.tool_calls.is_empty() => StopReason::ToolUse,
            "stop" => StopReason::EndTurn,
            // `function_call` is the legacy name of the same thing.
            "tool_calls" | "function_call" => StopReason::ToolUse,
            "length" => StopReason::MaxTokens,
            _ => StopReason::Other(reason),
        };
        Ok(Completion {
            content,
            stop_reason,
            usage: self.usage,
            model: std::mem::take(&mut self.model),
        })
    }
}

impl Decoder for OpenAiDecoder {
    fn answer_bytes(&self) -> usize {
        self.answer_bytes
    }

    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push(StreamEvent::Completed(self.complete()?));
            return Ok(true);
        }
        let chunk: WireChunk =
            serde_json::from_str(data).map_err(|error| malformed(format!("invalid chunk: {error}")))?;
        if let Some(error) = chunk.error {
            let text = |key: &str| match error.get(key) {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Number(number)) => Some(number.to_string()),
                _ => None,
            };
            return Err(ProviderError::Stream {
                kind: text("type")
                    .or_else(|| text("code"))
                    .unwrap_or_else(|| "error".to_owned()),
                message: text("message").unwrap_or_else(|| error.to_string()),
            });
        }
        if let Some(model) = chunk.model.filter(|model| !model.is_empty())
            && self.model.is_empty()
        {
            self.model = model;
        }
        // The turn loop asks for one answer (`n` is not set), so only the first choice exists.
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                let has_content = delta.content.as_deref().is_some_and(|text| !text.is_empty())
                    || delta.tool_calls.as_ref().is_some_and(|calls| !calls.is_empty());
                if has_content && self.finish_reason.is_some() {
                    return Err(malformed("content after finish_reason"));
                }
                if let Some(text) = delta.content.filter(|text| !text.is_empty()) {
                    self.push_text(&text);
                    out.push(StreamEvent::TextDelta(text));
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.apply_tool_call(call, out);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|reason| !reason.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        if let Some(usage) = chunk.usage {
            let cached = usage
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0);
            self.usage = Usage {
                input_tokens: usage.prompt_tokens.saturating_sub(cached),
                output_tokens: usage.completion_tokens,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: cached,
            };
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
    use crate::agent::provider::fake_provider::{FakeProvider, FakeUsage, OPENAI_MODELS, Script};

    const KEY: &str = "sk-openai-test-key";

    fn settings(fake: &FakeProvider, api_key: Option<&str>) -> ProviderSettings {
        ProviderSettings {
            base_url: format!("{}/v1", fake.url()),
            api_key: api_key.map(|key| crate::config::Secret(key.to_owned())),
            anthropic_version: "unused".to_owned(),
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
            model: "gpt-test".to_owned(),
            system: "You are a test.".into(),
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![text("what time is it?")].into(),
                },
                Message {
                    role: Role::Assistant,
                    content: vec![ContentBlock::ToolUse {
                        id: "call_1".to_owned(),
                        name: "get_time".to_owned(),
                        input: json!({"zone": "UTC"}),
                    }]
                    .into(),
                },
                Message {
                    role: Role::User,
                    content: vec![
                        ContentBlock::ToolResult {
                            tool_use_id: "call_1".to_owned(),
                            content: "12:00".to_owned(),
                            is_error: false,
                        },
                        text("and in Paris?"),
                    ]
                    .into(),
                },
            ]
            .into(),
            tools: vec![ToolSpec {
                name: "get_time".to_owned(),
                description: "Tells the time.".to_owned(),
                input_schema: json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
            }]
            .into(),
            max_tokens: 256,
        }
    }

    #[tokio::test]
    async fn streams_text_deltas_in_order_and_maps_cached_usage() {
        let fake = FakeProvider::start();
        fake.push(Script::Text {
            text: "Hello, wörld! 😀".to_owned(),
            chunks: 3,
            usage: FakeUsage {
                input: 40,
                output: 9,
                cache_creation: 0,
                cache_read: 1024,
            },
        });
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::TextDelta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), 3);
        assert_eq!(deltas.concat(), "Hello, wörld! 😀");
        let completion = completion(&events);
        assert_eq!(completion.content, vec![text("Hello, wörld! 😀")]);
        assert_eq!(completion.stop_reason, StopReason::EndTurn);
        assert_eq!(completion.model, "gpt-test");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 9,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 1024,
            }
        );
    }

    #[tokio::test]
    async fn tool_call_arguments_are_assembled_from_fragments() {
        let fake = FakeProvider::start();
        let input = json!({"zone": "Europe/Paris", "formats": ["iso", "unix"]});
        fake.push(Script::tool_use("call_7", "get_time", input.clone()));
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            events[0],
            StreamEvent::ToolUseStarted {
                id: "call_7".to_owned(),
                name: "get_time".to_owned()
            }
        );
        let completion = completion(&events);
        assert_eq!(completion.stop_reason, StopReason::ToolUse);
        assert_eq!(
            completion.content,
            vec![ContentBlock::ToolUse {
                id: "call_7".to_owned(),
                name: "get_time".to_owned(),
                input
            }]
        );
    }

    #[tokio::test]
    async fn request_has_bearer_key_system_message_tools_and_tool_messages() {
        let fake = FakeProvider::start();
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(completion(&events).content, vec![text("fake answer to: and in Paris?")]);
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let sent = &requests[0];
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(sent.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        let body = &sent.body;
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {
                "name": "get_time",
                "description": "Tells the time.",
                "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
            }}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "You are a test."},
                {"role": "user", "content": "what time is it?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"zone\":\"UTC\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
                {"role": "user", "content": "and in Paris?"},
            ])
        );
    }

    #[test]
    fn texts_are_joined_failed_results_are_marked_and_an_answer_has_no_tool_calls_key() {
        let request = ChatRequest {
            system: "".into(),
            messages: vec![
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
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "call_9".to_owned(),
                        content: "boom".to_owned(),
                        is_error: true,
                    }]
                    .into(),
                },
            ]
            .into(),
            tools: Vec::new().into(),
            ..request()
        };
        let body = serde_json::to_value(request_body(&request)).expect("serializes");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "one\n\ntwo"},
                {"role": "assistant", "content": "three"},
                {"role": "tool", "tool_call_id": "call_9", "content": "[tool error] boom"},
            ])
        );
        assert_eq!(body.get("tools"), None);
    }

    #[tokio::test]
    async fn no_key_sends_no_authorization_and_no_tools_key_without_tools() {
        let fake = FakeProvider::start();
        let mut request = request();
        request.tools.to_mut().clear();
        let (_, error) = collect(OpenAi::new(settings(&fake, None)).stream(request)).await;
        assert!(error.is_none(), "{error:?}");
        let sent = &fake.requests()[0];
        assert_eq!(sent.header("authorization"), None);
        assert_eq!(sent.body.get("tools"), None);
    }

    #[tokio::test]
    async fn rate_limit_is_retried_after_the_servers_delay() {
        let fake = FakeProvider::start();
        fake.push(Script::http_error(429, "Rate limit reached", Some(1)));
        fake.push(Script::text("finally", 2));
        let started = Instant::now();
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(completion(&events).content, vec![text("finally")]);
        assert_eq!(fake.request_count(), 2);
        assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bad_request_is_not_retried_and_carries_the_message() {
        let fake = FakeProvider::start();
        fake.push(Script::http_error(400, "Invalid 'messages[2]'", None));
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert!(events.is_empty());
        match error {
            Some(ProviderError::Http { status: 400, message }) => assert_eq!(message, "Invalid 'messages[2]'"),
            other => panic!("expected Http 400, got {other:?}"),
        }
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn error_object_mid_stream_is_a_stream_error() {
        let fake = FakeProvider::start();
        fake.push(Script::StreamError {
            after_chunks: 1,
            error_type: "server_error".to_owned(),
            message: "The server had an error".to_owned(),
        });
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert_eq!(events, vec![StreamEvent::TextDelta("chunk 0 ".to_owned())]);
        match error {
            Some(ProviderError::Stream { kind, message }) => {
                assert_eq!(
                    (kind.as_str(), message.as_str()),
                    ("server_error", "The server had an error")
                );
            }
            other => panic!("expected Stream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stream_ending_early_is_truncated() {
        let fake = FakeProvider::start();
        fake.push(Script::Truncated { after_chunks: 2 });
        let (events, error) = collect(OpenAi::new(settings(&fake, Some(KEY))).stream(request())).await;
        assert_eq!(events.len(), 2);
        assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
    }

    #[tokio::test]
    async fn silent_stream_hits_the_idle_timeout() {
        let fake = FakeProvider::start();
        fake.push(Script::Stall { after_chunks: 0 });
        let mut settings = settings(&fake, Some(KEY));
        settings.idle_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let (events, error) = collect(OpenAi::new(settings).stream(request())).await;
        assert!(events.is_empty());
        assert!(matches!(error, Some(ProviderError::IdleTimeout(_))), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    fn decode_all(lines: &[String]) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for line in lines {
            let event = SseEvent {
                event: "message".to_owned(),
                data: line.clone(),
                id: None,
            };
            decoder.decode(&event, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn the_answer_held_counts_text_and_tool_arguments() {
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for line in [
            chunk(json!({"content": "four"}), None),
            chunk(json!({"content": "five!"}), None),
            tool_delta(0, Some("c1"), Some("f"), "{\"a\":"),
        ] {
            let event = SseEvent {
                event: "message".to_owned(),
                data: line,
                id: None,
            };
            decoder.decode(&event, &mut out).unwrap();
        }
        assert_eq!(decoder.answer_bytes(), 4 + 5 + 5);
    }

    /// The data of a chunk with one choice.
    fn chunk(delta: serde_json::Value, finish_reason: Option<&str>) -> String {
        json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}).to_string()
    }

    fn tool_delta(index: usize, id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        chunk(json!({"tool_calls": [call]}), None)
    }

    fn done() -> String {
        "[DONE]".to_owned()
    }

    #[test]
    fn done_without_finish_reason_is_truncated() {
        let result = decode_all(&[chunk(json!({"content": "hi"}), None), done()]);
        assert!(matches!(result, Err(ProviderError::Truncated)), "{result:?}");
    }

    #[test]
    fn invalid_chunks_are_malformed() {
        for lines in [
            vec!["{not json".to_owned()],
            vec![chunk(json!({}), Some("stop")), chunk(json!({"content": "late"}), None)],
            vec![
                tool_delta(0, Some("c"), Some("f"), "{\"a\""),
                chunk(json!({}), Some("tool_calls")),
                done(),
            ],
        ] {
            let result = decode_all(&lines);
            assert!(
                matches!(result, Err(ProviderError::Malformed { .. })),
                "{lines:?}: {result:?}"
            );
        }
    }

    #[test]
    fn parallel_tool_calls_and_text_keep_their_order() {
        let delta = json!({"role": "assistant", "content": "Checking."});
        let first = json!({"model": "local", "choices": [{"index": 0, "delta": delta}]});
        // Some servers report `stop` even when they called tools, and put usage in the last chunk.
        let mut last = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        last["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 2});
        let out = decode_all(&[
            first.to_string(),
            tool_delta(0, Some("a"), Some("f"), ""),
            tool_delta(1, Some("b"), Some("g"), "{}"),
            tool_delta(0, None, None, "{\"x\":1}"),
            last.to_string(),
            done(),
        ])
        .unwrap();
        let Some(StreamEvent::Completed(completion)) = out.last() else {
            panic!("expected Completed, got {out:?}");
        };
        assert_eq!(completion.model, "local");
        assert_eq!(completion.stop_reason, StopReason::ToolUse);
        assert_eq!(completion.usage.input_tokens, 5);
        assert_eq!(
            completion.content,
            vec![
                text("Checking."),
                ContentBlock::ToolUse {
                    id: "a".to_owned(),
                    name: "f".to_owned(),
                    input: json!({"x": 1})
                },
                ContentBlock::ToolUse {
                    id: "b".to_owned(),
                    name: "g".to_owned(),
                    input: json!({})
                },
            ]
        );
    }

    #[tokio::test]
    async fn the_model_list_is_asked_with_the_bearer_key_and_a_refused_key_is_a_401() {
        let fake = FakeProvider::start();
        fake.require_key(KEY);
        let provider = OpenAi::new(settings(&fake, Some(KEY)));
        let list = provider.list_models().await.unwrap();
        assert_eq!(list.models, OPENAI_MODELS);
        let sent = &fake.requests()[0];
        assert_eq!((sent.method.as_str(), sent.path.as_str()), ("GET", "/v1/models"));
        assert_eq!(sent.header("authorization"), Some(format!("Bearer {KEY}").as_str()));

        fake.require_key("another-key");
        match provider.list_models().await {
            Err(ProviderError::Http { status: 401, message }) => assert_eq!(message, "Incorrect API key provided."),
            other => panic!("expected a 401, got {other:?}"),
        }
    }
}
