//! The agent end to end: the real daemon talking to a fake provider on 127.0.0.1 that speaks the
//! Anthropic and OpenAI streaming wire formats, driven by the real `blufioctl`.

use blufio_testkit as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fake_provider::{FakeProvider, FakeUsage, Script};
use support::{Daemon, DaemonOptions, describe, fake_provider_config, new_dir};

/// Runs `python` on the daemon's database as another program would, behind its back: `db` is the
/// connection, `sys.argv[2..]` are `args`; committed when it ends.
fn change_database(daemon: &Daemon, python: &str, args: &[&str]) {
    let interpreter = std::env::var("BLUFIOTEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let changed = Command::new(interpreter)
        .arg("-c")
        .arg(format!(
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1], timeout=10)\n{python}\ndb.commit()"
        ))
        .arg(daemon.dir.path().join("state/blufio.db"))
        .args(args)
        .output()
        .unwrap();
    assert!(changed.status.success(), "{}", describe(&changed));
}

fn text_reply(text: &str, input: u64, output: u64) -> Script {
    Script::Text {
        text: text.to_owned(),
        chunks: 3,
        usage: FakeUsage {
            input,
            output,
            ..FakeUsage::default()
        },
    }
}

#[test]
fn a_streamed_chat_is_answered_stored_and_charged() {
    let fake = FakeProvider::start();
    fake.push(Script::Text {
        text: "Hello from the fake model.".to_owned(),
        chunks: 4,
        usage: FakeUsage {
            input: 1_000,
            output: 500,
            cache_creation: 2_000,
            cache_read: 3_000,
        },
    });
    let daemon = support::start_with_fake(&fake, "");
    let chat = daemon.ctl_json(&["chat", "hi there"]);
    assert_eq!(chat["text"], "Hello from the fake model.");
    assert_eq!(chat["stop_reason"], "end_turn");
    assert_eq!(chat["usage"]["cache_read_input_tokens"], 3_000);
    // 1000 * $1 + 500 * $2 + 2000 * $1 (cache writes default to the input price) + 3000 * $1,
    // per million tokens.
    let cost = chat["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.007).abs() < 1e-9, "cost {cost}");

    // The request carried the wire contract: key, version, system prompt as a cache breakpoint.
    let request = &fake.requests()[0];
    assert_eq!(request.path, "/v1/messages");
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| name == "x-api-key" && value == "test-key")
    );
    assert!(request.headers.iter().any(|(name, _)| name == "anthropic-version"));
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(request.body["messages"][0]["content"][0]["text"], "hi there");

    let session = chat["session_id"].as_str().unwrap().to_owned();
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    let roles: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);

    // A second message in the same session carries the history.
    fake.push(text_reply("Second answer.", 10, 5));
    let again = daemon.ctl_json(&["chat", "--session", &session, "and again"]);
    assert_eq!(again["session_id"], session.as_str());
    let messages = &fake.requests()[1].body["messages"];
    assert_eq!(messages.as_array().unwrap().len(), 3, "{messages}");

    let usage = daemon.ctl_json(&["usage"]);
    let spent = usage["cost"]["today_usd"].as_f64().unwrap();
    assert!((spent - (0.007 + 0.00002)).abs() < 1e-9, "{usage}");
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["sessions"]["total_sessions"], 1);
    assert!(status["sessions"]["provider_problem"].is_null(), "{status}");
}

#[test]
fn a_tool_round_trip_runs_the_tool_and_feeds_the_result_back() {
    let echo = ["/bin/echo", "/usr/bin/echo"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("echo exists");
    let fake = FakeProvider::start();
    fake.push(Script::ToolUse {
        id: "toolu_1".to_owned(),
        name: "run_command".to_owned(),
        input: serde_json::json!({"program": echo, "args": ["tool", "output"]}),
        usage: FakeUsage {
            input: 100,
            output: 30,
            ..FakeUsage::default()
        },
    });
    fake.push(text_reply("The command said: tool output.", 150, 10));
    let daemon = support::start_with_fake(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{echo}\"]\n"),
    );
    let chat = daemon.ctl_json(&["chat", "run echo for me"]);
    assert_eq!(chat["text"], "The command said: tool output.");
    assert_eq!(chat["provider_calls"], 2);
    assert_eq!(chat["tools"][0]["name"], "run_command");
    assert_eq!(chat["tools"][0]["is_error"], false);

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["tools"][0]["name"], "run_command");
    let second = requests[1].body["messages"].as_array().unwrap();
    let result = &second.last().unwrap()["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], "toolu_1");
    assert!(result["content"].as_str().unwrap().contains("tool output"), "{result}");

    let session = chat["session_id"].as_str().unwrap().to_owned();
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    let roles: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
}

