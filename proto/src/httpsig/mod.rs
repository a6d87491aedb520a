//! HTTP Message Signatures (RFC 9421) with `alg="ed25519"`, and Content-Digest (RFC 9530), as shared
//! by `blufiod`'s HTTPS gateway (which verifies) and `blufioctl remote` (which signs).
//!
//! The wire format follows the RFC exactly, so that signatures made by other standard
//! implementations (for example Python's `http-message-signatures`) verify here and the other way
//! round. blufio's own, stricter requirements (which components and parameters must be present,
//! clock skew) live apart from the wire format in [`policy`].
//!
//! Nothing in this module may panic on any input, and it never parses or serializes structured
//! fields by hand: `Signature-Input`, `Signature` and `Content-Digest` all go through `sfv`.
//!
//! A daemon verifies a request in this order (each step is a separate call, so that each failure
//! can be reported as exactly the check that failed):
//!
//! 1. [`parse`] the `Signature-Input` and `Signature` headers and pick the signature to check;
//! 2. [`policy::require_keyid`] and look the key up;
//! 3. [`policy::check_components`], [`policy::check_params`], [`policy::check_time`];
//! 4. check the nonce against the replay cache;
//! 5. [`digest::verify_content_digest`] when the request has a body;
//! 6. [`verify`] the signature.

pub mod digest;
pub mod keys;
pub mod policy;

mod base;
mod params;

pub use base::{RequestParts, signature_base};
pub use keys::{
    KeyError, key_fingerprint, signing_key_from_pkcs8_pem, signing_key_to_pkcs8_pem, verifying_key_from_pem,
    verifying_key_to_pem,
};
pub use params::{Component, ParsedSignature, SignatureParams, parse};

/// Seconds since the Unix epoch: the clock `created`, `expires` and the skew check use (0 before
/// the epoch, `i64::MAX` far after it). Signer and verifier, daemon and client share this one.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// The only signature algorithm blufio signs and verifies with (RFC 9421 §3.3.6).
pub const ALGORITHM: &str = "ed25519";

