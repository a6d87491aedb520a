//! `Content-Digest` (RFC 9530): computing it for a body and checking a received one.
//!
//! The header is a structured-field dictionary and is parsed and serialized only with `sfv`. This
//! module must never accept a header that carries no supported digest, nor one in which any
//! supported digest disagrees with the body.

use sfv::{Dictionary, ListEntry, Parser};
use sha2::Digest as _;

/// The digest algorithms blufio computes and checks (RFC 9530 §5: the two not deprecated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `sha-256`.
    Sha256,
    /// `sha-512`.
    Sha512,
}

impl Algorithm {
    /// The key of this algorithm in the `Content-Digest` dictionary.
    pub fn key(self) -> &'static str {
        match self {
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        }
    }

    fn digest(self, body: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(body).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(body).to_vec(),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        match key {
            "sha-256" => Some(Self::Sha256),
            "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

/// Why a `Content-Digest` header was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The header is not a structured-field dictionary.
    #[error("the `content-digest` header is not a valid structured-field dictionary")]
    Parse(#[source] sfv::Error),
    /// A supported algorithm's member is not a byte sequence.
    #[error("the `{algorithm}` member of `content-digest` is not a byte sequence")]
    NotByteSequence { algorithm: &'static str },
    /// No member uses `sha-256` or `sha-512`.
    #[error("`content-digest` has no `sha-256` or `sha-512` digest")]
    NoSupportedAlgorithm,
    /// A supported digest does not match the body.
    #[error("the `{algorithm}` digest in `content-digest` does not match the body")]
    Mismatch { algorithm: &'static str },
}

/// The `Content-Digest` value for `body`, e.g. `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:`.
pub fn content_digest(body: &[u8], algorithm: Algorithm) -> String {
    let digest = algorithm.digest(body);
    let mut serializer = sfv::DictSerializer::new();
    // Both keys are valid structured-field keys, so `from_str` cannot fail; if it did, the empty
    // header that results would fail verification rather than panic.
    if let Ok(key) = sfv::KeyRef::from_str(algorithm.key()) {
        serializer.bare_item(key, &digest[..]);
    }
    serializer.finish().unwrap_or_default()
}

/// Checks a received `Content-Digest` value against `body`: unknown algorithms are ignored, at
/// least one of `sha-256` and `sha-512` must be present, and every one present must match.
///
/// Accepts `&str`, `&[u8]` or `&http::HeaderValue`.
pub fn verify_content_digest(header_value: impl AsRef<[u8]>, body: &[u8]) -> Result<(), DigestError> {
    let members: Dictionary = Parser::new(header_value.as_ref())
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .map_err(DigestError::Parse)?;
    let mut n_checked = 0;
    for (key, entry) in &members {
        let Some(algorithm) = Algorithm::from_key(key.as_str()) else {
            continue;
        };
        let received = match entry {
            ListEntry::Item(item) => item.bare_item.as_byte_sequence(),
            ListEntry::InnerList(_) => None,
        }
        .ok_or(DigestError::NotByteSequence {
            algorithm: algorithm.key(),
        })?;
        // Digests are not secrets, so a plain comparison is fine.
        if received != algorithm.digest(body).as_slice() {
            return Err(DigestError::Mismatch {
                algorithm: algorithm.key(),
            });
        }
        n_checked += 1;
    }
    if n_checked == 0 {
        return Err(DigestError::NoSupportedAlgorithm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine as _;

    fn standard_base64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    const HELLO: &[u8] = br#"{"hello": "world"}"#;
    /// From the RFC 9421 B.2.6 request (and RFC 9530's own example).
    const HELLO_SHA512: &str =
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    #[test]
    fn rfc_sha512_example() {
        assert_eq!(content_digest(HELLO, Algorithm::Sha512), HELLO_SHA512);
        verify_content_digest(HELLO_SHA512, HELLO).unwrap();
    }

    #[test]
    fn sha256_round_trip() {
        let header = content_digest(HELLO, Algorithm::Sha256);
        assert_eq!(header, "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:");
        assert_eq!(
            header,
            format!("sha-256=:{}:", standard_base64(&sha2::Sha256::digest(HELLO)))
        );
        verify_content_digest(&header, HELLO).unwrap();
        verify_content_digest(content_digest(b"", Algorithm::Sha256), b"").unwrap();
    }

    #[test]
    fn mismatch_and_malformed_headers_are_errors() {
        let header = content_digest(HELLO, Algorithm::Sha256);
        assert!(matches!(
            verify_content_digest(&header, b"{\"hello\": \"world!\"}"),
            Err(DigestError::Mismatch { algorithm: "sha-256" })
        ));
        // One good and one bad supported digest is still a mismatch.
        let both = format!("{header}, sha-512=:AAAA:");
        assert!(matches!(
            verify_content_digest(&both, HELLO),
            Err(DigestError::Mismatch { algorithm: "sha-512" })
        ));
        assert!(matches!(
            verify_content_digest("md5=:AAAA:, unixsum=:AAAA:", HELLO),
            Err(DigestError::NoSupportedAlgorithm)
        ));
        assert!(matches!(
            verify_content_digest("", HELLO),
            Err(DigestError::NoSupportedAlgorithm)
        ));
        assert!(matches!(
            verify_content_digest("sha-256=\"abc\"", HELLO),
            Err(DigestError::NotByteSequence { .. })
        ));
        assert!(matches!(
            verify_content_digest("sha-256=:abc", HELLO),
            Err(DigestError::Parse(_))
        ));
        assert!(matches!(
            verify_content_digest(b"\xff", HELLO),
            Err(DigestError::Parse(_))
        ));
    }

    #[test]
    fn unknown_algorithms_are_ignored() {
        let header = format!(
            "md5=:AAAA:, {}, id-sha-256=(1 2)",
            content_digest(HELLO, Algorithm::Sha512)
        );
        verify_content_digest(&header, HELLO).unwrap();
    }
}
