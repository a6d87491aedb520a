//! Fuzzes everything the gateway does with attacker-controlled signature headers before and
//! including the signature check: `Signature-Input`/`Signature` parsing, blufio's policy, the
//! signature base, Ed25519 verification, and `Content-Digest` checking.
//!
//! The input is split at the first two NUL bytes into `Signature-Input`, `Signature` and
//! `Content-Digest`. Any panic is a bug: every malformed input must be a plain error.

#![no_main]

use blufio_proto::httpsig::{self, RequestParts, digest, policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pieces = data.splitn(3, |byte| *byte == 0);
    let signature_input = pieces.next().unwrap_or_default();
    let signature = pieces.next().unwrap_or_default();
    let content_digest = pieces.next().unwrap_or_default();

    let body = br#"{"prompt": "hello"}"#;
    let _ = digest::verify_content_digest(content_digest, body);

    let Ok(parsed) = httpsig::parse(signature_input, signature) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    if let Ok(value) = http::HeaderValue::from_bytes(content_digest) {
        headers.insert("content-digest", value);
    }
    let parts = RequestParts {
        method: "POST",
        scheme: "https",
        authority: "blufio.example:8443",
        path: "/v1/sessions/42/turns",
        query: Some("stream=1"),
        headers: &headers,
    };
    let context = policy::Context {
        now: 1_700_000_000,
        max_skew_secs: 300,
        has_body: true,
        has_query: true,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key();
    for signature in &parsed {
        let _ = policy::require_keyid(signature);
        let _ = policy::check(signature, &context);
        let _ = httpsig::signature_base(&parts, signature.params_serialized());
        let _ = httpsig::verify(&parts, signature, &key);
    }
});
