//! Live configuration, end to end: every key the registry calls live is changed with
//! `blufioctl config set` on a running daemon, and its effect is observed on the next call,
//! request or stop, without a restart. `every_live_key_is_observed` ties the list below to the
//! registry, so a new live key without an observation fails the suite.

use blufio_testkit as support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::fake_provider::{FakeProvider, FakeUsage, RecordedRequest, Script};
use support::{Daemon, DaemonOptions, describe};

/// Every live key, and the test (in this file or the one named) that changes it on a running
/// daemon and observes the effect.
const OBSERVED: &[(&str, &str, &str)] = &[
    ("agent.context_tokens", HERE, "agent_keys_apply_to_the_next_turn"),
    ("agent.max_tool_iterations", HERE, "agent_keys_apply_to_the_next_turn"),
    (
        "agent.session_retention_days",
        HERE,
        "session_retention_applies_at_once",
    ),
    ("agent.system_prompt", HERE, "agent_keys_apply_to_the_next_turn"),
    ("agent.system_prompt_file", HERE, "agent_keys_apply_to_the_next_turn"),
    (
        "backup.dir",
        "backup.rs",
        "scheduled_backups_are_written_whole_kept_by_count_and_reported",
    ),
    (
        "backup.interval_secs",
        "backup.rs",
        "scheduled_backups_are_written_whole_kept_by_count_and_reported",
    ),
    (
        "backup.keep",
        "backup.rs",
        "scheduled_backups_are_written_whole_kept_by_count_and_reported",
    ),
    ("budget.daily_usd", HERE, "budget_and_log_keys_apply_at_once"),
    ("budget.monthly_usd", HERE, "budget_and_log_keys_apply_at_once"),
    (
        "control.group_access",
        "daemon.rs",
        "every_rpc_obeys_the_access_table_at_every_level",
    ),
    (
        "daemon.shutdown_timeout_secs",
        HERE,
        "the_shutdown_timeout_applies_to_the_next_stop",
    ),
    (
        "gateway.idle_timeout_secs",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    (
        "gateway.max_body_bytes",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    (
        "gateway.max_header_bytes",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    (
        "gateway.metrics_token",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    (
        "gateway.request_timeout_secs",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    (
        "gateway.server_names",
        "gateway.rs",
        "live_gateway_keys_apply_to_a_running_daemon",
    ),
    ("hooks.on_backup", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    (
        "hooks.on_budget_exhausted",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    (
        "hooks.on_device_change",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    (
        "hooks.on_memory_pressure",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    (
        "hooks.on_provider_down",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    (
        "hooks.post_reload",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    ("hooks.post_start", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    ("hooks.post_stop", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    ("hooks.pre_reload", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    ("hooks.pre_start", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    ("hooks.pre_stop", "hooks.rs", "every_hook_key_applies_to_the_next_run"),
    (
        "hooks.timeout_secs",
        "hooks.rs",
        "every_hook_key_applies_to_the_next_run",
    ),
    ("log.level", HERE, "budget_and_log_keys_apply_at_once"),
    ("memory.limit_mib", HERE, "memory_keys_relieve_pressure_at_once"),
    ("memory.pressure_percent", HERE, "memory_keys_relieve_pressure_at_once"),
    ("memory.warn_percent", HERE, "memory_warn_percent_sheds_at_once"),
    ("pricing", HERE, "provider_keys_apply_to_the_next_call"),
    (
        "provider.anthropic_version",
        HERE,
        "provider_keys_apply_to_the_next_call",
    ),
    ("provider.api_key", HERE, "provider_keys_apply_to_the_next_call"),
    ("provider.base_url", HERE, "provider_keys_apply_to_the_next_call"),
    (
        "provider.connect_timeout_secs",
        HERE,
        "provider_timeouts_apply_to_the_next_call",
    ),
    (
        "provider.idle_timeout_secs",
        HERE,
        "provider_timeouts_apply_to_the_next_call",
    ),
    ("provider.kind", HERE, "provider_keys_apply_to_the_next_call"),
    ("provider.max_retries", HERE, "provider_timeouts_apply_to_the_next_call"),
    ("provider.max_tokens", HERE, "provider_keys_apply_to_the_next_call"),
    ("provider.model", HERE, "provider_keys_apply_to_the_next_call"),
    (
        "provider.request_timeout_secs",
        HERE,
        "provider_timeouts_apply_to_the_next_call",
    ),
    (
        "provider.retry_base_delay_ms",
        HERE,
        "provider_timeouts_apply_to_the_next_call",
    ),
    ("tools.files.enabled", HERE, "tool_keys_apply_to_the_next_call"),
    ("tools.files.max_bytes", HERE, "tool_keys_apply_to_the_next_call"),
    ("tools.files.workspace", HERE, "tool_keys_apply_to_the_next_call"),
    (
        "tools.http_get.allow_http",
        HERE,
        "http_get_keys_apply_to_the_next_call",
    ),
    (
        "tools.http_get.allow_private",
        HERE,
        "http_get_keys_apply_to_the_next_call",
    ),
    ("tools.http_get.enabled", HERE, "http_get_keys_apply_to_the_next_call"),
    ("tools.http_get.max_bytes", HERE, "http_get_keys_apply_to_the_next_call"),
    (
        "tools.http_get.timeout_secs",
        HERE,
        "http_get_keys_apply_to_the_next_call",
    ),
    ("tools.max_result_bytes", HERE, "tool_keys_apply_to_the_next_call"),
    ("tools.run_command.allow", HERE, "tool_keys_apply_to_the_next_call"),
    ("tools.run_command.callers", HERE, "tool_keys_apply_to_the_next_call"),
    ("tools.run_command.enabled", HERE, "tool_keys_apply_to_the_next_call"),
    (
        "tools.run_command.max_output_bytes",
        HERE,
        "tool_keys_apply_to_the_next_call",
    ),
    (
        "tools.run_command.timeout_secs",
        HERE,
        "tool_keys_apply_to_the_next_call",
    ),
];

const HERE: &str = "live_config.rs";

/// The source of the test files `OBSERVED` names.
const SOURCES: &[(&str, &str)] = &[
    (HERE, include_str!("live_config.rs")),
    ("daemon.rs", include_str!("daemon.rs")),
    ("gateway.rs", include_str!("gateway.rs")),
    ("backup.rs", include_str!("backup.rs")),
    ("hooks.rs", include_str!("hooks.rs")),
];

#[test]
fn every_live_key_is_observed() {
    let daemon = Daemon::start();
    let entries = daemon.ctl_json(&["config", "get"]);
    let live: BTreeSet<String> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["restart_required"] == false)
        .map(|entry| entry["key"].as_str().unwrap().to_owned())
        .collect();
    let observed: BTreeSet<String> = OBSERVED.iter().map(|(key, _, _)| (*key).to_owned()).collect();
    assert_eq!(
        live, observed,
        "each key the registry calls live needs a test here that changes it on a running daemon and sees the effect"
    );
    for (key, file, test) in OBSERVED {
        let source = SOURCES.iter().find(|(name, _)| name == file).unwrap().1;
        let start = source
            .find(&format!("fn {test}("))
            .unwrap_or_else(|| panic!("{file} has no test {test}"));
        let body = &source[start..];
        let end = body[1..]
            .find("\nfn ")
            .or_else(|| body[1..].find("\nasync fn "))
            .unwrap_or(body.len() - 1);
        assert!(
            body[..=end].contains(&format!("\"{key}\"")),
            "{file}::{test} does not change {key}"
        );
    }
}

fn set(daemon: &Daemon, key: &str, value: &str) {
    let set = daemon.ctl_json(&["config", "set", key, value]);
    assert_eq!(set["applied_live"], true, "{key} = {value}: {set}");
    assert_eq!(set["restart_required"], serde_json::json!([]), "{key}: {set}");
}

fn chat(daemon: &Daemon, text: &str) -> serde_json::Value {
    daemon.ctl_json(&["chat", text])
}

/// A chat that must fail; returns what blufioctl printed.
fn failed_chat(daemon: &Daemon, text: &str) -> String {
    let output = daemon.ctl(&["chat", text]);
    assert!(!output.status.success(), "{text:?} was answered: {}", describe(&output));
    describe(&output)
}

fn last(fake: &FakeProvider) -> RecordedRequest {
    fake.requests().pop().expect("the fake provider received a request")
}

fn with_fake(fake: &FakeProvider, extra: &str) -> Daemon {
    support::start_with_fake(fake, extra)
}

#[test]
fn agent_keys_apply_to_the_next_turn() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");

    set(&daemon, "agent.system_prompt", "You are LIVE-PROMPT.");
    chat(&daemon, "one");
    assert_eq!(last(&fake).body["system"][0]["text"], "You are LIVE-PROMPT.");

    let file = daemon.dir.path().join("prompt.txt");
    std::fs::write(&file, "The prompt from the file.").unwrap();
    set(&daemon, "agent.system_prompt_file", file.to_str().unwrap());
    chat(&daemon, "two");
    assert_eq!(last(&fake).body["system"][0]["text"], "The prompt from the file.");

    // A session with history: the whole of it is sent, until the context budget shrinks.
    let first = chat(&daemon, "the first message of a long session");
    let session = first["session_id"].as_str().unwrap().to_owned();
    daemon.ctl_json(&["chat", "--session", &session, "the second message"]);
    assert_eq!(last(&fake).body["messages"].as_array().unwrap().len(), 3);
    set(&daemon, "agent.context_tokens", "1");
    daemon.ctl_json(&["chat", "--session", &session, "the third message"]);
    let messages = last(&fake).body["messages"].clone();
    assert_eq!(
        messages.as_array().unwrap().len(),
        1,
        "only the newest message fits: {messages}"
    );

    set(&daemon, "agent.max_tool_iterations", "1");
    fake.push(Script::tool_use(
        "toolu_1",
        "read_file",
        serde_json::json!({"path": "x"}),
    ));
    let limited = chat(&daemon, "use a tool");
    assert_eq!(limited["stop_reason"], "tool_limit", "{limited}");
    assert_eq!(limited["provider_calls"], 1, "{limited}");
}

#[test]
fn provider_keys_apply_to_the_next_call() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");

    set(&daemon, "provider.anthropic_version", "2099-01-01");
    let stored = daemon.ctl_input(&["config", "set-secret", "second"], b"live-key-2\n");
    assert!(stored.status.success(), "{}", support::describe(&stored));
    set(&daemon, "provider.api_key", "secret:second");
    set(&daemon, "provider.max_tokens", "77");
    chat(&daemon, "one");
    let request = last(&fake);
    assert_eq!(request.header("anthropic-version"), Some("2099-01-01"));
    assert_eq!(request.header("x-api-key"), Some("live-key-2"));
    assert_eq!(request.body["max_tokens"], 77);
    // A new value of the secret the key names applies to the next call too.
    let replaced = daemon.ctl_input(&["config", "set-secret", "second"], b"live-key-3");
    assert!(replaced.status.success(), "{}", support::describe(&replaced));
    chat(&daemon, "two");
    assert_eq!(last(&fake).header("x-api-key"), Some("live-key-3"));

    // Prices 100 times the start's: the same usage costs 100 times as much.
    let usage = FakeUsage {
        input: 1_000,
        output: 500,
        ..FakeUsage::default()
    };
    let priced = |daemon: &Daemon| {
        fake.push(Script::Text {
            text: "priced".to_owned(),
            chunks: 1,
            usage,
        });
        chat(daemon, "what does it cost")["cost_usd"].as_f64().unwrap()
    };
    let before = priced(&daemon);
    assert!((before - 0.002).abs() < 1e-9, "{before}");
    set(
        &daemon,
        "pricing",
        r#"{ "fake-model" = { input = 100.0, output = 200.0 }, "other-model" = { input = 1.0, output = 2.0 } }"#,
    );
    let after = priced(&daemon);
    assert!((after - 0.2).abs() < 1e-9, "{after}");

    set(&daemon, "provider.model", "other-model");
    chat(&daemon, "which model");
    assert_eq!(last(&fake).body["model"], "other-model");

    let other = FakeProvider::start();
    set(&daemon, "provider.base_url", &other.url());
    chat(&daemon, "where to");
    assert_eq!(other.request_count(), 1, "the new base URL is used");

    set(&daemon, "provider.kind", "openai");
    set(&daemon, "provider.base_url", &format!("{}/v1", other.url()));
    let openai = chat(&daemon, "in the other wire format");
    assert!(
        openai["text"].as_str().unwrap().contains("in the other wire format"),
        "{openai}"
    );
    let request = last(&other);
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer live-key-3"));
}

#[test]
fn provider_timeouts_apply_to_the_next_call() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");

    // Retries: none, then two.
    set(&daemon, "provider.max_retries", "0");
    fake.push(Script::http_error(529, "overloaded", None));
    let before = fake.request_count();
    failed_chat(&daemon, "no retry");
    assert_eq!(fake.request_count(), before + 1);
    set(&daemon, "provider.max_retries", "2");
    fake.push(Script::http_error(529, "overloaded", None));
    fake.push(Script::http_error(529, "overloaded", None));
    let before = fake.request_count();
    chat(&daemon, "two retries");
    assert_eq!(fake.request_count(), before + 3);

    // The first retry waits the base delay (the start's is 10 ms).
    set(&daemon, "provider.retry_base_delay_ms", "1500");
    fake.push(Script::http_error(529, "overloaded", None));
    let started = Instant::now();
    chat(&daemon, "slow retry");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    set(&daemon, "provider.retry_base_delay_ms", "10");

    set(&daemon, "provider.request_timeout_secs", "1");
    fake.push(Script::Delay {
        per_chunk: Duration::from_secs(2),
        then: Box::new(Script::text("late", 3)),
    });
    let shown = failed_chat(&daemon, "too slow in all");
    assert!(shown.contains("took longer than 1s"), "{shown}");
    set(&daemon, "provider.request_timeout_secs", "300");

    set(&daemon, "provider.idle_timeout_secs", "1");
    fake.push(Script::Stall { after_chunks: 1 });
    let shown = failed_chat(&daemon, "silent");
    assert!(shown.contains("silent for 1s"), "{shown}");

    // A listener whose accept queue is full drops new SYNs, so a connect hangs until its timeout
    // (the default is 10 s).
    let blackhole = full_listener();
    set(&daemon, "provider.max_retries", "0");
    set(&daemon, "provider.connect_timeout_secs", "1");
    set(&daemon, "provider.base_url", &format!("http://{}", blackhole.0));
    let started = Instant::now();
    let shown = failed_chat(&daemon, "unreachable");
    assert!(shown.contains("cannot reach the provider"), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the 1 s connect timeout applied: {:?}",
        started.elapsed()
    );
    drop(blackhole);
}

/// A listening socket with a backlog of 0 and one connection queued, which nobody accepts.
fn full_listener() -> (std::net::SocketAddr, std::os::fd::OwnedFd, std::net::TcpStream) {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let address: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
    let address = std::net::SocketAddr::from(std::net::SocketAddrV4::from(address));
    let queued = std::net::TcpStream::connect(address).unwrap();
    (address, fd, queued)
}

#[test]
fn budget_and_log_keys_apply_at_once() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");
    chat(&daemon, "spend a little");

    set(&daemon, "budget.daily_usd", "0.000001");
    let shown = failed_chat(&daemon, "over the daily cap");
    assert!(shown.contains("daily"), "{shown}");
    set(&daemon, "budget.daily_usd", "0");
    set(&daemon, "budget.monthly_usd", "0.000001");
    let shown = failed_chat(&daemon, "over the monthly cap");
    assert!(shown.contains("monthly"), "{shown}");
    set(&daemon, "budget.monthly_usd", "0");
    chat(&daemon, "no caps now");

    assert!(!daemon.stderr().contains("DEBUG"), "the start's level is info");
    set(&daemon, "log.level", "debug");
    chat(&daemon, "log this");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.stderr().contains("DEBUG") {
        assert!(Instant::now() < deadline, "no debug line after log.level = debug");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn memory_keys_relieve_pressure_at_once() {
    // A running daemon refuses to be put under pressure, so each daemon starts under it (a
    // threshold of 1 % of 128 MiB) and one key relieves it.
    let fake = FakeProvider::start();
    for (key, value) in [("memory.pressure_percent", "100"), ("memory.limit_mib", "8192")] {
        let daemon = with_fake(&fake, "[memory]\nlimit_mib = 128\npressure_percent = 1\n");
        let shown = failed_chat(&daemon, "under pressure");
        assert!(shown.contains("memory.limit_mib"), "{shown}");
        set(&daemon, key, value);
        chat(&daemon, "relieved");
        // And back under it is refused, naming what the daemon uses now.
        let back = daemon.ctl(&[
            "config",
            "set",
            key,
            if key == "memory.limit_mib" { "128" } else { "1" },
        ]);
        let shown = describe(&back);
        assert_eq!(back.status.code(), Some(1), "{shown}");
        assert!(shown.contains("MiB blufiod uses now"), "{shown}");
    }
}

#[test]
fn memory_warn_percent_sheds_at_once() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "[memory]\nlimit_mib = 1024\n");
    assert_eq!(daemon.ctl_json(&["status"])["memory"]["pressure"], "normal");
    // 1 % of 1 GiB (10 MiB) is below what any daemon uses.
    set(&daemon, "memory.warn_percent", "1");
    let status = daemon.ctl_json(&["status"]);
    let memory = &status["memory"];
    assert_eq!(memory["warn_bytes"], 1024 * 1024 * 1024 / 100, "{memory}");
    assert_eq!(memory["pressure"], "warn", "{memory}");
    assert!(daemon.stderr().contains("caches shed"), "{}", daemon.stderr());
    // The warn level refuses nothing.
    chat(&daemon, "still served");
}

#[test]
fn session_retention_applies_at_once() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");
    let old = chat(&daemon, "old news")["session_id"].as_str().unwrap().to_owned();
    let recent = chat(&daemon, "fresh news")["session_id"].as_str().unwrap().to_owned();
    // Ten days old, as if time had passed.
    let python = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let aged = std::process::Command::new(python)
        .args([
            "-c",
            "import sqlite3,sys,time; db=sqlite3.connect(sys.argv[1], timeout=10); \
             db.execute('UPDATE sessions SET updated_at=? WHERE id=?', (int(time.time())-10*86400, sys.argv[2])); db.commit()",
        ])
        .arg(daemon.dir.path().join("state/blufio.db"))
        .arg(&old)
        .output()
        .unwrap();
    assert!(aged.status.success(), "{}", describe(&aged));
    set(&daemon, "agent.session_retention_days", "7");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = daemon.ctl_json(&["sessions", "list"]);
        let ids: Vec<String> = listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|session| session["id"].as_str().unwrap().to_owned())
            .collect();
        if ids == [recent.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "the old session was not pruned: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_shutdown_timeout_applies_to_the_next_stop() {
    let mut daemon = Daemon::start_with(
        support::new_dir(),
        DaemonOptions {
            notify: true,
            ..DaemonOptions::default()
        },
    );
    set(&daemon, "daemon.shutdown_timeout_secs", "7");
    daemon.stop();
    let notify = daemon.notify.as_ref().unwrap();
    notify.wait_for("the stopping status", |line| line.contains("STATUS=stopping"));
    assert!(
        notify.count(|line| line.contains("draining (up to 7s)")) == 1,
        "{:?}",
        notify.all()
    );
}

/// A server on 127.0.0.1 that accepts connections and never answers.
fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    (listener, url)
}

/// The result the model got for the tool call of the latest turn.
fn tool_result(fake: &FakeProvider) -> (String, bool) {
    let request = last(fake);
    let result = request.body["messages"].as_array().unwrap().last().unwrap()["content"][0].clone();
    assert_eq!(result["type"], "tool_result", "{result}");
    let content = match &result["content"] {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    (content, result["is_error"] == true)
}

/// Runs one turn in which the model calls `tool` with `input`; returns the result it got back.
fn call_tool(daemon: &Daemon, fake: &FakeProvider, tool: &str, input: serde_json::Value) -> (String, bool) {
    fake.push(Script::tool_use("toolu_live", tool, input));
    fake.push(Script::text("done", 1));
    chat(daemon, &format!("call {tool}"));
    tool_result(fake)
}

fn offered_tools(fake: &FakeProvider) -> Vec<String> {
    let requests = fake.requests();
    requests[requests.len() - 2].tool_names()
}

#[test]
fn tool_keys_apply_to_the_next_call() {
    let echo = ["/bin/echo", "/usr/bin/echo"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("echo exists");
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("sleep exists");
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");

    let (refused, is_error) = call_tool(&daemon, &fake, "run_command", serde_json::json!({"program": echo}));
    assert!(is_error, "run_command is off at the start: {refused}");
    set(&daemon, "tools.run_command.enabled", "true");
    set(&daemon, "tools.run_command.allow", &format!("[\"{echo}\"]"));
    let (output, is_error) = call_tool(
        &daemon,
        &fake,
        "run_command",
        serde_json::json!({"program": echo, "args": ["hello-from-echo"]}),
    );
    assert!(!is_error && output.contains("hello-from-echo"), "{output}");
    assert!(offered_tools(&fake).contains(&"run_command".to_owned()));
    // The model is told which programs it may run.
    let requests = fake.requests();
    let spec = requests[requests.len() - 2].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tool| tool["name"] == "run_command")
        .unwrap()
        .clone();
    assert!(spec["description"].as_str().unwrap().contains(echo), "{spec}");
    // Who is offered it: without the owner on the list, the owner's next turn is refused.
    set(&daemon, "tools.run_command.callers", "[\"group\", \"device\"]");
    let (output, is_error) = call_tool(
        &daemon,
        &fake,
        "run_command",
        serde_json::json!({"program": echo, "args": ["hello-from-echo"]}),
    );
    assert!(is_error && output.contains("tools.run_command.callers"), "{output}");
    assert!(!offered_tools(&fake).contains(&"run_command".to_owned()));
    set(&daemon, "tools.run_command.callers", "[\"owner\"]");

    set(&daemon, "tools.run_command.max_output_bytes", "5");
    let (output, _) = call_tool(
        &daemon,
        &fake,
        "run_command",
        serde_json::json!({"program": echo, "args": ["0123456789abcdef"]}),
    );
    assert!(!output.contains("0123456789"), "the output is cut at 5 bytes: {output}");
    set(&daemon, "tools.run_command.max_output_bytes", "65536");

    set(
        &daemon,
        "tools.run_command.allow",
        &format!("[\"{echo}\", \"{sleep}\"]"),
    );
    set(&daemon, "tools.run_command.timeout_secs", "1");
    let started = Instant::now();
    let (output, is_error) = call_tool(
        &daemon,
        &fake,
        "run_command",
        serde_json::json!({"program": sleep, "args": ["30"]}),
    );
    assert!(is_error, "{output}");
    assert!(output.contains("tools.run_command.timeout_secs"), "{output}");
    assert!(started.elapsed() < Duration::from_secs(25), "{:?}", started.elapsed());

    set(&daemon, "tools.max_result_bytes", "4");
    let (output, _) = call_tool(
        &daemon,
        &fake,
        "run_command",
        serde_json::json!({"program": echo, "args": ["a-long-line-of-output"]}),
    );
    assert!(
        !output.contains("a-long-line"),
        "the result is cut at 4 bytes: {output}"
    );
    set(&daemon, "tools.max_result_bytes", "32768");

    let workspace = daemon.dir.path().join("live-workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("note.txt"), "a note of some length").unwrap();
    set(&daemon, "tools.files.enabled", "true");
    set(&daemon, "tools.files.workspace", workspace.to_str().unwrap());
    let (output, is_error) = call_tool(&daemon, &fake, "read_file", serde_json::json!({"path": "note.txt"}));
    assert!(!is_error && output.contains("a note of some length"), "{output}");
    assert!(offered_tools(&fake).contains(&"read_file".to_owned()));
    set(&daemon, "tools.files.max_bytes", "4");
    let (output, is_error) = call_tool(&daemon, &fake, "read_file", serde_json::json!({"path": "note.txt"}));
    assert!(!output.contains("a note of some length"), "{is_error} {output}");
    assert!(output.contains("tools.files.max_bytes"), "{output}");
}

#[test]
fn http_get_keys_apply_to_the_next_call() {
    let fake = FakeProvider::start();
    let daemon = with_fake(&fake, "");
    // The fake answers any path; its address is this machine's, so only allow_private opens it.
    let page = format!("{}/page", fake.url());

    set(&daemon, "tools.http_get.enabled", "true");
    let (refused, is_error) = call_tool(&daemon, &fake, "http_get", serde_json::json!({"url": page}));
    assert!(is_error, "{refused}");
    assert!(offered_tools(&fake).contains(&"http_get".to_owned()));
    set(&daemon, "tools.http_get.allow_private", "[\"127.0.0.1/32\"]");
    let (refused, is_error) = call_tool(&daemon, &fake, "http_get", serde_json::json!({"url": page}));
    assert!(is_error && refused.contains("tools.http_get.allow_http"), "{refused}");
    set(&daemon, "tools.http_get.allow_http", "true");
    let (fetched, _) = call_tool(&daemon, &fake, "http_get", serde_json::json!({"url": page}));
    assert!(
        fetched.starts_with("HTTP 404"),
        "the page was fetched (the fake has none): {fetched}"
    );

    set(&daemon, "tools.http_get.max_bytes", "1");
    let (cut, _) = call_tool(&daemon, &fake, "http_get", serde_json::json!({"url": page}));
    assert!(cut.contains("body cut at 1 bytes (tools.http_get.max_bytes)"), "{cut}");

    let (_silent, url) = silent_server();
    set(&daemon, "tools.http_get.timeout_secs", "1");
    let started = Instant::now();
    let (output, is_error) = call_tool(&daemon, &fake, "http_get", serde_json::json!({"url": url}));
    // Every failure before a response reads the same, so the wait tells: 1 s, not the default.
    assert!(is_error, "{output}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
}
