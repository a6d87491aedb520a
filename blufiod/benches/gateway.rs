//! Signed-request throughput and latency through the HTTPS gateway: the release `blufiod`, a
//! registered device per connection, and a lean HTTP/2 client (raw `h2` over rustls) whose
//! requests are all signed (RFC 9421, ed25519, fresh nonces) before the timed window, so that
//! the figure is the daemon's, not the client's signing.
//!
//! Run with `cargo xtask bench gateway [--requests N] [--turns N] [--connections C]
//! [--streams S] [--synchronous normal|full] [--json PATH]`. Two workloads:
//! - `GET /v1/models` (TLS, signature verification, digest, replay check, routing: the
//!   gateway's own cost), N requests (default 100,000);
//! - `POST /v1/chat/completions` (a whole agent turn, a new session each, with the fake provider
//!   answering at once), N turns (default 5,000).
//!
//! Each runs over C connections (default 4, each its own device, since one device's rate limit
//! is at most 1,000,000 a minute) with S streams in flight in all (default 16). Beside each
//! result: the machine's raw `ed25519-dalek` verify rate on all its cores, measured in the same
//! run, the ratio to it, and the daemon's CPU time per request (from `/proc/PID/stat`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blufio_proto::httpsig;
use blufio_testkit::bench;
use blufio_testkit::fake_provider::FakeProvider;
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};

struct Options {
    requests: usize,
    turns: usize,
    connections: usize,
    streams: usize,
    json: Option<std::path::PathBuf>,
    /// `storage.synchronous` of the daemon: `normal` or `full`.
    synchronous: String,
}

impl Options {
    fn parse() -> Self {
        let mut options = Options {
            requests: 100_000,
            turns: 5_000,
            connections: 4,
            streams: 16,
            json: None,
            synchronous: "normal".to_owned(),
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut index = 0;
        while index < args.len() {
            let value = args.get(index + 1);
            let number = || -> usize {
                value
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("{} needs a number", args[index]))
            };
            match args[index].as_str() {
                "--requests" => options.requests = number(),
                "--turns" => options.turns = number(),
                "--connections" => options.connections = number().max(1),
                "--streams" => options.streams = number().max(1),
                "--json" => options.json = value.map(Into::into),
                "--synchronous" => options.synchronous = value.cloned().expect("--synchronous needs normal or full"),
                // cargo bench adds `--bench`.
                _ => {
                    index += 1;
                    continue;
                }
            }
            index += 2;
        }
        options
    }
}

/// One workload's outcome.
struct Outcome {
    label: &'static str,
    requests: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    daemon_cpu_us: f64,
}

