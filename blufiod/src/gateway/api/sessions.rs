//! The native session API under `/v1/sessions`: create, list, show, delete, and send a message
//! whose turn streams back as SSE events named like the gRPC `SendMessage` events.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Gateway, STREAM_BUFFER, agent_problem, bad_request, json, parse_json, sse_response};
use crate::agent::budget::dollars;
use crate::agent::model::{Channel, ContentBlock, Session, TurnEvent};
use crate::config::Principal;
use crate::gateway::problem::{Body, Problem, full};

/// `POST /v1/sessions`.
pub(super) async fn create(gateway: &Arc<Gateway>, body: &[u8]) -> Result<Response<Body>, Problem> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Create {
        #[serde(default)]
        title: String,
    }
    let create: Create = if body.is_empty() {
        Create::default()
    } else {
        parse_json(body)?
    };
    let session = gateway
        .agent
        .create_session(&create.title)
        .await
        .map_err(|error| agent_problem(&error))?;
    Ok(json(StatusCode::CREATED, &session_json(&session)))
}

/// Sessions in a page of `GET /v1/sessions` unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// Messages in a page of `GET /v1/sessions/{id}` unless `limit` says otherwise, and at most (a
/// page also ends before 2 MiB of messages).
const DEFAULT_MESSAGE_PAGE: u32 = 200;
const MAX_MESSAGE_PAGE: u32 = 2_000;

/// A page's `limit` and `cursor` from the query string of `route`, which takes nothing else.
fn page_query(query: Option<&str>, default: u32, max: u32, route: &str) -> Result<(u32, Option<String>), Problem> {
    let mut limit = default;
    let mut cursor = None;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=max).contains(limit))
                    .ok_or_else(|| bad_request(format!("limit must be a whole number from 1 to {max}")))?;
            }
            // A session cursor is `SECONDS:ID`; a client may have percent-encoded the colon.
            "cursor" if !value.is_empty() => cursor = Some(value.replace("%3A", ":").replace("%3a", ":")),
            "cursor" => {
                return Err(bad_request(
                    "cursor is empty; pass the next_cursor of the previous page",
                ));
            }
            other => {
                return Err(bad_request(format!(
                    "unknown query parameter {:?}; GET {route} takes limit and cursor",
                    crate::gateway::problem::shown(other)
                )));
            }
        }
    }
    Ok((limit, cursor))
}

/// `GET /v1/sessions[?limit=N][&cursor=C]`: a page, most recently updated first; `next_cursor`
/// (when not null) fetches the next one.
pub(super) async fn list(gateway: &Arc<Gateway>, query: Option<&str>) -> Result<Response<Body>, Problem> {
    let (limit, cursor) = page_query(query, DEFAULT_PAGE, MAX_PAGE, "/v1/sessions")?;
    let (sessions, next) = gateway
        .agent
        .list_sessions(limit, cursor.as_deref())
        .await
        .map_err(|error| agent_problem(&error))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
            "next_cursor": next,
        }),
    ))
}

/// `GET /v1/sessions/{id}[?limit=N][&cursor=C]`: the session and a page of its messages, the
/// latest first; `next_cursor` (when not null) fetches the older page before it.
pub(super) async fn show(gateway: &Arc<Gateway>, id: &str, query: Option<&str>) -> Result<Response<Body>, Problem> {
    let (limit, cursor) = page_query(query, DEFAULT_MESSAGE_PAGE, MAX_MESSAGE_PAGE, "/v1/sessions/{id}")?;
    let (session, messages, next) = gateway
        .agent
        .get_session(id, limit, cursor.as_deref())
        .await
        .map_err(|error| agent_problem(&error))?;
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|message| {
            serde_json::json!({
                "id": message.id,
                "role": message.role.as_str(),
                "created_at": message.created_at,
                "text": message_text(&message.blocks),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"session": session_json(&session), "messages": messages, "next_cursor": next}),
    ))
}

/// `DELETE /v1/sessions/{id}`.
pub(super) async fn delete(gateway: &Arc<Gateway>, id: &str) -> Result<Response<Body>, Problem> {
    gateway
        .agent
        .delete_session(id)
        .await
        .map_err(|error| agent_problem(&error))?;
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `POST /v1/sessions/{id}/messages`.
pub(super) async fn send(gateway: &Arc<Gateway>, id: &str, body: &[u8]) -> Result<Response<Body>, Problem> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Send {
        text: String,
    }
    let send: Send = parse_json(body)?;
    let events = gateway
        .agent
        .send_message(Channel::Gateway, Principal::Device, Some(id), &send.text)
        .await
        .map_err(|error| agent_problem(&error))?;
    Ok(native_stream(events))
}

/// The native stream: SSE events named like the gRPC `SendMessage` events.
fn native_stream(mut events: mpsc::Receiver<TurnEvent>) -> Response<Body> {
    let (lines, receiver) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let (name, value) = match event {
                TurnEvent::Accepted { session_id, message_id } => (
                    "accepted",
                    serde_json::json!({"session_id": session_id, "message_id": message_id}),
                ),
                TurnEvent::TextDelta(text) => ("text_delta", serde_json::json!({"text": text})),
                TurnEvent::Tool {
                    id,
                    name,
                    phase,
                    is_error,
                    summary,
                } => (
                    "tool",
                    serde_json::json!({"id": id, "name": name, "phase": phase.as_str(), "is_error": is_error, "summary": summary}),
                ),
                TurnEvent::Completed(summary) => (
                    "completed",
                    serde_json::json!({
                        "message_id": summary.message_id,
                        "usage": {
                            "input_tokens": summary.usage.input_tokens,
                            "output_tokens": summary.usage.output_tokens,
                            "cache_creation_input_tokens": summary.usage.cache_creation_input_tokens,
                            "cache_read_input_tokens": summary.usage.cache_read_input_tokens,
                        },
                        "cost_usd": dollars(summary.cost_micros),
                        "provider_calls": summary.provider_calls,
                        "stop_reason": summary.stop_reason.as_str(),
                        "model": summary.model,
                    }),
                ),
                TurnEvent::Failed(error) => {
                    let problem = agent_problem(&error);
                    (
                        "error",
                        serde_json::json!({"status": problem.status.as_u16(), "type": problem.kind, "detail": problem.detail}),
                    )
                }
            };
            if lines
                .send(Bytes::from(format!("event: {name}\ndata: {value}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    sse_response(receiver)
}

pub(super) fn session_json(session: &Session) -> serde_json::Value {
    serde_json::json!({
        "id": session.id,
        "title": session.title,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        // No model before the first turn: null, as in the CLI's JSON.
        "model": (!session.model.is_empty()).then_some(&session.model),
        "state": session.state.as_str(),
        "message_count": session.message_count,
    })
}

pub(super) fn message_text(blocks: &[ContentBlock]) -> String {
    blocks
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            ContentBlock::ToolResult { content, .. } => Some(content.as_str()),
            ContentBlock::ToolUse { .. } => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}
