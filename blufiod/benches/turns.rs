//! Turn throughput and the daemon's own latency per turn: many concurrent chats against the
//! fake provider on 127.0.0.1, through the real release `blufiod` and its gRPC socket.
//!
//! Run with `cargo xtask bench turns [CLIENTS] [TURNS_PER_CLIENT] [CHUNK_DELAY_MS]`. Reports
//! turns/s and, per turn, end-to-end latency (SendMessage sent → `completed` received), the
//! provider's own time (measured at the fake server, request received → last byte written) and
//! their difference: the latency the daemon adds (storage, context, budget, ledger, streaming),
//! p50 and p99. With one client the difference is taken turn by turn (the fake answers the turns
//! in order); with more, quantile by quantile. A chunk delay of 0 makes the provider instant, so
//! the end-to-end time is nearly all the daemon's and the gRPC client's.

use std::path::Path;
use std::time::{Duration, Instant};

use blufio_proto::control::v1 as pb;
use blufio_testkit::bench;
use blufio_testkit::fake_provider::{FakeProvider, FakeUsage, Script};

fn main() {
    let args = bench::numbers();
    let clients = args.first().copied().unwrap_or(16);
    let turns_per_client = args.get(1).copied().unwrap_or(25);
    let chunk_delay = Duration::from_millis(args.get(2).copied().unwrap_or(5) as u64);
    let total = clients * turns_per_client;

    let fake = FakeProvider::start();
    // The bench reads no request back: keeping a parsed copy of every one (each holds the whole
    // conversation so far) would only load the cores the daemon runs on.
    fake.set_recording(false);
    for _ in 0..total {
        // A realistic shape: a streamed answer in 8 chunks, 5 ms apart (the provider's own time).
        fake.push(Script::Delay {
            per_chunk: chunk_delay,
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
    let daemon = bench::start_under_load(&fake.url(), clients, "[gateway]\nlisten = \"127.0.0.1:0\"\n");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let latencies = runtime.block_on(async {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let socket = daemon.socket.clone();
            tasks.spawn(async move { client(&socket, turns_per_client).await });
        }
        let mut latencies = Vec::with_capacity(total);
        while let Some(result) = tasks.join_next().await {
            latencies.extend(result.expect("client task"));
        }
        (latencies, started.elapsed())
    });
    let (mut end_to_end, elapsed) = latencies;
    bench::finish(daemon);

    let mut provider = fake.service_times();
    // One client sends its turns one after the other, so the fake's n-th answer is its n-th turn.
    let mut paired: Vec<f64> = if clients == 1 && provider.len() == end_to_end.len() {
        end_to_end
            .iter()
            .zip(&provider)
            .map(|(e2e, own)| (e2e.as_secs_f64() - own.as_secs_f64()) * 1000.0)
            .collect()
    } else {
        Vec::new()
    };
    paired.sort_unstable_by(f64::total_cmp);
    end_to_end.sort_unstable();
    provider.sort_unstable();
    let pct = bench::quantile_ms;
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
        let added = if paired.is_empty() {
            e2e - own
        } else {
            paired[((paired.len() - 1) as f64 * quantile).round() as usize]
        };
        println!("{label}: end-to-end {e2e:.2} ms, provider {own:.2} ms, added by blufiod {added:.2} ms");
    }
}

/// One client: a session, then `turns` sequential messages in it. Returns each turn's latency.
async fn client(socket: &Path, turns: usize) -> Vec<Duration> {
    let mut control = blufio_testkit::control_client(socket).await;
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
