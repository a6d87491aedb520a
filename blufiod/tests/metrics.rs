//! The metrics under real traffic: a chat over the socket, a tool call, a provider error after a
//! retry, refused requests, a signed streaming chat through the gateway and turns waiting for a
//! slot move every metric the daemon exposes; `promtool check metrics` accepts the exposition from
//! the socket (`blufioctl metrics`) and from the gateway's `/metrics`; and the socket serves it
//! with the gateway disabled.

use blufio_testkit as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::exposition::{FAMILIES, Samples, families};
use support::fake_provider::{FakeProvider, FakeUsage, Script};
use support::{Daemon, DaemonOptions, describe, new_dir};

const MIB: f64 = 1024.0 * 1024.0;

/// One turn slot (so a second turn queues), caps to count down, the file tools on, and a memory
/// limit whose refuse threshold the daemon never reaches; the test then lowers the warn threshold
/// to 1 % of 1 GiB, which the daemon is always above, so the level changes after the first scrape.
const CONFIG: &str = "[budget]\ndaily_usd = 5.0\nmonthly_usd = 50.0\n\
    [agent]\nmax_concurrent_turns = 1\n\
    [tools.files]\nenabled = true\n\
    [memory]\nlimit_mib = 1024\nwarn_percent = 100\npressure_percent = 100\n\
    [hooks]\non_backup = [[\"/bin/true\"]]\n";

/// `promtool check metrics` on `text`: exit 0 and no lint output.
fn promtool_accepts(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is needed: install the Debian package `prometheus` (cargo xtask test and .ci/run install it)",
        );
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool rejects the exposition of {what}: {}\n{text}",
        describe(&output)
    );
}

