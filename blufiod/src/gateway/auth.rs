//! Authentication of `/v1/` requests: RFC 9421 signatures by registered Ed25519 device keys, and
//! per-key rate limiting.
//!
//! Checks run in a fixed order and the first failure is reported by name: headers present and
//! parseable → key known and not revoked → required components covered → required parameters
//! present → `created` within the skew window and not expired → nonce unseen → exactly one
//! parseable `Content-Digest` when there is a body → signature verifies (strict). All of this
//! runs on the request head: not a byte of the body is read before the signature verifies. Only
//! then is the key charged against its rate limit, and only after that is the nonce remembered
//! (within the device's share of the cache), so unsigned or refused traffic can exhaust neither a
//! device's quota nor the replay cache. The body is read last, hashed as it streams, and compared
//! with the signed digest at its end.

use std::num::NonZeroU32;
use std::sync::Arc;

use blufio_proto::httpsig;
use blufio_proto::httpsig::digest::DigestVerifier;
use governor::clock::{Clock as _, MonotonicClock};
use http::StatusCode;

use super::Gateway;
use super::api::SESSION_HEADER;
use super::problem::Problem;
use super::replay::ReplayError;
use crate::devices::ActiveDevice;

/// A request whose head passed every check.
#[derive(Debug)]
pub struct Authenticated {
    /// The check of the body against the signed `Content-Digest`, when the request has a body:
    /// feed it every piece as it is read, and refuse the request if `finish` fails.
    pub digest: Option<DigestVerifier>,
}

/// Requests per minute per key.
///
/// On `Instant` (`MonotonicClock`), not governor's TSC clock, whose calibration busy-waits for
/// 0.5 ms or more of CPU when the first limiter is made, at every start.
pub struct RateLimiter {
    limiter: governor::RateLimiter<String, governor::state::keyed::DashMapStateStore<String>, MonotonicClock>,
    clock: MonotonicClock,
}

impl RateLimiter {
    /// `per_minute` requests per key per minute, with bursts of the same size.
    pub fn new(per_minute: u32) -> Self {
        let quota = governor::Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::dashmap_with_clock(quota, MonotonicClock),
            clock: MonotonicClock,
        }
    }

    /// Drops the keys whose bucket is full again (they would be recreated as they are): the
    /// memory monitor's shedding. Returns how many went.
    pub fn shed_idle(&self) -> usize {
        let before = self.limiter.len();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        before.saturating_sub(self.limiter.len())
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

use crate::util::unix_now;

/// A request whose signature headers parse and name a registered device; its body has not been
/// read yet.
pub struct Identified {
    parsed: httpsig::ParsedSignature,
    keyid: String,
    device: Arc<ActiveDevice>,
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

    /// The remaining checks, in order, on the request head alone: the signature covers the
    /// `Content-Digest` header, not the body, so it is verified before a byte of the body is read.
    /// Then the key is charged against its rate limit, and only then is the nonce remembered, so
    /// that refused requests use up neither a device's quota nor room in the replay cache.
    ///
    /// `has_body` says whether the request may carry a body; if so, the returned
    /// [`Authenticated::digest`] must check it as it is read.
    pub(super) async fn authenticate(
        &self,
        parts: &http::request::Parts,
        has_body: bool,
        identified: Identified,
    ) -> Result<Authenticated, Problem> {
        let outcome = self.check_signature(parts, has_body, identified);
        if let Err(problem) = &outcome {
            self.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
        }
        let (device, digest, nonce, now) = outcome?;
        let keyid = device.record.keyid.clone();
        if let Err(retry_after) = self.limiter.check(&keyid) {
            self.metrics.auth_failures.with_label_values(&["rate-limited"]).inc();
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "device {:?} exceeded gateway.rate_limit_per_minute; retry in {retry_after} s",
                    device.record.name
                ),
            )
            .retry_after(retry_after));
        }
        // `accept` checks again under its lock: of two concurrent copies of one request, exactly
        // one gets through.
        if let Err(error) = self.replay.accept(&keyid, &nonce, now) {
            let problem = match error {
                ReplayError::Replayed => replayed(),
                ReplayError::Unrecorded => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "replay-journal-unavailable",
                    "Service unavailable",
                    "the daemon cannot record this request's nonce (its state directory may be full), so it refuses it rather than risk a replay; retry shortly",
                )
                .retry_after(5),
                ReplayError::Full { retry_after } => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "replay-cache-full",
                    "Service unavailable",
                    format!(
                        "too many recent requests to remember their nonces safely (gateway.replay_cache_entries); room comes back in {retry_after} s"
                    ),
                )
                .retry_after(retry_after),
                ReplayError::KeyFull { retry_after } => Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!(
                        "device {:?} has used its share of the replay cache ({} nonces: its rate limit over the clock-skew window); retry in {retry_after} s",
                        device.record.name,
                        self.replay.share()
                    ),
                )
                .retry_after(retry_after),
            };
            self.metrics.auth_failures.with_label_values(&[problem.kind]).inc();
            return Err(problem);
        }
        self.devices.touch(&keyid).await;
        Ok(Authenticated { digest })
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

    /// Every check of the head, up to and including the signature itself. Returns the device, the
    /// body's digest check (when there is a body), and the nonce with the time it was checked at.
    fn check_signature(
        &self,
        parts: &http::request::Parts,
        has_body: bool,
        identified: Identified,
    ) -> Result<(Arc<ActiveDevice>, Option<DigestVerifier>, String, i64), Problem> {
        let Identified { parsed, keyid, device } = identified;
        let query = parts.uri.query();
        httpsig::policy::check_components(&parsed, has_body, query.is_some())
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
        // Only look here: the nonce is remembered after the signature verifies and the rate limit
        // is charged, so that nobody without the key can fill the cache.
        if self.replay.seen(&keyid, &nonce, now) {
            return Err(replayed());
        }
        // The signature covers every line of `Content-Digest` together, so exactly one line is
        // accepted: the one that is then compared with the body.
        let digest = if has_body {
            let mut lines = parts.headers.get_all("content-digest").iter();
            let (Some(line), None) = (lines.next(), lines.next()) else {
                return Err(unauthorized(
                    "content-digest",
                    "a request with a body must carry exactly one Content-Digest header (RFC 9530)",
                ));
            };
            Some(DigestVerifier::new(line).map_err(|error| unauthorized("content-digest", error.to_string()))?)
        } else {
            None
        };
        let authority = super::host::authority_of(parts).unwrap_or_default();
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
        Ok((device, digest, nonce, now))
    }
}

fn replayed() -> Problem {
    unauthorized(
        "signature-replayed",
        "this nonce was already used with this key; sign every request with a fresh nonce",
    )
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
