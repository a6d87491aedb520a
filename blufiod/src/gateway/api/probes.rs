//! The open probes that need more than a constant answer: `/ready` (the health registry's
//! readiness checks, without details) and `/metrics` (the Prometheus exposition: behind the bearer
//! token when one is set, else for clients on this machine only, since it shows spend).

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use hyper::body::Incoming;

use super::{Gateway, json};
use crate::gateway::problem::{Body, Problem, full};

pub(super) async fn ready(gateway: &Arc<Gateway>) -> Response<Body> {
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

pub(super) fn metrics(gateway: &Arc<Gateway>, request: &http::Request<Incoming>) -> Response<Body> {
    let config = gateway.config.get();
    let token = match gateway.secrets.metrics_token(&config.config.gateway) {
        Ok(token) => token,
        Err(error) => {
            // Fail closed: a token that is configured but cannot be had admits nobody.
            tracing::warn!(error = %crate::error_chain(&error), "/metrics refused: its token cannot be resolved");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics-token-unavailable",
                "The metrics token cannot be resolved",
                "gateway.metrics_token names a vault secret blufiod cannot read; the owner sees why in blufiod's log and `blufioctl config list-secrets`",
            )
            .response();
        }
    };
    if token.is_none() && !from_this_machine(request, config.config.gateway.plain_http) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "metrics-token-required",
            "Metrics need a token from another host",
            "without gateway.metrics_token, /metrics answers clients on this machine only (behind a reverse proxy or a tunnel, none is): put a token of 16 characters or more in the vault and name it (`blufioctl config set-secret metrics`, `blufioctl config set gateway.metrics_token secret:metrics`), then send Authorization: Bearer TOKEN, or scrape gateway.metrics_listen locally, or run blufioctl metrics",
        )
        .response();
    }
    if let Some(token) = token {
        // The scheme is case-insensitive (RFC 9110, section 11.1); the token is not.
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        let credentials = match given.split_at_checked(7) {
            Some((scheme, credentials)) if scheme.eq_ignore_ascii_case(b"bearer ") => credentials,
            _ => &[][..],
        };
        if !constant_time_eq(credentials, token.expose().as_bytes()) {
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
    gateway.secrets.metrics_token_used(&config.config.gateway);
    let mut response = Response::new(full(exposition(gateway)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Whether a request certainly comes from this machine: a loopback peer, not relayed. Behind a
/// reverse proxy (`gateway.plain_http`) every peer is the proxy, and a forwarding header says a
/// relay is involved, so neither counts. The metrics listener's requests carry no connection: it
/// binds loopback only.
fn from_this_machine(request: &http::Request<Incoming>, behind_proxy: bool) -> bool {
    let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|header| request.headers().contains_key(*header));
    match request.extensions().get::<crate::gateway::connections::Connection>() {
        Some(connection) => connection.is_loopback() && !behind_proxy && !relayed,
        None => !relayed,
    }
}

/// How long a rendered exposition is served to further scrapes. Every scrape holding its own copy
/// until a slow client reads it would let many slow scrapers grow memory past the daemon's limit;
/// shared, they hold one (`Bytes` is reference-counted).
const EXPOSITION_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// The exposition, rendered at most once per [`EXPOSITION_MAX_AGE`].
fn exposition(gateway: &Gateway) -> bytes::Bytes {
    let mut cached = gateway.exposition.lock().expect("exposition cache poisoned");
    match cached.as_ref() {
        Some((at, text)) if at.elapsed() < EXPOSITION_MAX_AGE => text.clone(),
        _ => {
            let text = bytes::Bytes::from(gateway.metrics.render());
            *cached = Some((std::time::Instant::now(), text.clone()));
            text
        }
    }
}

/// Compares secrets without an early exit, so response time says nothing about how much of a
/// guess was right.
pub(super) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(index).copied().unwrap_or(0);
    }
    difference == 0
}
