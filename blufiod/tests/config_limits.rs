//! Configuration as an attack surface, against the real daemon: values at the edges of every
//! numeric key, documents too large to parse, and parse errors that would quote a secret.

use blufio_testkit as support;

use blufio_proto::control::v1 as pb;
use support::Daemon;
use support::fake_provider::{FakeProvider, Script};

/// A daemon on `fake` with a plain-HTTP loopback gateway, so tests can reach it without TLS.
fn start(fake: &FakeProvider) -> Daemon {
    support::start_with_fake(fake, "[gateway]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n")
}

/// The daemon still serves: status answers, a turn completes (or is refused cleanly), and the
/// gateway answers a request.
fn survives(daemon: &Daemon, fake: &FakeProvider, what: &str) {
    fake.push(Script::text("still here", 2));
    let chat = daemon.ctl(&["chat", "--json", "are you alive?"]);
    assert!(
        matches!(chat.status.code(), Some(0 | 1)),
        "{what}: chat: {}",
        support::describe(&chat)
    );
    let status = daemon.ctl_json(&["status"]);
    let listen = status["gateway"]["listen"].as_str().unwrap().to_owned();
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(&listen).unwrap();
    stream
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{what}: gateway: {reply}");
    // The same over HTTP/2 (prior knowledge), whose keep-alive timer takes idle_timeout_secs.
    let mut stream = std::net::TcpStream::connect(&listen).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut settings = [0u8; 9];
    stream.read_exact(&mut settings).unwrap();
    assert_eq!(settings[3], 4, "{what}: the server's first h2 frame is SETTINGS");
    assert!(
        daemon.ctl(&["status"]).status.success(),
        "{what}: the daemon died after an h2 connection"
    );
}

