//! Authentication of `/v1/` requests: RFC 9421 signatures by registered Ed25519 device keys, and
//! per-key rate limiting.
//!
//! Checks run in a fixed order and the first failure is reported by name: headers present and
//! parseable → key known and not revoked → required components covered → required parameters
//! present → `created` within the skew window and not expired → nonce unseen → content digest
//! matches the body → signature verifies (strict). Only then is the key charged against its rate
//! limit, so unsigned traffic cannot exhaust a device's quota.

use std::num::NonZeroU32;
use std::time::{SystemTime, UNIX_EPOCH};

use blufio_proto::httpsig;
use governor::clock::{Clock as _, DefaultClock};
use http::StatusCode;

use super::Gateway;
use super::api::SESSION_HEADER;
use super::problem::Problem;
use super::replay::ReplayError;
use crate::devices::ActiveDevice;

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The device that signed it.
    pub device: ActiveDevice,
}

/// Requests per minute per key.
pub struct RateLimiter {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimiter {
    /// `per_minute` requests per key per minute, with bursts of the same size.
    pub fn new(per_minute: u32) -> Self {
        let quota = governor::Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Charges one request to `key`; on refusal returns the seconds to wait.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        // Keys are keyids of verified devices, so the map is bounded by the registered devices;
        // dropping idle entries keeps it small anyway.
        if self.limiter.len() > 1_000 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_secs().max(1))
    }
}

fn unauthorized(kind: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, kind, "Request not authenticated", detail)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// A request whose signature headers parse and name a registered device; its body has not been
/// read yet.
pub struct Identified {
    parsed: httpsig::ParsedSignature,
    keyid: String,
    device: ActiveDevice,
}

/// Longest nonce accepted: far more than any random nonce needs, and it bounds what each
/// remembered nonce costs.
const MAX_NONCE_BYTES: usize = 128;

impl Gateway {
    /// The checks that need no body: signature headers present and parseable, key known and not
    /// revoked. Run before the body is read, so that unsigned traffic cannot make the daemon
    /// buffer bodies.
    pub(super) async fn identify(&self, parts: &http::request::Parts) -> Result<Identified, Problem> {
        let outcome = self.identify_inner(parts).await;
        if let Err(problem) = &outcome {
            self.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
        }
        outcome
    }