/// Everything that can go wrong while parsing, building, signing, verifying or checking an HTTP
/// message signature. The daemon turns each variant into a distinct 401 problem document, so every
/// check has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// `Signature-Input` is not a structured-field dictionary.
    #[error("the `signature-input` header is not a valid structured-field dictionary")]
    ParseSignatureInput(#[source] sfv::Error),
    /// `Signature` is not a structured-field dictionary.
    #[error("the `signature` header is not a valid structured-field dictionary")]
    ParseSignatureHeader(#[source] sfv::Error),
    /// Both headers were empty.
    #[error("the `signature-input` and `signature` headers contain no signatures")]
    NoSignatures,
    /// A `Signature-Input` member has no `Signature` member with the same label.
    #[error("signature input `{label}` has no matching member in the `signature` header")]
    MissingSignatureValue { label: String },
    /// A `Signature` member has no `Signature-Input` member with the same label.
    #[error("signature `{label}` has no matching member in the `signature-input` header")]
    MissingSignatureInput { label: String },
    /// A `Signature` member is not a byte sequence (`:base64:`).
    #[error("signature `{label}` is not a byte sequence")]
    SignatureNotBytes { label: String },
    /// A `Signature-Input` member is not an inner list.
    #[error("signature input `{label}` is not an inner list of covered components")]
    InputNotInnerList { label: String },
    /// Serialized signature parameters are not exactly one inner list.
    #[error("signature parameters are not a single inner list")]
    MalformedSignatureParams(#[source] Option<sfv::Error>),
    /// A covered component identifier is not a structured-field string.
    #[error("a covered component identifier is not a string")]
    ComponentNotString,
    /// A covered component is valid RFC 9421 but not supported here, or not valid at all.
    #[error("covered component `{component}` is not supported: {reason}")]
    UnsupportedComponent { component: String, reason: &'static str },
    /// The same component is covered twice, which RFC 9421 §2.5 forbids.
    #[error("covered component `{component}` appears more than once")]
    DuplicateComponent { component: String },
    /// A known signature parameter has the wrong structured-field type.
    #[error("signature parameter `{param}` must be {expected}")]
    ParameterType {
        param: &'static str,
        expected: &'static str,
    },
    /// A signature parameter value cannot be expressed as a structured field (e.g. a non-ASCII
    /// `keyid`, or a timestamp with more than 15 digits).
    #[error("signature parameter `{param}` cannot be serialized")]
    SerializeParameter {
        param: &'static str,
        #[source]
        source: sfv::Error,
    },
    /// A signature label is not a valid structured-field key.
    #[error("`{label}` is not a valid signature label")]
    InvalidLabel {
        label: String,
        #[source]
        source: sfv::Error,
    },
    /// A covered component has no value in the request (e.g. a header that was not sent).
    #[error("covered component `{component}` is absent from the request")]
    MissingComponentValue { component: String },
    /// A component value contains bytes that cannot appear in a signature base (control characters
    /// or non-ASCII), which would otherwise allow forging extra lines of the base.
    #[error("the value of covered component `{component}` contains characters that cannot be signed")]
    InvalidComponentValue { component: String },
    /// The signature is not 64 bytes long.
    #[error("signature `{label}` is {len} bytes long, but an ed25519 signature has 64")]
    SignatureLength { label: String, len: usize },
    /// The signature does not verify with the key.
    #[error("signature `{label}` does not verify with the key of `{keyid}`")]
    BadSignature {
        label: String,
        keyid: String,
        #[source]
        source: ed25519_dalek::SignatureError,
    },

    // blufio's policy (see `policy`), in the order the daemon checks it.
    /// Policy (1): a required component is not covered.
    #[error("signature input `{label}` does not cover `{component}`, which is required {why}")]
    MissingRequiredComponent {
        label: String,
        component: &'static str,
        why: &'static str,
    },
    /// Policy (2): a required parameter is missing.
    #[error("signature input `{label}` has no `{param}` parameter, which is required")]
    MissingParameter { label: String, param: &'static str },
    /// Policy (2): `alg` names something other than `ed25519`.
    #[error("signature input `{label}` has `alg=\"{alg}\"`, but only `ed25519` is accepted")]
    UnsupportedAlgorithm { label: String, alg: String },
    /// Policy (3): `created` is too far from the verifier's clock.
    #[error(
        "signature input `{label}` was created at {created}, more than {max_skew_secs}s away from the \
         server's clock ({now})"
    )]
    CreatedOutsideSkew {
        label: String,
        created: i64,
        now: i64,
        max_skew_secs: i64,
    },
    /// Policy (4): `expires` lies in the past.
    #[error("signature input `{label}` expired at {expires}, before the server's clock ({now})")]
    Expired { label: String, expires: i64, now: i64 },
}

/// Signs a request: builds the signature base for `params`, signs it with `key`, and returns the
/// values of the `Signature-Input` and `Signature` headers, each holding the one member `label`.
///
/// `params.alg`, when set, must be `ed25519`. blufio's policy does not require it (the registered
/// key fixes the algorithm), but other implementations such as Python's `http-message-signatures`
/// send it by default.
pub fn sign(
    parts: &RequestParts<'_>,
    label: &str,
    params: &SignatureParams,
    key: &SigningKey,
) -> Result<(String, String), SignatureError> {
    let label_key = sfv::KeyRef::from_str(label).map_err(|source| SignatureError::InvalidLabel {
        label: label.to_owned(),
        source,
    })?;
    if let Some(alg) = params.alg.as_deref()
        && alg != ALGORITHM
    {
        return Err(SignatureError::UnsupportedAlgorithm {
            label: label.to_owned(),
            alg: alg.to_owned(),
        });
    }
    let inner_list = params.to_inner_list()?;
    let params_serialized = params::serialize_inner_list(&inner_list);
    let base = signature_base(parts, &params_serialized)?;
    let signature = key.sign(base.as_bytes()).to_bytes();

    let mut input = sfv::DictSerializer::new();
    {
        let mut list = input.inner_list(label_key);
        list.items(&inner_list.items);
        list.finish().parameters(&inner_list.params);
    }
    let mut value = sfv::DictSerializer::new();
    value.bare_item(label_key, &signature[..]);
    // Each dictionary has exactly one member, so `finish` cannot return `None`.
    Ok((input.finish().unwrap_or_default(), value.finish().unwrap_or_default()))
}

/// A request to sign the way blufio's policy asks, for [`sign_request`].
#[derive(Debug, Clone, Copy)]
pub struct SignRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// `https` (or `http` behind a loopback proxy).
    pub scheme: &'a str,
    /// `host[:port]` as sent in `Host` / `:authority`.
    pub authority: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// The query without `?`, if the target has one.
    pub query: Option<&'a str>,
    /// The body (empty: none).
    pub body: &'a [u8],
    /// Further header fields to cover (they must be in the headers already), such as
    /// `blufio-session`.
    pub fields: &'a [&'a str],
    /// The keyid the signature names.
    pub keyid: &'a str,
    /// A fresh nonce.
    pub nonce: &'a str,
    /// The signing time, Unix seconds.
    pub created: i64,
}