#[test]
fn every_numeric_key_refuses_or_survives_its_edge_values() {
    let fake = FakeProvider::start();
    let daemon = start(&fake);
    let entries = daemon.ctl_json(&["config", "get"])["entries"]
        .as_array()
        .unwrap()
        .clone();
    let integer_keys: Vec<(String, u64)> = entries
        .iter()
        .filter_map(|entry| Some((entry["key"].as_str()?.to_owned(), entry["value"].as_u64()?)))
        .collect();
    assert!(integer_keys.len() >= 25, "{integer_keys:?}");
    for (key, original) in &integer_keys {
        for value in [
            "0",
            "-1",
            "255",
            "4294967295",
            "9223372036854775807",
            "18446744073709551615",
        ] {
            let what = format!("{key} = {value}");
            let set = daemon.ctl(&["config", "set", key, value]);
            match set.status.code() {
                Some(0) => survives(&daemon, &fake, &what),
                Some(1) => {
                    let shown = format!(
                        "{}{}",
                        String::from_utf8_lossy(&set.stdout),
                        String::from_utf8_lossy(&set.stderr)
                    );
                    assert!(
                        shown.contains(key.as_str()),
                        "{what}: the refusal names the key: {shown}"
                    );
                }
                _ => panic!("{what}: {}", support::describe(&set)),
            }
            let restore = daemon.ctl(&["config", "set", key, &original.to_string()]);
            assert!(
                restore.status.success(),
                "{what}: restore: {}",
                support::describe(&restore)
            );
        }
    }
    survives(&daemon, &fake, "after all keys");
    // A release build aborts on a panic; a debug build only loses the task, so look for it.
    let log = daemon.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn string_keys_take_values_that_read_as_other_toml_types() {
    let fake = FakeProvider::start();
    let daemon = start(&fake);
    let set = daemon.ctl_json(&["config", "set", "provider.anthropic_version", "2023-06-01"]);
    assert_eq!(set["entry"]["value"], "2023-06-01", "{set}");
    let set = daemon.ctl_json(&["config", "set", "agent.system_prompt", "42"]);
    assert_eq!(set["entry"]["value"], "42", "{set}");
    fake.push(Script::text("ok", 1));
    daemon.ctl_json(&["chat", "hello"]);
    let sent = fake.requests();
    let version = sent
        .last()
        .unwrap()
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("anthropic-version"))
        .map(|(_, value)| value.clone());
    assert_eq!(version.as_deref(), Some("2023-06-01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_refuses_to_parse_huge_documents_for_a_client() {
    let fake = FakeProvider::start();
    let daemon = start(&fake);
    // 200,000 tables in 2.6 MB: parsing it once took the daemon from 48 to 673 MiB. Now such a
    // message is not even decoded.
    let huge: String = (0..200_000).map(|n| format!("[t{n}]\n")).collect();
    let status = support::control_client(&daemon.socket)
        .await
        .validate_config(pb::ValidateConfigRequest {
            toml: huge,
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    // One small enough to decode but too large to parse is refused with what to do instead.
    let large: String = (0..20_000).map(|n| format!("[t{n}]\n")).collect();
    assert!(large.len() > 64 * 1024 && large.len() < 320 * 1024);
    let status = support::control_client(&daemon.socket)
        .await
        .validate_config(pb::ValidateConfigRequest {
            toml: large,
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("--check-config"), "{}", status.message());
    // A normal document is still checked.
    let reply = support::control_client(&daemon.socket)
        .await
        .validate_config(pb::ValidateConfigRequest {
            toml: "[log]\nlevel = \"loud(\"\n".into(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.valid && reply.errors[0].contains("log.level"), "{reply:?}");
}

#[test]
fn config_errors_never_quote_a_secret() {
    let fake = FakeProvider::start();
    let mut daemon = start(&fake);
    let good = std::fs::read_to_string(&daemon.config_path).unwrap();
    let broken = good.replace("api_key = \"secret:anthropic\"", "api_key = sk-ant-api03-TOPSECRET");
    assert_ne!(good, broken);
    std::fs::write(&daemon.config_path, &broken).unwrap();
    let mut shown = String::new();
    for args in [
        &["config", "validate"][..],
        &["config", "reload"],
        &["config", "set", "log.level", "debug"],
    ] {
        let output = daemon.ctl(args);
        assert!(!output.status.success(), "{args:?}: {}", support::describe(&output));
        shown.push_str(&support::describe(&output));
    }
    // A client's own document, too.
    let file = daemon.dir.path().join("mine.toml");
    std::fs::write(&file, &broken).unwrap();
    shown.push_str(&support::describe(&daemon.ctl(&[
        "config",
        "validate",
        file.to_str().unwrap(),
    ])));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    // Wait until the failed reload is logged, then look at the whole log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !daemon.stderr().contains("reload failed") {
        assert!(std::time::Instant::now() < deadline, "the failed reload was not logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&daemon.config_path, &good).unwrap();
    daemon.stop();
    shown.push_str(&daemon.stderr());
    assert!(
        shown.contains("line 8, column 11"),
        "the errors still say where: {shown}"
    );
    assert!(!shown.contains("TOPSECRET"), "{shown}");
}

#[test]
fn credentials_in_a_base_url_are_never_shown() {
    let fake = FakeProvider::start();
    let daemon = start(&fake);
    let url = fake.url().replace("http://", "http://owner:hunter2@");
    let set = daemon.ctl(&["config", "set", "provider.base_url", &url]);
    assert!(set.status.success(), "{}", support::describe(&set));
    let mut shown = support::describe(&set);
    shown.push_str(&support::describe(&daemon.ctl(&["config", "get", "--json"])));
    shown.push_str(&support::describe(&daemon.ctl(&["config", "get"])));
    assert!(shown.contains("********@127.0.0.1"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // Nor in the error of a call that cannot connect, nor in the daemon's log.
    let set = daemon.ctl(&[
        "config",
        "set",
        "provider.base_url",
        "http://owner:hunter2@127.0.0.1:1/v1?key=hunter3",
    ]);
    assert!(set.status.success(), "{}", support::describe(&set));
    let chat = daemon.ctl(&["chat", "is anyone there?"]);
    assert_eq!(chat.status.code(), Some(1), "{}", support::describe(&chat));
    let mut shown = support::describe(&chat);
    shown.push_str(&daemon.stderr());
    assert!(shown.contains("cannot reach the provider"), "{shown}");
    assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
}