    /// The remaining checks, in order, on the read body; then the per-key rate limit.
    pub(super) async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        identified: Identified,
    ) -> Result<Authenticated, Problem> {
        let outcome = self.check_signature(parts, body, identified);
        if let Err(problem) = &outcome {
            self.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
        }
        let authenticated = outcome?;
        self.devices.touch(&authenticated.device.record.keyid).await;
        if let Err(retry_after) = self.limiter.check(&authenticated.device.record.keyid) {
            self.metrics.auth_failures.with_label_values(&["rate-limited"]).inc();
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "device {:?} exceeded gateway.rate_limit_per_minute; retry in {retry_after} s",
                    authenticated.device.record.name
                ),
            )
            .retry_after(retry_after));
        }
        Ok(authenticated)
    }

    async fn identify_inner(&self, parts: &http::request::Parts) -> Result<Identified, Problem> {
        let header = |name: &str| parts.headers.get(name).and_then(|value| value.to_str().ok());
        let (Some(input), Some(signature)) = (header("signature-input"), header("signature")) else {
            return Err(unauthorized(
                "signature-missing",
                "every /v1/ request must carry Signature-Input and Signature headers (RFC 9421, alg ed25519) made with a registered device key; see blufioctl device add",
            ));
        };
        let signatures = httpsig::parse(input, signature).map_err(|error| {
            unauthorized(
                "signature-malformed",
                format!("cannot parse the signature headers: {error}"),
            )
        })?;
        let Some(parsed) = signatures.into_iter().next() else {
            return Err(unauthorized("signature-malformed", "Signature-Input has no signature"));
        };
        let keyid = httpsig::policy::require_keyid(&parsed)
            .map_err(|error| unauthorized("signature-params", error.to_string()))?
            .to_owned();
        let device = self
            .devices
            .lookup(&keyid)
            .await
            .map_err(|error| {
                tracing::error!(error = %crate::error_chain(&error), "device lookup failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "Service unavailable",
                    "the device registry cannot be read right now; retry shortly",
                )
                .retry_after(5)
            })?
            .ok_or_else(|| {
                unauthorized(
                    "key-unknown",
                    format!("keyid {keyid:?} is not a registered, unrevoked device; see blufioctl device list"),
                )
            })?;
        Ok(Identified { parsed, keyid, device })
    }

    fn check_signature(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        identified: Identified,
    ) -> Result<Authenticated, Problem> {
        let Identified { parsed, keyid, device } = identified;
        let header = |name: &str| parts.headers.get(name).and_then(|value| value.to_str().ok());
        let query = parts.uri.query();
        let has_query = query.is_some();
        let has_body = !body.is_empty();
        httpsig::policy::check_components(&parsed, has_body, has_query)
            .map_err(|error| unauthorized("signature-components", error.to_string()))?;
        // The session header chooses whose conversation the request reads and extends, so it must
        // be signed whenever it is sent.
        if parts.headers.contains_key(SESSION_HEADER)
            && !parsed
                .params()
                .components
                .iter()
                .any(|component| component.name() == SESSION_HEADER)
        {
            return Err(unauthorized(
                "signature-components",
                format!("the request carries {SESSION_HEADER}, so the signature must cover it"),
            ));
        }
        httpsig::policy::check_params(&parsed).map_err(|error| unauthorized("signature-params", error.to_string()))?;
        let nonce = parsed.params().nonce.clone().unwrap_or_default();
        if nonce.len() > MAX_NONCE_BYTES {
            return Err(unauthorized(
                "signature-params",
                format!(
                    "the nonce is {} bytes; at most {MAX_NONCE_BYTES} are accepted",
                    nonce.len()
                ),
            ));
        }
        let skew = self.max_skew_secs;
        let now = unix_now();
        httpsig::policy::check_time(&parsed, now, skew)
            .map_err(|error| unauthorized("signature-expired", error.to_string()))?;
        let replayed = || {
            unauthorized(
                "signature-replayed",
                "this nonce was already used with this key; sign every request with a fresh nonce",
            )
        };
        // Only look here: the nonce is remembered after the signature verifies, so that nobody
        // without the key can fill the cache.
        if self.replay.seen(&keyid, &nonce, now) {
            return Err(replayed());
        }
        if has_body {
            let digest = header("content-digest").ok_or_else(|| {
                unauthorized(
                    "content-digest",
                    "a request with a body must carry a Content-Digest header (RFC 9530)",
                )
            })?;
            httpsig::digest::verify_content_digest(digest, body)
                .map_err(|error| unauthorized("content-digest", error.to_string()))?;
        }
        let authority = parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .or_else(|| header("host").map(str::to_owned))
            .unwrap_or_default();
        let request = httpsig::RequestParts {
            method: parts.method.as_str(),
            scheme: self.scheme,
            authority: &authority,
            path: parts.uri.path(),
            query,
            headers: &parts.headers,
        };
        httpsig::verify(&request, &parsed, &device.key)
            .map_err(|error| unauthorized("signature-invalid", error.to_string()))?;
        // A signature stays acceptable for `skew` either side of `created`, so its nonce must be
        // remembered for twice that. `accept` checks again under its lock: of two concurrent
        // copies of one request, exactly one gets through.
        match self.replay.accept(&keyid, &nonce, now, skew.saturating_mul(2)) {
            Ok(()) => Ok(Authenticated { device }),
            Err(ReplayError::Replayed) => Err(replayed()),
            Err(ReplayError::Full) => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay-cache-full",
                "Service unavailable",
                "too many recent requests to remember their nonces safely; retry shortly",
            )
            .retry_after(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_refuses_with_a_wait_time() {
        let limiter = RateLimiter::new(2);
        limiter.check("k").unwrap();
        limiter.check("k").unwrap();
        let wait = limiter.check("k").unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        limiter.check("other").unwrap();
    }
}