/// Signs a request as blufio's policy asks (the one builder the client, the tests and the
/// benchmarks share): covers `@method`, `@authority` and `@path`, `@query` when there is a
/// query, `content-digest` (SHA-256, added to `headers`) when there is a body, and `fields`; adds
/// `Signature-Input` and `Signature` (label `sig1`) to `headers`.
pub fn sign_request(
    request: &SignRequest<'_>,
    headers: &mut http::HeaderMap,
    key: &SigningKey,
) -> Result<(), SignatureError> {
    let value = |text: &str, component: &str| {
        http::HeaderValue::from_str(text).map_err(|_| SignatureError::InvalidComponentValue {
            component: component.to_owned(),
        })
    };
    let mut components = vec![Component::Method, Component::Authority, Component::Path];
    if request.query.is_some() {
        components.push(Component::Query);
    }
    if !request.body.is_empty() {
        let digest = digest::content_digest(request.body, digest::Algorithm::Sha256);
        headers.insert("content-digest", value(&digest, "content-digest")?);
        components.push(Component::Field("content-digest".to_owned()));
    }
    components.extend(request.fields.iter().map(|field| Component::Field((*field).to_owned())));
    let params = SignatureParams {
        components,
        created: Some(request.created),
        nonce: Some(request.nonce.to_owned()),
        keyid: Some(request.keyid.to_owned()),
        alg: Some(ALGORITHM.to_owned()),
        ..SignatureParams::default()
    };
    let parts = RequestParts {
        method: request.method,
        scheme: request.scheme,
        authority: request.authority,
        path: request.path,
        query: request.query,
        headers,
    };
    let (input, signature) = sign(&parts, "sig1", &params, key)?;
    headers.insert("signature-input", value(&input, "signature-input")?);
    headers.insert("signature", value(&signature, "signature")?);
    Ok(())
}

