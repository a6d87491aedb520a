//! Signing gateway requests (RFC 9421, `alg="ed25519"`) with the shared code in
//! `blufio_proto::httpsig`, so that what blufioctl signs is exactly what blufiod verifies.
//!
//! Every request covers `@method`, `@authority` and `@path`, plus `@query` when the URL has a
//! query and `content-digest` (RFC 9530, SHA-256) when it has a body; its parameters are
//! `created`, a fresh random `nonce`, `keyid` and `alg`. This module never sees the network and
//! never prints the private key.

use base64::Engine as _;
use blufio_proto::httpsig::{self, SignatureError};
use ed25519_dalek::SigningKey;
use http::HeaderMap;

use super::url::Endpoint;

/// The signature's label in `Signature-Input` and `Signature` (what `httpsig::sign_request` uses).
#[cfg(test)]
const LABEL: &str = "sig1";
/// Random bytes in a nonce (encoded as unpadded base64url).
const NONCE_BYTES: usize = 16;

/// Why a request could not be signed.
#[derive(Debug)]
pub enum SignError {
    /// The system's random number generator failed.
    Random(getrandom::Error),
    /// The signature could not be built (for example a `--keyid` that is not printable ASCII).
    Signature(SignatureError),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::Random(_) => f.write_str("cannot get random bytes for the signature's nonce"),
            SignError::Signature(_) => f.write_str("cannot sign the request"),
        }
    }
}

impl std::error::Error for SignError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignError::Random(error) => Some(error),
            SignError::Signature(error) => Some(error),
        }
    }
}

/// A device key and the keyid it signs as.
pub struct Signer {
    key: SigningKey,
    keyid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Signer")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Signs with `key` as `keyid`; by default as the key's fingerprint, which is the keyid
    /// `blufioctl device add` registers.
    pub fn new(key: SigningKey, keyid: Option<String>) -> Signer {
        let keyid = keyid.unwrap_or_else(|| httpsig::key_fingerprint(&key.verifying_key()));
        Signer { key, keyid }
    }

    /// The keyid the signatures carry.
    #[cfg(test)]
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// Adds `Content-Digest` (when `body` is not empty), `Signature-Input` and `Signature` to
    /// `headers` for a request of `method` to `url`, signed now with a fresh nonce.
    pub fn sign(&self, method: &str, url: &Endpoint, headers: &mut HeaderMap, body: &[u8]) -> Result<(), SignError> {
        let mut nonce = [0; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(SignError::Random)?;
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
        self.sign_at(method, url, headers, body, unix_now(), nonce)
            .map_err(SignError::Signature)
    }

    /// [`Signer::sign`] with a given time and nonce.
    fn sign_at(
        &self,
        method: &str,
        url: &Endpoint,
        headers: &mut HeaderMap,
        body: &[u8],
        created: i64,
        nonce: String,
    ) -> Result<(), SignatureError> {
        let authority = url.authority();
        let request = httpsig::SignRequest {
            method,
            scheme: url.scheme().as_str(),
            authority: &authority,
            path: url.path(),
            query: url.query(),
            body,
            fields: &[],
            keyid: &self.keyid,
            nonce: &nonce,
            created,
        };
        httpsig::sign_request(&request, headers, &self.key)
    }
}

use blufio_proto::httpsig::unix_now;

#[cfg(test)]
mod tests {
    use super::*;
    use blufio_proto::httpsig::{Component, RequestParts};

    fn signer() -> Signer {
        Signer::new(SigningKey::from_bytes(&[7; 32]), None)
    }

    /// Verifies `headers` the way the daemon does: parse the headers back, apply blufio's
    /// policy, check the digest, verify the signature.
    fn verify(method: &str, url: &Endpoint, headers: &HeaderMap, body: &[u8], key: &SigningKey) -> Result<(), String> {
        let signatures =
            httpsig::parse(&headers["signature-input"], &headers["signature"]).map_err(|e| e.to_string())?;
        let [signature] = signatures.as_slice() else {
            return Err(format!("expected one signature, got {}", signatures.len()));
        };
        assert_eq!(signature.label(), LABEL);
        let params = signature.params();
        assert_eq!(params.alg.as_deref(), Some("ed25519"));
        assert!(params.created.is_some());
        assert!(params.nonce.is_some());
        let covered = |component: &Component| params.components.contains(component);
        assert!(covered(&Component::Method) && covered(&Component::Authority) && covered(&Component::Path));
        assert_eq!(covered(&Component::Query), url.query().is_some());
        assert_eq!(covered(&Component::Field("content-digest".into())), !body.is_empty());
        if !body.is_empty() {
            httpsig::digest::verify_content_digest(&headers["content-digest"], body).map_err(|e| e.to_string())?;
        }
        let authority = url.authority();
        let parts = RequestParts {
            method,
            scheme: url.scheme().as_str(),
            authority: &authority,
            path: url.path(),
            query: url.query(),
            headers,
        };
        httpsig::verify(&parts, signature, &key.verifying_key()).map_err(|e| e.to_string())
    }

