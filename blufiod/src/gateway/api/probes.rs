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
    let token = gateway.secrets.metrics_token(&config.config.gateway);
    // The metrics listener's requests carry no connection: it binds loopback only.
    let remote = request
        .extensions()
        .get::<crate::gateway::connections::Connection>()
        .is_some_and(|connection| !connection.is_loopback());
    if token.is_none() && remote {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "metrics-token-required",
            "Metrics need a token from another host",
            "without gateway.metrics_token, /metrics answers clients on this machine only: set gateway.metrics_token (blufioctl config set gateway.metrics_token TOKEN) and send Authorization: Bearer TOKEN, or scrape gateway.metrics_listen locally, or run blufioctl metrics",
        )
        .response();
    }
    if let Some(token) = token {
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
    let text = gateway.metrics.render();
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
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