#[test]
fn an_exhausted_budget_makes_no_provider_call() {
    let fake = FakeProvider::start();
    // 1000 output tokens at $2 per million is $0.002 per call; the cap is below that.
    let daemon = support::start_with_fake(&fake, "[budget]\ndaily_usd = 0.001\n");
    let chat = daemon.ctl(&["chat", "expensive question"]);
    assert_eq!(chat.status.code(), Some(1), "{}", describe(&chat));
    let stderr = String::from_utf8_lossy(&chat.stderr);
    // Nothing was spent: the cap is not exhausted, but it cannot hold this call's worst case,
    // and the refusal says which setting decides that.
    assert!(
        stderr.contains("more than the $0.001 left of the daily budget"),
        "{stderr}"
    );
    assert!(stderr.contains("lower provider.max_tokens"), "{stderr}");
    assert!(stderr.contains("T00:00:00Z"), "{stderr}");
    assert_eq!(fake.request_count(), 0, "the provider must not be called");
}

#[test]
fn concurrent_turns_cannot_overshoot_the_cap() {
    let fake = FakeProvider::start();
    // Every call uses its whole reservation: 1000 output tokens at $2/M = $0.002. A cap of
    // $0.007 fits three such calls and never a fourth, however the turns interleave.
    for _ in 0..8 {
        fake.push(Script::Delay {
            per_chunk: Duration::from_millis(100),
            then: Box::new(text_reply("slow answer", 0, 1_000)),
        });
    }
    let daemon = support::start_with_fake(
        &fake,
        "[budget]\ndaily_usd = 0.007\n[agent]\nmax_concurrent_turns = 8\nmax_queued_turns = 8\n",
    );
    let children: Vec<_> = (0..8)
        .map(|index| {
            Command::new(support::blufioctl_bin())
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["chat", "--json", &format!("question {index}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let succeeded = outputs.iter().filter(|output| output.status.success()).count();
    for output in outputs.iter().filter(|output| !output.status.success()) {
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("daily budget"),
            "{}",
            describe(output)
        );
    }
    assert_eq!(succeeded, 3, "exactly three calls fit under the cap");
    assert_eq!(fake.request_count(), 3);
    let spent = daemon.ctl_json(&["usage"])["cost"]["today_usd"].as_f64().unwrap();
    assert!(spent <= 0.007 + 1e-12, "spent {spent}");
    assert!((spent - 0.006).abs() < 1e-9, "spent {spent}");
}

#[test]
fn a_provider_error_is_reported_and_the_message_is_kept() {
    let fake = FakeProvider::start();
    fake.push(Script::HttpError {
        status: 400,
        message: "messages: text content blocks must be non-empty".to_owned(),
        retry_after_secs: None,
    });
    let daemon = support::start_with_fake(&fake, "");
    let chat = daemon.ctl(&["chat", "this will fail"]);
    assert_eq!(chat.status.code(), Some(1), "{}", describe(&chat));
    let stderr = String::from_utf8_lossy(&chat.stderr);
    assert!(stderr.contains("text content blocks must be non-empty"), "{stderr}");
    let sessions = daemon.ctl_json(&["sessions", "list"]);
    let session = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sessions["sessions"][0]["state"], "idle");
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    assert_eq!(shown["messages"][0]["text"], "this will fail");
    // The failed call was dispatched, so it has its ledger row.
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(usage["days"][0]["calls"], 1, "{usage}");
    // The daemon keeps serving.
    fake.push(text_reply("recovered", 5, 5));
    assert_eq!(
        daemon.ctl_json(&["chat", "--session", &session, "retry"])["text"],
        "recovered"
    );
}

#[test]
fn a_missing_api_key_names_the_fix() {
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: format!("[provider]\nkind = \"anthropic\"\nbase_url = \"{}\"\n", fake.url()),
            ..DaemonOptions::default()
        },
    );
    let chat = daemon.ctl(&["chat", "hello"]);
    assert_eq!(chat.status.code(), Some(1), "{}", describe(&chat));
    let stderr = String::from_utf8_lossy(&chat.stderr);
    assert!(
        stderr.contains("provider.api_key") && stderr.contains("ANTHROPIC_API_KEY"),
        "{stderr}"
    );
    assert_eq!(fake.request_count(), 0);
    let status = daemon.ctl_json(&["status"]);
    assert!(
        status["sessions"]["provider_problem"]
            .as_str()
            .unwrap()
            .contains("provider.api_key")
    );
}

#[test]
fn the_openai_wire_format_works_end_to_end() {
    let fake = FakeProvider::start();
    fake.push(text_reply("Hello over chat completions.", 40, 8));
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: format!(
                "[provider]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"local-model\"\n\
                 [pricing.\"local-model\"]\ninput = 0.0\noutput = 0.0\n",
                fake.url()
            ),
            ..DaemonOptions::default()
        },
    );
    let chat = daemon.ctl_json(&["chat", "hi"]);
    assert_eq!(chat["text"], "Hello over chat completions.");
    assert_eq!(chat["usage"]["output_tokens"], 8);
    let request = &fake.requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["messages"][0]["role"], "system");
}

