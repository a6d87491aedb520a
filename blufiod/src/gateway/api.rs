//! The gateway's routes: open probes (`/health`, `/ready`, `/metrics`, `/openapi.json`) and the
//! signed API under `/v1/`: OpenAI-compatible chat completions and models, and the native
//! session API whose message stream carries the same events as gRPC `SendMessage`.
//!
//! Every route is listed in [`ROUTES`], which the OpenAPI document is tested against.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Gateway;
use super::problem::{self, Body, Problem, full};
use crate::agent::budget::dollars;
use crate::agent::{AgentError, ErrorKind, TurnEvent};

/// Every route as (method, path template); `/openapi.json` documents exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/messages"),
];

/// The OpenAPI document, served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Header naming the session of an OpenAI-compatible request (and of its response).
pub const SESSION_HEADER: &str = "blufio-session";
/// Events buffered between a turn and its HTTP stream.
const STREAM_BUFFER: usize = 64;

/// Routes a request; returns the route template (for metrics) and the response.
pub async fn route(gateway: &Arc<Gateway>, request: http::Request<Incoming>) -> (&'static str, Response<Body>) {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => ("/health", json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ("GET", "/ready") => ("/ready", ready(gateway).await),
        ("GET", "/metrics") => ("/metrics", metrics(gateway, &request)),
        ("GET", "/openapi.json") => ("/openapi.json", {
            let mut response = Response::new(full(OPENAPI));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }),
        (_, path) if path.starts_with("/v1/") => signed(gateway, request).await,
        (_, path) => ("unknown", not_routed(&method, path)),
    }
}

/// 405 with `Allow` for a known path with the wrong method, else 404.
fn not_routed(method: &Method, path: &str) -> Response<Body> {
    let template = if path.starts_with("/v1/") {
        template_of(method, path)
    } else {
        path
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, route)| *route == template)
        .map(|(method, _)| *method)
        .collect();
    if allowed.is_empty() {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route {method} {}; see /openapi.json", problem::shown(path)),
        )
        .response();
    }
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} allows {}", problem::shown(path), allowed.join(", ")),
    )
    .response();
    if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(http::header::ALLOW, allow);
    }
    response
}

/// Authenticates the head, then reads the body (bounded in size, time and total buffered bytes,
/// and checked against the signed digest as it streams), then dispatches a `/v1/` route.
async fn signed(gateway: &Arc<Gateway>, request: http::Request<Incoming>) -> (&'static str, Response<Body>) {
    let (parts, body) = request.into_parts();
    let template = template_of(&parts.method, parts.uri.path());
    let identified = match gateway.identify(&parts).await {
        Ok(identified) => identified,
        Err(problem) => return (template, problem.response()),
    };
    let has_body = !hyper::body::Body::is_end_stream(&body);
    // A declared size over the cap is refused before the signature costs anything.
    let limit = gateway.shared.config().config.gateway.max_body_bytes;
    if declared_length(&parts).is_some_and(|declared| declared > limit) {
        return (template, body_too_large(limit).response());
    }
    let authenticated = match gateway.authenticate(&parts, has_body, identified).await {
        Ok(authenticated) => authenticated,
        Err(problem) => return (template, problem.response()),
    };
    if let Some(connection) = parts.extensions.get::<super::connections::Connection>() {
        connection.mark_authenticated();
    }
    let (body, _permit) = match authenticated.digest {
        None => (Bytes::new(), None),
        Some(digest) => match read_body(gateway, &parts, body, digest).await {
            Ok((body, permit)) => (body, Some(permit)),
            Err(problem) => {
                if problem.status == StatusCode::UNAUTHORIZED {
                    gateway.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
                }
                return (template, problem.response());
            }
        },
    };
    let response = match dispatch(gateway, &parts, body).await {
        Ok(response) => response,
        Err(problem) => problem.response(),
    };
    (template, response)
}

