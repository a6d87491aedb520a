//! TLS for `blufioctl remote`: the `--pin` value and the certificate verifier that enforces it.
//!
//! With a pin, the gateway is trusted if and only if the SHA-256 of its leaf certificate (DER)
//! equals the pin; the name in the certificate, its issuer and its dates do not matter, since the
//! pin identifies the one certificate the daemon serves (`blufioctl status` shows it). The
//! handshake signatures are still verified, with the ring provider, so only the holder of the
//! certificate's private key can complete the handshake. This module never weakens the default
//! verification used without a pin.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::Digest as _;

/// A SHA-256 certificate fingerprint, as `--pin` takes it and `blufioctl status` shows it: 32
/// upper-case hex pairs joined by `:`. Parsing also accepts lower case, and the 64 digits without
/// colons.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The fingerprint of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Pin {
        Pin(sha2::Sha256::digest(der).into())
    }
}

/// Why a `--pin` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePinError;

impl fmt::Display for ParsePinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "expected the SHA-256 fingerprint of the gateway's certificate: 32 hex pairs joined by ':' \
             (as 'blufioctl status' shows it), or 64 hex digits",
        )
    }
}

impl std::error::Error for ParsePinError {}

impl FromStr for Pin {
    type Err = ParsePinError;

    fn from_str(text: &str) -> Result<Pin, ParsePinError> {
        let text = text.trim();
        // The `SHA256:base64` form device fingerprints use (OpenSSH's), for the same digest.
        if let Some(encoded) = text.strip_prefix("SHA256:") {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .map_err(|_| ParsePinError)?;
            return bytes.try_into().map(Pin).map_err(|_| ParsePinError);
        }
        let pairs: Vec<&str> = if text.contains(':') {
            text.split(':').collect()
        } else if text.len() == 64 && text.is_ascii() {
            (0..32).map(|pair_idx| &text[pair_idx * 2..pair_idx * 2 + 2]).collect()
        } else {
            return Err(ParsePinError);
        };
        if pairs.len() != 32 {
            return Err(ParsePinError);
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(pairs) {
            // `from_str_radix` would accept a sign ("+f"), so insist on two hex digits.
            if pair.len() != 2 || !pair.bytes().all(|digit| digit.is_ascii_hexdigit()) {
                return Err(ParsePinError);
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| ParsePinError)?;
        }
        Ok(Pin(bytes))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (byte_idx, byte) in self.0.iter().enumerate() {
            if byte_idx > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// What the pinning verifier saw, shared with the code that reports a failed connection: the
/// fingerprint of a certificate that did not match, if one was presented.
#[derive(Debug, Default)]
pub struct PinRecord {
    mismatch: Mutex<Option<Pin>>,
}

impl PinRecord {
    /// The fingerprint of the last certificate refused for not matching the pin.
    pub fn mismatch(&self) -> Option<Pin> {
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, actual: Pin) {
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(actual);
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1) that
/// trusts exactly the certificate `pin` names. Refused certificates are noted in `record`.
pub fn pinned_client_config(pin: Pin, record: Arc<PinRecord>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinVerifier {
        pin,
        provider: Arc::clone(&provider),
        record,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1) that
/// trusts the system's certificate authorities, as any HTTPS client on the host does.
pub fn platform_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts the server's certificate only if its SHA-256 equals the pin.
#[derive(Debug)]
struct PinVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
    record: Arc<PinRecord>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Pin::of_certificate(end_entity.as_ref());
        if actual == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.record.record(actual);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPPER: &str =
        "3F:A2:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:01:23:45:67:89:AB:CD:EF:10:20:30:40:50:9C";

    #[test]
    fn pins_parse_in_every_accepted_spelling() {
        let pin: Pin = UPPER.parse().expect("upper case with colons");
        assert_eq!(pin.to_string(), UPPER, "display is the canonical form");
        assert_eq!(UPPER.to_lowercase().parse::<Pin>(), Ok(pin));
        assert_eq!(UPPER.replace(':', "").parse::<Pin>(), Ok(pin));
        assert_eq!(UPPER.replace(':', "").to_lowercase().parse::<Pin>(), Ok(pin));
        assert_eq!(
            format!("  {UPPER}\n").parse::<Pin>(),
            Ok(pin),
            "surrounding blanks are ignored"
        );
        // The fingerprint form of device keys, for the same digest.
        use base64::Engine as _;
        let sha256 = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(pin.0)
        );
        assert_eq!(sha256.parse::<Pin>(), Ok(pin));
        assert_eq!(format!("{sha256}=").parse::<Pin>(), Ok(pin), "padding is ignored");
        assert!("SHA256:c2hvcnQ".parse::<Pin>().is_err(), "not 32 bytes");
    }

    #[test]
    fn malformed_pins_are_refused() {
        for bad in [
            "",
            "zz",
            &UPPER[3..],                               // 31 pairs
            &format!("{UPPER}:00"),                    // 33 pairs
            &UPPER.replacen("3F", "3", 1),             // a short pair
            &UPPER.replacen("3F", "+F", 1),            // a sign
            &UPPER.replacen("3F", "G1", 1),            // not hex
            &UPPER.replace(':', "")[1..],              // 63 digits
            "SHA256:q3kZ0cRj1V0b2m8xWmJXo7cYl9P5Qkqk", // base64 of fewer than 32 bytes
            "SHA256:not base64!",                      // not base64
            &"é".repeat(32),
        ] {
            assert_eq!(bad.parse::<Pin>(), Err(ParsePinError), "{bad:?}");
        }
    }

    #[test]
    fn certificate_fingerprint_is_sha256_of_der() {
        // SHA-256 of the empty input, a well-known value.
        let pin = Pin::of_certificate(b"");
        assert_eq!(
            pin.to_string().replace(':', ""),
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        );
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate() {
        let record = Arc::new(PinRecord::default());
        let verifier = PinVerifier {
            pin: Pin::of_certificate(b"cert-a"),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            record: Arc::clone(&record),
        };
        let name = ServerName::try_from("gateway.example").expect("name");
        let now = UnixTime::now();
        verifier
            .verify_server_cert(&CertificateDer::from(&b"cert-a"[..]), &[], &name, &[], now)
            .expect("the pinned certificate is accepted");
        assert_eq!(record.mismatch(), None);
        let refused = verifier.verify_server_cert(&CertificateDer::from(&b"cert-b"[..]), &[], &name, &[], now);
        assert!(refused.is_err());
        assert_eq!(record.mismatch(), Some(Pin::of_certificate(b"cert-b")));
        assert!(!verifier.supported_verify_schemes().is_empty());
        pinned_client_config(Pin::of_certificate(b"x"), record).expect("a config builds");
    }
}
