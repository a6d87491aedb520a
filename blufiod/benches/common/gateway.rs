//! The gateway as the benchmarks' registered device reaches it: one copy, included by the
//! `backup` and `memory` benchmarks with `#[path]`, each of which adds the requests it sends in
//! its own `impl Gateway`.

use blufio_proto::httpsig;
use blufio_testkit::Daemon;
use ed25519_dalek::SigningKey;

/// The gateway as a registered device reaches it.
pub struct Gateway {
    /// `127.0.0.1:PORT`.
    pub authority: String,
    /// The daemon's self-signed certificate, the only one the clients trust.
    pub certificate: reqwest::Certificate,
    /// The device's signing key.
    pub key: SigningKey,
    /// The keyid the daemon gave the device.
    pub keyid: String,
}

impl Gateway {
    /// Registers a device on the daemon and reads where its gateway listens.
    pub async fn register(daemon: &Daemon) -> Self {
        let key = SigningKey::from_bytes(&[1; 32]);
        let pem = httpsig::verifying_key_to_pem(&key.verifying_key()).expect("pem");
        let device = blufio_testkit::register_device(daemon, "bench", pem).await;
        Self {
            authority: device.authority,
            certificate: reqwest::Certificate::from_pem(&device.certificate_pem).expect("the certificate's PEM"),
            key,
            keyid: device.keyid,
        }
    }
}
