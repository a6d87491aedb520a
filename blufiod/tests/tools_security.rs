//! Security regressions of the built-in tools, attacked as a model would: the fake provider asks
//! the real daemon for tool calls, and each test checks what the tool handed back to the model.

mod support;

use std::os::fd::AsRawFd as _;
use std::path::Path;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde_json::{Value, json};
use support::fake_provider::{FakeProvider, Script};
use support::{Daemon, DaemonOptions, fake_provider_config, new_dir};

/// What one tool call returned to the model.
#[derive(Debug)]
struct ToolResult {
    content: String,
    is_error: bool,
}

/// Starts a daemon whose provider is `fake`, with `extra` config appended.
fn start(fake: &FakeProvider, extra: &str) -> Daemon {
    Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(fake, extra),
            ..DaemonOptions::default()
        },
    )
}

/// Runs one chat turn in which the model calls `calls` (tool name, input) one after the other,
/// and returns each call's result plus everything blufioctl printed for the turn.
fn run_tools(fake: &FakeProvider, daemon: &Daemon, calls: &[(&str, Value)]) -> (Vec<ToolResult>, String) {
    let first_request = fake.request_count();
    for (index, (name, input)) in calls.iter().enumerate() {
        fake.push(Script::tool_use(&format!("toolu_{index}"), name, input.clone()));
    }
    fake.push(Script::text("done", 1));
    let chat = daemon.ctl_json(&["chat", "use the tools"]);
    assert_eq!(chat["text"], "done", "{chat}");

    let requests = fake.requests();
    let results = requests[first_request + 1..]
        .iter()
        .map(|request| {
            let last = request.body["messages"].as_array().unwrap().last().unwrap().clone();
            let block = &last["content"][0];
            assert_eq!(block["type"], "tool_result", "{last}");
            ToolResult {
                content: block["content"].as_str().unwrap().to_owned(),
                is_error: block["is_error"].as_bool().unwrap(),
            }
        })
        .collect::<Vec<_>>();
    assert_eq!(results.len(), calls.len(), "{chat}");
    (results, chat.to_string())
}

/// The first of `candidates` that exists.
fn first_existing(candidates: &[&'static str]) -> Option<&'static str> {
    candidates.iter().copied().find(|path| Path::new(path).exists())
}

/// Skips a test whose prerequisite is missing, except under CI, where it must be present.
fn skip_unless_ci(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}; CI must provide it (.ci/run)");
    eprintln!("skipped: {why}");
}

/// Finding: `run_command` compared resolved paths, so allowing one name of a multi-call binary
/// (busybox, uutils, toybox) allowed every other name of it, `sh` included.
#[test]
fn run_command_does_not_let_one_busybox_name_stand_for_another() {
    let Some(busybox) = first_existing(&["/bin/busybox", "/usr/bin/busybox"]) else {
        skip_unless_ci("busybox is not installed");
        return;
    };
    let links = tempfile::tempdir().unwrap();
    let uptime = links.path().join("uptime");
    let shell = links.path().join("sh");
    std::os::unix::fs::symlink(busybox, &uptime).unwrap();
    std::os::unix::fs::symlink(busybox, &shell).unwrap();
    let (uptime, shell) = (uptime.to_str().unwrap(), shell.to_str().unwrap());

    let fake = FakeProvider::start();
    let daemon = start(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{uptime}\"]\n"),
    );
    let (results, transcript) = run_tools(
        &fake,
        &daemon,
        &[
            ("run_command", json!({"program": shell, "args": ["-c", "echo pwned"]})),
            ("run_command", json!({"program": uptime})),
        ],
    );

    let refused = &results[0];
    assert!(refused.is_error, "{refused:?}");
    assert!(
        refused.content.contains("not in tools.run_command.allow"),
        "{refused:?}"
    );
    // The words only ever appear in the model's request, never in anything that came back.
    assert!(
        results.iter().all(|result| !result.content.contains("pwned")),
        "{results:?}"
    );
    assert!(!transcript.contains("pwned"), "{transcript}");

    let allowed = &results[1];
    assert!(!allowed.is_error, "{allowed:?}");
    assert!(allowed.content.contains("load average"), "{allowed:?}");
}

