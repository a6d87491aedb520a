//! The HTTPS gateway over real TLS: every way a request can fail authentication, limits, and
//! good signed requests (streaming included), against the real daemon and a fake provider.

use blufio_testkit as support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blufio_proto::control::v1 as pb;
use blufio_proto::httpsig::{self, Component, SignatureParams, digest};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt as _;
use support::fake_provider::{FakeProvider, FakeUsage, Script};
use support::{Daemon, DaemonOptions, describe, new_dir};

/// A daemon with a gateway and a registered device.
struct Setup {
    daemon: Daemon,
    fake: FakeProvider,
    base: String,
    client: reqwest::Client,
    key: SigningKey,
    keyid: String,
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

async fn control(socket: &std::path::Path) -> pb::control_client::ControlClient<tonic::transport::Channel> {
    support::control_client(socket).await
}

async fn setup(extra: &str) -> Setup {
    setup_on(extra, None).await
}

/// Like [`setup`], with the gateway on `listen` (`127.0.0.1:PORT`) rather than a port of its own.
async fn setup_on(extra: &str, listen: Option<&str>) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: support::fake_provider_config(&fake, extra),
            env: listen
                .map(|listen| vec![("BLUFIO_GATEWAY__LISTEN".to_owned(), listen.to_owned())])
                .unwrap_or_default(),
            ..DaemonOptions::default()
        },
    );
    let status = control(&daemon.socket)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let gateway = status.gateway.expect("the gateway is on");
    assert!(
        gateway.problem.contains("no device is registered"),
        "{}",
        gateway.problem
    );
    assert_eq!(gateway.scheme, "https");
    assert_eq!(gateway.tls_fingerprint_sha256.len(), 95, "32 hex pairs with colons");
    let listen = gateway.listen;
    let cert = std::fs::read(daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .build()
        .unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let device = control(&daemon.socket)
        .await
        .add_device(pb::AddDeviceRequest {
            name: "laptop".into(),
            public_key_pem: httpsig::verifying_key_to_pem(&key.verifying_key()).unwrap(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    Setup {
        base: format!("https://{listen}"),
        daemon,
        fake,
        client,
        key,
        keyid: device.keyid,
    }
}

/// What a test may change in an otherwise good signature.
#[derive(Default)]
struct Tweak {
    drop_component: Option<&'static str>,
    created_offset: i64,
    expires_offset: Option<i64>,
    nonce: Option<String>,
    sign_path: Option<&'static str>,
    sign_body: Option<&'static [u8]>,
    key: Option<SigningKey>,
    keyid: Option<String>,
    session: Option<String>,
    cover_session: bool,
    /// Sign for this authority instead of the URL's.
    authority: Option<String>,
}

impl Setup {
    /// A signed request: `@method`, `@authority`, `@path`, `@query` (if any), `content-digest`
    /// (if a body), with created, nonce and keyid, unless `tweak` says otherwise.
    fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
        tweak: Tweak,
    ) -> reqwest::RequestBuilder {
        let url: reqwest::Url = format!("{}{path_and_query}", self.base).parse().unwrap();
        let headers = self.signed_headers(method, path_and_query, body, tweak);
        let mut builder = self.client.request(method.parse().unwrap(), url).headers(headers);
        if let Some(body) = body {
            builder = builder.body(body.to_vec());
        }
        builder
    }

    /// The headers of a signed request (see [`Setup::request`]), for clients that send them
    /// themselves.
    fn signed_headers(&self, method: &str, path_and_query: &str, body: Option<&[u8]>, tweak: Tweak) -> http::HeaderMap {
        let url: reqwest::Url = format!("{}{path_and_query}", self.base).parse().unwrap();
        let authority = tweak
            .authority
            .clone()
            .unwrap_or_else(|| format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()));
        let mut headers = http::HeaderMap::new();
        let mut components = vec![Component::Method, Component::Authority, Component::Path];
        if url.query().is_some() {
            components.push(Component::Query);
        }
        if let Some(body) = body {
            let signed_body = tweak.sign_body.unwrap_or(body);
            headers.insert(
                "content-digest",
                digest::content_digest(signed_body, digest::Algorithm::Sha256)
                    .parse()
                    .unwrap(),
            );
            headers.insert("content-type", "application/json".parse().unwrap());
            components.push(Component::Field("content-digest".into()));
        }
        if let Some(session) = &tweak.session {
            headers.insert("blufio-session", session.parse().unwrap());
            if tweak.cover_session {
                components.push(Component::Field("blufio-session".into()));
            }
        }
        if let Some(dropped) = tweak.drop_component {
            components.retain(|component| component.name() != dropped);
        }
        let params = SignatureParams {
            components,
            created: Some(now() + tweak.created_offset),
            expires: tweak.expires_offset.map(|offset| now() + offset),
            nonce: Some(tweak.nonce.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())),
            keyid: Some(tweak.keyid.unwrap_or_else(|| self.keyid.clone())),
            alg: Some("ed25519".into()),
            tag: None,
        };
        let parts = httpsig::RequestParts {
            method,
            scheme: "https",
            authority: &authority,
            path: tweak.sign_path.unwrap_or(url.path()),
            query: url.query(),
            headers: &headers,
        };
        let key = tweak.key.unwrap_or_else(|| self.key.clone());
        let (input, signature) = httpsig::sign(&parts, "sig1", &params, &key).unwrap();
        headers.insert("signature-input", input.parse().unwrap());
        headers.insert("signature", signature.parse().unwrap());
        headers
    }

    async fn expect_problem(&self, builder: reqwest::RequestBuilder, status: u16, kind: &str) -> serde_json::Value {
        let response = builder.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "expected {kind}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert!(
            problem["type"].as_str().unwrap().ends_with(&format!("/{kind}")),
            "expected {kind}, got {problem}"
        );
        problem
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_authentication_failure_is_refused_with_its_reason() {
    let setup = setup("").await;
    let get = |tweak| setup.request("GET", "/v1/sessions", None, tweak);

    let unsigned = setup.client.get(format!("{}/v1/sessions", setup.base));
    setup.expect_problem(unsigned, 401, "signature-missing").await;

    let stranger = SigningKey::from_bytes(&[9; 32]);
    let wrong_key = get(Tweak {
        key: Some(stranger.clone()),
        ..Tweak::default()
    });
    setup.expect_problem(wrong_key, 401, "signature-invalid").await;
    let unknown = get(Tweak {
        key: Some(stranger.clone()),
        keyid: Some(httpsig::key_fingerprint(&stranger.verifying_key())),
        ..Tweak::default()
    });
    setup.expect_problem(unknown, 401, "key-unknown").await;

    let missing = get(Tweak {
        drop_component: Some("@authority"),
        ..Tweak::default()
    });
    let problem = setup.expect_problem(missing, 401, "signature-components").await;
    assert!(problem["detail"].as_str().unwrap().contains("@authority"), "{problem}");
    let missing_query = setup.request(
        "GET",
        "/v1/sessions?limit=5",
        None,
        Tweak {
            drop_component: Some("@query"),
            ..Tweak::default()
        },
    );
    setup.expect_problem(missing_query, 401, "signature-components").await;

    let skewed = get(Tweak {
        created_offset: -3_600,
        ..Tweak::default()
    });
    setup.expect_problem(skewed, 401, "signature-expired").await;
    let future = get(Tweak {
        created_offset: 3_600,
        ..Tweak::default()
    });
    setup.expect_problem(future, 401, "signature-expired").await;
    let expired = get(Tweak {
        created_offset: -10,
        expires_offset: Some(-5),
        ..Tweak::default()
    });
    setup.expect_problem(expired, 401, "signature-expired").await;

    let tampered_path = setup.request(
        "GET",
        "/v1/sessions/other",
        None,
        Tweak {
            sign_path: Some("/v1/sessions"),
            ..Tweak::default()
        },
    );
    setup.expect_problem(tampered_path, 401, "signature-invalid").await;

    let body = br#"{"title":"mine"}"#;
    let tampered_body = setup.request(
        "POST",
        "/v1/sessions",
        Some(body),
        Tweak {
            sign_body: Some(br#"{"title":"theirs"}"#),
            ..Tweak::default()
        },
    );
    setup.expect_problem(tampered_body, 401, "content-digest").await;
    let undigested = setup.request(
        "POST",
        "/v1/sessions",
        Some(body),
        Tweak {
            drop_component: Some("content-digest"),
            ..Tweak::default()
        },
    );
    setup.expect_problem(undigested, 401, "signature-components").await;

    // A good request succeeds once; the same nonce again is a replay.
    let nonce = "replay-me-0123456789".to_owned();
    let first = get(Tweak {
        nonce: Some(nonce.clone()),
        ..Tweak::default()
    });
    assert_eq!(first.send().await.unwrap().status(), 200);
    let replayed = get(Tweak {
        nonce: Some(nonce),
        ..Tweak::default()
    });
    setup.expect_problem(replayed, 401, "signature-replayed").await;

    // Revocation is immediate.
    control(&setup.daemon.socket)
        .await
        .revoke_device(pb::RevokeDeviceRequest { name: "laptop".into() })
        .await
        .unwrap();
    setup.expect_problem(get(Tweak::default()), 401, "key-unknown").await;
    let gateway = control(&setup.daemon.socket)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateway
        .unwrap();
    assert_eq!(gateway.active_devices, 0);
    assert!(
        gateway.problem.contains("no device is registered"),
        "{}",
        gateway.problem
    );

    let unknown = control(&setup.daemon.socket)
        .await
        .revoke_device(pb::RevokeDeviceRequest {
            name: "never-added".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let metrics = setup
        .client
        .get(format!("{}/metrics", setup.base))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("blufio_gateway_auth_failures_total{check=\"signature-replayed\"} 1"),
        "{text}"
    );
    // Control-socket calls are counted by method and status, failures included.
    for line in [
        // (the test's setup asks for the status too)
        "blufio_grpc_requests_total{code=\"OK\",method=\"GetStatus\"} ",
        "blufio_grpc_requests_total{code=\"OK\",method=\"RevokeDevice\"} 1",
        "blufio_grpc_requests_total{code=\"NOT_FOUND\",method=\"RevokeDevice\"} 1",
        "blufio_budget_spent_usd{period=\"daily\"} 0",
        "blufio_gateway_replay_cache_entries ",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert_eq!(setup.fake.request_count(), 0, "no refused request reached the agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_reach_the_agent_streaming_included() {
    let setup = setup("").await;
    let health = setup.client.get(format!("{}/health", setup.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = setup.client.get(format!("{}/ready", setup.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let openapi: serde_json::Value = setup
        .client
        .get(format!("{}/openapi.json", setup.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/chat/completions"]["post"].is_object());

    let models: serde_json::Value = setup
        .request("GET", "/v1/models", None, Tweak::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "fake-model");

    // OpenAI-compatible, not streamed.
    setup.fake.push(Script::Text {
        text: "Hello over HTTPS.".into(),
        chunks: 3,
        usage: FakeUsage {
            input: 10,
            output: 4,
            ..FakeUsage::default()
        },
    });
    let body = serde_json::to_vec(
        &serde_json::json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let response = setup
        .request("POST", "/v1/chat/completions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["blufio-session"].to_str().unwrap().to_owned();
    let completion: serde_json::Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["content"], "Hello over HTTPS.");
    assert_eq!(completion["usage"]["completion_tokens"], 4);

    // Streamed, in the same session: SSE chunks, the usage chunk, then [DONE].
    setup.fake.push(Script::Text {
        text: "Streaming works.".into(),
        chunks: 3,
        usage: FakeUsage::default(),
    });
    let body = serde_json::to_vec(&serde_json::json!({
        "messages": [{"role": "user", "content": "again"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    }))
    .unwrap();
    // The session header picks whose conversation is read, so it must be signed.
    let unsigned_session = setup.request(
        "POST",
        "/v1/chat/completions",
        Some(&body),
        Tweak {
            session: Some(session.clone()),
            ..Tweak::default()
        },
    );
    setup
        .expect_problem(unsigned_session, 401, "signature-components")
        .await;
    let response = setup
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&body),
            Tweak {
                session: Some(session.clone()),
                cover_session: true,
                ..Tweak::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]", "{text}");
    let streamed: String = data
        .iter()
        .filter(|line| **line != "[DONE]")
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "Streaming works.");
    assert!(data.iter().any(|line| line.contains("\"usage\"")), "{text}");
    assert_eq!(
        setup.fake.requests()[1].body["messages"].as_array().unwrap().len(),
        3,
        "same session"
    );

    // The native session API streams the gRPC events as SSE.
    setup.fake.push(Script::Text {
        text: "Native.".into(),
        chunks: 2,
        usage: FakeUsage::default(),
    });
    let body = br#"{"text":"native please"}"#;
    let response = setup
        .request(
            "POST",
            &format!("/v1/sessions/{session}/messages"),
            Some(body),
            Tweak::default(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("event: ")).collect();
    assert_eq!(events.first(), Some(&"accepted"), "{text}");
    assert_eq!(events.last(), Some(&"completed"), "{text}");
    assert!(events.contains(&"text_delta"), "{text}");

    let shown: serde_json::Value = setup
        .request("GET", &format!("/v1/sessions/{session}"), None, Tweak::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["messages"].as_array().unwrap().len(), 6);
    assert_eq!(shown["next_cursor"], serde_json::Value::Null, "{shown}");
    // Pages back from the latest, with the cursor each page gives.
    let page = |query: String| {
        let request = setup.request(
            "GET",
            &format!("/v1/sessions/{session}?{query}"),
            None,
            Tweak::default(),
        );
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let latest = page("limit=4".into()).await;
    let cursor = latest["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, ids(&latest)[0], "{latest}");
    let before = page(format!("limit=4&cursor={cursor}")).await;
    assert_eq!(before["next_cursor"], serde_json::Value::Null, "{before}");
    assert_eq!([ids(&before), ids(&latest)].concat(), ids(&shown));
    let problem = setup
        .expect_problem(
            setup.request(
                "GET",
                &format!("/v1/sessions/{session}?cursor=not-a-message"),
                None,
                Tweak::default(),
            ),
            400,
            "bad-request",
        )
        .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("is not a message of session"),
        "{problem}"
    );

    // Budget exhaustion over HTTP is 402 with the reset time.
    setup
        .daemon
        .ctl_json(&["config", "set", "budget.daily_usd", "0.000001"]);
    let body = serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": "costly"}]})).unwrap();
    let problem = setup
        .expect_problem(
            setup.request("POST", "/v1/chat/completions", Some(&body), Tweak::default()),
            402,
            "budget-exhausted",
        )
        .await;
    assert!(problem["detail"].as_str().unwrap().contains("until"), "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_refuse_oversized_bodies_slow_clients_and_floods() {
    let setup = setup(
        "[gateway]\nmax_body_bytes = 1024\nrequest_timeout_secs = 1\nidle_timeout_secs = 1\nrate_limit_per_minute = 3\n",
    )
    .await;
    let big = vec![b'x'; 4096];
    setup
        .expect_problem(
            setup.request("POST", "/v1/sessions", Some(&big), Tweak::default()),
            413,
            "body-too-large",
        )
        .await;

    // A request head over gateway.max_header_bytes (16 KiB by default) is refused.
    let cert = std::fs::read(setup.daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let http1 = reqwest::Client::builder()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .build()
        .unwrap();
    let huge = http1
        .get(format!("{}/health", setup.base))
        .header("x-padding", "p".repeat(64 * 1024))
        .send()
        .await;
    match huge {
        Ok(response) => assert_eq!(response.status(), 431),
        // The daemon answers 431 and closes after reading 16 KiB; a client still writing the rest
        // of its 64 KiB head may see the close (broken pipe, reset) before it reads the answer.
        // Either way the head was refused, not served.
        Err(error) => {
            let chain = format!("{error:?}");
            assert!(
                chain.contains("BrokenPipe") || chain.contains("ConnectionReset"),
                "{chain}"
            );
        }
    }

    // A slow client that never finishes its request head is disconnected.
    let address = setup.base.trim_start_matches("https://").to_owned();
    let connector = tls_connector(&setup, &[]);
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut tls = connector.connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buffer)).await;
    let closed_or_refused = match read {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(len)) => String::from_utf8_lossy(&buffer[..len]).starts_with("HTTP/1.1 408"),
        Err(_) => false,
    };
    assert!(closed_or_refused, "a client that stalls mid-request is dropped");
    assert!(started.elapsed() < Duration::from_secs(15));

    // A client that completes the handshake and then sends nothing does not keep its slot.
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut silent = connector.connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "an idle connection is closed by the server: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // Three requests a minute per key, then 429 with Retry-After.
    for _ in 0..3 {
        let response = setup
            .request("GET", "/v1/models", None, Tweak::default())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = setup
        .request("GET", "/v1/models", None, Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[test]
fn a_public_bind_needs_an_explicit_opt_in() {
    let dir = new_dir();
    let path = dir.path().join("public.toml");
    std::fs::write(&path, "[gateway]\nlisten = \"0.0.0.0:8443\"\n").unwrap();
    let output = std::process::Command::new(support::blufiod_bin())
        .args(["--check-config", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", support::describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.allow_public_bind"), "{stderr}");

    std::fs::write(
        &path,
        "[gateway]\nlisten = \"0.0.0.0:8443\"\nplain_http = true\nallow_public_bind = true\n",
    )
    .unwrap();
    let output = std::process::Command::new(support::blufiod_bin())
        .args(["--check-config", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "plain HTTP only on loopback: {}",
        support::describe(&output)
    );
}

fn write_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_certificates_reload_on_sighup_and_metrics_have_their_own_listener() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = new_dir();
    let tls_dir = dir.path().join("tls-files");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (cert, key) = write_certificate(&tls_dir);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!(
                "[gateway]\ncert_file = \"{}\"\nkey_file = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n",
                cert.display(),
                key.display()
            ),
            ..DaemonOptions::default()
        },
    );
    let fingerprint = || async {
        control(&daemon.socket)
            .await
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .gateway
            .unwrap()
            .tls_fingerprint_sha256
    };
    let before = fingerprint().await;

    let plain = reqwest::Client::new();
    let metrics = plain
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("process_resident_memory_bytes"));
    let other = plain
        .get(format!("http://127.0.0.1:{metrics_port}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "the metrics listener serves nothing else");

    // New files, then SIGHUP: new handshakes get the new certificate.
    write_certificate(&tls_dir);
    let notify = daemon.notify.clone().unwrap();
    let ready_before = notify.count(|message| message.lines().any(|line| line == "READY=1"));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + support::PATIENCE;
    while notify.count(|message| message.lines().any(|line| line == "READY=1")) == ready_before {
        assert!(std::time::Instant::now() < deadline, "no READY=1 after SIGHUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = fingerprint().await;
    assert_ne!(before, after, "the reloaded certificate is served");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_pressure_is_503_with_retry_after() {
    // A threshold of 1 % of 128 MiB is always exceeded, so every new turn meets memory pressure.
    let setup = setup("[memory]\nlimit_mib = 128\npressure_percent = 1\n").await;
    let body = serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
    let response = setup
        .request("POST", "/v1/chat/completions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("memory.limit_mib"),
        "{problem}"
    );
    assert_eq!(setup.fake.request_count(), 0);
    let status = control(&setup.daemon.socket)
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let memory = status.memory.unwrap();
    assert!(
        memory.rss_bytes * 100 > memory.limit_bytes && memory.allocated_bytes > 0,
        "{memory:?}"
    );
    // A change that raises the threshold is taken, even when it is not yet enough (a change that
    // lowers it below what the daemon uses is refused: new_user.rs).
    let raised = setup.daemon.ctl(&["config", "set", "memory.pressure_percent", "2"]);
    assert!(raised.status.success(), "{}", describe(&raised));
    // Status and /ready tell the truth about it.
    assert!(memory.under_pressure, "{memory:?}");
    let ready = setup.client.get(format!("{}/ready", setup.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(ready["problems"].to_string().contains("memory"), "{ready}");
    assert_eq!(memory.pressure, "limit", "{memory:?}");
    // At the limit the owner can still change anything else.
    let set = setup.daemon.ctl(&["config", "set", "log.level", "debug"]);
    assert!(set.status.success(), "{}", describe(&set));
    // New sessions are refused too, naming memory.
    let created = control(&setup.daemon.socket)
        .await
        .create_session(pb::CreateSessionRequest { title: "new".into() })
        .await
        .unwrap_err();
    assert_eq!(created.code(), tonic::Code::ResourceExhausted, "{created:?}");
    assert!(created.message().contains("memory.limit_mib"), "{created:?}");

    // Raising the limit relieves it at once: ready again, and turns pass.
    let set = setup.daemon.ctl(&["config", "set", "memory.limit_mib", "102400"]);
    assert!(set.status.success(), "{}", describe(&set));
    let ready = setup.client.get(format!("{}/ready", setup.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let response = setup
        .request("POST", "/v1/chat/completions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let memory = setup.daemon.ctl_json(&["status"])["memory"].clone();
    assert_ne!(memory["pressure"], "limit", "{memory}");
    assert!(
        setup.daemon.stderr().contains("new turns are accepted again"),
        "the way down is logged: {}",
        setup.daemon.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blufioctl_registers_a_device_and_talks_through_the_gateway() {
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: support::fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let key_file = daemon.dir.path().join("phone.pem");
    let added = daemon.ctl_json(&["device", "add", "phone", "--key-out", key_file.to_str().unwrap()]);
    assert_eq!(added["device"]["name"], "phone");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let status = daemon.ctl_json(&["status"]);
    let listen = status["gateway"]["listen"].as_str().unwrap().to_owned();
    let pin = status["gateway"]["tls_fingerprint_sha256"].as_str().unwrap().to_owned();
    assert!(
        status["gateway"]["problem"].is_null(),
        "a device is registered now: {status}"
    );

    let url = format!("https://{listen}");
    let remote = |args: &[&str]| {
        let mut full = vec![
            "remote",
            "--url",
            &url,
            "--key",
            key_file.to_str().unwrap(),
            "--pin",
            &pin,
        ];
        full.extend_from_slice(args);
        daemon.ctl(&full)
    };
    fake.push(Script::Text {
        text: "Remote hello.".into(),
        chunks: 2,
        usage: FakeUsage::default(),
    });
    let chat = remote(&["chat", "--json", "hello from afar"]);
    assert!(chat.status.success(), "{}", support::describe(&chat));
    let chat: serde_json::Value = serde_json::from_slice(&chat.stdout).unwrap();
    assert_eq!(chat["text"], "Remote hello.");
    let listed = remote(&["sessions", "list", "--json"]);
    assert!(listed.status.success(), "{}", support::describe(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);

    // The remote owner sees the same spend the local one does.
    let remote_usage = remote(&["usage", "--json", "--days", "7"]);
    assert!(remote_usage.status.success(), "{}", support::describe(&remote_usage));
    let remote_usage: serde_json::Value = serde_json::from_slice(&remote_usage.stdout).unwrap();
    let local_usage = daemon.ctl_json(&["usage", "--days", "7"]);
    assert_eq!(remote_usage, local_usage);
    assert_eq!(remote_usage["days"][0]["calls"], 1, "{remote_usage}");
    let human = remote(&["usage"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("top sessions"),
        "{}",
        support::describe(&human)
    );
    // And the part of the status that names nothing of the host.
    let remote_status = remote(&["status", "--json"]);
    assert!(remote_status.status.success(), "{}", support::describe(&remote_status));
    let remote_status: serde_json::Value = serde_json::from_slice(&remote_status.stdout).unwrap();
    let local_status = daemon.ctl_json(&["status"]);
    for key in ["state", "version", "sessions", "cost"] {
        assert_eq!(
            remote_status[key], local_status[key],
            "{key}: {remote_status} vs {local_status}"
        );
    }
    assert!(
        remote_status["memory"]["rss_bytes"].as_u64().unwrap() > 0,
        "{remote_status}"
    );
    for hidden in [
        "pid",
        "config_path",
        "socket_path",
        "state_dir",
        "subsystems",
        "database_path",
    ] {
        assert!(
            remote_status.get(hidden).is_none(),
            "{hidden} is the host's: {remote_status}"
        );
    }

    let devices = daemon.ctl_json(&["device", "list"]);
    assert!(devices["devices"][0]["last_used_at"].is_number(), "{devices}");

    // A wrong pin is refused before anything is sent, and a revoked key right after revocation.
    let wrong_pin = daemon.ctl(&[
        "remote",
        "--url",
        &format!("https://{listen}"),
        "--key",
        key_file.to_str().unwrap(),
        "--pin",
        &format!("{}AB", "AB:".repeat(31)),
        "sessions",
        "list",
    ]);
    assert_eq!(wrong_pin.status.code(), Some(3), "{}", support::describe(&wrong_pin));
    daemon.ctl_json(&["device", "revoke", "phone"]);
    let revoked = remote(&["sessions", "list"]);
    assert_eq!(revoked.status.code(), Some(1), "{}", support::describe(&revoked));
}

/// A TLS client that trusts the daemon's self-signed certificate and offers `alpn`.
fn tls_connector(setup: &Setup, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    let cert = std::fs::read(setup.daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&cert) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A raw TLS connection to the gateway, for requests that well-behaved clients never send.
async fn raw_tls(setup: &Setup) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(setup.base.trim_start_matches("https://"))
        .await
        .unwrap();
    tls_connector(setup, &[])
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `head` (and nothing more) on a fresh connection and returns what comes back within
/// `wait`: the first response, or the empty string.
async fn raw_exchange(setup: &Setup, head: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = raw_tls(setup).await;
    tls.write_all(head).await.unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
        if reply.windows(4).any(|window| window == b"\r\n\r\n") && reply.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// An HTTP/1.1 head with `headers`, then any extra raw header lines.
fn raw_head(method: &str, path: &str, host: &str, headers: &http::HeaderMap, extra: &str) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

fn rss_bytes(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_signature_is_refused_before_any_of_the_body_is_read() {
    let setup = setup("[gateway]\nrequest_timeout_secs = 60\nmax_body_bytes = 2000000\n").await;
    let body = vec![b'x'; 1_000_000];
    // The keyid is public (a fingerprint); the signature is made with a key that is not the
    // device's.
    let headers = setup.signed_headers(
        "POST",
        "/v1/chat/completions",
        Some(&body),
        Tweak {
            key: Some(SigningKey::from_bytes(&[9; 32])),
            ..Tweak::default()
        },
    );
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let head = raw_head(
        "POST",
        "/v1/chat/completions",
        &authority,
        &headers,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    // Only the head is sent: a daemon that waited for the body before checking the signature
    // would answer nothing until the request timeout.
    let reply = raw_exchange(&setup, head.as_bytes(), Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply:?}");
    assert!(reply.contains("signature-invalid"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_forged_bodies_does_not_grow_the_daemon() {
    let setup = setup("[gateway]\nmax_body_bytes = 2000000\nrate_limit_per_minute = 100000\n").await;
    let pid = setup.daemon.pid();
    let before = rss_bytes(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let cert = std::fs::read(setup.daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let url = format!("{}/v1/chat/completions", setup.base);
    let mut flood = Vec::new();
    // 8 HTTP/2 connections with 32 streams each, every stream under an all-zero signature for
    // the registered keyid, each sending 896 KiB of its body and then holding the stream open:
    // a daemon that read bodies before verifying would hold all of them at once.
    for _ in 0..8 {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .http2_prior_knowledge()
            .build()
            .unwrap();
        // One request first, so that the client has the daemon's SETTINGS (16 streams at once)
        // before it opens 32: streams opened beyond the limit before the SETTINGS arrive are
        // refused with REFUSED_STREAM, as RFC 9113 allows, and never reach the handler.
        let warm_up = client.get(format!("{}/v1/models", setup.base)).send().await.unwrap();
        assert_eq!(warm_up.status(), 401);
        for _ in 0..32 {
            let mut headers = setup.signed_headers("POST", "/v1/chat/completions", Some(b"{}"), Tweak::default());
            let input = headers["signature-input"].to_str().unwrap().to_owned();
            let label = input.split('=').next().unwrap().to_owned();
            let zero = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 64]);
            headers.insert("signature", format!("{label}=:{zero}:").parse().unwrap());
            let chunks = futures_util::stream::iter(
                (0..14).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 * 1024]))),
            )
            .chain(futures_util::stream::pending());
            let request = client
                .post(&url)
                .headers(headers)
                .body(reqwest::Body::wrap_stream(chunks));
            flood.push(tokio::spawn(async move {
                request.send().await.map(|response| response.status().as_u16()).ok()
            }));
        }
    }
    // Wait for the flood to be answered (on a loaded machine that takes longer than on an idle
    // one), then count the answers that came.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while flood.iter().filter(|request| request.is_finished()).count() < 200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = 0;
    for request in flood {
        if request.is_finished() {
            if let Some(status) = request.await.unwrap() {
                assert_eq!(status, 401);
                refused += 1;
            }
        } else {
            request.abort();
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(
        refused >= 200,
        "the forged requests got their 401 at once: {refused} of 256"
    );
    let growth = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    // The flood offered 224 MiB of bodies; none of it may be buffered.
    assert!(growth < 48 * 1024 * 1024, "RSS grew by {} MiB", growth / (1024 * 1024));
    // And good requests still pass.
    let response = setup
        .request("GET", "/v1/models", None, Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_device_cannot_fill_the_replay_cache_for_the_others() {
    let setup = setup("[gateway]\nrate_limit_per_minute = 10\nreplay_cache_entries = 50\n").await;
    // Two shares (10 a minute over the nonce lifetime: 117) do not fit in 50 entries: the owner
    // is told at startup that a busy device could lock the others out.
    let logged = setup.daemon.stderr();
    assert!(logged.contains("could lock the others out"), "{logged}");
    let other = SigningKey::from_bytes(&[7; 32]);
    let other_keyid = control(&setup.daemon.socket)
        .await
        .add_device(pb::AddDeviceRequest {
            name: "phone".into(),
            public_key_pem: httpsig::verifying_key_to_pem(&other.verifying_key()).unwrap(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap()
        .keyid;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = std::time::Instant::now();
    for _ in 0..80 {
        let response = setup
            .request("GET", "/v1/models", None, Tweak::default())
            .send()
            .await
            .unwrap();
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    // A burst of 10, then one more every 6 s: on a loaded machine the 80 requests can take
    // long enough for the bucket to refill.
    let refilled = usize::try_from(started.elapsed().as_secs() / 6).unwrap();
    let passed = statuses.get(&200).copied().unwrap_or(0);
    assert!(
        (10..=10 + refilled).contains(&passed),
        "{statuses:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(statuses.get(&429).copied().unwrap_or(0), 80 - passed, "{statuses:?}");
    let response = setup
        .request(
            "GET",
            "/v1/models",
            None,
            Tweak {
                key: Some(other),
                keyid: Some(other_keyid),
                ..Tweak::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_unauthenticated_connections_cannot_lock_out_a_signed_client() {
    let setup = setup("[gateway]\nmax_connections = 8\nidle_timeout_secs = 600\n").await;
    // Every slot taken by connections that finished the handshake and then sit idle.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(raw_tls(&setup).await);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(8),
        setup.request("GET", "/v1/models", None, Tweak::default()).send(),
    )
    .await
    .expect("a signed client gets a slot")
    .unwrap();
    assert_eq!(response.status(), 200);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_a_bounded_share_of_the_connections() {
    /// Opens `count` connections from 127.0.0.1 and tells, for each of `probe`, whether the
    /// gateway closed it at once.
    async fn closed(setup: &Setup, count: usize, probe: &[usize]) -> Vec<bool> {
        use tokio::io::AsyncReadExt as _;
        let address = setup.base.trim_start_matches("https://").to_owned();
        let mut held = Vec::new();
        for _ in 0..count {
            held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
        }
        let mut closed = Vec::new();
        for &index in probe {
            let mut buffer = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(2), held[index].read(&mut buffer)).await;
            closed.push(matches!(read, Ok(Ok(0) | Err(_))));
        }
        closed
    }
    // One address holds at most 32 connections by default: a 33rd takes the place of the oldest
    // of them that has sent nothing.
    let default = setup("[gateway]\nmax_connections = 100\n").await;
    assert_eq!(closed(&default, 33, &[0, 1, 32]).await, [true, false, false]);
    drop(default);
    // Behind a reverse proxy on this machine every client comes from its address: the share is
    // configured (reported: a proxy's 33rd client was locked out).
    let proxied = setup("[gateway]\nmax_connections = 100\nmax_connections_per_address = 48\n").await;
    assert_eq!(closed(&proxied, 49, &[0, 1, 48]).await, [true, false, false]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_idle_connections_from_the_clients_address_does_not_lock_it_out() {
    // Reported (attack on b52db2a): 40 idle connections from 127.0.0.1, reopened as soon as the
    // gateway closed them, refused every signed request from that address while they ran.
    let setup = setup("[gateway]\nmax_connections = 100\n").await;
    let address = setup.base.trim_start_matches("https://").to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            // Every connection is kept open by the flood (the gateway closes some), and new ones
            // keep coming, up to 1,000.
            let mut held = Vec::new();
            while !stop.is_cancelled() && held.len() < 1_000 {
                if let Ok(stream) = tokio::net::TcpStream::connect(&address).await {
                    held.push(stream);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            held.len()
        }
    });
    // The flood holds the address's share before the client comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let response = tokio::time::timeout(
            Duration::from_secs(8),
            setup.request("GET", "/v1/models", None, Tweak::default()).send(),
        )
        .await
        .expect("a signed client gets through the flood")
        .expect("a signed client's connection is not refused or evicted");
        assert_eq!(response.status(), 200);
    }
    stop.cancel();
    let opened = flood.await.unwrap();
    assert!(opened > 40, "the flood opened {opened} connections, past the share");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_for_other_hosts_and_ambiguous_heads_are_refused() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = setup(&format!(
        "[gateway]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nserver_names = [\"agent.example\"]\n"
    ))
    .await;
    let authority = setup.base.trim_start_matches("https://").to_owned();

    // Signed for, and sent to, another host: a capture from another daemon with this device key.
    let evil = setup.signed_headers(
        "GET",
        "/v1/models",
        None,
        Tweak {
            authority: Some("evil.example".into()),
            ..Tweak::default()
        },
    );
    let reply = raw_exchange(
        &setup,
        raw_head("GET", "/v1/models", "evil.example", &evil, "").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 421"), "{reply}");
    // The same in absolute form.
    let reply = raw_exchange(
        &setup,
        raw_head("GET", "https://evil.example/v1/models", "evil.example", &evil, "").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 421") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    // A configured name passes.
    let named = setup.signed_headers(
        "GET",
        "/v1/models",
        None,
        Tweak {
            authority: Some("agent.example".into()),
            ..Tweak::default()
        },
    );
    let reply = raw_exchange(
        &setup,
        raw_head("GET", "/v1/models", "agent.example", &named, "").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Two Host headers, and Transfer-Encoding spellings other than "chunked".
    let good = setup.signed_headers("GET", "/v1/models", None, Tweak::default());
    let reply = raw_exchange(
        &setup,
        raw_head(
            "GET",
            "/v1/models",
            &authority,
            &good,
            &format!("Host: {authority}\r\n"),
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    for encoding in ["identity, chunked", " Chunked\t"] {
        let body = b"{}";
        let headers = setup.signed_headers("POST", "/v1/sessions", Some(body), Tweak::default());
        let mut head = raw_head(
            "POST",
            "/v1/sessions",
            &authority,
            &headers,
            &format!("Transfer-Encoding:{encoding}\r\n"),
        );
        head.push_str("2\r\n{}\r\n0\r\n\r\n");
        let reply = raw_exchange(&setup, head.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{encoding:?}: {reply}");
    }
    // Two Content-Digest lines: the signature covers both, only one could be compared.
    let body = b"{}";
    let headers = setup.signed_headers("POST", "/v1/sessions", Some(body), Tweak::default());
    let mut head = raw_head(
        "POST",
        "/v1/sessions",
        &authority,
        &headers,
        "Content-Length: 2\r\nContent-Digest: sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:\r\n",
    );
    head.push_str("{}");
    let reply = raw_exchange(&setup, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("content-digest"), "{reply}");

    // The plain-HTTP metrics listener answers only to its own names (DNS rebinding).
    let metrics = |host: &str| {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        stream
            .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(metrics("rebound.evil.example").starts_with("HTTP/1.1 421"));
    assert!(metrics(&format!("127.0.0.1:{metrics_port}")).starts_with("HTTP/1.1 200"));

    // Keep-alive connections cannot hold the metrics listener's slots: each is closed after its
    // one answer, and a scraper still gets in. A full set of requests that arrives just after
    // other answers is served whole: a slot that is about to free itself is waited for, never
    // taken from a connection whose request is already on its way.
    for round in 0..8 {
        let mut holders = Vec::new();
        for _ in 0..16 {
            use std::io::Write as _;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
            stream
                .write_all(format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{metrics_port}\r\n\r\n").as_bytes())
                .unwrap();
            holders.push(stream);
        }
        for stream in &mut holders {
            use std::io::Read as _;
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reply = Vec::new();
            let read = stream.read_to_end(&mut reply);
            assert!(
                read.is_ok(),
                "round {round}: the server dropped or kept a metrics connection: {read:?}"
            );
            assert!(
                reply.starts_with(b"HTTP/1.1 200"),
                "round {round}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        assert!(metrics(&format!("127.0.0.1:{metrics_port}")).starts_with("HTTP/1.1 200"));
    }
    // Nor can silent connections: at the cap the oldest one that has not spoken makes room.
    let silent: Vec<_> = (0..16)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(metrics(&format!("127.0.0.1:{metrics_port}")).starts_with("HTTP/1.1 200"));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn live_gateway_keys_apply_to_a_running_daemon() {
    let setup = setup("").await;
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let padded = |bytes: usize| {
        format!(
            "GET /health HTTP/1.1\r\nHost: {authority}\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(bytes)
        )
    };
    let reply = raw_exchange(&setup, padded(12 * 1024).as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "12 KiB of header fit the default 16 KiB: {reply}"
    );
    let set = setup
        .daemon
        .ctl_json(&["config", "set", "gateway.max_header_bytes", "8192"]);
    assert_eq!(set["restart_required"], serde_json::json!([]), "{set}");
    let reply = raw_exchange(&setup, padded(12 * 1024).as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "the lowered limit applies: {reply}");

    // The idle timeout of an authenticated connection follows the live value.
    setup
        .daemon
        .ctl_json(&["config", "set", "gateway.idle_timeout_secs", "1"]);
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = raw_tls(&setup).await;
    let headers = setup.signed_headers("GET", "/v1/models", None, Tweak::default());
    tls.write_all(raw_head("GET", "/v1/models", &authority, &headers, "").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let n = tls.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle authenticated connection is closed");
    // Well before the default of 60 s: the value set live was used.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // A body over the lowered limit is refused.
    let body = vec![b'x'; 4096];
    let created = setup
        .request("POST", "/v1/sessions", Some(b"{}"), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let accepted = setup
        .request("POST", "/v1/sessions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_ne!(accepted.status(), 413, "4 KiB fit the default limit");
    setup
        .daemon
        .ctl_json(&["config", "set", "gateway.max_body_bytes", "1024"]);
    setup
        .expect_problem(
            setup.request("POST", "/v1/sessions", Some(&body), Tweak::default()),
            413,
            "body-too-large",
        )
        .await;

    // A head sent too slowly is cut off at the lowered time limit (the default is 30 s).
    setup
        .daemon
        .ctl_json(&["config", "set", "gateway.request_timeout_secs", "1"]);
    let mut slow = raw_tls(&setup).await;
    slow.write_all(format!("GET /health HTTP/1.1\r\nHost: {authority}\r\n").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(25), slow.read(&mut buffer)).await;
    assert!(read.is_ok(), "the slow client was dropped");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // A new name is served at once.
    let named = |host: &str| format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let reply = raw_exchange(&setup, named("agent.example").as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 421"), "{reply}");
    setup
        .daemon
        .ctl_json(&["config", "set", "gateway.server_names", "[\"agent.example\"]"]);
    let reply = raw_exchange(&setup, named("agent.example").as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Metrics close behind a token set live.
    let metrics = |token: Option<&str>| {
        let mut request = setup.client.get(format!("{}/metrics", setup.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(metrics(None).await.unwrap().status(), 200);
    let stored = setup
        .daemon
        .ctl_input(&["config", "set-secret", "metrics"], b"a-long-metrics-token\n");
    assert!(stored.status.success(), "{}", describe(&stored));
    setup
        .daemon
        .ctl_json(&["config", "set", "gateway.metrics_token", "secret:metrics"]);
    assert_eq!(metrics(None).await.unwrap().status(), 401);
    assert_eq!(metrics(Some("a-long-metrics-token")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_no_answers_cannot_hold_its_connection() {
    let setup = setup("").await;
    // HTTP/2 over TLS, announcing a stream window of 0: the daemon can send the headers of its
    // answers but none of their bodies.
    let tls = {
        let tcp = tokio::net::TcpStream::connect(setup.base.trim_start_matches("https://"))
            .await
            .unwrap();
        tls_connector(&setup, &[b"h2"])
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let connection = tokio::spawn(connection);
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let long_path = format!("/x{}", "A".repeat(15_000));
    let mut answers = Vec::new();
    for _ in 0..32 {
        let request = http::Request::builder()
            .uri(format!("https://{authority}{long_path}"))
            .body(())
            .unwrap();
        let Ok((answer, _)) = client.send_request(request, true) else {
            break;
        };
        answers.push(answer);
    }
    // The answers are 404s whose bodies are stuck behind the closed window; their documents
    // quote at most 100 bytes of the path.
    let first = answers.remove(0).await.unwrap();
    assert_eq!(first.status(), 404);
    let length: usize = first.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(length < 1024, "a 15 KB path made a {length}-byte answer");
    // The unsigned connection is closed after its idle time and a short grace, however many
    // answers it leaves unread.
    let closed = tokio::time::timeout(Duration::from_secs(40), connection).await;
    assert!(closed.is_ok(), "the connection was still open after 40 s");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "closed only after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_from_other_networks_does_not_evict_a_slow_signed_client() {
    let setup = setup("[gateway]\nmax_connections = 16\nrate_limit_per_minute = 1000\n").await;
    let address: std::net::SocketAddr = setup.base.trim_start_matches("https://").parse().unwrap();
    // Bare connections from two other networks (127.1.0.0/24 and 127.2.0.0/24; all of 127/8 is
    // loopback), about 500 a second, each held until the daemon closes it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut held = std::collections::VecDeque::new();
            let mut n: u32 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let source = std::net::Ipv4Addr::new(
                    127,
                    1 + u8::try_from(n % 2).unwrap(),
                    0,
                    1 + u8::try_from((n / 2) % 30).unwrap(),
                );
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                if socket.bind((source, 0).into()).is_ok()
                    && let Ok(stream) = socket.connect(address).await
                {
                    held.push_back(stream);
                    if held.len() > 200 {
                        held.pop_front();
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A signed client on a slow network: 300 ms between connecting and its TLS handshake.
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let mut answered = 0;
    for _ in 0..5 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let connector = tls_connector(&setup, &[]);
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(mut tls) = connector.connect("127.0.0.1".try_into().unwrap(), tcp).await else {
            continue;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let headers = setup.signed_headers("GET", "/v1/models", None, Tweak::default());
        if tls
            .write_all(raw_head("GET", "/v1/models", &authority, &headers, "Connection: close\r\n").as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
        if reply.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.await.unwrap();
    assert_eq!(answered, 5, "the signed client was evicted by the flood");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_cost_nothing_and_unknown_routes_learn_nothing() {
    let setup = setup("[gateway]\nrate_limit_per_minute = 3\n").await;
    // An unsigned request to a route that does not exist is refused like any other /v1/ one.
    let unknown = setup.client.get(format!("{}/v1/no-such-route", setup.base));
    setup.expect_problem(unknown, 401, "signature-missing").await;
    // Forged signatures under the device's (public) keyid use none of its quota.
    for _ in 0..10 {
        let forged = setup.request(
            "GET",
            "/v1/models",
            None,
            Tweak {
                key: Some(SigningKey::from_bytes(&[9; 32])),
                ..Tweak::default()
            },
        );
        setup.expect_problem(forged, 401, "signature-invalid").await;
    }
    for _ in 0..3 {
        let response = setup
            .request("GET", "/v1/models", None, Tweak::default())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nonce_is_remembered_for_twice_the_clock_skew() {
    let setup = setup("[gateway]\nmax_clock_skew_secs = 5\n").await;
    // A signature with this nonce could be made to pass the skew check until 10 s after it was
    // accepted (created up to 5 s ahead, checked up to 5 s late): the nonce must be refused that
    // long. Probe it after 6 s, past one skew window but well within two.
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    let with_nonce = || {
        setup.request(
            "GET",
            "/v1/models",
            None,
            Tweak {
                nonce: Some(nonce.clone()),
                ..Tweak::default()
            },
        )
    };
    let accepted_at = now();
    assert_eq!(with_nonce().send().await.unwrap().status(), 200);
    while now() < accepted_at + 6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.expect_problem(with_nonce(), 401, "signature-replayed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_token_and_the_connection_cap_are_enforced() {
    let setup = setup("[gateway]\nmetrics_token = \"scrape-me-scrape-me\"\nmax_connections = 2\n").await;
    let url = format!("{}/metrics", setup.base);
    let refused = setup.client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = setup.client.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let prefix = setup.client.get(&url).bearer_auth("scrape-me").send().await.unwrap();
    assert_eq!(prefix.status(), 401, "a prefix of the token is not the token");
    let scraped = setup
        .client
        .get(&url)
        .header("authorization", "bearer scrape-me-scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200, "the scheme is case-insensitive");
    assert!(scraped.text().await.unwrap().contains("blufio_gateway_requests_total"));
    // Two authenticated connections fill the cap; a third connection is closed at once.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = raw_tls(&setup).await;
        let headers = setup.signed_headers("GET", "/v1/models", None, Tweak::default());
        tls.write_all(raw_head("GET", "/v1/models", &authority, &headers, "").as_bytes())
            .await
            .unwrap();
        let mut buffer = vec![0u8; 16 * 1024];
        let n = tls.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(tls);
    }
    let mut third = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a connection over the cap: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_events_reach_the_metrics() {
    let setup = setup("").await;
    setup.fake.push(Script::text("counted", 2));
    setup.daemon.ctl_json(&["chat", "hello"]);
    let metrics = setup
        .client
        .get(format!("{}/metrics", setup.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "blufio_events_total{event=\"ready\"} 1",
        "blufio_events_total{event=\"device_added\"} 1",
        "blufio_events_total{event=\"turn_finished\"} 1",
        "blufio_events_dropped_total 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_requests_do_not_keep_a_connection_alive() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let setup = setup("").await;
    let authority = setup.base.trim_start_matches("https://").to_owned();
    let mut tls = raw_tls(&setup).await;
    let started = std::time::Instant::now();
    let mut buffer = vec![0u8; 16 * 1024];
    // A keep-alive client asking an open route every 2 s, never signing anything.
    let closed_after = loop {
        let asked = tls
            .write_all(format!("GET /health HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await;
        let answered = match asked {
            Ok(()) => tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buffer)).await,
            Err(_) => break started.elapsed(),
        };
        match answered {
            Ok(Ok(n)) if n > 0 => {}
            _ => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the connection was never closed"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // 10 s of unauthenticated life, checked each second.
    assert!(
        closed_after < Duration::from_secs(25),
        "closed only after {closed_after:?}"
    );
}

/// The status code each kind of agent failure gets through the control socket and through the
/// gateway: one contract, checked on the real daemon through both transports.
#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_failure_maps_to_one_grpc_code_and_one_http_status() {
    // Under memory pressure from the start (a threshold of 1 % of 128 MiB); a running daemon
    // refuses to be put there, so the memory kind is tested first and then relieved.
    let setup = setup("[memory]\nlimit_mib = 128\npressure_percent = 1\n").await;
    let mut control = control(&setup.daemon.socket).await;
    /// The gRPC code of a turn: the call's error, or the stream's first error.
    async fn turn_code(
        control: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
        session_id: &str,
        text: &str,
    ) -> tonic::Code {
        let request = pb::SendMessageRequest {
            session_id: session_id.to_owned(),
            text: text.to_owned(),
        };
        match control.send_message(request).await {
            Err(status) => status.code(),
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Err(status) => return status.code(),
                        Ok(None) => return tonic::Code::Ok,
                        Ok(Some(_)) => {}
                    }
                }
            }
        }
    }
    let http_status = |method: &'static str, path: String, body: Option<Vec<u8>>| {
        let request = setup.request(method, &path, body.as_deref(), Tweak::default());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let turn = |text: &str| serde_json::to_vec(&serde_json::json!({"text": text})).unwrap();

    // session_not_found: NOT_FOUND and 404.
    let code = control
        .get_session(pb::GetSessionRequest {
            id: "no-such-session".into(),
            message_limit: 0,
            cursor: String::new(),
        })
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, tonic::Code::NotFound);
    assert_eq!(
        http_status("GET", "/v1/sessions/no-such-session".into(), None).await,
        404
    );
    // invalid_message: INVALID_ARGUMENT and 400 (checked before the session is looked up, and
    // before memory: no session can be created at the memory limit).
    assert_eq!(turn_code(&mut control, "kinds", "").await, tonic::Code::InvalidArgument);
    assert_eq!(
        http_status("POST", "/v1/sessions/kinds/messages".into(), Some(turn(""))).await,
        400
    );

    // memory_pressure: RESOURCE_EXHAUSTED and 503, for turns and new sessions; then relieved for
    // the kinds that follow.
    assert_eq!(
        turn_code(&mut control, "kinds", "big").await,
        tonic::Code::ResourceExhausted
    );
    assert_eq!(
        http_status("POST", "/v1/sessions/kinds/messages".into(), Some(turn("big"))).await,
        503
    );
    assert_eq!(
        http_status("POST", "/v1/sessions".into(), Some(b"{}".to_vec())).await,
        503
    );
    setup.daemon.ctl_json(&["config", "set", "memory.limit_mib", "0"]);
    let session = control
        .create_session(pb::CreateSessionRequest { title: "kinds".into() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    let path = format!("/v1/sessions/{session}/messages");

    // session_not_found for a message: NOT_FOUND and 404. The transaction that would store it
    // refuses it (no read comes first); an id far longer than any is refused before that.
    let long = "x".repeat(300);
    for missing in ["no-such-session", long.as_str()] {
        assert_eq!(turn_code(&mut control, missing, "hello").await, tonic::Code::NotFound);
        assert_eq!(
            http_status("POST", format!("/v1/sessions/{missing}/messages"), Some(turn("hello"))).await,
            404
        );
    }

    // budget_exhausted: RESOURCE_EXHAUSTED and 402.
    setup
        .daemon
        .ctl_json(&["config", "set", "budget.daily_usd", "0.000001"]);
    assert_eq!(
        turn_code(&mut control, &session, "costly").await,
        tonic::Code::ResourceExhausted
    );
    assert_eq!(http_status("POST", path.clone(), Some(turn("costly"))).await, 402);
    setup.daemon.ctl_json(&["config", "set", "budget.daily_usd", "0"]);

    // provider_failed: UNAVAILABLE and 502.
    setup.fake.push(Script::HttpError {
        status: 400,
        message: "bad request".into(),
        retry_after_secs: None,
    });
    assert_eq!(
        turn_code(&mut control, &session, "fail").await,
        tonic::Code::Unavailable
    );
    setup.fake.push(Script::HttpError {
        status: 400,
        message: "bad request".into(),
        retry_after_secs: None,
    });
    let failed = setup
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": "fail"}]})).unwrap()),
            Tweak::default(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status().as_u16(), 502);
}

/// Finding (attack of 2026-12-01): a full replay cache answered `Retry-After: 5`, although no
/// room comes back before its oldest bucket expires, minutes later: clients retried in vain.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_replay_cache_says_when_room_comes_back() {
    let setup = setup("[gateway]\nreplay_cache_entries = 2\nrate_limit_per_minute = 1000\n").await;
    let (retry_after, body) = fill_the_replay_cache(&setup, 2).await;
    // The nonces live twice the default skew (600 s) and up to a bucket (38 s) longer.
    assert!((590..=640).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(
        body.contains("replay-cache-full") && body.contains("room comes back in"),
        "{body}"
    );
}

/// Sends `room` fresh signed requests, each accepted, then one more that a full replay cache
/// refuses; returns that refusal's `Retry-After` and body.
async fn fill_the_replay_cache(setup: &Setup, room: usize) -> (u64, String) {
    for _ in 0..room {
        let response = setup
            .request("GET", "/v1/models", None, Tweak::default())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let refused = setup
        .request("GET", "/v1/models", None, Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let retry_after = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    (retry_after, refused.text().await.unwrap())
}

/// Finding (attack of 2026-12-01): the replay cache lived only in memory, so a signed request
/// captured before a restart was accepted once more after it. Nonces now outlive the process.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_captured_before_a_restart_is_refused_after_it() {
    let listen = free_listen_address();
    let mut setup = setup_on("", Some(&listen)).await;
    let headers = setup.signed_headers("GET", "/v1/models", None, Tweak::default());
    let url = format!("{}/v1/models", setup.base);
    let send = |client: &reqwest::Client| client.get(&url).headers(headers.clone()).send();
    assert_eq!(send(&setup.client).await.unwrap().status(), 200);
    let again = send(&setup.client).await.unwrap();
    assert_eq!(again.status(), 401);
    assert!(again.text().await.unwrap().contains("signature-replayed"));

    // The same daemon, stopped and started again on its state directory and port.
    assert!(setup.daemon.stop().success());
    let daemon = restart(&setup, &listen, "", true);
    let replayed = send(&setup.client).await.unwrap();
    assert_eq!(
        replayed.status(),
        401,
        "a captured request was accepted after the restart"
    );
    assert!(replayed.text().await.unwrap().contains("signature-replayed"));
    // A fresh request from the same device still gets in.
    let fresh = setup
        .request("GET", "/v1/models", None, Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    drop(daemon);
}

/// Finding: `run_command` ran programs as the daemon's own user for whoever could chat, a paired
/// device included (one stolen device key was a shell as the daemon). A device's turns are not
/// offered it, and a call the model makes anyway is refused, on both chat routes.
#[tokio::test(flavor = "multi_thread")]
async fn a_devices_turns_are_not_offered_run_command() {
    let echo = ["/bin/echo", "/usr/bin/echo"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("echo exists");
    let setup = setup(&format!("[tools.run_command]\nenabled = true\nallow = [\"{echo}\"]\n")).await;
    let input = serde_json::json!({"program": echo, "args": ["ran as the daemon"]});
    let refused_result = |request: &serde_json::Value| {
        let last = request["messages"].as_array().unwrap().last().unwrap().clone();
        let block = &last["content"][0];
        assert_eq!(block["type"], "tool_result", "{last}");
        assert_eq!(block["is_error"], true, "{last}");
        let content = block["content"].as_str().unwrap();
        assert!(content.contains("tools.run_command.callers"), "{content}");
        assert!(!content.contains("ran as the daemon"), "{content}");
    };

    // The OpenAI-style route.
    let first = setup.fake.request_count();
    setup
        .fake
        .push(Script::tool_use("toolu_0", "run_command", input.clone()));
    setup.fake.push(Script::text("done", 1));
    let body = serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": "run it"}]})).unwrap();
    let response = setup
        .request("POST", "/v1/chat/completions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["blufio-session"].to_str().unwrap().to_owned();
    let _ = response.bytes().await.unwrap();
    let requests = setup.fake.requests();
    assert_eq!(requests.len(), first + 2, "a tool round and the answer");
    assert!(
        !requests[first].tool_names().contains(&"run_command".to_owned()),
        "{}",
        requests[first].body
    );
    refused_result(&requests[first + 1].body);

    // The native route, on the same session.
    setup.fake.push(Script::tool_use("toolu_1", "run_command", input));
    setup.fake.push(Script::text("done", 1));
    let path = format!("/v1/sessions/{session}/messages");
    let body = br#"{"text": "run it again"}"#;
    let response = setup
        .request("POST", &path, Some(body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await.unwrap();
    let requests = setup.fake.requests();
    assert_eq!(requests.len(), first + 4);
    assert!(!requests[first + 2].tool_names().contains(&"run_command".to_owned()));
    refused_result(&requests[first + 3].body);

    // The owner's turns still get it.
    setup.fake.push(Script::text("noon", 1));
    let chat = setup
        .daemon
        .ctl_json(&["chat", "--session", &session, "what is the time"]);
    assert_eq!(setup.fake.requests().len(), first + 5, "{chat}");
    assert!(
        setup.fake.requests()[first + 4]
            .tool_names()
            .contains(&"run_command".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_take_the_whole_conversation_or_the_session_history() {
    let setup = setup("").await;
    // Without a session header, the request's messages are the whole conversation.
    let body = serde_json::to_vec(&serde_json::json!({"messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]}))
    .unwrap();
    let response = setup
        .request("POST", "/v1/chat/completions", Some(&body), Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["blufio-session"].to_str().unwrap().to_owned();
    let sent = setup.fake.requests().pop().unwrap().body;
    let messages: Vec<(String, String)> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap().to_owned(),
                message["content"][0]["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            ("user".to_owned(), "My name is Ada.".to_owned()),
            ("assistant".to_owned(), "Hello Ada.".to_owned()),
            ("user".to_owned(), "What is my name?".to_owned()),
        ],
        "{sent}"
    );
    let system = sent["system"][0]["text"].as_str().unwrap();
    assert!(
        system.ends_with("\n\nAnswer in French."),
        "the daemon's prompt comes first: {system}"
    );
    assert!(system.len() > "\n\nAnswer in French.".len(), "{system}");
    // The conversation is a session, and the ledger has the call.
    let shown = setup.daemon.ctl_json(&["sessions", "show", &session]);
    assert_eq!(shown["messages"].as_array().unwrap().len(), 4, "{shown}");
    let usage = setup.daemon.ctl_json(&["usage"]);
    assert_eq!(usage["sessions"][0]["session_id"], session.as_str(), "{usage}");
    // The call is counted: tokens by type, spend, outcome and latency, under the configured model.
    let text = setup
        .client
        .get(format!("{}/metrics", setup.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "blufio_provider_requests_total{model=\"fake-model\",outcome=\"ok\",provider=\"anthropic\"} 1",
        "blufio_response_latency_seconds_count{model=\"fake-model\"} 1",
        "blufio_tokens_total{model=\"fake-model\",type=\"input\"} ",
        "blufio_tokens_total{model=\"fake-model\",type=\"cache_write\"} ",
        "blufio_cost_usd_total{model=\"fake-model\"} ",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let output_tokens: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("blufio_tokens_total{model=\"fake-model\",type=\"output\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(output_tokens > 0, "{text}");

    // With the header, the stored history is the conversation and the new messages follow it.
    let body = serde_json::to_vec(&serde_json::json!({"messages": [
        {"role": "user", "content": "ignored: the session has its own history"},
        {"role": "assistant", "content": "ignored too"},
        {"role": "user", "content": "And my age?"},
    ]}))
    .unwrap();
    let response = setup
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&body),
            Tweak {
                session: Some(session.clone()),
                cover_session: true,
                ..Tweak::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = setup.fake.requests().pop().unwrap().body;
    let texts: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["content"][0]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts.len(), 5, "{sent}");
    assert_eq!(texts[0], "My name is Ada.");
    assert_eq!(texts[4], "And my age?");
    assert!(!sent.to_string().contains("ignored"), "{sent}");

    // Tool results from the client have no place here, and the last message must be the owner's.
    for messages in [
        serde_json::json!([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]),
        serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({ "messages": messages })).unwrap();
        setup
            .expect_problem(
                setup.request("POST", "/v1/chat/completions", Some(&body), Tweak::default()),
                400,
                "bad-request",
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_listing_pages_with_limit_and_cursor_and_a_new_session_has_no_model() {
    let setup = setup("").await;
    for title in ["one", "two", "three"] {
        let body = serde_json::to_vec(&serde_json::json!({ "title": title })).unwrap();
        let created: serde_json::Value = setup
            .request("POST", "/v1/sessions", Some(&body), Tweak::default())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(created["model"].is_null(), "{created}");
    }
    let page = |query: String| {
        let request = setup.request("GET", &format!("/v1/sessions{query}"), None, Tweak::default());
        async move { request.send().await.unwrap() }
    };
    let first: serde_json::Value = page("?limit=2".into()).await.json().await.unwrap();
    assert_eq!(first["sessions"].as_array().unwrap().len(), 2, "{first}");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second: serde_json::Value = page(format!("?limit=2&cursor={}", cursor.replace(':', "%3A")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["sessions"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["sessions"][0]["title"], "one", "{second}");
    for bad in ["?limit=", "?limit=0", "?limit=9999", "?page=2"] {
        let response = page(bad.into()).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_signed_and_its_days_checked() {
    let setup = setup("").await;
    for path in ["/v1/usage", "/v1/status"] {
        let unsigned = setup.client.get(format!("{}{path}", setup.base)).send().await.unwrap();
        assert_eq!(unsigned.status(), 401, "{path}");
    }
    let ok = setup
        .request("GET", "/v1/usage?days=7", None, Tweak::default())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let report: serde_json::Value = ok.json().await.unwrap();
    assert!(report["cost"]["daily_cap_usd"].is_number(), "{report}");
    for bad in ["?days=0", "?days=367", "?days=", "?week=1"] {
        let response = setup
            .request("GET", &format!("/v1/usage{bad}"), None, Tweak::default())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}

/// An address of this machine that is not loopback (the source address of a route outward; a UDP
/// `connect` sends nothing).
fn non_loopback_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a non-loopback IPv4 address with a route on this machine");
    let address = socket.local_addr().unwrap().ip();
    assert!(!address.is_loopback(), "{address}");
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_without_a_token_answer_only_this_machine() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "[gateway]\nallow_public_bind = true\n".into(),
            env: vec![("BLUFIO_GATEWAY__LISTEN".into(), "0.0.0.0:0".into())],
            ..DaemonOptions::default()
        },
    );
    let listen = daemon.ctl_json(&["status"])["gateway"]["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let port: u16 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    let cert = std::fs::read(daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    // The certificate names localhost: reach it as localhost, from either address.
    let client_via = |address: std::net::IpAddr| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .resolve("localhost", std::net::SocketAddr::new(address, port))
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{port}/metrics");
    let remote = client_via(non_loopback_address());
    let refused = remote.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("metrics-token-required"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("gateway.metrics_token"),
        "{problem}"
    );
    let local = client_via(std::net::IpAddr::from([127, 0, 0, 1]));
    let served = local.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200, "this machine may scrape without a token");
    // A relayed request is not this machine's, even from loopback.
    let relayed = local
        .get(&url)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), 403);

    // With a token, another host may scrape with it.
    let stored = daemon.ctl_input(&["config", "set-secret", "metrics"], b"scrape-secret-0123");
    assert!(stored.status.success(), "{}", describe(&stored));
    let set = daemon.ctl(&["config", "set", "gateway.metrics_token", "secret:metrics"]);
    assert!(set.status.success(), "{}", describe(&set));
    let without = remote.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let with = remote.get(&url).bearer_auth("scrape-secret-0123").send().await.unwrap();
    assert_eq!(with.status(), 200);
    assert!(with.text().await.unwrap().contains("blufio_build_info"));

    // Behind a reverse proxy every peer is the proxy: loopback proves nothing there.
    let proxied = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "[gateway]\nplain_http = true\n".into(),
            ..DaemonOptions::default()
        },
    );
    let listen = proxied.ctl_json(&["status"])["gateway"]["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = reqwest::get(format!("http://{listen}/metrics")).await.unwrap();
    assert_eq!(refused.status(), 403);
}

/// A client that never reads (an HTTP/2 window of 0) holds every stream it opens; the gateway
/// lets one connection open 16 at once, so that slow scrapers cannot make it hold much.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_opens_at_most_16_streams() {
    let setup = setup("").await;
    let cert = std::fs::read(setup.daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(0)
        .build()
        .unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..24 {
        let (client, url, answered) = (client.clone(), format!("{}/metrics", setup.base), answered.clone());
        held.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Held unread: the stream stays open.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(response);
        }));
    }
    let deadline = std::time::Instant::now() + support::PATIENCE;
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than 16 streams were answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::SeqCst),
        16,
        "the other streams wait for a free one"
    );
    for task in held {
        task.abort();
    }
}

/// The setup's daemon, stopped before, started again on its state directory and `listen` with
/// `extra` configuration.
fn restart(setup: &Setup, listen: &str, extra: &str, wait_ready: bool) -> Daemon {
    Daemon::start_with(
        setup.daemon.dir.clone(),
        DaemonOptions {
            config: support::fake_provider_config(&setup.fake, extra),
            env: vec![("BLUFIO_GATEWAY__LISTEN".to_owned(), listen.to_owned())],
            wait_ready,
            ..DaemonOptions::default()
        },
    )
}

fn free_listen_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Finding (attack of 2026-12-01): a restart with a smaller `max_clock_skew_secs` judged the
/// replay journal by the new, shorter window and removed it, so a request signed for the near
/// future was accepted a second time once the new window reached it.
#[tokio::test(flavor = "multi_thread")]
async fn a_shorter_clock_skew_after_a_restart_does_not_reopen_a_replay() {
    let listen = free_listen_address();
    let mut setup = setup_on("[gateway]\nmax_clock_skew_secs = 10\n", Some(&listen)).await;
    let headers = setup.signed_headers(
        "GET",
        "/v1/models",
        None,
        Tweak {
            created_offset: 9,
            ..Tweak::default()
        },
    );
    let created = now() + 9;
    let url = format!("{}/v1/models", setup.base);
    let send = |client: &reqwest::Client| client.get(&url).headers(headers.clone()).send();
    assert_eq!(send(&setup.client).await.unwrap().status(), 200);

    assert!(setup.daemon.stop().success());
    let daemon = restart(&setup, &listen, "[gateway]\nmax_clock_skew_secs = 2\n", true);
    // Under the new skew the signature passes the clock check from `created - 2` to `created + 2`.
    while now() < created - 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same request, sent again.
    setup
        .expect_problem(
            setup.client.get(&url).headers(headers.clone()),
            401,
            "signature-replayed",
        )
        .await;
    drop(daemon);
}

/// Finding (attack of 2026-12-01): a replay-journal bucket opened while the clock was years
/// ahead took every later nonce, so none expired: the cache filled and stayed full, with a
/// `Retry-After` of years.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_left_by_a_clock_once_ahead_does_not_keep_the_cache_full() {
    let listen = free_listen_address();
    let extra = "[gateway]\nreplay_cache_entries = 3\nrate_limit_per_minute = 1000\n";
    let mut setup = setup_on(extra, Some(&listen)).await;
    assert!(setup.daemon.stop().success());
    let journal = setup.daemon.dir.path().join("state/replay");
    std::fs::write(journal.join("2000000000.fp"), 7_u64.to_le_bytes()).unwrap();
    let daemon = restart(&setup, &listen, extra, true);
    // One of the 3 places holds the nonce from the future.
    let (retry_after, _) = fill_the_replay_cache(&setup, 2).await;
    // The default window is 600 s, plus one bucket's width (38 s).
    assert!(retry_after <= 640, "room comes back in {retry_after} s");
    drop(daemon);
}

/// Finding (attack of 2026-12-01): an 80 MB replay-journal file was read whole into a cache of
/// 100 entries (317 MB of memory at start). A journal holding more than the cache may is refused
/// before it is read, with the way out.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_journal_larger_than_the_cache_stops_the_start_clearly() {
    let listen = free_listen_address();
    let mut setup = setup_on("", Some(&listen)).await;
    assert!(setup.daemon.stop().success());
    let journal = setup.daemon.dir.path().join("state/replay");
    let records: Vec<u8> = (0..101_u64).flat_map(u64::to_le_bytes).collect();
    std::fs::write(journal.join(format!("{}.fp", now() - 5)), records).unwrap();
    let mut daemon = restart(&setup, &listen, "[gateway]\nreplay_cache_entries = 100\n", false);
    let status = daemon.wait();
    assert_eq!(status.code(), Some(1), "{}", daemon.stderr());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("remembers at least 101 nonces") && stderr.contains("gateway.replay_cache_entries (100)"),
        "{stderr}"
    );
}