#[test]
fn history_survives_a_restart_and_a_crash_mid_turn_keeps_the_message() {
    let fake = FakeProvider::start();
    fake.push(text_reply("first answer", 5, 5));
    let dir = new_dir();
    let options = || DaemonOptions {
        config: fake_provider_config(&fake, ""),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start_with(dir.clone(), options());
    let chat = daemon.ctl_json(&["chat", "remember this"]);
    let session = chat["session_id"].as_str().unwrap().to_owned();
    assert!(daemon.stop().success());

    let mut daemon = Daemon::start_with(dir.clone(), options());
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    assert_eq!(
        shown["messages"][1]["text"], "first answer",
        "history survives a restart"
    );

    // Now the provider stalls mid-answer and the daemon is killed during the turn.
    fake.push(Script::Stall { after_chunks: 1 });
    let mut chat = Command::new(support::blufioctl_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["chat", "--session", &session, "do not lose me"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + support::PATIENCE;
    while fake.request_count() < 2 {
        assert!(Instant::now() < deadline, "the turn never reached the provider");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill();
    let _ = chat.wait();

    let daemon = Daemon::start_with(dir, options());
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    assert_eq!(shown["session"]["state"], "interrupted");
    let texts: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["remember this", "first answer", "do not lose me"]);
    assert_eq!(daemon.ctl_json(&["status"])["previous_run_unclean"], true);
}

#[test]
fn a_stalled_session_does_not_block_another_and_the_queue_is_bounded() {
    let fake = FakeProvider::start();
    fake.push(Script::Stall { after_chunks: 1 });
    // The provider's idle timeout is far beyond the test's patience, so stalled turns end only
    // because their callers went away, never because the provider timed out.
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(&fake, "[agent]\nmax_concurrent_turns = 2\nmax_queued_turns = 0\n"),
            env: vec![("BLUFIO_PROVIDER__IDLE_TIMEOUT_SECS".into(), "600".into())],
            ..DaemonOptions::default()
        },
    );
    let mut stalled = daemon.ctl_in_background(&["chat", "slow session"]);
    fake.wait_for_requests(1);

    // Another session runs while the first one's provider call hangs.
    fake.push(text_reply("quick answer", 5, 5));
    assert_eq!(daemon.ctl_json(&["chat", "fast session"])["text"], "quick answer");

    // With both slots taken and no room to queue, a third turn is told to retry.
    fake.push(Script::Stall { after_chunks: 1 });
    let mut second_stall = daemon.ctl_in_background(&["chat", "another slow one"]);
    fake.wait_for_requests(3);
    let refused = daemon.ctl(&["chat", "one too many"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("retry"),
        "{}",
        describe(&refused)
    );
    assert_eq!(fake.request_count(), 3, "the refused turn made no call");

    // Cancelling the client (as Ctrl-C does) cancels its turn and frees its slot.
    stalled.kill().unwrap();
    second_stall.kill().unwrap();
    let _ = stalled.wait();
    let _ = second_stall.wait();
    let deadline = Instant::now() + support::PATIENCE;
    while daemon.ctl_json(&["status"])["sessions"]["turns_in_flight"] != 0 {
        assert!(Instant::now() < deadline, "cancelled turns still hold their slots");
        std::thread::sleep(Duration::from_millis(20));
    }
    fake.push(text_reply("after the storm", 5, 5));
    assert_eq!(daemon.ctl_json(&["chat", "anyone there?"])["text"], "after the storm");
    // Every dispatched call is in the ledger, the cancelled ones included.
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(usage["days"][0]["calls"], 4, "{usage}");
}

#[test]
fn sigterm_during_a_turn_stops_cleanly_and_charges_the_call() {
    let fake = FakeProvider::start();
    fake.push(Script::Stall { after_chunks: 1 });
    let dir = new_dir();
    let options = || DaemonOptions {
        config: fake_provider_config(&fake, ""),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start_with(dir.clone(), options());
    let chat = daemon.ctl_in_background(&["chat", "stop in the middle"]);
    fake.wait_for_requests(1);
    let exit = daemon.stop();
    assert!(exit.success(), "{exit}\n{}", daemon.stderr());
    let output = chat.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("shutting down"),
        "{}",
        describe(&output)
    );

    let daemon = Daemon::start_with(dir, options());
    let sessions = daemon.ctl_json(&["sessions", "list"]);
    assert_eq!(sessions["sessions"][0]["state"], "interrupted", "{sessions}");
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(
        usage["days"][0]["calls"], 1,
        "the interrupted call is in the ledger: {usage}"
    );
    assert!(
        usage["cost"]["today_usd"].as_f64().unwrap() > 0.0,
        "its estimated input is charged: {usage}"
    );
}

#[test]
fn usage_shows_a_deleted_sessions_calls_as_deleted() {
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    let chat = daemon.ctl_json(&["chat", "to be deleted"]);
    let session = chat["session_id"].as_str().unwrap().to_owned();
    daemon.ctl(&["sessions", "delete", &session]);
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(usage["sessions"][0]["session_id"], session.as_str(), "{usage}");
    assert_eq!(usage["sessions"][0]["deleted"], true, "{usage}");
    let text = String::from_utf8_lossy(&daemon.ctl(&["usage"]).stdout).into_owned();
    assert!(text.contains(&session) && text.contains("(deleted)"), "{text}");
}

#[test]
fn sessions_can_be_renamed_exported_and_pruned() {
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    let old = daemon.ctl_json(&["chat", "an old question"])["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recent = daemon.ctl_json(&["chat", "a recent question"])["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let renamed = daemon.ctl_json(&["sessions", "rename", &recent, "Kept for later"]);
    assert_eq!(renamed["title"], "Kept for later", "{renamed}");
    let refused = daemon.ctl(&["sessions", "rename", &recent, "   "]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));

    let markdown = daemon.ctl(&["sessions", "export", &recent]);
    let text = String::from_utf8_lossy(&markdown.stdout).into_owned();
    assert!(text.starts_with("# Kept for later\n"), "{text}");
    assert!(text.contains("## You") && text.contains("a recent question"), "{text}");
    assert!(
        text.contains("## blufio") && text.contains("fake answer to: a recent question"),
        "{text}"
    );
    let json = daemon.ctl(&["sessions", "export", &recent, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["messages"].as_array().unwrap().len(), 2, "{json}");

    // Make the first session ten days old, as if time had passed, then prune what is older
    // than a week.
    change_database(
        &daemon,
        "import time; db.execute('UPDATE sessions SET updated_at=? WHERE id=?', (int(time.time())-10*86400, sys.argv[2]))",
        &[&old],
    );
    let pruned = daemon.ctl_json(&["sessions", "prune", "--older-than", "7"]);
    assert_eq!(pruned["deleted"], 1, "{pruned}");
    let listed = daemon.ctl_json(&["sessions", "list"]);
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|session| session["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [recent.as_str()], "{listed}");
    // Its spend stays.
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(usage["days"][0]["calls"], 2, "{usage}");
}

#[test]
fn an_answer_past_the_bound_is_stopped_and_an_oversized_stored_message_still_shows() {
    // Reported (attack on b52db2a): a provider that streamed a 5 MiB answer had it stored whole,
    // and the session could no longer be shown or exported ("decoded message length too large"):
    // a page holds at least one message, and this one was larger than the client accepted.
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    fake.push(Script::Text {
        text: "x".repeat(5 * 1024 * 1024),
        chunks: 8,
        usage: FakeUsage::default(),
    });
    let refused = daemon.ctl(&["chat", "a huge answer please"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{} bytes of answer printed; stderr: {stderr}",
        refused.stdout.len()
    );
    assert!(stderr.contains("answer passed 2097152 bytes"), "{stderr}");
    let session = daemon.ctl_json(&["sessions", "list"])["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    assert_eq!(
        shown["messages"].as_array().unwrap().len(),
        1,
        "only the question is stored"
    );
    let usage = daemon.ctl_json(&["usage"]);
    assert_eq!(usage["days"][0]["calls"], 1, "the call is charged");
    let text_cost = usage["cost"]["today_usd"].as_f64().unwrap();
    // The same through a tool call's input, which streams without events (reported, attack on
    // 890500f: such a call was charged as a few hundred bytes).
    fake.push(Script::ToolUse {
        id: "toolu_big".into(),
        name: "http_get".into(),
        input: serde_json::json!({"url": "x".repeat(3 * 1024 * 1024)}),
        usage: FakeUsage::default(),
    });
    let refused = daemon.ctl(&["chat", "--session", &session, "a huge tool call please"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("answer passed 2097152 bytes"), "{stderr}");
    let tool_cost = daemon.ctl_json(&["usage"])["cost"]["today_usd"].as_f64().unwrap() - text_cost;
    assert!(
        tool_cost > 0.9 * text_cost,
        "the tool call was charged ${tool_cost}, the text answer ${text_cost}"
    );

    // A message that large, stored by an older version (or a tool result under a large
    // tools.max_result_bytes), still shows and exports.
    let answered = daemon.ctl_json(&["chat", "--session", &session, "a normal question"]);
    assert!(
        answered["text"].as_str().unwrap().starts_with("fake answer to"),
        "{answered}"
    );
    change_database(
        &daemon,
        "import json; (seq, content), = db.execute(\"SELECT seq, content FROM messages WHERE role='assistant'\").fetchall(); \
         blocks = json.loads(content); blocks[0]['text'] = 'y' * (5 * 1024 * 1024); \
         db.execute('UPDATE messages SET content=? WHERE seq=?', (json.dumps(blocks), seq))",
        &[],
    );
    let shown = daemon.ctl_json(&["sessions", "show", &session]);
    let texts: Vec<usize> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["text"].as_str().unwrap().len())
        .collect();
    assert!(texts.contains(&(5 * 1024 * 1024)), "{texts:?}");
    let export = daemon.ctl(&["sessions", "export", &session, "--format", "json"]);
    assert!(export.status.success(), "{}", describe(&export));
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(
        export["messages"].as_array().unwrap().len(),
        4,
        "three questions and an answer"
    );
}

#[test]
fn a_session_larger_than_one_reply_is_shown_and_exported_a_page_at_a_time() {
    // Reported: `sessions show` failed with "decoded message length too large" once a session's
    // latest messages passed the 4 MiB a gRPC client accepts in one reply, and `sessions export`
    // did too; the daemon held the whole answer in memory to send it.
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    // The fake echoes each message in its answer: a turn stores about 400 KiB.
    let words = "w ".repeat(50 * 1024);
    let turns = 12;
    let mut session = String::new();
    for turn in 0..turns {
        let label = format!("turn {turn}");
        let mut args = vec!["chat", label.as_str(), words.as_str(), words.as_str()];
        if turn > 0 {
            args.splice(1..1, ["--session", session.as_str()]);
        }
        let chat = daemon.ctl_json(&args);
        session = chat["session_id"].as_str().unwrap().to_owned();
    }
    let bytes = |page: &serde_json::Value| -> usize {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["text"].as_str().unwrap().len())
            .sum()
    };

    let latest = daemon.ctl_json(&["sessions", "show", &session]);
    let shown = latest["messages"].as_array().unwrap();
    assert!(
        !shown.is_empty() && shown.len() < 2 * turns,
        "a page of a 4.8 MB session: {} messages",
        shown.len()
    );
    assert!(bytes(&latest) <= 2 * 1024 * 1024, "{} bytes", bytes(&latest));
    assert!(
        shown.last().unwrap()["text"]
            .as_str()
            .unwrap()
            .starts_with("fake answer to: turn 11"),
        "the latest page ends with the latest answer"
    );
    let text = String::from_utf8_lossy(&daemon.ctl(&["sessions", "show", &session]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "the ones before them with --cursor {}",
            latest["next_cursor"].as_str().unwrap()
        )),
        "{}",
        &text[..200]
    );

    // Paging back reaches the first message, each message once.
    let mut ids: Vec<String> = Vec::new();
    let mut page = latest;
    loop {
        let mut page_ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["id"].as_str().unwrap().to_owned())
            .collect();
        page_ids.append(&mut ids);
        ids = page_ids;
        let Some(cursor) = page["next_cursor"].as_str().map(str::to_owned) else {
            break;
        };
        page = daemon.ctl_json(&["sessions", "show", &session, "--cursor", &cursor]);
        assert!(bytes(&page) <= 2 * 1024 * 1024, "{} bytes", bytes(&page));
    }
    assert_eq!(ids.len(), 2 * turns, "every message, in pages");
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no message on two pages");

    let export = daemon.ctl(&["sessions", "export", &session, "--format", "json"]);
    assert!(export.status.success(), "{}", describe(&export));
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    let exported: Vec<&str> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["id"].as_str().unwrap())
        .collect();
    assert_eq!(exported, ids, "the export holds every message, oldest first");
    assert_eq!(export["next_cursor"], serde_json::Value::Null);
    let markdown = daemon.ctl(&["sessions", "export", &session]);
    assert!(markdown.status.success(), "{}", describe(&markdown));
    let markdown = String::from_utf8_lossy(&markdown.stdout);
    assert_eq!(markdown.matches("\n## You · ").count(), turns, "every turn's message");
    assert!(markdown.contains("\n\nturn 0 w w "), "from the first");

    // A cursor from another session, or none at all, is refused and named.
    let other = daemon.ctl_json(&["chat", "another session"])["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = daemon.ctl(&["sessions", "show", &other, "--cursor", &ids[3]]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&ids[3]) && stderr.contains("is not a message of session") && stderr.contains("next_cursor"),
        "{stderr}"
    );
}

#[test]
fn doctor_deep_compares_the_clock_with_the_providers_date() {
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let clock = |daemon: &Daemon| {
        let output = daemon.ctl(&["doctor", "--only", "clock", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output.status.code(), report["checks"][0].clone(), describe(&output))
    };
    let (code, check, output) = clock(&daemon);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(check["level"], "ok", "{output}");
    assert_eq!(check["deep"], true, "{output}");
    assert!(
        check["detail"].as_str().unwrap().contains("s behind anthropic's")
            || check["detail"].as_str().unwrap().contains("s ahead of anthropic's"),
        "{output}"
    );
    assert_eq!(fake.requests().len(), 1, "one free model list");
    // Not part of a quick run: it asks somebody else's API.
    let quick = daemon.ctl(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&quick.stdout).unwrap();
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|check| check["name"] != "clock")
    );

    // This machine three minutes behind the provider: signed requests would be refused
    // (gateway.max_clock_skew_secs is 300), so it fails. A fresh daemon: the check asks at most
    // once a minute.
    let fake = FakeProvider::start();
    fake.set_clock_offset(180);
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let (code, check, output) = clock(&daemon);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(check["level"], "fail", "{output}");
    assert!(
        check["detail"].as_str().unwrap().contains("s behind anthropic's"),
        "{output}"
    );
    assert!(
        check["hint"].as_str().unwrap().contains("timedatectl set-ntp true"),
        "{output}"
    );
}