/// The sum of the series of `name` whose labels contain every one of `labels`.
fn sum(samples: &Samples, name: &str, labels: &[&str]) -> f64 {
    samples
        .series()
        .filter(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|label| series.contains(label))
        })
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn real_traffic_moves_every_metric_and_promtool_accepts_the_exposition() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: support::fake_provider_config(&fake, CONFIG),
            env: vec![("WATCHDOG_USEC".into(), "400000".into())],
            ..DaemonOptions::default()
        },
    );
    let before = daemon.metrics();
    daemon.ctl_json(&["config", "set", "memory.warn_percent", "1"]);
    let archive = daemon.dir.path().join("metrics.tar");
    let backup = daemon.ctl(&["backup", archive.to_str().unwrap()]);
    assert!(backup.status.success(), "{}", describe(&backup));

    // A chat over the socket, with every kind of token.
    fake.push(Script::Text {
        text: "Hello.".into(),
        chunks: 2,
        usage: FakeUsage {
            input: 100,
            output: 20,
            cache_creation: 30,
            cache_read: 40,
        },
    });
    daemon.ctl_json(&["chat", "hello"]);
    // A tool call, then the answer.
    fake.push(Script::tool_use(
        "call-1",
        "write_file",
        serde_json::json!({"path": "note.txt", "content": "metrics"}),
    ));
    fake.push(Script::text("Written.", 1));
    daemon.ctl_json(&["chat", "write a note"]);
    // A provider error after one retry (the test config allows one).
    fake.push(Script::http_error(500, "upstream broke", None));
    fake.push(Script::http_error(500, "upstream broke", None));
    let failed = daemon.ctl(&["chat", "this one fails"]);
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    // A request the agent refuses.
    let refused = daemon.ctl(&["chat", "--session", "no-such-session", "hello?"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));

    // A signed streaming chat through the gateway, with blufioctl's remote client.
    let key_file = daemon.dir.path().join("phone.pem");
    daemon.ctl_json(&["device", "add", "phone", "--key-out", key_file.to_str().unwrap()]);
    let status = daemon.ctl_json(&["status"]);
    let listen = status["gateway"]["listen"].as_str().unwrap().to_owned();
    let pin = status["gateway"]["tls_fingerprint_sha256"].as_str().unwrap().to_owned();
    let url = format!("https://{listen}");
    fake.push(Script::text("Remote hello.", 3));
    let remote = daemon.ctl(&[
        "remote",
        "--url",
        &url,
        "--key",
        key_file.to_str().unwrap(),
        "--pin",
        &pin,
        "chat",
        "hello from afar",
    ]);
    assert!(remote.status.success(), "{}", describe(&remote));

    // An unsigned request through the gateway is refused; the connection stays open meanwhile.
    let cert = std::fs::read(daemon.dir.path().join("state/tls/cert.pem")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (gateway_text, open_during) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .build()
            .unwrap();
        let unsigned = client.get(format!("{url}/v1/models")).send().await.unwrap();
        assert_eq!(unsigned.status(), 401);
        let open = daemon.metrics().value("blufio_gateway_open_connections");
        let scraped = client.get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(scraped.status(), 200);
        (scraped.text().await.unwrap(), open)
    });
    drop(runtime);
    assert!(
        open_during >= 1.0,
        "a client's open connection is counted: {open_during}"
    );

    // Two slow turns: one runs, the other waits for the one slot.
    for _ in 0..2 {
        fake.push(Script::Delay {
            per_chunk: Duration::from_millis(200),
            then: Box::new(Script::text("slowly", 5)),
        });
    }
    let slow: Vec<_> = (0..2)
        .map(|turn| daemon.ctl_in_background(&["chat", &format!("slow {turn}")]))
        .collect();
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let samples = daemon.metrics();
        // A queued turn counts as queued as soon as it takes its place, its session as active
        // once its message is stored, and the running turn reserves its call's cost just before
        // the call (a moment after it counts as in flight): wait for all of them. The slow
        // answer keeps the call running for over a second.
        if samples.value("blufio_turns_in_flight") == 1.0
            && samples.value("blufio_turns_queued") == 1.0
            && samples.value("blufio_active_sessions") == 2.0
            && samples.value("blufio_budget_reserved_usd") > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no turn ran (with its cost reserved) while another waited in its own session: in flight {}, queued {}, \
             active sessions {}, reserved {}",
            samples.value("blufio_turns_in_flight"),
            samples.value("blufio_turns_queued"),
            samples.value("blufio_active_sessions"),
            samples.value("blufio_budget_reserved_usd"),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for child in slow {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", describe(&output));
    }

    // The watchdog pings (WATCHDOG_USEC is set).
    let deadline = Instant::now() + support::PATIENCE;
    while daemon.metrics().value("blufio_watchdog_pings_total") < 1.0 {
        assert!(Instant::now() < deadline, "no watchdog ping counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    let text = daemon.metrics_text();
    let after = Samples::parse(&text);
    let moved = |name: &str, labels: &[&str]| {
        let (was, now) = (sum(&before, name, labels), sum(&after, name, labels));
        assert!(now > was, "{name}{labels:?} did not move: {was} -> {now}");
    };
    let model = "model=\"fake-model\"";
    for kind in ["input", "output", "cache_read", "cache_write"] {
        moved("blufio_tokens_total", &[model, &format!("type=\"{kind}\"")]);
    }
    moved("blufio_cost_usd_total", &[model]);
    moved(
        "blufio_provider_requests_total",
        &[model, "provider=\"anthropic\"", "outcome=\"ok\""],
    );
    moved(
        "blufio_provider_requests_total",
        &[model, "provider=\"anthropic\"", "outcome=\"error\""],
    );
    moved("blufio_provider_retries_total", &[model, "provider=\"anthropic\""]);
    moved("blufio_response_latency_seconds_count", &[model]);
    moved("blufio_time_to_first_token_seconds_count", &[model]);
    moved("blufio_errors_total", &["kind=\"provider_failed\""]);
    moved("blufio_errors_total", &["kind=\"session_not_found\""]);
    for channel in ["control", "gateway"] {
        for direction in ["inbound", "outbound"] {
            moved(
                "blufio_messages_total",
                &[&format!("channel=\"{channel}\""), &format!("direction=\"{direction}\"")],
            );
        }
    }
    moved("blufio_tool_calls_total", &["tool=\"write_file\"", "outcome=\"ok\""]);
    moved("blufio_turn_histories_total", &["source=\"new\""]);
    moved("blufio_grpc_requests_total", &["method=\"SendMessage\"", "code=\"OK\""]);
    moved(
        "blufio_grpc_request_duration_seconds_count",
        &["method=\"SendMessage\""],
    );
    moved("blufio_gateway_requests_total", &["status=\"200\""]);
    moved("blufio_gateway_requests_total", &["status=\"401\""]);
    moved("blufio_gateway_request_duration_seconds_count", &[]);
    moved("blufio_gateway_auth_failures_total", &[]);
    moved("blufio_events_total", &["event=\"turn_finished\""]);
    moved("blufio_events_total", &["event=\"turn_failed\""]);
    moved("blufio_events_total", &["event=\"device_added\""]);
    moved("blufio_events_total", &["event=\"backup_finished\""]);
    moved("blufio_backup_last_success_timestamp_seconds", &[]);
    moved("blufio_backup_last_size_bytes", &[]);
    moved("blufio_hook_runs_total", &["hook=\"on_backup\"", "outcome=\"ok\""]);
    moved("blufio_events_total", &["event=\"provider_down\""]);
    moved("blufio_budget_spent_usd", &["period=\"daily\""]);
    moved("blufio_budget_spent_usd", &["period=\"monthly\""]);
    moved("blufio_watchdog_pings_total", &[]);
    for period in ["daily", "monthly"] {
        let label = format!("{{period=\"{period}\"}}");
        let (was, now) = (
            before.value(&format!("blufio_budget_remaining_usd{label}")),
            after.value(&format!("blufio_budget_remaining_usd{label}")),
        );
        assert!(now < was, "the {period} budget left did not fall: {was} -> {now}");
        let cap = after.value(&format!("blufio_budget_cap_usd{label}"));
        let spent = after.value(&format!("blufio_budget_spent_usd{label}"));
        assert!(
            (cap - spent - now).abs() < 1e-9,
            "remaining = cap - spent: {cap} {spent} {now}"
        );
    }
    assert_eq!(after.value("blufio_budget_cap_usd{period=\"daily\"}"), 5.0);
    assert_eq!(
        after.value("blufio_budget_reserved_usd"),
        0.0,
        "every reservation settled"
    );
    assert!(after.value("blufio_gateway_replay_cache_entries") >= 1.0);
    assert_eq!(after.value("blufio_gateway_open_connections"), 0.0, "every client left");
    assert_eq!(after.value("blufio_events_dropped_total"), 0.0);
    assert_eq!(after.value("blufio_watchdog_missed_total"), 0.0, "nothing stalled");
    for gauge in [
        "blufio_turns_in_flight",
        "blufio_turns_queued",
        "blufio_active_sessions",
    ] {
        assert_eq!(after.value(gauge), 0.0, "{gauge} falls back once the turns end");
    }

    // Memory: measured, against the configured thresholds; above warn (1 %), so caches are shed.
    let rss = after.value("blufio_memory_rss_bytes");
    let heap = after.value("blufio_memory_heap_bytes");
    assert!(rss > MIB && heap > 0.0, "rss {rss}, heap {heap}");
    assert!(after.value("blufio_memory_resident_bytes") >= heap);
    assert_eq!(after.value("blufio_memory_limit_bytes"), 1024.0 * MIB);
    assert_eq!(after.value("blufio_memory_refuse_bytes"), 1024.0 * MIB);
    assert!((after.value("blufio_memory_warn_bytes") - 10.24 * MIB).abs() < 1.0);
    assert_eq!(after.value("blufio_memory_pressure"), 1.0, "above the warn threshold");
    moved("blufio_events_total", &["event=\"memory_pressure_changed\""]);
    assert!(
        daemon.stderr().contains("caches shed"),
        "the warn level shed caches: {}",
        daemon.stderr()
    );
    let memory = &daemon.ctl_json(&["status"])["memory"];
    assert_eq!(memory["pressure"], "warn", "{memory}");

    // Identity: the build and the start time.
    let build: Vec<(&str, f64)> = after
        .series()
        .filter(|(series, _)| series.starts_with("blufio_build_info{"))
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].1, 1.0);
    assert!(
        build[0]
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && !build[0].0.contains("commit=\"\""),
        "{build:?}"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let started = after.value("blufio_start_time_seconds");
    assert!(
        started <= now && started > now - 600.0,
        "started at {started}, now {now}"
    );
    assert!(after.value("process_resident_memory_bytes") > 0.0);
    assert!(after.value("process_start_time_seconds") > 0.0);

    // Every family that ships is one this test checked, and the gateway serves the same ones.
    let mut shipped: Vec<&str> = families(&text)
        .into_iter()
        .filter(|family| family.starts_with("blufio_"))
        .collect();
    shipped.sort_unstable();
    assert_eq!(shipped, FAMILIES, "every metric blufiod ships is checked here");
    let mut served: Vec<&str> = families(&gateway_text)
        .into_iter()
        .filter(|family| family.starts_with("blufio_"))
        .collect();
    served.sort_unstable();
    assert_eq!(served, FAMILIES, "the gateway's /metrics serves the same families");

    // No label value is request data: no session id, no text a caller sent.
    let sessions = daemon.ctl_json(&["sessions", "list"]);
    for session in sessions["sessions"].as_array().unwrap() {
        let id = session["id"].as_str().unwrap();
        assert!(!text.contains(id), "a session id became a label: {id}");
    }
    assert!(!text.contains("hello") && !text.contains("no-such-session"));

    promtool_accepts(&text, "blufioctl metrics");
    promtool_accepts(&gateway_text, "the gateway's /metrics");
}

#[test]
fn metrics_come_through_the_socket_with_the_gateway_disabled() {
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: "[gateway]\nenabled = false\n".into(),
            ..DaemonOptions::default()
        },
    );
    let text = daemon.metrics_text();
    let samples = Samples::parse(&text);
    assert!(samples.value("blufio_memory_rss_bytes") > 0.0);
    assert_eq!(samples.value("blufio_events_total{event=\"ready\"}"), 1.0);
    promtool_accepts(&text, "a daemon without a gateway");
}
