//! What a new user hit (the defects of the new-user report), each against the real binaries.

use blufio_testkit as support;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("blufiod.toml");
    std::fs::write(&config, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_blufiod"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_clients_variables_do_not_stop_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("blufiod.toml");
    std::fs::write(&config, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_blufiod"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .env("BLUFIO_REMOTE_URL", "https://agent.example:8443")
        .env("BLUFIO_REMOTE_KEY", "/home/me/.config/blufio/device.pem")
        .env("BLUFIO_REMOTE_PIN", "ab:cd")
        .env("BLUFIO_REMOTE_KEYID", "laptop")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A misspelt key of the daemon's own is still an error.
    let output = Command::new(env!("CARGO_BIN_EXE_blufiod"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .env("BLUFIO_LOG__LEVLE", "debug")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_invalid_config_into_a_closed_stderr_still_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("blufiod.toml");
    std::fs::write(&config, "[log]\nlevel = \"loud\"\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_blufiod"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::from(closed_pipe()))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn an_invalid_file_on_disk_is_shown_and_blamed_for_what_it_breaks() {
    let daemon = support::Daemon::start();
    let good = std::fs::read_to_string(&daemon.config_path).unwrap_or_default();
    std::fs::write(&daemon.config_path, format!("{good}\n[log]\nlevel = \"loud\"\n")).unwrap();
    let reload = daemon.ctl(&["config", "reload"]);
    assert_eq!(reload.status.code(), Some(1), "{}", support::describe(&reload));

    let status = daemon.ctl_json(&["status"]);
    let config = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["name"] == "config")
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(config.contains("the file on disk is invalid"), "{config}");
    assert!(config.contains("log.level"), "{config}");

    // Setting another key names the real problem instead of blaming the new value.
    let set = daemon.ctl(&["config", "set", "daemon.shutdown_timeout_secs", "5"]);
    let shown = support::describe(&set);
    assert_eq!(set.status.code(), Some(1), "{shown}");
    assert!(shown.contains("already has an error elsewhere"), "{shown}");
    assert!(shown.contains("log.level"), "{shown}");
    // Setting the broken key itself repairs the file.
    daemon.ctl_json(&["config", "set", "log.level", "info"]);
    let status = daemon.ctl_json(&["status"]);
    assert!(status.to_string().contains("up to date"), "{status}");
}

#[test]
fn a_key_can_be_unset_and_an_empty_secret_is_refused() {
    let daemon = support::Daemon::start();
    let empty = daemon.ctl(&["config", "set", "gateway.metrics_token", ""]);
    let shown = support::describe(&empty);
    assert_eq!(empty.status.code(), Some(1), "{shown}");
    assert!(shown.contains("takes the name of a secret in the vault"), "{shown}");
    // A reference is exactly `secret:NAME`: with a space in front it would be a literal.
    let spaced = daemon.ctl(&["config", "set", "gateway.metrics_token", " secret:metrics"]);
    assert!(
        support::describe(&spaced).contains("takes the name of a secret in the vault"),
        "{}",
        support::describe(&spaced)
    );
    let nameless = daemon.ctl(&["config", "set", "gateway.metrics_token", "secret:"]);
    let shown = support::describe(&nameless);
    assert_eq!(nameless.status.code(), Some(1), "{shown}");
    assert!(shown.contains("does not name a vault secret"), "{shown}");

    let stored = daemon.ctl_input(&["config", "set-secret", "metrics"], b"a-long-metrics-token\n");
    assert!(stored.status.success(), "{}", support::describe(&stored));
    daemon.ctl_json(&["config", "set", "gateway.metrics_token", "secret:metrics"]);
    daemon.ctl_json(&["config", "set", "log.level", "debug"]);
    let token = daemon.ctl_json(&["config", "get", "gateway.metrics_token"]);
    assert_eq!(token["entries"][0]["unset"], false, "{token}");

    let unset = daemon.ctl_json(&["config", "unset", "gateway.metrics_token"]);
    assert_eq!(unset["applied_live"], true, "{unset}");
    assert_eq!(unset["entry"]["unset"], true, "{unset}");
    let level = daemon.ctl(&["config", "unset", "log.level"]);
    let shown = String::from_utf8_lossy(&level.stdout).into_owned();
    assert!(
        shown.contains("log.level is not set in") && shown.contains("\"info\" (default)"),
        "{shown}"
    );
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(!text.contains("metrics_token") && !text.contains("debug"), "{text}");
    let unknown = daemon.ctl(&["config", "unset", "log.colour"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", support::describe(&unknown));
}

#[test]
fn a_daemon_that_dies_mid_turn_is_reported_with_the_session() {
    use support::fake_provider::{FakeProvider, Script};
    let fake = FakeProvider::start();
    fake.push(Script::Stall { after_chunks: 1 });
    let mut daemon = support::start_with_fake(&fake, "");
    let chat = daemon.ctl_in_background(&["chat", "are you there?"]);
    fake.wait_for_requests(1);
    daemon.kill();
    let output = chat.wait_with_output().unwrap();
    let shown = support::describe(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("blufiod went away during the turn"), "{shown}");
    assert!(stderr.contains("blufioctl status"), "{shown}");
    assert!(!stderr.contains("h2 protocol error"), "{shown}");
    // The session that holds the message is named.
    let session = stderr
        .split_whitespace()
        .map(|word| word.trim_end_matches([';', ',', '.']))
        .find(|word| word.len() == 36 && word.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no session id in: {shown}"));
    let daemon = support::Daemon::start_with(
        daemon.dir.clone(),
        support::DaemonOptions {
            config: support::fake_provider_config(&fake, ""),
            ..support::DaemonOptions::default()
        },
    );
    let shown = daemon.ctl_json(&["sessions", "show", session]);
    assert_eq!(shown["messages"][0]["text"], "are you there?", "{shown}");
}

#[test]
fn a_turn_that_fails_after_acceptance_names_its_session() {
    use support::fake_provider::{FakeProvider, Script};
    let fake = FakeProvider::start();
    fake.push(Script::http_error(401, "invalid x-api-key", None));
    let daemon = support::start_with_fake(&fake, "");
    let output = daemon.ctl(&["chat", "hello"]);
    let shown = support::describe(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    let listed = daemon.ctl_json(&["sessions", "list"]);
    let id = listed["sessions"][0]["id"].as_str().unwrap().to_owned();
    assert!(shown.contains(&format!("session {id}")), "{shown}");
}

#[test]
fn a_memory_limit_below_what_the_daemon_needs_is_refused() {
    let daemon = support::Daemon::start();
    let set = daemon.ctl(&["config", "set", "memory.limit_mib", "10"]);
    let shown = support::describe(&set);
    assert_eq!(set.status.code(), Some(1), "{shown}");
    assert!(shown.contains("set at least 32"), "{shown}");
    // Above that floor, the limit must leave room for what the gateway's connections can hold.
    let set = daemon.ctl(&["config", "set", "memory.limit_mib", "48"]);
    let shown = support::describe(&set);
    assert_eq!(set.status.code(), Some(1), "{shown}");
    assert!(shown.contains("gateway.max_connections to at most 85"), "{shown}");
    // Above the floor, a threshold below what the running daemon uses is refused too.
    let set = daemon.ctl(&["config", "set", "memory.pressure_percent", "1"]);
    let shown = support::describe(&set);
    assert_eq!(set.status.code(), Some(1), "{shown}");
    assert!(shown.contains("MiB blufiod uses now"), "{shown}");
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["memory"]["under_pressure"], false, "{status}");
}

#[test]
fn a_daemon_that_cannot_bind_its_gateway_leaves_no_socket_behind() {
    // The port is taken, so the gateway cannot bind after the control socket did.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = support::new_dir();
    let mut daemon = support::Daemon::start_with(
        dir,
        support::DaemonOptions {
            env: vec![("BLUFIO_GATEWAY__LISTEN".into(), format!("127.0.0.1:{port}"))],
            wait_ready: false,
            ..support::DaemonOptions::default()
        },
    );
    let exit = daemon.wait();
    assert_eq!(exit.code(), Some(1), "{}", daemon.stderr());
    assert!(
        daemon.stderr().contains(&format!("127.0.0.1:{port}")),
        "{}",
        daemon.stderr()
    );
    assert!(!daemon.socket.exists(), "the socket file was left behind");
}

#[test]
fn a_state_or_runtime_directory_others_can_change_or_a_planted_lock_link_stops_the_start() {
    // Reported (attack on b52db2a): a daemon started on a state directory every user could write
    // (mode 1777), and links planted at its lock files' paths made it create and lock files
    // wherever they pointed.
    use std::os::unix::fs::PermissionsExt as _;
    let start = |dir: &std::sync::Arc<tempfile::TempDir>| {
        let mut daemon = support::Daemon::start_with(
            dir.clone(),
            support::DaemonOptions {
                wait_ready: false,
                ..support::DaemonOptions::default()
            },
        );
        let exit = daemon.wait();
        assert_eq!(exit.code(), Some(1), "{}", daemon.stderr());
        daemon.stderr()
    };
    let dir = support::new_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.path().join("victim");
    std::os::unix::fs::symlink(&victim, state.join("blufiod.lock")).unwrap();
    let stderr = start(&dir);
    assert!(
        stderr.contains("is not private") && stderr.contains("mode 1777") && stderr.contains("chmod 700"),
        "{stderr}"
    );
    assert!(!victim.exists(), "a file was created through the link");
    assert!(!state.join("blufio.db").exists(), "the database was created first");

    // The runtime directory may be shared (root may use one like /run), but a link planted at
    // the socket's lock is not followed.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(state.join("blufiod.lock")).unwrap();
    let lock = dir.path().join("run/blufiod.sock.lock");
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let stderr = start(&dir);
    assert!(stderr.contains("blufiod.sock.lock"), "{stderr}");
    assert!(!victim.exists(), "a file was created through the link");

    // Reported (attack on 890500f): in a runtime directory every user could write, another user
    // moved the socket aside and bound their own in its place.
    std::fs::remove_file(&lock).unwrap();
    std::fs::set_permissions(dir.path().join("run"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = start(&dir);
    assert!(
        stderr.contains("the control socket's directory") && stderr.contains("mode 0777"),
        "{stderr}"
    );
    assert!(!dir.path().join("run/blufiod.sock").exists());
}

#[test]
fn config_get_suggests_keys_cuts_long_values_and_hints_once() {
    let daemon = support::Daemon::start();
    let section = daemon.ctl(&["config", "get", "log"]);
    let shown = support::describe(&section);
    assert!(
        shown.contains("`log` is a section; its keys are log.file, log.format, log.level"),
        "{shown}"
    );
    let typo = daemon.ctl(&["config", "get", "provider.apikey"]);
    let shown = support::describe(&typo);
    assert!(shown.contains("did you mean `provider.api_key`?"), "{shown}");
    let typo = daemon.ctl(&["config", "set", "provider.apikey", "x"]);
    let shown = support::describe(&typo);
    assert!(shown.contains("did you mean `provider.api_key`?"), "{shown}");

    // The pricing table no longer pads every line of the listing.
    let listing = daemon.ctl(&["config", "get"]);
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    let widest = text.lines().map(|line| line.chars().count()).max().unwrap();
    assert!(widest < 140, "a line of {widest} characters:\n{text}");
    assert!(text.contains("config get KEY` shows one whole"), "{text}");
    let pricing = daemon.ctl(&["config", "get", "pricing"]);
    assert!(
        String::from_utf8_lossy(&pricing.stdout).contains("claude"),
        "{}",
        support::describe(&pricing)
    );

    // A hint that repeats the daemon's own pointer is not printed.
    let missing = daemon.ctl(&["sessions", "show", "nope"]);
    let stderr = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert_eq!(stderr.matches("blufioctl sessions list").count(), 1, "{stderr}");
    let missing = daemon.ctl(&["device", "revoke", "nobody"]);
    let stderr = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert_eq!(stderr.matches("blufioctl device list").count(), 1, "{stderr}");
}

#[test]
fn config_set_errors_speak_of_the_value_and_localhost_is_a_listen_address() {
    let daemon = support::Daemon::start();
    let set = daemon.ctl(&["config", "set", "budget.daily_usd", "abc"]);
    let shown = support::describe(&set);
    assert!(
        shown.contains("budget.daily_usd: expected a number (such as 2.5), found string \"abc\""),
        "{shown}"
    );
    let file = daemon.config_path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !shown.contains(&format!("{file}:")),
        "no line of a file that was never written: {shown}"
    );
    assert!(!shown.contains("f64"), "{shown}");

    let set = daemon.ctl_json(&["config", "set", "gateway.metrics_listen", "localhost:0"]);
    assert_eq!(set["entry"]["value"], "localhost:0", "{set}");
}

#[test]
fn shell_refuses_a_missing_session_at_once_and_exits_1_when_a_turn_failed() {
    use std::io::Write as _;
    let daemon = support::Daemon::start();
    let shell = |args: &[&str], input: &str| {
        let mut child = Command::new(support::blufioctl_bin())
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("shell")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let missing = shell(&["--session", "no-such-session"], "");
    let shown = support::describe(&missing);
    assert_eq!(missing.status.code(), Some(1), "{shown}");
    assert!(shown.contains("no session \"no-such-session\""), "{shown}");
    // No provider is configured, so the turn fails; the shell carries on and then says so.
    let failed = shell(&[], "hello\n/quit\n");
    let shown = support::describe(&failed);
    assert_eq!(failed.status.code(), Some(1), "{shown}");
    assert!(shown.contains("1 turn(s) of this shell failed"), "{shown}");
    let fine = shell(&[], "/help\n");
    assert_eq!(fine.status.code(), Some(0), "{}", support::describe(&fine));
}

/// A daemon, the key file of a device registered on it, and its gateway's address.
fn daemon_with_a_device() -> (support::Daemon, std::path::PathBuf, String) {
    let daemon = support::Daemon::start();
    let key = daemon.dir.path().join("laptop.pem");
    daemon.ctl_json(&["device", "add", "laptop", "--key-out", key.to_str().unwrap()]);
    let listen = daemon.ctl_json(&["status"])["gateway"]["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    (daemon, key, listen)
}

#[test]
fn remote_over_plain_http_to_the_tls_gateway_says_to_use_https() {
    let (_daemon, key, listen) = daemon_with_a_device();
    let output = Command::new(support::blufioctl_bin())
        .args(["remote", "--url", &format!("http://{listen}"), "--key"])
        .arg(&key)
        .args(["sessions", "list"])
        .output()
        .unwrap();
    let shown = support::describe(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(shown.contains(&format!("use --url https://{listen}")), "{shown}");
}

#[test]
fn remote_without_a_pin_refuses_the_self_signed_gateway_and_says_to_pin_it() {
    let (daemon, key, listen) = daemon_with_a_device();
    // The host's certificate authorities, made known whatever this machine has installed: one CA
    // that never signed the daemon's certificate.
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let authority = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let authorities = daemon.dir.path().join("authorities.pem");
    std::fs::write(&authorities, authority.pem()).unwrap();
    let output = Command::new(support::blufioctl_bin())
        .env("SSL_CERT_FILE", &authorities)
        .env_remove("SSL_CERT_DIR")
        .args(["remote", "--url", &format!("https://{listen}"), "--key"])
        .arg(&key)
        .args(["sessions", "list"])
        .output()
        .unwrap();
    let shown = support::describe(&output);
    assert_eq!(output.status.code(), Some(3), "{shown}");
    assert!(shown.contains("invalid peer certificate"), "{shown}");
    assert!(
        shown.contains("is not trusted here") && shown.contains("pass --pin"),
        "{shown}"
    );
}

#[test]
fn a_missing_config_file_names_what_named_it() {
    for (flag, env, named_by, fix) in [
        (true, false, "named by --config", "drop --config"),
        (false, true, "named by BLUFIO_CONFIG", "unset BLUFIO_CONFIG"),
    ] {
        let mut command = Command::new(support::blufiod_bin());
        command.env_clear().arg("--check-config");
        if flag {
            command.args(["--config", "/nonexistent/blufiod.toml"]);
        }
        if env {
            command.env("BLUFIO_CONFIG", "/nonexistent/blufiod.toml");
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(named_by) && stderr.contains(fix), "{stderr}");
        assert!(!stderr.contains("packaging/"), "no repository path: {stderr}");
    }
}

#[test]
fn devices_can_be_renamed_and_revoked_entries_removed_with_precise_errors() {
    let daemon = support::Daemon::start();
    let key = daemon.dir.path().join("laptop.pem");
    daemon.ctl_json(&["device", "add", "laptop", "--key-out", key.to_str().unwrap()]);
    // The same name again names the name, not "name or key".
    let other = daemon.dir.path().join("other.pem");
    let again = daemon.ctl(&["device", "add", "laptop", "--key-out", other.to_str().unwrap()]);
    let shown = support::describe(&again);
    assert!(
        shown.contains("an active device is already named \"laptop\""),
        "{shown}"
    );

    let renamed = daemon.ctl_json(&["device", "rename", "laptop", "work-laptop"]);
    assert_eq!(renamed["device"]["name"], "work-laptop", "{renamed}");
    let missing = daemon.ctl(&["device", "rename", "laptop", "x"]);
    assert_eq!(missing.status.code(), Some(1), "{}", support::describe(&missing));

    // Removing needs a revoked entry; after revoke, the entry goes from the list.
    let active = daemon.ctl(&["device", "remove", "work-laptop"]);
    let shown = support::describe(&active);
    assert!(shown.contains("no revoked device named \"work-laptop\""), "{shown}");
    daemon.ctl_json(&["device", "revoke", "work-laptop"]);
    let removed = daemon.ctl_json(&["device", "remove", "work-laptop"]);
    assert_eq!(removed["removed"], 1, "{removed}");
    let list = daemon.ctl_json(&["device", "list"]);
    assert_eq!(list["devices"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn one_models_price_is_set_and_unset_by_its_own_key() {
    let daemon = support::Daemon::start();
    // A new model needs both prices; one field of a priced model can then change alone.
    let half = daemon.ctl(&["config", "set", "pricing.\"local-3.1\".input", "0.5"]);
    assert!(
        support::describe(&half).contains("missing field `output`"),
        "{}",
        support::describe(&half)
    );
    daemon.ctl_json(&[
        "config",
        "set",
        "pricing.\"local-3.1\"",
        "{ input = 0.5, output = 1.0 }",
    ]);
    daemon.ctl_json(&["config", "set", "pricing.\"local-3.1\".output", "1.5"]);
    daemon.ctl_json(&["config", "set", "pricing.other-model", "{ input = 2.0, output = 4.0 }"]);
    let pricing = daemon.ctl_json(&["config", "get", "pricing"]);
    let value = &pricing["entries"][0]["value"];
    assert_eq!(value["local-3.1"]["input"], 0.5, "{pricing}");
    assert_eq!(value["local-3.1"]["output"], 1.5, "{pricing}");
    assert_eq!(
        value["other-model"]["output"], 4.0,
        "the second model did not replace the first: {pricing}"
    );
    daemon.ctl_json(&["config", "unset", "pricing.other-model"]);
    let pricing = daemon.ctl_json(&["config", "get", "pricing"]);
    assert!(pricing["entries"][0]["value"]["other-model"].is_null(), "{pricing}");
    assert!(pricing["entries"][0]["value"]["local-3.1"].is_object(), "{pricing}");
    let unknown = daemon.ctl(&["config", "set", "pricing.x.price", "1"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", support::describe(&unknown));
}

#[test]
fn a_prompt_file_is_checked_on_set_and_never_read_for_a_callers_document() {
    let daemon = support::Daemon::start();
    let missing = daemon.ctl(&["config", "set", "agent.system_prompt_file", "/nonexistent/prompt.md"]);
    let shown = support::describe(&missing);
    assert_eq!(missing.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("agent.system_prompt_file: cannot read /nonexistent/prompt.md"),
        "{shown}"
    );

    // A FIFO nobody writes to would block whoever reads it.
    let fifo = daemon.dir.path().join("prompt.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let refused = daemon.ctl(&["config", "set", "agent.system_prompt_file", fifo.to_str().unwrap()]);
    let shown = support::describe(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(shown.contains("is not a regular file"), "{shown}");
    // A caller's own document is checked on its own: the daemon opens none of its paths.
    let document = daemon.dir.path().join("theirs.toml");
    std::fs::write(
        &document,
        format!("[agent]\nsystem_prompt_file = \"{}\"\n", fifo.display()),
    )
    .unwrap();
    let validated = daemon.ctl(&["config", "validate", document.to_str().unwrap()]);
    assert_eq!(validated.status.code(), Some(0), "{}", support::describe(&validated));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(daemon.ctl_json(&["status"])["state"], "ready");
}

#[test]
fn titles_from_others_cannot_drive_the_terminal() {
    use support::fake_provider::FakeProvider;
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    let session = daemon.ctl_json(&["chat", "hello"])["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    daemon.ctl_json(&[
        "sessions",
        "rename",
        &session,
        "\u{1b}]0;PWNED\u{7}\u{1b}[2J evil\nforged row",
    ]);
    for args in [&["sessions", "list"][..], &["usage"], &["sessions", "show", &session]] {
        let output = daemon.ctl(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
            "{args:?}: {stdout:?}"
        );
        assert!(!stdout.contains("\nforged row"), "{args:?}: {stdout:?}");
    }
    let listed = String::from_utf8_lossy(&daemon.ctl(&["sessions", "list"]).stdout).into_owned();
    assert!(listed.contains("^[]0;PWNED^G"), "shown in caret notation: {listed}");
    // Warning lines too: an unpriced model's name is quoted in the provider problem.
    daemon.ctl_json(&["config", "set", "provider.model", "\u{1b}]0;MODEL\u{7}"]);
    let status = daemon.ctl(&["status"]);
    let stderr = String::from_utf8_lossy(&status.stderr).into_owned();
    assert!(stderr.contains("warning:") && !stderr.contains('\u{1b}'), "{stderr:?}");
    let export = daemon.ctl(&["sessions", "export", &session]);
    assert!(!String::from_utf8_lossy(&export.stdout).contains('\u{1b}'));
}