#[test]
fn doctor_asks_the_provider_with_the_key_and_spends_nothing() {
    let fake = FakeProvider::start();
    fake.require_key("test-key");
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let provider_api = |daemon: &Daemon| {
        let output = daemon.ctl(&["doctor", "--only", "provider_api", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output.status.code(), report["checks"][0].clone(), describe(&output))
    };

    let (code, check, output) = provider_api(&daemon);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(check["level"], "ok", "{output}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("accepted the key (3 models listed)"),
        "{output}"
    );
    let requests = fake.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        // Only the free model list, with the key from the vault: no turn, no spend.
        assert_eq!((request.method.as_str(), request.path.as_str()), ("GET", "/v1/models"));
        assert_eq!(request.header("x-api-key"), Some("test-key"));
    }

    // Asked again at once, the daemon answers from its last look instead of calling again: a
    // caller cannot make it spend the provider's rate limit.
    let (_, check, output) = provider_api(&daemon);
    assert!(check["detail"].as_str().unwrap().ends_with("s ago)"), "{output}");
    assert_eq!(fake.requests().len(), requests.len());

    // A key the provider refuses: a failure that says so and how to store the right one. (The
    // daemon asks the provider at most every 5 s.)
    fake.require_key("the-rotated-key");
    std::thread::sleep(Duration::from_millis(5100));
    let (code, check, output) = provider_api(&daemon);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(check["level"], "fail", "{output}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused the key") && detail.contains("HTTP 401"),
        "{output}"
    );
    assert!(check["hint"].as_str().unwrap().contains("set-secret"), "{output}");
    assert!(!output.contains("test-key"), "the key never shows: {output}");

    // A provider that is gone: a failure that points at the URL and the network.
    drop(fake);
    std::thread::sleep(Duration::from_millis(5100));
    let (code, check, output) = provider_api(&daemon);
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(check["level"], "fail", "{output}");
    assert!(
        check["detail"].as_str().unwrap().contains("cannot reach the provider"),
        "{output}"
    );
    assert!(
        check["hint"].as_str().unwrap().contains("provider.base_url"),
        "{output}"
    );
}