/// Reads a verified request's body: at most `gateway.max_body_bytes`, within
/// `gateway.request_timeout_secs`, holding its size in the gateway-wide body budget while it is
/// buffered, and hashing it as it streams; a body that does not match the signed
/// `Content-Digest` is refused.
async fn read_body(
    gateway: &Gateway,
    parts: &http::request::Parts,
    mut body: Incoming,
    mut digest: blufio_proto::httpsig::digest::DigestVerifier,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Problem> {
    let config = gateway.shared.config();
    let limit = usize::try_from(config.config.gateway.max_body_bytes).unwrap_or(usize::MAX);
    let timeout = Duration::from_secs(config.config.gateway.request_timeout_secs);
    let too_large = || body_too_large(config.config.gateway.max_body_bytes);
    let declared = declared_length(parts);
    if declared.is_some_and(|declared| declared > limit as u64) {
        return Err(too_large());
    }
    let reserve = declared
        .and_then(|declared| usize::try_from(declared).ok())
        .unwrap_or(limit)
        .clamp(1, super::BODY_BUFFER_TOTAL);
    let reading = async {
        let permit = gateway
            .body_budget
            .clone()
            .acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
            .await
            .expect("the body budget is never closed");
        let mut buffer = bytes::BytesMut::with_capacity(reserve.min(limit));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "body-unreadable",
                    "Bad request",
                    format!("cannot read the body: {error}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buffer.len().saturating_add(data.len()) > limit {
                    return Err(too_large());
                }
                digest.update(&data);
                buffer.extend_from_slice(&data);
            }
        }
        Ok((buffer.freeze(), permit))
    };
    let (body, permit) = tokio::time::timeout(timeout, reading).await.map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!(
                "the body did not arrive within gateway.request_timeout_secs ({} s)",
                timeout.as_secs()
            ),
        )
    })??;
    digest.finish().map_err(|error| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "content-digest",
            "Request not authenticated",
            error.to_string(),
        )
    })?;
    Ok((body, permit))
}

/// The `Content-Length` a request declares, if any.
fn declared_length(parts: &http::request::Parts) -> Option<u64> {
    parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

fn body_too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Request body too large",
        format!("the body exceeds gateway.max_body_bytes ({limit} bytes)"),
    )
}

fn template_of(method: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        (_, ["v1", "models"]) => "/v1/models",
        (_, ["v1", "chat", "completions"]) => "/v1/chat/completions",
        (_, ["v1", "sessions"]) => "/v1/sessions",
        (_, ["v1", "sessions", _]) => "/v1/sessions/{id}",
        (_, ["v1", "sessions", _, "messages"]) => "/v1/sessions/{id}/messages",
        _ => "unknown",
    }
}

async fn dispatch(
    gateway: &Arc<Gateway>,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let agent = &gateway.shared.agent;
    match (parts.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "models"]) => {
            let model = gateway.shared.config().config.provider.model();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "blufio"}]}),
            ))
        }
        ("POST", ["v1", "chat", "completions"]) => chat_completions(gateway, parts, &body).await,
        ("POST", ["v1", "sessions"]) => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Create {
                #[serde(default)]
                title: String,
            }
            let create: Create = if body.is_empty() {
                Create::default()
            } else {
                parse_json(&body)?
            };
            let session = agent
                .create_session(&create.title)
                .await
                .map_err(|error| agent_problem(&error))?;
            Ok(json(StatusCode::CREATED, &session_json(&session)))
        }
        ("GET", ["v1", "sessions"]) => {
            let (sessions, next) = agent
                .list_sessions(100, None)
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
        ("GET", ["v1", "sessions", id]) => {
            let (session, messages) = agent
                .get_session(id, 200)
                .await
                .map_err(|error| agent_problem(&error))?;
            let messages: Vec<serde_json::Value> = messages
                .iter()
                .map(|message| {
                    serde_json::json!({
                        "id": message.id,
                        "role": message.role,
                        "created_at": message.created_at,
                        "text": message_text(&message.blocks),
                    })
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"session": session_json(&session), "messages": messages}),
            ))
        }
        ("DELETE", ["v1", "sessions", id]) => {
            agent.delete_session(id).await.map_err(|error| agent_problem(&error))?;
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        ("POST", ["v1", "sessions", id, "messages"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Send {
                text: String,
            }
            let send: Send = parse_json(&body)?;
            let events = agent
                .send_message(Some(id), &send.text)
                .await
                .map_err(|error| agent_problem(&error))?;
            Ok(native_stream(events))
        }
        _ => Ok(not_routed(&parts.method, path)),
    }
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
async fn chat_completions(
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
    let model = gateway.shared.config().config.provider.model();
    if let Some(requested) = &request.model
        && !requested.is_empty()
        && *requested != model
    {
        return Err(bad_request(format!(
            "model {requested:?} is not served here; this daemon runs {model:?} (see GET /v1/models)"
        )));
    }
    let mut events = gateway
        .shared
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
fn content_text(content: &serde_json::Value) -> String {
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

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        _ => "stop",
    }
}

fn openai_usage(usage: &crate::agent::provider::Usage) -> serde_json::Value {
    let cached = usage.cache_read_input_tokens;
    let prompt = usage.input_tokens + usage.cache_creation_input_tokens + cached;
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// An SSE response whose frames come from a task that turns agent events into lines.
fn sse_response(lines: mpsc::Receiver<Bytes>) -> Response<Body> {
    use tokio_stream::StreamExt as _;
    let frames = tokio_stream::wrappers::ReceiverStream::new(lines)
        .map(|bytes| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes)));
    let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
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
                    serde_json::json!({"id": id, "name": name, "phase": phase, "is_error": is_error, "summary": summary}),
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
                        "stop_reason": summary.stop_reason,
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

async fn ready(gateway: &Arc<Gateway>) -> Response<Body> {
    // Unauthenticated: say what is wrong, but not the details (paths, errors, config hints),
    // which the owner finds in the log and in `blufioctl status`.
    let problems = gateway.health.readiness_problems().await;
    if problems.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        let mut response = json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not ready", "problems": problems}),
        );
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        response
    }
}

