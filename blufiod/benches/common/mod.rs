//! What the benchmark programs share: arguments, a release `blufiod` on a temp dir whose provider
//! is the fake one (every model free, no budget caps), a control-socket client, and quantiles.

#![allow(dead_code, reason = "each benchmark uses part of this")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blufio_proto::control::v1 as pb;
use tokio::net::UnixStream;

/// The positional numbers on the command line (cargo bench adds flags such as `--bench`).
pub fn numbers() -> Vec<usize> {
    std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .filter_map(|arg| arg.parse().ok())
        .collect()
}

/// A release daemon in a temp dir; stopped with SIGTERM on drop.
pub struct BenchDaemon {
    child: Child,
    /// Its directory (state, runtime, config).
    pub dir: tempfile::TempDir,
    /// Its control socket.
    pub socket: PathBuf,
}

impl BenchDaemon {
    /// Starts `blufiod` against the fake provider at `provider_url`, with `slots` concurrent
    /// turns and queue places, and `extra` TOML appended.
    pub fn start(provider_url: &str, slots: usize, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("blufiod.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[log]\nlevel = \"warn\"\n\
                 [provider]\nkind = \"anthropic\"\nbase_url = \"{1}\"\napi_key = \"bench\"\nmodel = \"bench-model\"\n\
                 [pricing.\"bench-model\"]\ninput = 0.0\noutput = 0.0\n[budget]\ndaily_usd = 0.0\nmonthly_usd = 0.0\n\
                 [agent]\nmax_concurrent_turns = {2}\nmax_queued_turns = {2}\n{3}",
                dir.path().display(),
                provider_url,
                slots.max(1),
                extra
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_blufiod"))
            .arg("--config")
            .arg(&config)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start blufiod");
        let socket = dir.path().join("run/blufiod.sock");
        Self { child, dir, socket }
    }

    /// Waits until the control socket accepts connections.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).await.is_err() {
            assert!(Instant::now() < deadline, "blufiod did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A gRPC client of a control socket.
pub async fn control(socket: &Path) -> pb::control_client::ControlClient<tonic::transport::Channel> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect");
    pb::control_client::ControlClient::new(channel)
}

/// The sample at `quantile` (0.0 to 1.0) of sorted samples, nearest rank, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}
