//! The OpenAI-compatible surface: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`, so that stock OpenAI clients can talk to the agent.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Gateway, SESSION_HEADER, STREAM_BUFFER, agent_problem, bad_request, json, parse_json, sse_response};
use crate::agent::model::{StopReason, TurnEvent, Usage};
use crate::gateway::problem::{Body, Problem};
use crate::util::unix_now;

/// `GET /v1/models`: the one model this daemon serves.
pub(super) fn models(gateway: &Arc<Gateway>) -> Response<Body> {
    let model = gateway.config.get().config.provider.model();
    json(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "blufio"}]}),
    )
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

/// The agent keeps the conversation server-side, per session: the turn's message is the last
/// user message of the request. The session comes from the `Blufio-Session` header, or a new
/// one is made (and named in the response's `Blufio-Session` header).
pub(super) async fn chat_completions(
    gateway: &Arc<Gateway>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Response<Body>, Problem> {
    let request: CompletionRequest = parse_json(body)?;
    let text = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == "user")
        .map(|message| content_text(&message.content))
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| bad_request("messages must contain a user message with text content"))?;
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
    let mut events = gateway
        .agent
        .send_message(session.as_deref(), &text)
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