    #[test]
    fn signed_requests_verify_with_the_shared_code() {
        let signer = signer();
        let key = SigningKey::from_bytes(&[7; 32]);
        for (method, url, body) in [
            ("GET", "https://gateway.example:8443/v1/sessions", &b""[..]),
            (
                "POST",
                "https://gateway.example/v1/sessions/s1/messages",
                br#"{"text":"hi"}"#,
            ),
            ("DELETE", "http://127.0.0.1:8080/v1/sessions/s%201?force=1", b""),
            ("GET", "https://[::1]:8443/prefix/v1/sessions?", b""),
        ] {
            let url = Endpoint::parse(url);
            let mut headers = HeaderMap::new();
            signer.sign(method, &url, &mut headers, body).expect("signs");
            verify(method, &url, &headers, body, &key).unwrap_or_else(|error| panic!("{method} {url}: {error}"));
        }
    }

    #[test]
    fn the_signature_binds_method_path_and_body() {
        let signer = signer();
        let key = SigningKey::from_bytes(&[7; 32]);
        let url = Endpoint::parse("https://gateway.example:8443/v1/sessions/s1/messages");
        let mut headers = HeaderMap::new();
        signer.sign("POST", &url, &mut headers, b"{}").expect("signs");
        assert!(verify("PUT", &url, &headers, b"{}", &key).is_err(), "another method");
        let other = Endpoint::parse("https://gateway.example:8443/v1/sessions/s2/messages");
        assert!(verify("POST", &other, &headers, b"{}", &key).is_err(), "another path");
        let other = Endpoint::parse("https://gateway.example:9443/v1/sessions/s1/messages");
        assert!(
            verify("POST", &other, &headers, b"{}", &key).is_err(),
            "another authority"
        );
        assert!(verify("POST", &url, &headers, b"{ }", &key).is_err(), "another body");
        assert!(
            verify("POST", &url, &headers, b"{}", &SigningKey::from_bytes(&[8; 32])).is_err(),
            "another key"
        );
    }

    #[test]
    fn keyid_defaults_to_the_fingerprint_and_nonces_are_fresh() {
        let signer = signer();
        let fingerprint = httpsig::key_fingerprint(&SigningKey::from_bytes(&[7; 32]).verifying_key());
        assert_eq!(signer.keyid(), fingerprint);
        assert_eq!(
            Signer::new(SigningKey::from_bytes(&[7; 32]), Some("k1".into())).keyid(),
            "k1"
        );

        let url = Endpoint::parse("https://h/v1/sessions");
        let nonce = |signer: &Signer| {
            let mut headers = HeaderMap::new();
            signer.sign("GET", &url, &mut headers, b"").expect("signs");
            let signatures = httpsig::parse(&headers["signature-input"], &headers["signature"]).expect("parses");
            let nonce = signatures[0].params().nonce.clone().expect("a nonce");
            assert_eq!(signatures[0].params().keyid.as_deref(), Some(signer.keyid()));
            nonce
        };
        let first = nonce(&signer);
        assert_eq!(first.len(), 22, "16 bytes as unpadded base64url: {first}");
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(first, nonce(&signer));
    }

    #[test]
    fn the_signature_input_has_the_documented_shape() {
        let url = Endpoint::parse("https://h:8443/v1/sessions?x=1");
        let mut headers = HeaderMap::new();
        signer()
            .sign_at("POST", &url, &mut headers, b"{}", 1_764_316_800, "bm9uY2U".into())
            .expect("signs");
        assert_eq!(
            headers["signature-input"],
            format!(
                "sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\");created=1764316800;\
                 nonce=\"bm9uY2U\";alg=\"ed25519\";keyid=\"{}\"",
                signer().keyid()
            )
            .as_str()
        );
        assert_eq!(
            headers["content-digest"],
            "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:"
        );
    }
}