fn main() {
    let options = Options::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let raw = raw_verify_rate(cores, Duration::from_secs(2));
    println!("raw ed25519-dalek verify_strict: {raw:.0}/s on {cores} cores");

    let fake = FakeProvider::start();
    let entries = (options.requests + options.turns) * 2 + 1_000;
    let daemon = bench::start_under_load(
        &fake.url(),
        options.streams,
        &format!(
            "{}[gateway]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_minute = 1000000\nreplay_cache_entries = {entries}\n",
            // Only when asked, so the harness also runs builds older than the key (A/B runs).
            match options.synchronous.as_str() {
                "normal" => String::new(),
                other => format!("[storage]\nsynchronous = \"{other}\"\n"),
            }
        ),
    );
    let pid = daemon.pid().as_raw();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let outcomes = runtime.block_on(async {
        let mut devices = Vec::new();
        for index in 0..options.connections {
            let key = SigningKey::from_bytes(&[u8::try_from(index + 1).expect("at most 255 connections"); 32]);
            let pem = httpsig::verifying_key_to_pem(&key.verifying_key()).expect("pem");
            let device = blufio_testkit::register_device(&daemon, &format!("bench-{index}"), pem).await;
            devices.push((key, device));
        }
        let mut outcomes = Vec::new();
        for (label, method, path, body, count) in [
            ("GET /v1/models", "GET", "/v1/models", None, options.requests),
            (
                "POST /v1/chat/completions",
                "POST",
                "/v1/chat/completions",
                Some(br#"{"messages":[{"role":"user","content":"benchmark"}]}"#.as_slice()),
                options.turns,
            ),
        ] {
            if count == 0 {
                continue;
            }
            let signed = presign(&devices, method, path, body, count, cores);
            let connections = connect(&devices).await;
            let cpu_before = cpu_seconds(pid);
            let (elapsed, mut latencies) = drive(connections, signed, options.streams).await;
            let cpu = cpu_seconds(pid) - cpu_before;
            latencies.sort_unstable();
            outcomes.push(Outcome {
                label,
                requests: latencies.len(),
                per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
                p50_ms: bench::quantile_ms(&latencies, 0.5),
                p99_ms: bench::quantile_ms(&latencies, 0.99),
                daemon_cpu_us: cpu * 1e6 / latencies.len() as f64,
            });
        }
        outcomes
    });
    bench::finish(daemon);

    println!(
        "{} connections, {} streams in flight; clients, daemon and fake share the machine",
        options.connections, options.streams
    );
    println!("| workload | requests | requests/s | % of raw verify | p50 ms | p99 ms | daemon CPU per request |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for outcome in &outcomes {
        println!(
            "| {} | {} | {:.0} | {:.1} % | {:.2} | {:.2} | {:.0} µs |",
            outcome.label,
            outcome.requests,
            outcome.per_second,
            outcome.per_second * 100.0 / raw,
            outcome.p50_ms,
            outcome.p99_ms,
            outcome.daemon_cpu_us
        );
    }
    if let Some(path) = &options.json {
        let json = serde_json::json!({
            "raw_verify_per_second": raw,
            "cores": cores,
            "connections": options.connections,
            "streams": options.streams,
            "workloads": outcomes.iter().map(|outcome| serde_json::json!({
                "label": outcome.label,
                "requests": outcome.requests,
                "per_second": outcome.per_second,
                "ratio_to_raw_verify": outcome.per_second / raw,
                "p50_ms": outcome.p50_ms,
                "p99_ms": outcome.p99_ms,
                "daemon_cpu_us_per_request": outcome.daemon_cpu_us,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json).expect("json")).expect("write the JSON report");
    }
}

/// Verifications per second of one signature over a request-sized message, on `threads`
/// threads at once for `duration`.
fn raw_verify_rate(threads: usize, duration: Duration) -> f64 {
    let key = SigningKey::from_bytes(&[9; 32]);
    let message = vec![b'x'; 200];
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let started = Instant::now();
    let total: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = 0;
                    while started.elapsed() < duration {
                        for _ in 0..64 {
                            verifying.verify_strict(&message, &signature).expect("valid");
                        }
                        done += 64;
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("worker")).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// A request ready to send on connection `connection`.
struct Signed {
    connection: usize,
    request: http::Request<()>,
    body: Option<Bytes>,
}

/// Signs `count` requests, spread over the devices in turn, on all cores.
fn presign(
    devices: &[(SigningKey, blufio_testkit::RegisteredDevice)],
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    count: usize,
    cores: usize,
) -> Vec<Signed> {
    let created = httpsig::unix_now();
    let chunk = count.div_ceil(cores);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|worker| {
                scope.spawn(move || {
                    (worker * chunk..((worker + 1) * chunk).min(count))
                        .map(|index| {
                            let connection = index % devices.len();
                            let (key, device) = &devices[connection];
                            let mut headers = http::HeaderMap::new();
                            if body.is_some() {
                                headers.insert("content-type", http::HeaderValue::from_static("application/json"));
                            }
                            let nonce = uuid::Uuid::now_v7().simple().to_string();
                            let request = httpsig::SignRequest {
                                method,
                                scheme: "https",
                                authority: &device.authority,
                                path,
                                query: None,
                                body: body.unwrap_or_default(),
                                fields: &[],
                                keyid: &device.keyid,
                                nonce: &nonce,
                                created,
                            };
                            httpsig::sign_request(&request, &mut headers, key).expect("sign");
                            let mut request = http::Request::builder()
                                .method(method)
                                .uri(format!("https://{}{path}", device.authority))
                                .body(())
                                .expect("request");
                            *request.headers_mut() = headers;
                            Signed {
                                connection,
                                request,
                                body: body.map(Bytes::copy_from_slice),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("signer"))
            .collect()
    })
}

/// One HTTP/2 connection per device, trusting the daemon's certificate.
async fn connect(devices: &[(SigningKey, blufio_testkit::RegisteredDevice)]) -> Vec<h2::client::SendRequest<Bytes>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut connections = Vec::new();
    for (_, device) in devices {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&device.certificate_pem) {
            roots.add(cert.expect("certificate")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&device.authority)
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("127.0.0.1".try_into().expect("name"), tcp)
            .await
            .expect("TLS");
        let (client, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(connection);
        connections.push(client);
    }
    connections
}

/// Sends every request, `streams` in flight at once, and returns the wall time and each
/// request's latency.
async fn drive(
    connections: Vec<h2::client::SendRequest<Bytes>>,
    signed: Vec<Signed>,
    streams: usize,
) -> (Duration, Vec<Duration>) {
    let queue = Arc::new(std::sync::Mutex::new(signed.into_iter().map(Some).collect::<Vec<_>>()));
    let next = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(connections);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (queue, next, connections) = (queue.clone(), next.clone(), connections.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(Signed {
                    connection,
                    request,
                    body,
                }) = queue.lock().expect("queue").get_mut(index).and_then(Option::take)
                else {
                    break;
                };
                let sent = Instant::now();
                let mut client = connections[connection].clone().ready().await.expect("ready");
                let (response, mut stream) = client.send_request(request, body.is_none()).expect("send");
                if let Some(body) = body {
                    stream.send_data(body, true).expect("body");
                }
                let response = response.await.expect("response");
                assert!(response.status().is_success(), "{}", response.status());
                let mut answer = response.into_body();
                while let Some(chunk) = answer.data().await {
                    let chunk = chunk.expect("answer");
                    let _ = answer.flow_control().release_capacity(chunk.len());
                }
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result.expect("stream task"));
    }
    (started.elapsed(), latencies)
}

/// User plus system CPU seconds `pid` has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit(')').next().expect("fields").split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, in clock ticks).
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / per_second
}
