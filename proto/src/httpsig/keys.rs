//! Ed25519 key encoding shared by `blufioctl` (which keeps a device's private key) and the daemon
//! (which registers devices by public key): PEM in and out, and the fingerprint used as `keyid`.
//!
//! Key generation is left to callers (`SigningKey::from_bytes` over 32 random bytes), so that this
//! crate needs no source of randomness. Nothing here may log or format a private key.

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey as _, EncodePublicKey as _};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::Digest as _;

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) holding an Ed25519 key.
    #[error("not a PEM-encoded ed25519 public key")]
    ParsePublicKey(#[source] ed25519_dalek::pkcs8::spki::Error),
    /// Not a PEM `PRIVATE KEY` (PKCS#8) holding an Ed25519 key.
    #[error("not a PEM-encoded PKCS#8 ed25519 private key")]
    ParsePrivateKey(#[source] ed25519_dalek::pkcs8::Error),
    /// Encoding the public key failed.
    #[error("could not encode the ed25519 public key as PEM")]
    EncodePublicKey(#[source] ed25519_dalek::pkcs8::spki::Error),
    /// Encoding the private key failed.
    #[error("could not encode the ed25519 private key as PKCS#8 PEM")]
    EncodePrivateKey(#[source] ed25519_dalek::pkcs8::Error),
}

/// Reads a PEM `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) Ed25519 key.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(KeyError::ParsePublicKey)
}

/// Writes a PEM `-----BEGIN PUBLIC KEY-----` with LF line endings.
pub fn verifying_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF).map_err(KeyError::EncodePublicKey)
}

/// Reads a PEM `-----BEGIN PRIVATE KEY-----` (PKCS#8 v1 or v2) Ed25519 key.
pub fn signing_key_from_pkcs8_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(KeyError::ParsePrivateKey)
}

/// Writes a PEM `-----BEGIN PRIVATE KEY-----` (PKCS#8) with LF line endings. The text is zeroed
/// when dropped, since it is the private key.
pub fn signing_key_to_pkcs8_pem(key: &SigningKey) -> Result<Zeroizing<String>, KeyError> {
    // PKCS#8 v1 (RFC 8410 without the optional public key): what OpenSSL writes and what every
    // library reads; Python's `cryptography`, for one, refuses the v2 form with the public key.
    let keypair = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    keypair.to_pkcs8_pem(LineEnding::LF).map_err(KeyError::EncodePrivateKey)
}

/// The key's fingerprint: `SHA256:` followed by the unpadded standard base64 of the SHA-256 of the
/// 32 raw public key bytes (the same shape as OpenSSH's fingerprints, but over the raw key rather
/// than the SSH wire encoding, so the two differ). blufio uses it as the signature's `keyid`.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
    const RFC_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

    #[test]
    fn rfc_keys_round_trip() {
        let public = verifying_key_from_pem(RFC_PUBLIC_KEY).unwrap();
        assert_eq!(verifying_key_to_pem(&public).unwrap(), RFC_PUBLIC_KEY);
        let private = signing_key_from_pkcs8_pem(RFC_PRIVATE_KEY).unwrap();
        assert_eq!(private.verifying_key(), public);
        let pem = signing_key_to_pkcs8_pem(&private).unwrap();
        assert_eq!(signing_key_from_pkcs8_pem(&pem).unwrap().to_bytes(), private.to_bytes());
    }

    #[test]
    fn fingerprint_is_sha256_of_raw_key() {
        let public = verifying_key_from_pem(RFC_PUBLIC_KEY).unwrap();
        let fingerprint = key_fingerprint(&public);
        let expected = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(public.as_bytes()));
        assert_eq!(fingerprint, format!("SHA256:{expected}"));
        assert_eq!(fingerprint.len(), "SHA256:".len() + 43);
        assert!(!fingerprint.ends_with('='));
        let other = SigningKey::from_bytes(&[1; 32]).verifying_key();
        assert_ne!(key_fingerprint(&other), fingerprint);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            verifying_key_from_pem("nope"),
            Err(KeyError::ParsePublicKey(_))
        ));
        assert!(matches!(
            signing_key_from_pkcs8_pem(RFC_PUBLIC_KEY),
            Err(KeyError::ParsePrivateKey(_))
        ));
        assert!(matches!(
            verifying_key_from_pem(RFC_PRIVATE_KEY),
            Err(KeyError::ParsePublicKey(_))
        ));
    }
}