#[test]
fn doctor_checks_the_models_price_and_the_spend_against_the_caps() {
    let fake = FakeProvider::start();
    let daemon = Daemon::start_with(
        new_dir(),
        DaemonOptions {
            config: fake_provider_config(&fake, ""),
            ..DaemonOptions::default()
        },
    );
    let checks = |daemon: &Daemon| {
        let output = daemon.ctl(&["doctor", "--only", "pricing,budget", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let find = |name: &str| {
            report["checks"]
                .as_array()
                .and_then(|checks| checks.iter().find(|check| check["name"] == name).cloned())
                .unwrap_or_else(|| panic!("no {name} check: {}", describe(&output)))
        };
        (output.status.code(), find("pricing"), find("budget"))
    };
    let (code, pricing, budget) = checks(&daemon);
    assert_eq!(code, Some(0));
    assert_eq!(pricing["level"], "ok", "{pricing}");
    assert!(
        pricing["detail"].as_str().unwrap().contains("fake-model costs $1"),
        "{pricing}"
    );
    assert_eq!(budget["level"], "ok", "{budget}");

    // One turn spends 100 input and 20 output tokens at $1 and $2 per million: $0.00014.
    let chat = daemon.ctl(&["chat", "hello"]);
    assert!(chat.status.success(), "{}", describe(&chat));
    daemon.ctl_json(&["config", "set", "budget.daily_usd", "0.00015"]);
    let (code, _, budget) = checks(&daemon);
    assert_eq!(code, Some(0), "a warning is not a failure");
    assert_eq!(budget["level"], "warn", "{budget}");
    assert!(
        budget["detail"].as_str().unwrap().contains("93 % of the daily budget"),
        "{budget}"
    );
    daemon.ctl_json(&["config", "set", "budget.daily_usd", "0.0001"]);
    let (code, _, budget) = checks(&daemon);
    assert_eq!(code, Some(1));
    assert_eq!(budget["level"], "fail", "{budget}");
    assert!(
        budget["hint"].as_str().unwrap().contains("budget.daily_usd"),
        "{budget}"
    );

    // A model without a price: every turn would be refused.
    let set = daemon.ctl(&["config", "set", "provider.model", "mystery-7b"]);
    assert!(set.status.success(), "{}", describe(&set));
    let (code, pricing, _) = checks(&daemon);
    assert_eq!(code, Some(1));
    assert_eq!(pricing["level"], "fail", "{pricing}");
    assert!(
        pricing["hint"]
            .as_str()
            .unwrap()
            .contains("pricing.\"mystery-7b\".input"),
        "{pricing}"
    );
}

/// Each message of an Anthropic request as `role: part, part`, a part being a text, `call ID` or
/// `result ID`.
fn conversation(request: &support::fake_provider::RecordedRequest) -> Vec<String> {
    request.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| {
            let parts: Vec<String> = match &message["content"] {
                serde_json::Value::String(text) => vec![text.clone()],
                serde_json::Value::Array(blocks) => blocks
                    .iter()
                    .map(|block| match block["type"].as_str().unwrap_or_default() {
                        "text" => block["text"].as_str().unwrap_or_default().to_owned(),
                        "tool_use" => format!("call {}", block["id"].as_str().unwrap_or_default()),
                        "tool_result" => format!("result {}", block["tool_use_id"].as_str().unwrap_or_default()),
                        other => other.to_owned(),
                    })
                    .collect(),
                other => vec![other.to_string()],
            };
            format!("{}: {}", message["role"].as_str().unwrap_or_default(), parts.join(", "))
        })
        .collect()
}

/// A session's turns hold its messages in memory from one turn to the next (`agent::histories`)
/// rather than reading them back each time. Whatever way the turns before it ended (a tool round
/// trip, a provider error, a turn queued behind another and cancelled before it started), each
/// turn must send the whole stored conversation, as a read of the database would give it.
#[test]
fn every_turn_sends_the_whole_stored_conversation_however_the_turns_before_it_ended() {
    let shell = ["/bin/sh", "/usr/bin/sh"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("sh exists");
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(
        &fake,
        &format!("[tools.run_command]\nenabled = true\nallow = [\"{shell}\"]\ntimeout_secs = 120\n"),
    );
    let chat = |args: &[&str]| daemon.ctl_json(&[&["chat"], args].concat());

    fake.push(text_reply("A1", 5, 5));
    let session = chat(&["one"])["session_id"].as_str().unwrap().to_owned();
    let turn = |text: &str| chat(&["--session", &session, text]);
    fake.push(Script::tool_use(
        "toolu_2",
        "run_command",
        serde_json::json!({"program": shell, "args": ["-c", "echo tool"]}),
    ));
    fake.push(text_reply("A2", 5, 5));
    turn("two");
    fake.push(Script::http_error(400, "refused", None));
    let failed = daemon.ctl(&["chat", "--session", &session, "three"]);
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    fake.push(text_reply("A4", 5, 5));
    turn("four");
    let requests = fake.requests();
    let expected = [
        "user: one",
        "assistant: A1",
        "user: two",
        "assistant: call toolu_2",
        "user: result toolu_2",
        "assistant: A2",
        "user: three",
        "user: four",
    ];
    assert_eq!(conversation(requests.last().unwrap()), expected);

    // Turn five holds the session in a tool until the gate file exists; "six" is accepted
    // behind it, and its caller leaves before it starts, so its message is stored but its turn
    // never runs.
    let gate = daemon.dir.path().join("gate");
    fake.push(Script::tool_use(
        "toolu_5",
        "run_command",
        serde_json::json!({"program": shell, "args": ["-c", format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display())]}),
    ));
    fake.push(text_reply("A5", 5, 5));
    let spawn_chat = |text: &str| {
        Command::new(support::blufioctl_bin())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["chat", "--session", &session, text])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let calls_before = fake.request_count();
    let mut five = spawn_chat("five");
    fake.wait_for_requests(calls_before + 1);
    let mut six = spawn_chat("six");
    let queued = |count: f64| {
        let deadline = Instant::now() + support::PATIENCE;
        while daemon.metrics().value("blufio_turns_queued") != count {
            assert!(Instant::now() < deadline, "blufio_turns_queued never became {count}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    queued(1.0);
    six.kill().unwrap();
    six.wait().unwrap();
    queued(0.0);
    std::fs::write(&gate, "").unwrap();
    assert!(five.wait().unwrap().success());
    assert_eq!(fake.request_count(), calls_before + 2, "six never reached the provider");

    fake.push(text_reply("A7", 5, 5));
    turn("seven");
    fake.push(text_reply("A8", 5, 5));
    turn("eight");
    let requests = fake.requests();
    let mut expected: Vec<String> = expected.iter().map(|line| (*line).to_owned()).collect();
    expected.extend(
        [
            "assistant: A4",
            "user: five",
            "assistant: call toolu_5",
            "user: result toolu_5",
            "assistant: A5",
            "user: six",
            "user: seven",
        ]
        .map(str::to_owned),
    );
    assert_eq!(conversation(&requests[requests.len() - 2]), expected);
    expected.extend(["assistant: A7", "user: eight"].map(str::to_owned));
    assert_eq!(conversation(requests.last().unwrap()), expected);

    // The memory was used wherever it holds the whole conversation: two, three, five and eight
    // each followed a completed turn with nothing accepted behind it. Four followed a failed turn,
    // and seven followed five, behind which six was accepted: both read the database.
    let samples = daemon.metrics();
    let source = |name: &str| samples.count(&format!("blufio_turn_histories_total{{source=\"{name}\"}}"));
    assert_eq!(source("new"), 1.0, "one");
    assert_eq!(source("kept"), 4.0, "two, three, five, eight");
    assert_eq!(source("read"), 2.0, "four and seven (six never ran)");
}

/// At the memory warn level, the check a completing turn makes before it keeps its session's
/// history may run the shedders, one of which takes the session registry's lock: the turn must
/// not hold that lock then (it did, and the first shed due at a turn's end hung the daemon).
/// Turns of about 300 ms run back to back for one shedding period and more, so that a shed falls
/// due while one is finishing.
#[test]
fn turns_keep_completing_while_memory_sheds_at_the_warn_level() {
    let fake = FakeProvider::start();
    fake.set_default(Some(Script::Delay {
        per_chunk: Duration::from_millis(40),
        then: Box::new(Script::text("slow answer", 2)),
    }));
    // Always at warn (1 % of 128 MiB), never refusing (100 %).
    let daemon = support::start_with_fake(
        &fake,
        "[memory]\nlimit_mib = 128\nwarn_percent = 1\npressure_percent = 100\n",
    );
    let session = daemon.ctl_json(&["chat", "first"])["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let mut turns = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let mut chat = Command::new(support::blufioctl_bin())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["chat", "--session", &session, "again"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = chat.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                chat.kill().unwrap();
                panic!("turn {turns} never completed: the daemon hangs at the memory warn level");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "turn {turns} failed");
        turns += 1;
    }
    assert!(turns >= 20, "only {turns} turns in 12 s");
    let log = daemon.stderr();
    let sheds = log.matches("caches shed and free pages returned").count();
    assert!(sheds >= 2, "a shed fell due while turns ran ({sheds} in all): {log}");
}

/// The attack of 2026-12-01 on the checkpoint task: under a stream of turns the log grew to the
/// writer's backstop (then 40 MiB) and stayed that size while the daemon sat idle. Now an idle
/// checkpoint truncates a log of 1,000 pages or more, so an idle log is never larger than that,
/// however the turns were spread in time.
#[test]
fn an_idle_log_is_small_whatever_the_turns_wrote() {
    /// 1,000 frames of a 4 KiB page and its 24-byte header, and the log's own header.
    const MOST_LEFT_IDLE: u64 = 1_000 * (4_096 + 24) + 32;
    let fake = FakeProvider::start();
    let daemon = support::start_with_fake(&fake, "");
    let wal = daemon.dir.path().join("state/blufio.db-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
    // About 8.5 MB of messages, twice what an idle checkpoint may leave.
    let message = "many words ".repeat(11_000);
    let first = {
        fake.push(text_reply("ok", 10, 5));
        daemon.ctl_json(&["chat", &message])["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for _ in 0..70 {
        fake.push(text_reply("ok", 10, 5));
        daemon.ctl_json(&["chat", "--session", &first, &message]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while size() > MOST_LEFT_IDLE {
        assert!(Instant::now() < deadline, "the idle log is still {} bytes", size());
        std::thread::sleep(Duration::from_millis(100));
    }
    // And nothing is lost: every turn's two messages are there.
    let listed = daemon.ctl_json(&["sessions", "list"]);
    assert_eq!(listed["sessions"][0]["message_count"], 142, "{listed}");
}
