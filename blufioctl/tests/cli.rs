//! `blufioctl` as users meet it, without a daemon: exit codes and messages when blufiod is not
//! reachable, usage errors, completions, the man page and `--help`. Tests against a live daemon
//! live in `blufiod/tests`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

/// The built `blufioctl`, with the environment that would change its behaviour cleared.
fn blufioctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blufioctl"));
    command
        .env_remove("BLUFIO_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("NO_COLOR");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("blufioctl should start")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_unreachable(output: &Output, socket: &Path) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
    assert!(
        stderr.starts_with(&format!("error: cannot reach blufiod at {}: ", socket.display())),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("hint: start it with 'blufiod'"),
        "stderr: {stderr}"
    );
}

#[test]
fn missing_socket_exits_3_and_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody-here.sock");
    let output = run(blufioctl().arg("status").arg("--socket").arg(&socket));
    assert_unreachable(&output, &socket);
    assert!(
        stderr(&output).contains("No such file or directory"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn stale_socket_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("stale.sock");
    // Binding creates the socket file; dropping the listener leaves it behind with nobody
    // listening, as after a crash of the daemon.
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let output = run(blufioctl().args(["--socket"]).arg(&socket).arg("status"));
    assert_unreachable(&output, &socket);
    assert!(
        stderr(&output).contains("Connection refused"),
        "stderr: {}",
        stderr(&output)
    );
}

#[test]
fn unreachable_with_json_prints_nothing_on_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    for args in [
        &["status", "--json"][..],
        &["config", "get", "--json"],
        &["config", "get", "log.level", "--json"],
        &["config", "reload", "--json"],
        &["config", "validate", "--json"],
    ] {
        let output = run(blufioctl().args(args).arg("--socket").arg(&socket));
        assert_unreachable(&output, &socket);
    }
}

#[test]
fn socket_comes_from_env_then_default_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_env = dir.path().join("from-env.sock");
    let output = run(blufioctl().arg("status").env("BLUFIO_SOCKET", &from_env));
    assert_unreachable(&output, &from_env);

    // Under systemd, $RUNTIME_DIRECTORY wins over everything else in the default.
    let output = run(blufioctl()
        .arg("status")
        .env("RUNTIME_DIRECTORY", dir.path()));
    assert_unreachable(&output, &dir.path().join("blufiod.sock"));

    // --socket wins over the environment.
    let flag = dir.path().join("flag.sock");
    let output = run(blufioctl()
        .args(["status", "--socket"])
        .arg(&flag)
        .env("BLUFIO_SOCKET", &from_env));
    assert_unreachable(&output, &flag);
}

#[test]
fn set_accepts_values_that_look_like_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    // Parsing must succeed (not exit 2) so that the failure is about the missing daemon.
    let output = run(blufioctl()
        .args(["config", "set", "agent.temperature", "-1", "--socket"])
        .arg(&socket));
    assert_unreachable(&output, &socket);
}

#[test]
fn validate_reports_an_unreadable_file_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("absent.toml");
    let socket = dir.path().join("missing.sock");
    let output = run(blufioctl()
        .args(["config", "validate"])
        .arg(&file)
        .arg("--socket")
        .arg(&socket));
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!("error: cannot read config file {}: ", file.display())),
        "stderr: {stderr}"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = run(blufioctl().arg("frobnicate"));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("frobnicate"));

    let output = run(blufioctl().args(["config", "set", "only-a-key"]));
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
}

#[test]
fn completions_for_bash() {
    let output = run(blufioctl().args(["completions", "bash"]));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let script = stdout(&output);
    assert!(script.contains("blufioctl"), "{script}");
    assert!(script.contains("complete"), "{script}");
    assert!(script.contains("validate"), "subcommands are completed: {script}");

    let output = run(blufioctl().args(["completions", "tcsh"]));
    assert_eq!(output.status.code(), Some(2), "unknown shells are usage errors");
}

#[test]
fn man_page_is_roff() {
    let output = run(blufioctl().arg("man"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let page = stdout(&output);
    assert!(
        page.starts_with(".TH") || page.starts_with(".ie"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains("blufioctl"));
    assert!(page.contains("Exit status"), "the exit codes are in the man page");
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let output = run(blufioctl().arg("--help"));
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let help = stdout(&output);
    for command in ["status", "config", "completions"] {
        assert!(help.contains(command), "missing {command}: {help}");
    }
    assert!(!help.contains("\n  man "), "man is hidden: {help}");
    assert!(help.contains("--socket"), "{help}");
    assert!(help.contains("BLUFIO_SOCKET"), "{help}");
    assert!(help.contains("Exit status:"), "{help}");
    for code in ["  0  ", "  1  ", "  2  ", "  3  "] {
        assert!(help.contains(code), "missing exit code {code:?}: {help}");
    }
    assert!(help.contains("not reachable"), "{help}");

    let output = run(blufioctl().args(["config", "--help"]));
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for command in ["get", "set", "validate", "reload"] {
        assert!(help.contains(command), "missing config {command}: {help}");
    }
}