fn metrics(gateway: &Arc<Gateway>, request: &http::Request<Incoming>) -> Response<Body> {
    let config = gateway.shared.config();
    if let Some(token) = &config.config.gateway.metrics_token {
        let expected = format!("Bearer {}", token.expose());
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        if !constant_time_eq(given, expected.as_bytes()) {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "metrics-token",
                "Metrics need a token",
                "send Authorization: Bearer <gateway.metrics_token>",
            )
            .response();
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"blufio-metrics\""),
            );
            return response;
        }
    }
    let agent = gateway.shared.agent.status();
    let text = gateway.metrics.render(&[
        (
            "spend_today_usd",
            "Spend today (UTC) in US dollars.",
            agent.budget.today_usd,
        ),
        (
            "spend_month_usd",
            "Spend this month (UTC) in US dollars.",
            agent.budget.month_usd,
        ),
        (
            "budget_reserved_usd",
            "Worst-case cost reserved by calls in flight, in US dollars.",
            agent.budget.reserved_usd,
        ),
        ("turns_in_flight", "Agent turns running.", agent.turns_in_flight as f64),
        (
            "turns_queued",
            "Agent turns waiting for a slot.",
            agent.turns_queued as f64,
        ),
        (
            "daily_cap_usd",
            "The daily budget cap in US dollars (0: none).",
            config.config.budget.daily_usd,
        ),
        (
            "monthly_cap_usd",
            "The monthly budget cap in US dollars (0: none).",
            config.config.budget.monthly_usd,
        ),
        (
            "gateway_replay_cache_entries",
            "Nonces remembered for replay protection.",
            gateway.replay.len() as f64,
        ),
    ]);
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Compares secrets without an early exit, so response time says nothing about how much of a
/// guess was right.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(index).copied().unwrap_or(0);
    }
    difference == 0
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|error| bad_request(format!("the body is not the expected JSON: {error}")))
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
}

fn session_json(session: &crate::storage::SessionRecord) -> serde_json::Value {
    serde_json::json!({
        "id": session.id,
        "title": session.title,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "model": session.model,
        "state": session.state,
        "message_count": session.message_count,
    })
}

fn message_text(blocks: &[crate::agent::provider::ContentBlock]) -> String {
    use crate::agent::provider::ContentBlock;
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

/// Maps an agent failure to an HTTP problem.
fn agent_problem(error: &AgentError) -> Problem {
    let detail = crate::error_chain(error);
    match error.kind() {
        ErrorKind::SessionNotFound => Problem::new(StatusCode::NOT_FOUND, "session-not-found", "Not found", detail),
        ErrorKind::InvalidMessage => bad_request(detail),
        ErrorKind::BudgetExhausted => Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            "budget-exhausted",
            "Budget exhausted",
            detail,
        ),
        ErrorKind::QueueFull => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", "Too many turns", detail).retry_after(5)
        }
        ErrorKind::SessionBusy => Problem::new(StatusCode::CONFLICT, "session-busy", "Session busy", detail),
        ErrorKind::ProviderNotConfigured | ErrorKind::UnpricedModel => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider-not-configured",
            "Provider not configured",
            detail,
        ),
        ErrorKind::ProviderFailed => {
            Problem::new(StatusCode::BAD_GATEWAY, "provider-failed", "Provider failed", detail)
        }
        ErrorKind::ShuttingDown => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "Shutting down",
            detail,
        )
        .retry_after(5),
        ErrorKind::MemoryPressure => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory-pressure",
            "Memory pressure",
            detail,
        )
        .retry_after(10),
        ErrorKind::StorageFull | ErrorKind::StorageFailed => {
            tracing::error!(error = %detail, "a gateway request failed in storage");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage-failed",
                "Internal error",
                "the daemon's database failed; the owner finds the cause in blufiod's log",
            )
        }
    }
}

use crate::util::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        for (method, path) in ROUTES {
            if path.starts_with("/v1/") {
                assert_eq!(
                    template_of(&method.parse().unwrap(), &path.replace("{id}", "abc")),
                    *path
                );
            }
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abcd", b"Bearer abc"));
    }

    #[test]
    fn openai_content_may_be_text_or_parts() {
        assert_eq!(content_text(&serde_json::json!("hi")), "hi");
        assert_eq!(
            content_text(
                &serde_json::json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}])
            ),
            "a\nb"
        );
    }
}
