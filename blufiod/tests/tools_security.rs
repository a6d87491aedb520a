//! Security regressions of the built-in tools, attacked as a model would: the fake provider asks
//! the real daemon for tool calls, and each test checks what the tool handed back to the model.

mod support;

use std::path::Path;

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