/// Verifies one parsed signature over the request with `key`, using `verify_strict` (which rejects
/// small-order keys and non-canonical signatures).
///
/// This checks only the signature itself (and that `alg`, if present, is `ed25519`); blufio's
/// requirements on components, parameters and time are in [`policy`].
pub fn verify(parts: &RequestParts<'_>, signature: &ParsedSignature, key: &VerifyingKey) -> Result<(), SignatureError> {
    let label = signature.label();
    if let Some(alg) = signature.params().alg.as_deref()
        && alg != ALGORITHM
    {
        return Err(SignatureError::UnsupportedAlgorithm {
            label: label.to_owned(),
            alg: alg.to_owned(),
        });
    }
    let bytes: &[u8; 64] = signature
        .signature()
        .try_into()
        .map_err(|_| SignatureError::SignatureLength {
            label: label.to_owned(),
            len: signature.signature().len(),
        })?;
    let base = signature_base(parts, signature.params_serialized())?;
    key.verify_strict(base.as_bytes(), &Signature::from_bytes(bytes))
        .map_err(|source| SignatureError::BadSignature {
            label: label.to_owned(),
            keyid: signature.params().keyid.clone().unwrap_or_default(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{HeaderMap, HeaderValue};

    /// RFC 9421 B.1.4 `test-key-ed25519`.
    const RFC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n\
        -----END PUBLIC KEY-----\n";
    const RFC_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n\
        -----END PRIVATE KEY-----\n";
    const RFC_SIGNATURE_INPUT: &str = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \
        \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
    const RFC_SIGNATURE: &str =
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    const RFC_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
        \"@method\": POST\n\
        \"@path\": /foo\n\
        \"@authority\": example.com\n\
        \"content-type\": application/json\n\
        \"content-length\": 18\n\
        \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \
        \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";

    fn rfc_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.insert("date", HeaderValue::from_static("Tue, 20 Apr 2021 02:07:55 GMT"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "content-digest",
            HeaderValue::from_static(
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
        );
        headers.insert("content-length", HeaderValue::from_static("18"));
        headers
    }

    fn rfc_parts(headers: &HeaderMap) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers,
        }
    }

    fn rfc_params() -> SignatureParams {
        SignatureParams {
            components: vec![
                Component::Field("date".to_owned()),
                Component::Method,
                Component::Path,
                Component::Authority,
                Component::Field("content-type".to_owned()),
                Component::Field("content-length".to_owned()),
            ],
            created: Some(1_618_884_473),
            keyid: Some("test-key-ed25519".to_owned()),
            ..SignatureParams::default()
        }
    }

    #[test]
    fn a_signed_request_verifies_and_covers_its_body() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut headers = http::HeaderMap::new();
        let request = SignRequest {
            method: "POST",
            scheme: "https",
            authority: "localhost:8443",
            path: "/v1/sessions",
            query: Some("x=1"),
            body: b"{}",
            fields: &[],
            keyid: "k",
            nonce: "n1",
            created: 1_700_000_000,
        };
        sign_request(&request, &mut headers, &key).unwrap();
        let parsed = parse(
            headers["signature-input"].to_str().unwrap(),
            headers["signature"].to_str().unwrap(),
        )
        .unwrap()
        .remove(0);
        policy::check_components(&parsed, true, true).unwrap();
        let parts = RequestParts {
            method: "POST",
            scheme: "https",
            authority: "localhost:8443",
            path: "/v1/sessions",
            query: Some("x=1"),
            headers: &headers,
        };
        verify(&parts, &parsed, &key.verifying_key()).unwrap();
        digest::verify_content_digest(&headers["content-digest"], b"{}").unwrap();
        assert!(
            verify(
                &RequestParts {
                    path: "/v1/other",
                    ..parts
                },
                &parsed,
                &key.verifying_key()
            )
            .is_err()
        );
    }

    #[test]
    fn rfc9421_b26_signature_base_is_byte_exact() {
        let headers = rfc_headers();
        let serialized = rfc_params().serialize().unwrap();
        let base = signature_base(&rfc_parts(&headers), &serialized).unwrap();
        assert_eq!(base, RFC_BASE);
        assert_eq!(base.len(), 284);
    }

    #[test]
    fn rfc9421_b26_signing_reproduces_the_signature() {
        let headers = rfc_headers();
        let key = signing_key_from_pkcs8_pem(RFC_PRIVATE_KEY).unwrap();
        let (input, signature) = sign(&rfc_parts(&headers), "sig-b26", &rfc_params(), &key).unwrap();
        assert_eq!(input, RFC_SIGNATURE_INPUT);
        assert_eq!(signature, RFC_SIGNATURE);
    }

    #[test]
    fn rfc9421_b26_given_headers_parse_and_verify() {
        let headers = rfc_headers();
        let key = verifying_key_from_pem(RFC_PUBLIC_KEY).unwrap();
        let parsed = parse(RFC_SIGNATURE_INPUT, RFC_SIGNATURE).unwrap();
        assert_eq!(parsed.len(), 1);
        let signature = &parsed[0];
        assert_eq!(signature.label(), "sig-b26");
        assert_eq!(signature.params(), &rfc_params());
        assert_eq!(signature.signature().len(), 64);
        verify(&rfc_parts(&headers), signature, &key).unwrap();

        // The RFC vector signs with the public half of the private key given.
        let private = signing_key_from_pkcs8_pem(RFC_PRIVATE_KEY).unwrap();
        assert_eq!(private.verifying_key(), key);
    }

    #[test]
    fn rfc9421_b26_fails_with_another_key() {
        let headers = rfc_headers();
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let parsed = parse(RFC_SIGNATURE_INPUT, RFC_SIGNATURE).unwrap();
        let error = verify(&rfc_parts(&headers), &parsed[0], &other).unwrap_err();
        assert!(matches!(error, SignatureError::BadSignature { .. }), "{error}");
    }

    // A blufio-style request: query, body, and everything the policy requires.
    struct Request {
        method: String,
        scheme: String,
        authority: String,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
    }

    impl Request {
        fn new() -> Self {
            let body = br#"{"prompt": "hello"}"#;
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            let digest = digest::content_digest(body, digest::Algorithm::Sha256);
            headers.insert("content-digest", HeaderValue::from_str(&digest).unwrap());
            Request {
                method: "POST".to_owned(),
                scheme: "https".to_owned(),
                authority: "blufio.example:8443".to_owned(),
                path: "/v1/sessions/42/turns".to_owned(),
                query: Some("stream=1&format=json".to_owned()),
                headers,
            }
        }

        fn parts(&self) -> RequestParts<'_> {
            RequestParts {
                method: &self.method,
                scheme: &self.scheme,
                authority: &self.authority,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
            }
        }
    }

    fn blufio_params() -> SignatureParams {
        SignatureParams {
            components: vec![
                Component::Method,
                Component::Authority,
                Component::Path,
                Component::Query,
                Component::Field("content-digest".to_owned()),
                Component::Field("content-type".to_owned()),
            ],
            created: Some(1_700_000_000),
            expires: Some(1_700_000_300),
            nonce: Some("bm9uY2UtMQ".to_owned()),
            keyid: Some("SHA256:abc".to_owned()),
            alg: Some(ALGORITHM.to_owned()),
            tag: Some("blufio".to_owned()),
        }
    }

    fn signed(request: &Request, key: &SigningKey) -> (String, String) {
        sign(&request.parts(), "sig1", &blufio_params(), key).unwrap()
    }

    #[test]
    fn round_trip_with_query_and_body() {
        let key = SigningKey::from_bytes(&[42; 32]);
        let request = Request::new();
        let (input, signature) = signed(&request, &key);
        assert_eq!(
            input,
            "sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\" \"content-type\");\
             created=1700000000;expires=1700000300;nonce=\"bm9uY2UtMQ\";alg=\"ed25519\";keyid=\"SHA256:abc\";\
             tag=\"blufio\""
        );
        let parsed = parse(&input, &signature).unwrap();
        assert_eq!(parsed[0].params(), &blufio_params());
        verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap();
    }

    #[test]
    fn tampering_with_any_covered_part_breaks_the_signature() {
        let key = SigningKey::from_bytes(&[42; 32]);
        let (input, signature) = signed(&Request::new(), &key);
        let parsed = parse(&input, &signature).unwrap();

        type Tamper = (&'static str, Box<dyn Fn(&mut Request)>);
        let tampers: Vec<Tamper> = vec![
            ("method", Box::new(|r| r.method = "PUT".to_owned())),
            ("path", Box::new(|r| r.path = "/v1/sessions/43/turns".to_owned())),
            ("query", Box::new(|r| r.query = Some("stream=0&format=json".to_owned()))),
            ("query removed", Box::new(|r| r.query = None)),
            ("authority", Box::new(|r| r.authority = "evil.example:8443".to_owned())),
            (
                "content-digest",
                Box::new(|r| {
                    let other = digest::content_digest(b"other", digest::Algorithm::Sha256);
                    r.headers
                        .insert("content-digest", HeaderValue::from_str(&other).unwrap());
                }),
            ),
            (
                "content-type appended",
                Box::new(|r| {
                    r.headers.append("content-type", HeaderValue::from_static("text/plain"));
                }),
            ),
        ];
        for (what, tamper) in tampers {
            let mut request = Request::new();
            tamper(&mut request);
            let error = verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap_err();
            assert!(matches!(error, SignatureError::BadSignature { .. }), "{what}: {error}");
        }

        // An uncovered header may change freely.
        let mut request = Request::new();
        request.headers.insert("user-agent", HeaderValue::from_static("curl"));
        verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap();

        // Removing a covered header is reported as such.
        let mut request = Request::new();
        request.headers.remove("content-type");
        let error = verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap_err();
        assert!(matches!(error, SignatureError::MissingComponentValue { .. }), "{error}");
    }

    #[test]
    fn tampering_with_the_params_breaks_the_signature() {
        let key = SigningKey::from_bytes(&[42; 32]);
        let request = Request::new();
        let (input, signature) = signed(&request, &key);
        let edits = [
            ("created=1700000000", "created=1700000001"),
            ("expires=1700000300", "expires=1800000300"),
            ("nonce=\"bm9uY2UtMQ\"", "nonce=\"bm9uY2UtMg\""),
            ("keyid=\"SHA256:abc\"", "keyid=\"SHA256:abd\""),
            (";tag=\"blufio\"", ""),
            (" \"content-type\"", ""),
        ];
        for (from, to) in edits {
            assert!(input.contains(from), "{from}");
            let tampered = input.replace(from, to);
            let parsed = parse(&tampered, &signature).unwrap();
            let error = verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap_err();
            assert!(matches!(error, SignatureError::BadSignature { .. }), "{from}: {error}");
        }
    }

    #[test]
    fn wrong_length_and_wrong_alg_are_rejected() {
        let key = SigningKey::from_bytes(&[42; 32]);
        let request = Request::new();
        let (input, _) = signed(&request, &key);
        let parsed = parse(&input, "sig1=:AAAA:").unwrap();
        let error = verify(&request.parts(), &parsed[0], &key.verifying_key()).unwrap_err();
        assert!(
            matches!(error, SignatureError::SignatureLength { len: 3, .. }),
            "{error}"
        );

        let params = SignatureParams {
            alg: Some("rsa-pss-sha512".to_owned()),
            ..blufio_params()
        };
        let error = sign(&request.parts(), "sig1", &params, &key).unwrap_err();
        assert!(matches!(error, SignatureError::UnsupportedAlgorithm { .. }), "{error}");

        let error = sign(&request.parts(), "Sig1", &blufio_params(), &key).unwrap_err();
        assert!(matches!(error, SignatureError::InvalidLabel { .. }), "{error}");
    }

    /// Made with Python's `http-message-signatures` 3.0.0 (`HTTPMessageSigner.sign` with
    /// `algorithms.ED25519`, the RFC B.1.4 key, `created=1700000000`, `nonce="abc123"`,
    /// `tag="blufio"` and `body=...`) for `POST https://Blufio.Example:8443/v1/sessions/42/turns
    /// ?stream=1&format=json`. It orders the parameters differently from us and adds `alg`.
    #[test]
    fn python_http_message_signatures_interoperates() {
        let mut request = Request::new();
        request.authority = "Blufio.Example:8443".to_owned();
        request.headers.insert(
            "content-digest",
            HeaderValue::from_static("sha-256=:NBxXRI5TExD7voP0TOoqXoOL2eimuCsmnwHQ27wjw8w=:"),
        );
        let input = "sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-type\" \"content-digest\");\
                     created=1700000000;keyid=\"SHA256:test\";alg=\"ed25519\";nonce=\"abc123\";tag=\"blufio\"";
        let signature =
            "sig1=:qVYo49WKx/rhb5nlyapuYsI97CosnIyePone0C0Z/Eagak0boxJYlUcaGA+q2vLdMIj5eJ7n8V+5boYVaNJMDw==:";
        let parsed = parse(input, signature).unwrap();
        assert_eq!(&format!("sig1={}", parsed[0].params_serialized()), input);
        let context = policy::Context {
            now: 1_700_000_000,
            max_skew_secs: 60,
            has_body: true,
            has_query: true,
        };
        policy::check(&parsed[0], &context).unwrap();
        let digest_header = request.headers.get("content-digest").unwrap();
        digest::verify_content_digest(digest_header, br#"{"prompt": "hello"}"#).unwrap();
        let key = verifying_key_from_pem(RFC_PUBLIC_KEY).unwrap();
        verify(&request.parts(), &parsed[0], &key).unwrap();
    }

    #[test]
    fn error_messages_name_what_was_wrong() {
        let error = SignatureError::MissingRequiredComponent {
            label: "sig1".to_owned(),
            component: "content-digest",
            why: "when the request has a body",
        };
        assert_eq!(
            error.to_string(),
            "signature input `sig1` does not cover `content-digest`, which is required when the request has a body"
        );
    }

    /// A deterministic xorshift64*, so that the robustness test needs no `rand` and always runs the
    /// same cases.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            // `n` is small, so the modulo bias does not matter here.
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
        }
    }

    fn mutate(rng: &mut XorShift, input: &str) -> String {
        const INTERESTING: &[u8] = b"\"():;=,?*@ -_.0123456789azAZ\\/+\t\x7f\xff";
        let mut bytes = input.as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if at < bytes.len() => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
                1 => bytes.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    // Duplicate a slice, which produces repeated members and components.
                    let end = (at + rng.below(24)).min(bytes.len());
                    let slice = bytes[at..end].to_vec();
                    let to = rng.below(bytes.len() + 1);
                    bytes.splice(to..to, slice);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn mutated_headers_never_panic() {
        let key = SigningKey::from_bytes(&[42; 32]);
        let request = Request::new();
        let (input, signature) = signed(&request, &key);
        let digest_header = request
            .headers
            .get("content-digest")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let context = policy::Context {
            now: 1_700_000_010,
            max_skew_secs: 300,
            has_body: true,
            has_query: true,
        };
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut n_parsed, mut n_verified) = (0, 0);
        for _ in 0..600 {
            let input = if rng.below(3) == 0 {
                input.clone()
            } else {
                mutate(&mut rng, &input)
            };
            let signature = if rng.below(3) == 0 {
                signature.clone()
            } else {
                mutate(&mut rng, &signature)
            };
            let digest_value = mutate(&mut rng, &digest_header);
            let _ = digest::verify_content_digest(&digest_value, br#"{"prompt": "hello"}"#);
            let Ok(parsed) = parse(&input, &signature) else {
                continue;
            };
            n_parsed += 1;
            for signature in &parsed {
                let _ = policy::check(signature, &context);
                if verify(&request.parts(), signature, &key.verifying_key()).is_ok() {
                    n_verified += 1;
                }
            }
        }
        // Make sure the mutations did not only produce garbage that is rejected up front.
        assert!(n_parsed > 100, "only {n_parsed} mutated inputs parsed");
        assert!(n_verified > 0, "no mutated input verified");
    }
}
