//! The gateway's routes: open probes (`/health`, `/ready`, `/metrics`, `/openapi.json`) and the
//! signed API under `/v1/`: OpenAI-compatible chat completions and models, and the native
//! session API whose message stream carries the same events as gRPC `SendMessage`.
//!
//! Every route is listed in [`ROUTES`], which the OpenAPI document is tested against. This
//! module routes, authenticates and reads bodies; each surface lives in its own file:
//! `openai.rs` (chat completions and models), `sessions.rs` (the native session API) and
//! `probes.rs` (`/ready`, `/metrics`).

mod openai;
mod probes;
mod sessions;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::Gateway;
use super::problem::{self, Body, Problem, full};
use crate::agent::{AgentError, ErrorKind};

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
    ("GET", "/v1/usage"),
    ("GET", "/v1/status"),
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
        ("GET", "/ready") => ("/ready", probes::ready(gateway).await),
        ("GET", "/metrics") => ("/metrics", probes::metrics(gateway, &request)),
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
    let limit = gateway.config.get().config.gateway.max_body_bytes;
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
    let config = gateway.config.get();
    let limit = usize::try_from(config.config.gateway.max_body_bytes).unwrap_or(usize::MAX);
    let timeout = Duration::from_secs(config.config.gateway.request_timeout_secs);
    let too_large = || body_too_large(config.config.gateway.max_body_bytes);
    // A declared length over the cap (or over what the platform can address) is refused now.
    let declared = match declared_length(parts).map(usize::try_from) {
        Some(Ok(declared)) if declared <= limit => Some(declared),
        Some(_) => return Err(too_large()),
        None => None,
    };
    let reserve = declared.unwrap_or(limit).clamp(1, super::BODY_BUFFER_TOTAL);
    let reading = async {
        let permit = gateway
            .body_budget
            .clone()
            .acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
            .await
            .expect("the body budget is never closed");
        // Room for what the client declared; a body of unknown length grows as it arrives.
        let mut buffer = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
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
        (_, ["v1", "usage"]) => "/v1/usage",
        (_, ["v1", "status"]) => "/v1/status",
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
    match (parts.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "models"]) => Ok(openai::models(gateway)),
        ("POST", ["v1", "chat", "completions"]) => openai::chat_completions(gateway, parts, &body).await,
        ("POST", ["v1", "sessions"]) => sessions::create(gateway, &body).await,
        ("GET", ["v1", "sessions"]) => sessions::list(gateway, parts.uri.query()).await,
        ("GET", ["v1", "sessions", id]) => sessions::show(gateway, id, parts.uri.query()).await,
        ("DELETE", ["v1", "sessions", id]) => sessions::delete(gateway, id).await,
        ("POST", ["v1", "sessions", id, "messages"]) => sessions::send(gateway, id, &body).await,
        ("GET", ["v1", "usage"]) => usage::report(gateway, parts.uri.query()).await,
        ("GET", ["v1", "status"]) => usage::status(gateway).await,
        _ => Ok(not_routed(&parts.method, path)),
    }
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

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    // Serializing a value of the types used here cannot fail (string keys, no maps of other keys).
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(body));
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
        ErrorKind::Restoring => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "restoring",
            "Restoring a backup",
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

#[cfg(test)]
mod tests {
    use super::openai::content_text;
    use super::probes::constant_time_eq;
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
