//! Lifecycle hooks against the real daemon: real programs (small shell scripts the test writes)
//! run at lifecycle points and on alerts, with a clean environment, their details as variables
//! and JSON, their output in the log, their process group killed after them and on timeout, and
//! a bound on how many run at once.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blufio_testkit::{Daemon, DaemonOptions, PATIENCE, describe, new_dir};

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A hook that records its environment, its stdin and the pid of a child it leaves in the
/// background into `<out>/<BLUFIO_EVENT>.{env,json,child}`, and prints a line.
fn recorder(dir: &Path) -> PathBuf {
    script(
        dir,
        "record.sh",
        r#"out="$1"
env | sort > "$out/$BLUFIO_EVENT.env.tmp"
cat > "$out/$BLUFIO_EVENT.json.tmp"
sleep 300 &
echo $! > "$out/$BLUFIO_EVENT.child.tmp"
for kind in env json child; do mv "$out/$BLUFIO_EVENT.$kind.tmp" "$out/$BLUFIO_EVENT.$kind"; done
echo "hello from $BLUFIO_EVENT"
"#,
    )
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn process_alive(pid: i32) -> bool {
    // A zombie is dead for this purpose (its parent, not blufiod, reaps it).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn wait_until_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) is still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn toml_argv(argv: &[&str]) -> String {
    let quoted: Vec<String> = argv.iter().map(|arg| format!("{arg:?}")).collect();
    format!("[[{}]]", quoted.join(", "))
}

fn start_with_hooks(dir: std::sync::Arc<tempfile::TempDir>, hooks: &str) -> Daemon {
    Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!("[hooks]\n{hooks}"),
            env: vec![("SECRET_TOKEN".to_owned(), "must-not-leak".to_owned())],
            ..DaemonOptions::default()
        },
    )
}

