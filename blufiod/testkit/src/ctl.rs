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
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the control socket");
    blufio_proto::control::v1::control_client::ControlClient::new(channel)
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
