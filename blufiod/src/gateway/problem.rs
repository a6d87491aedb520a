//! Errors as RFC 9457 problem documents (`application/problem+json`). A problem says what was
//! wrong and how to fix it, and never echoes a secret or a request body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;

/// The body type of every gateway response.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A full response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Longest piece of a request (a path) that a problem document quotes back.
const MAX_QUOTED: usize = 100;

/// `text` as a problem may quote it: at most [`MAX_QUOTED`] bytes (on a character boundary),
/// marked when cut. A client must not make the daemon hold a large response just by sending a
/// large path.
pub fn shown(text: &str) -> String {
    if text.len() <= MAX_QUOTED {
        return text.to_owned();
    }
    let end = (0..=MAX_QUOTED)
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0);
    format!("{}...", &text[..end])
}

/// A problem to report.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Short, stable slug: the last part of the `type` URI, for example `signature-expired`.
    pub kind: &'static str,
    /// Human title.
    pub title: &'static str,
    /// What exactly was wrong and how to fix it.
    pub detail: String,
    /// Seconds for `Retry-After`, when retrying later can help.
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem without `Retry-After`.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// With a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The response.
    pub fn response(&self) -> Response<Body> {
        let document = serde_json::json!({
            "type": format!("https://blufio.invalid/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(full(document.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Signature realm=\"blufio\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn problems_are_json_with_retry_after_when_set() {
        let response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            "slow down",
        )
        .retry_after(7)
        .response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(document["status"], 429);
        assert_eq!(document["detail"], "slow down");
        assert!(document["type"].as_str().unwrap().ends_with("/rate-limited"));
    }
}