#[test]
fn alert_and_lifecycle_hooks_get_a_clean_environment_their_details_and_a_process_group() {
    let dir = new_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let record = recorder(dir.path());
    let argv = toml_argv(&[record.to_str().unwrap(), out.to_str().unwrap()]);
    let mut daemon = start_with_hooks(
        dir.clone(),
        &format!(
            "post_start = {argv}\non_device_change = {argv}\npre_reload = {argv}\npre_stop = {argv}\npost_stop = {argv}\n"
        ),
    );

    // post_start, after READY.
    let env = wait_for_file(&out.join("post_start.env"));
    let mut names: Vec<&str> = env.lines().map(|line| line.split('=').next().unwrap()).collect();
    names.retain(|name| !["PWD", "SHLVL", "_"].contains(name)); // set by the shell itself
    assert_eq!(
        names,
        ["BLUFIOCTL_SOCKET", "BLUFIO_EVENT", "BLUFIO_VERSION", "LANG", "PATH"],
        "a clean environment: {env}"
    );
    assert!(!env.contains("must-not-leak"));
    assert!(
        env.contains(&format!("BLUFIOCTL_SOCKET={}\n", daemon.socket.display())),
        "{env}"
    );
    // What it left in the background died with it.
    let child: i32 = wait_for_file(&out.join("post_start.child")).trim().parse().unwrap();
    wait_until_dead(child, "post_start's background child");

    // An alert: a device added, with its details in the environment and as JSON on stdin.
    let key = dir.path().join("phone.pem");
    daemon.ctl_json(&["device", "add", "phone", "--key-out", key.to_str().unwrap()]);
    let env = wait_for_file(&out.join("on_device_change.env"));
    assert!(
        env.contains("BLUFIO_CHANGE=added\n") && env.contains("BLUFIO_DEVICE=phone\n") && env.contains("BLUFIO_KEYID="),
        "{env}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&wait_for_file(&out.join("on_device_change.json"))).expect("JSON on stdin");
    assert_eq!(json["event"], "on_device_change");
    assert_eq!(json["device"], "phone");
    assert_eq!(json["change"], "added");

    // Its output is in the log, under the hook's name.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let output = daemon.ctl(&["logs", "-n", "200"]);
        let text = String::from_utf8_lossy(&output.stdout);
        if text.contains("hello from on_device_change") && text.contains("hook=\"on_device_change\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook's output never reached the log: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let samples = daemon.metrics();
    assert_eq!(
        samples.value("blufio_hook_runs_total{hook=\"on_device_change\",outcome=\"ok\"}"),
        1.0
    );

    // pre_reload is awaited: it has run when the reload answers.
    daemon.ctl_json(&["config", "reload"]);
    assert!(
        out.join("pre_reload.env").exists(),
        "pre_reload ran before the reload answered"
    );

    // hooks list shows the last runs.
    let list = daemon.ctl_json(&["hooks", "list"]);
    let hook = |name: &str| {
        list["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|hook| hook["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(hook("post_start")["last_run"]["outcome"], "ok", "{list}");
    assert_eq!(hook("post_start")["last_run"]["exit_code"], 0);
    assert_eq!(hook("on_backup")["commands"], serde_json::json!([]));
    assert_eq!(hook("on_backup")["last_run"], serde_json::Value::Null);

    // pre_stop and post_stop run during a clean stop.
    assert!(daemon.stop().success());
    assert!(out.join("pre_stop.env").exists());
    let post_stop = std::fs::read_to_string(out.join("post_stop.env")).unwrap();
    assert!(post_stop.contains("BLUFIO_CLEAN=1\n"), "{post_stop}");
}

#[test]
fn a_failing_pre_start_hook_stops_the_start_before_ready() {
    let dir = new_dir();
    let fail = script(dir.path(), "fail.sh", "echo 'the network is not up' >&2\nexit 3\n");
    let mut daemon = Daemon::start_with(
        dir.clone(),
        DaemonOptions {
            config: format!("[hooks]\npre_start = {}\n", toml_argv(&[fail.to_str().unwrap()])),
            wait_ready: false,
            ..DaemonOptions::default()
        },
    );
    let status = daemon.wait();
    assert_eq!(status.code(), Some(1), "{}", daemon.stderr());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("the pre_start hook {} failed (exit status 3)", fail.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("the network is not up"),
        "its output is logged: {stderr}"
    );
    let notified = daemon.notify.as_ref().unwrap().all();
    assert!(!notified.iter().any(|line| line.contains("READY=1")), "{notified:?}");
    assert!(!daemon.socket.exists(), "nothing was bound");

    // A program named without its path is a configuration error: exit 2, with the fix.
    let dir = new_dir();
    let mut daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[hooks]\non_backup = [[\"rsync\", \"-a\"]]\n".to_owned(),
            wait_ready: false,
            ..DaemonOptions::default()
        },
    );
    assert_eq!(daemon.wait().code(), Some(2));
    assert!(
        daemon
            .stderr()
            .contains("hooks.on_backup[0]: \"rsync\" is not an absolute path"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_its_group_and_excess_alerts_are_dropped() {
    let dir = new_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Leaves a child in its group, then hangs.
    let hang = script(
        dir.path(),
        "hang.sh",
        "sleep 300 &\necho $! >> \"$1/children\"\necho $$ >> \"$1/parents\"\nsleep 300\n",
    );
    let daemon = start_with_hooks(
        dir.clone(),
        &format!(
            "timeout_secs = 2\nmax_concurrent = 1\non_device_change = {}\n",
            toml_argv(&[hang.to_str().unwrap(), out.to_str().unwrap()])
        ),
    );
    // Three alerts at once: one runs, two find no room.
    for name in ["a", "b", "c"] {
        let key = dir.path().join(format!("{name}.pem"));
        daemon.ctl_json(&["device", "add", name, "--key-out", key.to_str().unwrap()]);
    }
    let parent: i32 = wait_for_file(&out.join("parents")).trim().parse().unwrap();
    let child: i32 = wait_for_file(&out.join("children")).trim().parse().unwrap();
    wait_until_dead(parent, "the hung hook");
    wait_until_dead(child, "the hung hook's background child");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let samples = daemon.metrics();
        let timeout = samples.get("blufio_hook_runs_total{hook=\"on_device_change\",outcome=\"timeout\"}");
        let dropped = samples.get("blufio_hook_runs_total{hook=\"on_device_change\",outcome=\"dropped\"}");
        if timeout == Some(1.0) {
            assert_eq!(dropped, Some(2.0));
            break;
        }
        assert!(Instant::now() < deadline, "no timeout counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(out.join("parents")).unwrap().lines().count(),
        1,
        "only one ran"
    );
    let list = daemon.ctl_json(&["hooks", "list"]);
    let last = list["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|hook| hook["name"] == "on_device_change")
        .unwrap()["last_run"]
        .clone();
    // The last to finish was the timed-out one; the drops were recorded when they happened.
    assert_eq!(last["outcome"], "timeout", "{list}");
    assert!(last["detail"].as_str().unwrap().contains("killed after 2 s"), "{list}");
}

#[test]
fn hooks_test_runs_a_hook_with_a_sample_event_and_says_how_it_ended() {
    let dir = new_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let record = recorder(dir.path());
    // Its output tries to rewrite the line a terminal shows (a carriage return, then an escape
    // sequence that erases the line).
    let fail = script(dir.path(), "fail.sh", "printf 'real\\r\\033[2Kforged\\n'\nexit 4\n");
    let daemon = start_with_hooks(
        dir.clone(),
        &format!(
            "on_backup = {}\non_budget_exhausted = {}\n",
            toml_argv(&[record.to_str().unwrap(), out.to_str().unwrap()]),
            toml_argv(&[fail.to_str().unwrap()])
        ),
    );
    let report = daemon.ctl_json(&["hooks", "test", "on_backup"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["runs"][0]["exit_code"], 0);
    let env = std::fs::read_to_string(out.join("on_backup.env")).unwrap();
    assert!(
        env.contains("BLUFIO_TEST=1\n") && env.contains("BLUFIO_OUTCOME=ok\n") && env.contains("BLUFIO_BACKUP_PATH="),
        "{env}"
    );

    let output = daemon.ctl(&["--plain", "hooks", "test", "on_budget_exhausted"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("failed\t{}\t", fail.display())),
        "{}",
        describe(&output)
    );

    let deadline = Instant::now() + PATIENCE;
    while !daemon.stderr().contains("forged") {
        assert!(Instant::now() < deadline, "no output line: {}", daemon.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.stderr();
    assert!(!log.contains('\r') && !log.contains('\u{1b}'), "{log:?}");
    assert!(log.contains("real\\r\\u{1b}[2Kforged"), "{log}");

    let output = daemon.ctl(&["hooks", "test", "on_nothing"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no hook named \"on_nothing\"; the hooks are pre_start"),
        "{}",
        describe(&output)
    );
    let output = daemon.ctl(&["hooks", "test", "pre_stop"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("hooks.pre_stop has no commands"),
        "{}",
        describe(&output)
    );
    // A hook is set live, like any key.
    let argv = toml_argv(&[record.to_str().unwrap(), out.to_str().unwrap()]);
    daemon.ctl_json(&["config", "set", "hooks.pre_stop", &argv]);
    assert_eq!(daemon.ctl_json(&["hooks", "test", "pre_stop"])["ok"], true);
}

/// `packaging/hooks/NAME`, as installed.
fn packaged_hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/hooks")
        .join(name)
}

#[test]
fn the_packaged_budget_webhook_posts_the_event() {
    // A webhook on 127.0.0.1 that keeps the one request it gets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead as _, Read as _, Write as _};
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        (head, String::from_utf8(body).unwrap())
    });
    let dir = new_dir();
    let url_file = dir.path().join("webhook-url");
    std::fs::write(&url_file, format!("http://127.0.0.1:{port}/hook/secret-token\n")).unwrap();
    let daemon = start_with_hooks(
        dir.clone(),
        &format!(
            "on_budget_exhausted = {}\n",
            toml_argv(&[
                packaged_hook("budget-webhook").to_str().unwrap(),
                url_file.to_str().unwrap()
            ])
        ),
    );
    let report = daemon.ctl_json(&["hooks", "test", "on_budget_exhausted"]);
    assert_eq!(report["ok"], true, "{report}\n{}", daemon.ctl_json(&["hooks", "list"]));
    let (head, body) = server.join().unwrap();
    assert!(head.starts_with("POST /hook/secret-token HTTP/1.1\r\n"), "{head}");
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["event"], "on_budget_exhausted");
    assert_eq!(event["period"], "day");
    assert_eq!(event["test"], "1");
}

#[test]
fn the_packaged_backup_offsite_copies_each_scheduled_backup() {
    let dir = new_dir();
    let offsite = dir.path().join("offsite");
    std::fs::create_dir(&offsite).unwrap();
    let daemon = start_with_hooks(
        dir.clone(),
        &format!(
            "on_backup = {}\n[backup]\ninterval_secs = 0\n",
            toml_argv(&[
                packaged_hook("backup-offsite").to_str().unwrap(),
                &format!("{}/", offsite.display())
            ])
        ),
    );
    // The sample event names a file that does not exist here: rsync fails, and the test says so.
    let output = daemon.ctl(&["hooks", "test", "on_backup", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["runs"][0]["outcome"], "failed", "{report}");
    // A scheduled one is copied.
    daemon.ctl_json(&["config", "set", "backup.interval_secs", "1"]);
    let deadline = Instant::now() + PATIENCE;
    let copied = loop {
        let copies: Vec<PathBuf> = std::fs::read_dir(&offsite)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "tar"))
            .collect();
        if let Some(copy) = copies.first() {
            break copy.clone();
        }
        assert!(Instant::now() < deadline, "no backup reached {}", offsite.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    daemon.ctl_json(&["config", "set", "backup.interval_secs", "0"]);
    let original = dir.path().join("state/backups").join(copied.file_name().unwrap());
    // rsync writes under a temporary name and renames: the copy is whole once it has its name.
    assert_eq!(std::fs::read(&copied).unwrap(), std::fs::read(&original).unwrap());
    let verify = daemon.ctl_json(&["backup", "--verify", copied.to_str().unwrap()]);
    assert_eq!(verify["verified"], true, "{verify}");
}

#[test]
fn every_hook_key_applies_to_the_next_run() {
    let dir = new_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let record = recorder(dir.path());
    let hang = script(dir.path(), "hang.sh", "sleep 300\n");
    let daemon = start_with_hooks(dir.clone(), "");
    let argv = toml_argv(&[record.to_str().unwrap(), out.to_str().unwrap()]);
    // The keys spelled out: tests/live_config.rs looks for each in this test.
    for (name, key) in [
        ("pre_start", "hooks.pre_start"),
        ("post_start", "hooks.post_start"),
        ("pre_reload", "hooks.pre_reload"),
        ("post_reload", "hooks.post_reload"),
        ("pre_stop", "hooks.pre_stop"),
        ("post_stop", "hooks.post_stop"),
        ("on_budget_exhausted", "hooks.on_budget_exhausted"),
        ("on_memory_pressure", "hooks.on_memory_pressure"),
        ("on_backup", "hooks.on_backup"),
        ("on_device_change", "hooks.on_device_change"),
        ("on_provider_down", "hooks.on_provider_down"),
    ] {
        daemon.ctl_json(&["config", "set", key, &argv]);
        let report = daemon.ctl_json(&["hooks", "test", name]);
        assert_eq!(report["ok"], true, "{name}: {report}");
        let env = std::fs::read_to_string(out.join(format!("{name}.env"))).unwrap();
        assert!(env.contains(&format!("BLUFIO_EVENT={name}\n")), "{env}");
    }
    // The timeout applies to the next run.
    daemon.ctl_json(&[
        "config",
        "set",
        "hooks.on_backup",
        &toml_argv(&[hang.to_str().unwrap()]),
    ]);
    daemon.ctl_json(&["config", "set", "hooks.timeout_secs", "1"]);
    let started = Instant::now();
    let output = daemon.ctl(&["hooks", "test", "on_backup", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["runs"][0]["outcome"], "timeout", "{report}");
    assert!(started.elapsed() < Duration::from_secs(20), "killed at the new timeout");
}

/// Finding 10 of the attack on issue 13: with `group_access = "full"`, a member could set
/// `hooks.*` (or `log.file`, a tool's allow list, ...) and make the daemon run or open anything as
/// its own user, root included. Those keys and calls are the owner's now.
#[test]
fn a_groups_full_access_does_not_reach_the_daemons_identity() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let dir = new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = dir.path().join("ran-as-the-daemon");
    let touch = script(dir.path(), "touch.sh", &format!("touch {}\n", marker.display()));
    let daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: "[control]\ngroup = \"nogroup\"\ngroup_access = \"full\"\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let member = |args: &[&str]| daemon.ctl_as(65534, 65534, args);
    let refused = |output: &std::process::Output, what: &str| {
        assert!(!output.status.success(), "{what}: {}", describe(output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("only root and the daemon's own user"),
            "{what}: {}",
            describe(output)
        );
    };
    let config_before = std::fs::read_to_string(&daemon.config_path).unwrap();

    // Full access still changes ordinary settings...
    let output = member(&["config", "set", "budget.daily_usd", "5"]);
    assert!(output.status.success(), "{}", describe(&output));
    let config_after_budget = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert_ne!(config_before, config_after_budget);

    // ...but not what the daemon runs, opens or trusts as itself.
    let hook = format!("[[\"{}\"]]", touch.display());
    for (key, value) in [
        ("hooks.post_reload", hook.as_str()),
        ("hooks.timeout_secs", "5"),
        ("log.file", "/etc/blufio-owned-by-a-member.log"),
        ("tools.run_command.allow", "[\"/bin/sh\"]"),
        ("tools.files.workspace", "/"),
        ("tools.http_get.allow_private", "true"),
        ("provider.base_url", "http://127.0.0.1:9/"),
        ("provider.api_key", "secret:anthropic"),
        ("provider.kind", "openai"),
        ("gateway.listen", "0.0.0.0:443"),
        ("backup.keep", "1"),
        ("agent.system_prompt_file", "/etc/shadow"),
        ("backup.dir", "/etc"),
        ("control.group", "users"),
    ] {
        refused(&member(&["config", "set", key, value]), key);
        refused(&member(&["config", "unset", key]), key);
    }
    assert_eq!(
        std::fs::read_to_string(&daemon.config_path).unwrap(),
        config_after_budget,
        "a refused change wrote nothing"
    );
    refused(&member(&["hooks", "test", "post_reload"]), "hooks test");
    refused(&member(&["vault", "rekey"]), "vault rekey");
    refused(&member(&["backup", "--include-tls", "-"]), "backup --include-tls");
    // The config file, unmasked, is the owner's too; a member's backup leaves it out.
    refused(&member(&["backup", "-"]), "backup with the config file");
    let output = member(&["backup", "--without-config", "-"]);
    assert!(
        output.status.success() && !output.stdout.is_empty(),
        "{}",
        describe(&output)
    );
    // To a file, a member's archive is streamed too: only the owner is handed the snapshot's
    // descriptor (building from it costs a member nothing, and a backup resets the schedule).
    let drop_box = tempfile::tempdir().unwrap();
    std::fs::set_permissions(drop_box.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let output = member(&[
        "backup",
        "--without-config",
        drop_box.path().join("member.tar").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    // The daemon logs a backup once it hears the call end, which may be after the client exited.
    let last_backup_line_says = |says: &str| {
        let last_backup_line = || {
            daemon
                .stderr()
                .lines()
                .rev()
                .find(|line| line.contains("backup finished"))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + blufio_testkit::PATIENCE;
        while !last_backup_line().contains(says) {
            assert!(
                std::time::Instant::now() < deadline,
                "the last backup line does not say {says:?}: {}",
                last_backup_line()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    last_backup_line_says("member's backup finished (streamed");
    // Nor does a member's backup count as the daemon's last one (status, schedule, health).
    assert!(
        daemon.ctl_json(&["status"])["backup"]["last_success_at"]
            .as_i64()
            .is_none_or(|at| at == 0),
        "{}",
        daemon.ctl_json(&["status"])
    );
    let archive = std::env::temp_dir().join(format!("blufio-owner-test-{}.tar", std::process::id()));
    let output = daemon.ctl(&["backup", "--force", archive.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    last_backup_line_says("built by a client from the snapshot's descriptor");
    assert!(
        daemon.ctl_json(&["status"])["backup"]["last_success_at"].as_i64() > Some(0),
        "{}",
        daemon.ctl_json(&["status"])
    );
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = member(&["restore", "--restore-config", archive.to_str().unwrap()]);
    let _ = std::fs::remove_file(&archive);
    refused(&output, "restore --restore-config");

    // The owner may: the same hook, set by root, runs.
    let output = daemon.ctl(&["config", "set", "hooks.post_reload", &hook]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = daemon.ctl(&["hooks", "test", "post_reload"]);
    assert!(output.status.success(), "{}", describe(&output));
    wait_for_file(&marker);
}
