//! The OpenAI-compatible surface: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`, so that stock OpenAI clients can talk to the agent.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Gateway, SESSION_HEADER, STREAM_BUFFER, agent_problem, bad_request, json, parse_json, sse_response};
use crate::agent::TurnRequest;
use crate::agent::model::{Channel, Role, StopReason, TurnEvent, Usage};
use crate::config::Principal;
use crate::gateway::problem::{Body, Problem};
use crate::util::unix_now;

/// `GET /v1/models`: the one model this daemon serves.
pub(super) fn models(gateway: &Arc<Gateway>) -> Response<Body> {
    /// One entry of OpenAI's model list.
    #[derive(serde::Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        object: &'static str,
        data: [Model<'a>; 1],
    }
    let model = gateway.config.get().config.provider.model();
    let list = List {
        object: "list",
        data: [Model {
            id: &model,
            object: "model",
            created: 0,
            owned_by: "blufio",
        }],
    };
    json(StatusCode::OK, &list)
}

/// `POST /v1/chat/completions` request, the subset blufio uses. Unknown fields are accepted, as
/// OpenAI clients send many optional ones.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<CompletionMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Two modes, as OpenAI clients expect:
/// - without a `Blufio-Session` header, the request's `messages` are the whole conversation: the
///   earlier ones are stored with the last (which must be the owner's) in a new session, which
///   the turn answers and the ledger records; the response names it in `Blufio-Session`;
/// - with the header, that session's stored history is the conversation, and the request's new
///   messages (those after its last assistant message) are appended as the owner's next message.
///
/// In both, the request's system (or developer) messages follow the daemon's own system prompt
/// for this turn.
pub(super) async fn chat_completions(
    gateway: &Arc<Gateway>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Response<Body>, Problem> {
    let request: CompletionRequest = parse_json(body)?;
    let conversation = Conversation::of(&request.messages)?;
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let model = gateway.config.get().config.provider.model();
    if let Some(requested) = &request.model
        && !requested.is_empty()
        && *requested != model
    {
        return Err(bad_request(format!(
            "model {requested:?} is not served here; this daemon runs {model:?} (see GET /v1/models)"
        )));
    }
    let (earlier, text) = match &session {
        None => conversation.whole()?,
        Some(_) => (Vec::new(), conversation.new_messages()?),
    };
    let system = conversation.system();
    let mut events = gateway
        .agent
        .send(TurnRequest {
            channel: Channel::Gateway,
            principal: Principal::Device,
            session_id: session.as_deref(),
            earlier,
            text: &text,
            system: system.as_deref(),
        })
        .await
        .map_err(|error| agent_problem(&error))?;
    let Some(TurnEvent::Accepted { session_id, .. }) = events.recv().await else {
        return Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "turn-not-accepted",
            "Internal error",
            "the turn ended before it was accepted",
        ));
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = unix_now();
    let session_header = HeaderValue::from_str(&session_id).expect("session ids are ASCII");
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|options| options.include_usage);
        let mut response = openai_stream(events, id, created, model, include_usage);
        response.headers_mut().insert(SESSION_HEADER, session_header);
        return Ok(response);
    }
    let mut answer = String::new();
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::TextDelta(delta) => answer.push_str(&delta),
            TurnEvent::Completed(summary) => {
                let mut response = json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "id": id,
                        "object": "chat.completion",
                        "created": created,
                        "model": summary.model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": finish_reason(&summary.stop_reason),
                        }],
                        "usage": openai_usage(&summary.usage),
                    }),
                );
                response.headers_mut().insert(SESSION_HEADER, session_header);
                return Ok(response);
            }
            TurnEvent::Failed(error) => return Err(agent_problem(&error)),
            TurnEvent::Accepted { .. } | TurnEvent::Tool { .. } => {}
        }
    }
    Err(Problem::new(
        StatusCode::BAD_GATEWAY,
        "turn-incomplete",
        "Bad gateway",
        "the turn ended without an answer",
    ))
}

