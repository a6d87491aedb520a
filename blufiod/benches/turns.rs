//! Turn throughput and the daemon's own latency per turn: many concurrent chats against the
//! fake provider on 127.0.0.1, through the real release `blufiod` and its gRPC socket.
//!
//! Run with `cargo xtask bench turns [CLIENTS] [TURNS_PER_CLIENT]`. Reports turns/s and, per
//! turn, end-to-end latency (SendMessage sent → `completed` received), the provider's own time
//! (measured at the fake server, request received → last byte written) and their difference:
//! the latency the daemon adds (storage, context, budget, ledger, streaming), p50 and p99.

#[path = "../tests/support/fake_provider.rs"]
#[allow(dead_code, reason = "the bench uses part of the fake provider")]
mod fake_provider;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blufio_proto::control::v1 as pb;
use fake_provider::{FakeProvider, FakeUsage, Script};
use tokio::net::UnixStream;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let clients = args.first().copied().unwrap_or(16);
    let turns_per_client = args.get(1).copied().unwrap_or(25);
    let total = clients * turns_per_client;

    let fake = FakeProvider::start();
    for _ in 0..total {
        // A realistic shape: a streamed answer in 8 chunks, 5 ms apart (the provider's own time).
        fake.push(Script::Delay {
            per_chunk: Duration::from_millis(5),
            then: Box::new(Script::Text {
                text: "benchmark answer ".repeat(8),
                chunks: 8,
                usage: FakeUsage {
                    input: 500,
                    output: 100,
                    ..FakeUsage::default()
                },
            }),
        });
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("blufiod.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n[log]\nlevel = \"warn\"\n\
             [provider]\nkind = \"anthropic\"\nbase_url = \"{1}\"\napi_key = \"bench\"\nmodel = \"bench-model\"\n\
             [pricing.\"bench-model\"]\ninput = 0.0\noutput = 0.0\n[budget]\ndaily_usd = 0.0\nmonthly_usd = 0.0\n\
             [agent]\nmax_concurrent_turns = {2}\nmax_queued_turns = {2}\n[gateway]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().display(),
            fake.url(),
            clients.max(1)
        ),
    )
    .expect("write config");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_blufiod"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start blufiod");
    let socket = dir.path().join("run/blufiod.sock");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let latencies = runtime.block_on(async {
        wait_for_socket(&socket).await;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let socket = socket.clone();
            tasks.spawn(async move { client(&socket, turns_per_client).await });
        }
        let mut latencies = Vec::with_capacity(total);
        while let Some(result) = tasks.join_next().await {
            latencies.extend(result.expect("client task"));
        }
        (latencies, started.elapsed())
    });
    let (mut end_to_end, elapsed) = latencies;
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let _ = daemon.wait();

    let mut provider = fake.service_times();
    end_to_end.sort_unstable();
    provider.sort_unstable();
    let pct = |samples: &[Duration], quantile: f64| {
        let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    // Added latency per turn: end-to-end minus the provider's time, both taken at the same
    // quantile (the turns are identical, so the provider's distribution is nearly constant).
    println!(
        "turns: {total} ({clients} clients x {turns_per_client}), {:.1} turns/s over {:.2} s",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    for (label, quantile) in [("p50", 0.5), ("p99", 0.99)] {
        let e2e = pct(&end_to_end, quantile);
        let own = pct(&provider, quantile);
        println!(
            "{label}: end-to-end {e2e:.2} ms, provider {own:.2} ms, added by blufiod {:.2} ms",
            e2e - own
        );
    }
}

async fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(socket).await.is_err() {
        assert!(Instant::now() < deadline, "blufiod did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One client: a session, then `turns` sequential messages in it. Returns each turn's latency.
async fn client(socket: &Path, turns: usize) -> Vec<Duration> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect");
    let mut control = pb::control_client::ControlClient::new(channel);
    let session = control
        .create_session(pb::CreateSessionRequest { title: "bench".into() })
        .await
        .expect("create session")
        .into_inner()
        .session
        .expect("session")
        .id;
    let mut latencies = Vec::with_capacity(turns);
    for index in 0..turns {
        let started = Instant::now();
        let mut stream = control
            .send_message(pb::SendMessageRequest {
                session_id: session.clone(),
                text: format!("benchmark message {index}"),
            })
            .await
            .expect("send message")
            .into_inner();
        let mut completed = false;
        while let Some(event) = stream.message().await.expect("turn stream") {
            if matches!(event.event, Some(pb::send_message_response::Event::Completed(_))) {
                completed = true;
            }
        }
        assert!(completed, "a turn ended without completing");
        latencies.push(started.elapsed());
    }
    latencies
}
