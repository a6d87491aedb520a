//! Interoperability: requests signed by a standard RFC 9421 implementation in another language
//! (Python's `http-message-signatures`, with `requests`) are accepted by the gateway. This is the
//! Python example of the README, run for real.
//!
//! `cargo xtask test` installs the packages into a venv and points `BLUFIOTEST_PYTHON` at it.

use blufio_testkit as support;

use std::process::Command;

use blufio_proto::control::v1 as pb;
use blufio_proto::httpsig;
use support::{Daemon, describe};

/// The README's Python example: sign with the device's PKCS#8 key, pin the gateway's
/// self-signed certificate by passing it as the CA bundle.
const CLIENT: &str = r#"
import sys, uuid, requests
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

base_url, ca_file, key_file, key_id = sys.argv[1:5]

class DeviceKey(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id):
        return open(key_file, "rb").read()

signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=DeviceKey())

def send(method, path, json_body=None):
    request = requests.Request(method, base_url + path, json=json_body).prepare()
    components = ["@method", "@authority", "@path"]
    signer.sign(request, key_id=key_id, nonce=uuid.uuid4().hex, covered_component_ids=components,
                body=request.body if request.body else None)
    return requests.Session().send(request, verify=ca_file, timeout=30)

created = send("POST", "/v1/sessions", {"title": "from python"})
print("create", created.status_code, created.json().get("title"))
listed = send("GET", "/v1/sessions")
print("list", listed.status_code, len(listed.json()["sessions"]))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_http_message_signatures_is_accepted() {
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python)
        .args(["-c", "import http_message_signatures, requests"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}; run the tests with `cargo xtask test`"));
    assert!(
        probe.status.success(),
        "{python} lacks http-message-signatures or requests; run the tests with `cargo xtask test`, which installs them:\n{}",
        describe(&probe)
    );

    let daemon = Daemon::start();
    let mut control = support::control_client(&daemon.socket).await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let key_file = daemon.dir.path().join("device.pem");
    std::fs::write(&key_file, httpsig::signing_key_to_pkcs8_pem(&key).unwrap().as_bytes()).unwrap();
    let device = control
        .add_device(pb::AddDeviceRequest {
            name: "python".into(),
            public_key_pem: httpsig::verifying_key_to_pem(&key.verifying_key()).unwrap(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    let gateway = control
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateway
        .unwrap();

    let output = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(format!("https://{}", gateway.listen))
        .arg(daemon.dir.path().join("state/tls/cert.pem"))
        .arg(&key_file)
        .arg(&device.keyid)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|line| line == "create 201 from python"), "{stdout}");
    assert!(stdout.lines().any(|line| line == "list 200 1"), "{stdout}");
}
