//! `blufioctl doctor` with the daemon down, hung or misconfigured: the offline checks run against
//! real files, a real stale socket and real locks held by a real (stopped) daemon, then exit 3.

use std::os::unix::fs::PermissionsExt as _;

use blufio_testkit::{Daemon, DaemonOptions, describe, new_dir};

/// `doctor --json --config <daemon's config>` against the daemon's socket: the exit code and the
/// document.
fn offline_doctor(daemon: &Daemon, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let config = daemon.config_path.to_str().unwrap();
    let mut args = vec!["doctor", "--json", "--config", config];
    args.extend(extra);
    let output = daemon.ctl(&args);
    let report =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{error}: {}", describe(&output)));
    (output.status.code(), report)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

#[test]
fn after_a_crash_doctor_finds_the_stale_socket_and_a_valid_config_and_exits_3() {
    let mut daemon = Daemon::start();
    // The daemon's own check names, to compare with what the offline report says could not run.
    let output = daemon.ctl(&["doctor", "--deep", "--json"]);
    let live: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", describe(&output)));
    let mut names: Vec<String> = live["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap().to_owned())
        .collect();
    daemon.kill();

    let (code, report) = offline_doctor(&daemon, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(report["daemon_reachable"], false);
    let down = check(&report, "daemon");
    assert_eq!(down["level"], "fail");
    let detail = down["detail"].as_str().unwrap();
    let listed = detail
        .split_once("its own checks (")
        .and_then(|(_, rest)| rest.split_once(") could not run"))
        .unwrap_or_else(|| panic!("{detail}"))
        .0;
    let mut not_run: Vec<String> = listed.split(", ").map(str::to_owned).collect();
    names.sort();
    not_run.sort();
    assert_eq!(not_run, names, "the offline list names exactly the daemon's checks");

    let config = check(&report, "config");
    assert_eq!(config["level"], "ok", "{config}");
    assert!(config["detail"].as_str().unwrap().contains("parses and validates"));
    let state = check(&report, "state_dir");
    assert_eq!(state["level"], "ok", "{state}");
    assert!(state["detail"].as_str().unwrap().contains("mode 700"), "{state}");
    let lock = check(&report, "lock");
    assert_eq!(lock["level"], "warn", "{lock}");
    assert!(lock["detail"].as_str().unwrap().contains("stale socket"), "{lock}");

    // Human output: the same lines, then the usual unreachable error on stderr.
    let output = daemon.ctl(&["--plain", "doctor", "--config", daemon.config_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("warn\tlock\t") && text.contains("fail\tdaemon\t"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("error: cannot reach blufiod at"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_broken_config_and_an_open_state_directory_fail_with_the_fix() {
    let dir = new_dir();
    let mut daemon = Daemon::start_with(dir.clone(), DaemonOptions::default());
    daemon.stop();
    let state = dir.path().join("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, report) = offline_doctor(&daemon, &[]);
    assert_eq!(code, Some(3));
    let open = check(&report, "state_dir");
    assert_eq!(open["level"], "fail", "{open}");
    assert_eq!(open["hint"], format!("chmod 700 {}", state.display()));
    // A clean stop removed the socket: nothing stale.
    assert_eq!(check(&report, "lock")["level"], "ok");

    let mut text = std::fs::read_to_string(&daemon.config_path).unwrap();
    text.push_str("[budget]\ndaily_usd = \"lots\"\n");
    std::fs::write(&daemon.config_path, text).unwrap();
    let (code, report) = offline_doctor(&daemon, &[]);
    assert_eq!(code, Some(3));
    let config = check(&report, "config");
    assert_eq!(config["level"], "fail", "{config}");
    assert!(
        config["detail"].as_str().unwrap().contains("budget.daily_usd"),
        "the error names the key: {config}"
    );
    // Without valid paths the state directory is not guessed at.
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|check| check["name"] != "state_dir")
    );
}

#[test]
fn a_user_the_socket_refuses_is_told_so_not_that_the_daemon_is_down() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let dir = new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_with(dir.clone(), DaemonOptions::default());
    std::fs::set_permissions(&daemon.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = daemon.config_path.to_str().unwrap();
    // nobody: not root, not the daemon's user, not in a control group.
    let output = daemon.ctl_as(65534, 65534, &["doctor", "--json", "--config", config]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", describe(&output)));
    let down = check(&report, "daemon");
    assert!(down["detail"].as_str().unwrap().contains("refuses this user"), "{down}");
    assert!(
        down["hint"].as_str().unwrap().contains("sudo blufioctl doctor"),
        "{down}"
    );
    let lock = check(&report, "lock");
    assert_ne!(lock["level"], "fail", "not called hung: {lock}");
    assert!(!lock["detail"].as_str().unwrap().contains("does not answer"), "{lock}");
}
