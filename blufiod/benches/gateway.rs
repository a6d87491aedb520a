//! Signed-request throughput and latency through the HTTPS gateway: the release `blufiod`, a
//! registered device, and concurrent HTTP/2 clients signing every request (RFC 9421, ed25519),
//! against the fake provider on 127.0.0.1.
//!
//! Run with `cargo xtask bench gateway [CLIENTS] [REQUESTS_PER_CLIENT]`. Two workloads:
//! `GET /v1/models` (TLS, signature verification, replay check, routing: the gateway's own cost)
//! and `POST /v1/chat/completions` (a whole agent turn with an instant fake provider).

use std::time::Instant;

use blufio_proto::httpsig;
use blufio_testkit::bench;
use blufio_testkit::fake_provider::FakeProvider;
use ed25519_dalek::SigningKey;

fn main() {
    let args = bench::numbers();
    let clients = args.first().copied().unwrap_or(16);
    let per_client = args.get(1).copied().unwrap_or(50);
    let _ = rustls::crypto::ring::default_provider().install_default();

    // The fake answers every request at once with its default reply.
    let fake = FakeProvider::start();
    let daemon = bench::start_under_load(
        &fake.url(),
        clients,
        "[gateway]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_minute = 1000000\n",
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let key = SigningKey::from_bytes(&[1; 32]);
        let pem = httpsig::verifying_key_to_pem(&key.verifying_key()).expect("pem");
        let device = blufio_testkit::register_device(&daemon, "bench", pem).await;
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&device.certificate_pem).expect("pem")])
            .build()
            .expect("client");
        let target = Target {
            client,
            base: format!("https://{}", device.authority),
            authority: device.authority,
            key,
            keyid: device.keyid,
        };
        for (label, method, path, body) in [
            ("GET /v1/models", "GET", "/v1/models", None),
            (
                "POST /v1/chat/completions",
                "POST",
                "/v1/chat/completions",
                Some(br#"{"messages":[{"role":"user","content":"benchmark"}]}"#.as_slice()),
            ),
        ] {
            run(&target, label, method, path, body, clients, per_client).await;
        }
    });
    bench::finish(daemon);
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    base: String,
    authority: String,
    key: SigningKey,
    keyid: String,
}

impl Target {
    fn signed(&self, method: &str, path: &str, body: Option<&[u8]>) -> reqwest::RequestBuilder {
        let mut headers = http::HeaderMap::new();
        if body.is_some() {
            headers.insert("content-type", http::HeaderValue::from_static("application/json"));
        }
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let request = httpsig::SignRequest {
            method,
            scheme: "https",
            authority: &self.authority,
            path,
            query: None,
            body: body.unwrap_or_default(),
            fields: &[],
            keyid: &self.keyid,
            nonce: &nonce,
            created: httpsig::unix_now(),
        };
        httpsig::sign_request(&request, &mut headers, &self.key).expect("sign");
        let mut builder = self
            .client
            .request(method.parse().expect("method"), format!("{}{path}", self.base))
            .headers(headers);
        if let Some(body) = body {
            builder = builder.body(body.to_vec());
        }
        builder
    }
}

async fn run(
    target: &Target,
    label: &str,
    method: &'static str,
    path: &'static str,
    body: Option<&'static [u8]>,
    clients: usize,
    per_client: usize,
) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let sent = Instant::now();
                let response = target.signed(method, path, body).send().await.expect("send");
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await.expect("body");
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result.expect("client"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |quantile| bench::quantile_ms(&latencies, quantile);
    println!(
        "{label}: {} requests ({clients} clients x {per_client}), {:.1} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}
