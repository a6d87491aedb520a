//! Talking to a daemon as its users do: the real `blufioctl` on its socket, and (feature
//! `control-client`) a raw gRPC client for the RPCs blufioctl does not offer.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::Binaries;

/// Runs `blufioctl --socket <socket> args...` with the client of [`Binaries::from_env`].
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    output_of(ctl_command(Binaries::from_env().blufioctl(), socket, args))
}

/// stdout and stderr of an output, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A gRPC client of the control socket, for tests that need an RPC blufioctl does not offer.
#[cfg(feature = "control-client")]
pub async fn control_client(
    socket: &Path,
) -> blufio_proto::control::v1::control_client::ControlClient<tonic::transport::Channel> {
    control_client_receiving(socket).await.0
}

/// [`control_client`] and the inbox where its connection keeps descriptors the daemon passes
/// (`Backup` with `descriptor`), as blufioctl's does.
#[cfg(feature = "control-client")]
pub async fn control_client_receiving(
    socket: &Path,
) -> (
    blufio_proto::control::v1::control_client::ControlClient<tonic::transport::Channel>,
    blufio_proto::descriptors::Inbox,
) {
    let inbox = blufio_proto::descriptors::Inbox::default();
    let path = socket.to_owned();
    let kept = inbox.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            let inbox = kept.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    blufio_proto::descriptors::DescriptorStream::new(stream, inbox),
                ))
            }
        }))
        .await
        .expect("connect to the control socket");
    (
        blufio_proto::control::v1::control_client::ControlClient::new(channel),
        inbox,
    )
}

/// A device registered on a running daemon, and what a client needs to reach its gateway.
#[cfg(feature = "control-client")]
#[derive(Debug, Clone)]
pub struct RegisteredDevice {
    /// The keyid the daemon gave it.
    pub keyid: String,
    /// Where the gateway listens, `127.0.0.1:PORT`.
    pub authority: String,
    /// The gateway's self-signed certificate (PEM), the one a client should trust.
    pub certificate_pem: Vec<u8>,
}

/// Registers a device named `name` with the ed25519 public key `public_key_pem` on the daemon,
/// and reads where its gateway listens and the certificate it serves.
#[cfg(feature = "control-client")]
pub async fn register_device(daemon: &crate::Daemon, name: &str, public_key_pem: String) -> RegisteredDevice {
    use blufio_proto::control::v1 as pb;
    let mut control = control_client(&daemon.socket).await;
    let keyid = control
        .add_device(pb::AddDeviceRequest {
            name: name.to_owned(),
            public_key_pem,
        })
        .await
        .expect("add a device")
        .into_inner()
        .device
        .expect("the added device")
        .keyid;
    let authority = control
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .gateway
        .expect("a gateway in the status")
        .listen;
    let certificate_pem =
        std::fs::read(daemon.dir.path().join("state/tls/cert.pem")).expect("the gateway's certificate");
    RegisteredDevice {
        keyid,
        authority,
        certificate_pem,
    }
}

/// `blufioctl --socket <socket> args...`, independent of the caller's `BLUFIO_SOCKET` and colours.
pub(crate) fn ctl_command(blufioctl: &Path, socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(blufioctl);
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BLUFIO_SOCKET")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

pub(crate) fn output_of(mut command: Command) -> Output {
    command.output().expect("run blufioctl")
}
