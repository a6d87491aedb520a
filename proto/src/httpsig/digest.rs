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
    let mut verifier = DigestVerifier::new(header_value)?;
    verifier.update(body);
    verifier.finish()
}

/// A `Content-Digest` check over a body that arrives in pieces: parse the header first (so that a
/// malformed one is refused before any of the body is read), feed each piece, then compare.
///
/// Unknown algorithms are ignored; at least one of `sha-256` and `sha-512` must be present, and
/// every one present must match.
pub struct DigestVerifier {
    /// (algorithm, expected digest, running hash)
    expected: Vec<(Algorithm, Vec<u8>, Hasher)>,
}

impl std::fmt::Debug for DigestVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DigestVerifier")
            .field(
                "algorithms",
                &self
                    .expected
                    .iter()
                    .map(|(algorithm, ..)| algorithm.key())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl DigestVerifier {
    /// Parses a received `Content-Digest` value.
    pub fn new(header_value: impl AsRef<[u8]>) -> Result<Self, DigestError> {
        let members: Dictionary = Parser::new(header_value.as_ref())
            .with_version(sfv::Version::Rfc8941)
            .parse()
            .map_err(DigestError::Parse)?;
        let mut expected = Vec::new();
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
            let hasher = match algorithm {
                Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
                Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            };
            expected.push((algorithm, received.to_vec(), hasher));
        }
        if expected.is_empty() {
            return Err(DigestError::NoSupportedAlgorithm);
        }
        Ok(Self { expected })
    }

    /// Feeds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        for (_, _, hasher) in &mut self.expected {
            match hasher {
                Hasher::Sha256(hasher) => hasher.update(piece),
                Hasher::Sha512(hasher) => hasher.update(piece),
            }
        }
    }

    /// Compares every digest with the body fed so far.
    pub fn finish(self) -> Result<(), DigestError> {
        for (algorithm, received, hasher) in self.expected {
            let computed = match hasher {
                Hasher::Sha256(hasher) => hasher.finalize().to_vec(),
                Hasher::Sha512(hasher) => hasher.finalize().to_vec(),
            };
            // Digests are not secrets, so a plain comparison is fine.
            if received != computed {
                return Err(DigestError::Mismatch {
                    algorithm: algorithm.key(),
                });
            }
        }
        Ok(())
    }
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
    fn a_body_fed_in_pieces_checks_like_a_whole_one() {
        let both = format!(
            "{}, {}",
            content_digest(HELLO, Algorithm::Sha256),
            content_digest(HELLO, Algorithm::Sha512)
        );
        let mut verifier = DigestVerifier::new(&both).unwrap();
        for piece in HELLO.chunks(5) {
            verifier.update(piece);
        }
        verifier.finish().unwrap();
        let mut short = DigestVerifier::new(&both).unwrap();
        short.update(&HELLO[..HELLO.len() - 1]);
        assert!(matches!(short.finish(), Err(DigestError::Mismatch { .. })));
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