/// The messages of a request, sorted out.
struct Conversation {
    /// System and developer texts, in order.
    system: Vec<String>,
    /// The rest, in order.
    messages: Vec<(Role, String)>,
}

impl Conversation {
    fn of(messages: &[CompletionMessage]) -> Result<Self, Problem> {
        let mut conversation = Conversation {
            system: Vec::new(),
            messages: Vec::new(),
        };
        for (index, message) in messages.iter().enumerate() {
            let text = content_text(&message.content);
            match message.role.as_str() {
                "system" | "developer" => conversation.system.push(text),
                "user" => conversation.messages.push((Role::User, text)),
                "assistant" => conversation.messages.push((Role::Assistant, text)),
                other => {
                    return Err(bad_request(format!(
                        "messages[{index}] has role {other:?}; blufio takes system, developer, user and assistant messages (it runs its own tools, so there are no tool results to send)"
                    )));
                }
            }
        }
        Ok(conversation)
    }

    fn system(&self) -> Option<String> {
        (!self.system.is_empty()).then(|| self.system.join("\n\n"))
    }

    /// The whole conversation: the earlier messages and the last, which must be the owner's.
    fn whole(&self) -> Result<(Vec<(Role, String)>, String), Problem> {
        match self.messages.split_last() {
            Some(((Role::User, text), earlier)) if !text.trim().is_empty() => Ok((earlier.to_vec(), text.clone())),
            _ => Err(bad_request(
                "the last message must be a user message with text content: it is the one to answer",
            )),
        }
    }

    /// The messages after the last assistant message, joined: what the owner adds to a session.
    fn new_messages(&self) -> Result<String, Problem> {
        let start = self
            .messages
            .iter()
            .rposition(|(role, _)| *role == Role::Assistant)
            .map_or(0, |last| last + 1);
        let text = self.messages[start..]
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| !text.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        if text.is_empty() {
            return Err(bad_request(
                "messages must end with user messages with text content (after the last assistant message): they are what to answer",
            ));
        }
        Ok(text)
    }
}

/// The text of an OpenAI message `content`: a string, or an array of `{"type":"text","text"}`.
pub(super) fn content_text(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn finish_reason(stop_reason: &StopReason) -> &'static str {
    match stop_reason {
        StopReason::MaxTokens => "length",
        _ => "stop",
    }
}

fn openai_usage(usage: &Usage) -> serde_json::Value {
    let cached = usage.cache_read_input_tokens;
    let prompt = usage.input_tokens + usage.cache_creation_input_tokens + cached;
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn openai_stream(
    mut events: mpsc::Receiver<TurnEvent>,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
) -> Response<Body> {
    let (lines, receiver) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    tokio::spawn(async move {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let data = |value: &serde_json::Value| Bytes::from(format!("data: {value}\n\n"));
        if lines
            .send(data(&chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            )))
            .await
            .is_err()
        {
            return;
        }
        while let Some(event) = events.recv().await {
            let line = match event {
                TurnEvent::TextDelta(text) => data(&chunk(serde_json::json!({"content": text}), None)),
                TurnEvent::Completed(summary) => {
                    let finish = chunk(serde_json::json!({}), Some(finish_reason(&summary.stop_reason)));
                    if lines.send(data(&finish)).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let usage = serde_json::json!({
                            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [], "usage": openai_usage(&summary.usage),
                        });
                        if lines.send(data(&usage)).await.is_err() {
                            return;
                        }
                    }
                    Bytes::from_static(b"data: [DONE]\n\n")
                }
                TurnEvent::Failed(error) => {
                    let problem = agent_problem(&error);
                    data(&serde_json::json!({"error": {"message": problem.detail, "type": problem.kind}}))
                }
                TurnEvent::Accepted { .. } | TurnEvent::Tool { .. } => continue,
            };
            if lines.send(line).await.is_err() {
                // The client went away: dropping `events` cancels the turn.
                return;
            }
        }
    });
    sse_response(receiver)
}