/// Finding: programs that `run_command` starts inherited every descriptor the daemon itself had
/// inherited without close-on-exec (from a service manager, a shell, a careless parent).
#[test]
fn run_command_programs_get_no_descriptor_the_daemon_inherited() {
    let ls = first_existing(&["/bin/ls", "/usr/bin/ls"]).expect("ls exists");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("inherited-descriptor-marker");
    let file = std::fs::File::create(&marker).unwrap();
    let inherited = file.as_raw_fd();
    // std opens files close-on-exec; clearing the flag makes the daemon spawned below inherit it,
    // as it would from a parent that leaks descriptors. (Daemons other tests of this binary
    // start meanwhile inherit it too, which does them no harm.)
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();

    let fake = FakeProvider::start();
    let daemon = start(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{ls}\"]\n"),
    );
    // The setup worked: the daemon holds the descriptor.
    let held = std::fs::read_link(format!("/proc/{}/fd/{inherited}", daemon.pid()));
    assert_eq!(
        held.ok().as_deref(),
        Some(marker.as_path()),
        "the daemon did not inherit it"
    );

    let (results, _) = run_tools(
        &fake,
        &daemon,
        &[("run_command", json!({"program": ls, "args": ["-l", "/proc/self/fd"]}))],
    );
    let listing = &results[0];
    assert!(!listing.is_error, "{listing:?}");
    // `ls -l` shows one line per descriptor: `... <fd> -> <target>`.
    let descriptors: Vec<(u32, &str)> = listing
        .content
        .lines()
        .filter_map(|line| {
            let (left, target) = line.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target))
        })
        .collect();
    // ls sorts the names as text (10 before 2), so look them up rather than expect an order.
    let numbers: Vec<u32> = descriptors.iter().map(|(fd, _)| *fd).collect();
    assert!([0, 1, 2].iter().all(|fd| numbers.contains(fd)), "{listing:?}");
    for (fd, target) in &descriptors {
        // Beyond stdio, only the directory ls itself opened to list /proc/self/fd.
        assert!(
            *fd <= 2 || target.starts_with("/proc/"),
            "descriptor {fd} -> {target} leaked into the program: {listing:?}"
        );
    }
    assert!(!listing.content.contains("inherited-descriptor-marker"), "{listing:?}");
    drop(file);
}

/// Finding: `read_file` followed a hard link made inside the workspace to a file outside it.
#[test]
fn read_file_refuses_a_hard_link_to_a_file_outside_the_workspace() {
    let fake = FakeProvider::start();
    let daemon = start(&fake, "[tools.files]\nenabled = true\n");
    // Both under the test's temp dir, so on one file system, as a hard link needs.
    let outside = daemon.dir.path().join("outside-secret.txt");
    std::fs::write(&outside, "hard-link-secret-7f3a").unwrap();
    let workspace = daemon.dir.path().join("state/workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::hard_link(&outside, workspace.join("notes.txt")).unwrap();

    let (results, transcript) = run_tools(
        &fake,
        &daemon,
        &[
            ("read_file", json!({"path": "notes.txt"})),
            ("write_file", json!({"path": "notes.txt", "content": "replaced"})),
        ],
    );
    let read = &results[0];
    assert!(read.is_error, "{read:?}");
    assert!(read.content.contains("hard links"), "{read:?}");
    assert!(!transcript.contains("hard-link-secret"), "{transcript}");
    assert!(
        results
            .iter()
            .all(|result| !result.content.contains("hard-link-secret")),
        "{results:?}"
    );
    let write = &results[1];
    assert!(write.is_error, "{write:?}");
    assert!(write.content.contains("hard links"), "{write:?}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "hard-link-secret-7f3a");
}
