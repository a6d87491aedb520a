//! The secrets vault through the real daemon and the real client: a secret goes in through
//! `config set-secret` (stdin, never argv), reaches the provider, and appears nowhere else; the
//! database moved to another machine opens with the same key and fails clearly without it; rekeys
//! keep every entry; a key in clear in the config file is moved into the vault.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use blufio_testkit::fake_provider::{FakeProvider, Script};
use blufio_testkit::{Daemon, DaemonOptions, describe, new_dir};

/// The provider key of these tests: unique enough that any occurrence is a leak.
const CANARY: &str = "sk-ant-CANARY-5f0c9e2b7a41d836";
/// A provider key in the daemon's environment (the container path).
const ENV_CANARY: &str = "sk-ant-ENVCANARY-90e1b4c7d2a3";
/// The vault passphrase, in the daemon's environment.
const PASSPHRASE_CANARY: &str = "PASSCANARY correct horse battery";

/// Provider config without a key: the test supplies it.
fn provider_config(fake: &FakeProvider) -> String {
    format!(
        "[provider]\nkind = \"anthropic\"\nbase_url = \"{}\"\nmodel = \"fake-model\"\nmax_tokens = 1000\n\
         idle_timeout_secs = 5\nmax_retries = 1\nretry_base_delay_ms = 10\n\
         [pricing.\"fake-model\"]\ninput = 1.0\noutput = 2.0\n",
        fake.url()
    )
}

fn ok(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", describe(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

#[test]
fn a_secret_reaches_the_provider_and_nowhere_else() {
    let fake = FakeProvider::start();
    let dir = new_dir();
    let mut daemon = Daemon::start_with(
        dir.clone(),
        DaemonOptions {
            config: format!(
                "{}[log]\nlevel = \"trace\"\n[tools.run_command]\nenabled = true\nallow = [\"/usr/bin/env\"]\n",
                provider_config(&fake)
            ),
            env: vec![
                ("ANTHROPIC_API_KEY".into(), ENV_CANARY.into()),
                ("BLUFIO_VAULT_PASSPHRASE".into(), PASSPHRASE_CANARY.into()),
            ],
            ..DaemonOptions::default()
        },
    );
    let vault = daemon.ctl_json(&["vault", "status"]);
    assert_eq!(vault["key_source"], "passphrase", "{vault}");

    // A literal is refused by `config set`, without echoing it, and nothing is written.
    let before = std::fs::read_to_string(&daemon.config_path).unwrap();
    let refused = daemon.ctl(&["config", "set", "provider.api_key", CANARY]);
    assert!(!refused.status.success());
    let shown = describe(&refused);
    assert!(shown.contains("set-secret") && !shown.contains(CANARY), "{shown}");
    assert_eq!(std::fs::read_to_string(&daemon.config_path).unwrap(), before);

    // Until provider.api_key names a secret, the environment's key is in effect, and status says so.
    let status = daemon.ctl_json(&["status"]);
    assert!(status.to_string().contains("ANTHROPIC_API_KEY"), "{status}");

    ok(&daemon.ctl_input(&["config", "set-secret", "anthropic"], format!("{CANARY}\n").as_bytes()));
    ok(&daemon.ctl(&["config", "set", "provider.api_key", "secret:anthropic"]));
    let status = daemon.ctl_json(&["status"]);
    assert!(status.to_string().contains("vault secret `anthropic`"), "{status}");

    // A turn that runs `env` in a tool child, then answers.
    fake.push(Script::tool_use(
        "call-1",
        "run_command",
        serde_json::json!({"program": "/usr/bin/env", "args": []}),
    ));
    fake.push(Script::text("done", 1));
    let chat = daemon.ctl(&["chat", "show me the environment"]);
    assert!(chat.status.success(), "{}", describe(&chat));
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "a tool call and the answer");
    for request in &requests {
        assert_eq!(
            request.header("x-api-key"),
            Some(CANARY),
            "the provider got the vault's key"
        );
    }
    // The tool's result (the child's whole environment) is in the second request's body.
    let child_env = requests[1].body.to_string();
    assert!(
        child_env.contains("PATH="),
        "the child's environment was sent back: {child_env}"
    );
    let mut seen: Vec<(String, Vec<u8>)> = vec![("run_command child's environment".into(), child_env.into_bytes())];

    for args in [
        &["config", "get"][..],
        &["config", "get", "--json"],
        &["config", "get", "provider.api_key"],
        &["status", "--json"],
        &["status"],
        &["metrics"],
        &["config", "list-secrets", "--json"],
        &["config", "list-secrets"],
        &["vault", "status", "--json"],
    ] {
        seen.push((
            format!("blufioctl {}", args.join(" ")),
            ok(&daemon.ctl(args)).into_bytes(),
        ));
    }
    // doctor, whose provider check sends the key to the provider, then prints what it saw.
    for args in [&["doctor", "--deep", "--json"][..], &["doctor"]] {
        let output = daemon.ctl(args);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("provider_api"),
            "{}",
            describe(&output)
        );
        seen.push((format!("blufioctl {}", args.join(" ")), describe(&output).into_bytes()));
    }
    // Errors that name the key: a reference to a missing secret, a bad name.
    for args in [
        &["config", "set", "gateway.metrics_token", "secret:nope"][..],
        &["config", "delete-secret", "anthropic"],
    ] {
        let output = daemon.ctl(args);
        assert!(!output.status.success(), "{}", describe(&output));
        seen.push((format!("blufioctl {}", args.join(" ")), describe(&output).into_bytes()));
    }
    let listed = daemon.ctl_json(&["config", "list-secrets"]);
    assert!(listed.to_string().contains("provider.api_key"), "{listed}");
    assert!(
        listed.to_string().contains("d836"),
        "the masked preview shows the last four: {listed}"
    );

    seen.push(("/metrics".into(), daemon.metrics_text().into_bytes()));
    daemon.stop();
    seen.push(("the daemon's log at trace".into(), daemon.stderr().into_bytes()));
    let log = daemon.stderr();
    assert!(
        log.contains("secret stored in the vault") && log.contains(" TRACE "),
        "the log is really at trace level: {log}"
    );
    for file in files_under(&dir.path().join("state")) {
        seen.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    seen.push(("the config file".into(), std::fs::read(&daemon.config_path).unwrap()));
    assert!(
        seen.iter().any(|(name, _)| name.ends_with("blufio.db")),
        "the database was looked at"
    );
    for (place, bytes) in &seen {
        for canary in [CANARY, ENV_CANARY, PASSPHRASE_CANARY] {
            assert!(!contains(bytes, canary), "{canary} leaked into {place}");
        }
    }
}

/// A key file outside the state directory, as `vault.key_file` wants it.
fn key_file(dir: &Path, name: &str, material: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{material}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn daemon_with_key(dir: std::sync::Arc<tempfile::TempDir>, fake: &FakeProvider, key: Option<&Path>) -> Daemon {
    let vault = key.map_or(String::new(), |key| {
        format!("[vault]\nkey_file = \"{}\"\n", key.display())
    });
    Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!("{}{vault}", provider_config(fake)),
            ..DaemonOptions::default()
        },
    )
}

/// Starts blufiod on `dir` expecting it to fail before readiness; returns its stderr.
fn failed_start(dir: std::sync::Arc<tempfile::TempDir>, fake: &FakeProvider, key: Option<&Path>) -> String {
    let vault = key.map_or(String::new(), |key| {
        format!("[vault]\nkey_file = \"{}\"\n", key.display())
    });
    let mut daemon = Daemon::start_with(
        dir,
        DaemonOptions {
            config: format!("{}{vault}", provider_config(fake)),
            wait_ready: false,
            ..DaemonOptions::default()
        },
    );
    let status = daemon.wait();
    assert_eq!(status.code(), Some(1), "{}", daemon.stderr());
    daemon.stderr()
}

#[test]
fn the_database_opens_elsewhere_with_the_same_key_and_fails_clearly_without_it() {
    let fake = FakeProvider::start();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "vault.key", &"5a".repeat(32));
    let first = new_dir();
    let mut daemon = daemon_with_key(first.clone(), &fake, Some(&key));
    ok(&daemon.ctl_input(
        &["config", "set-secret", "anthropic", "--for", "provider.api_key"],
        CANARY.as_bytes(),
    ));
    daemon.stop();
    assert!(
        !first.path().join("state/vault.key").exists(),
        "with a key file, no key is generated beside the data"
    );
    let database = first.path().join("state/blufio.db");

    // "Another machine": a fresh directory with a copy of the database only.
    let copy = |into: &Path| {
        std::fs::create_dir_all(into.join("state")).unwrap();
        std::fs::copy(&database, into.join("state/blufio.db")).unwrap();
    };
    let elsewhere = new_dir();
    copy(elsewhere.path());
    let mut daemon = daemon_with_key(elsewhere.clone(), &fake, Some(&key));
    ok(&daemon.ctl(&["config", "set", "provider.api_key", "secret:anthropic"]));
    fake.push(Script::text("hello", 1));
    ok(&daemon.ctl(&["chat", "hi"]));
    assert_eq!(fake.requests().last().unwrap().header("x-api-key"), Some(CANARY));
    daemon.stop();

    // Without the key, and with a wrong one: a clear error naming the source tried, and the
    // database left as it was.
    let without = new_dir();
    copy(without.path());
    let before = std::fs::read(without.path().join("state/blufio.db")).unwrap();
    let stderr = failed_start(without.clone(), &fake, None);
    assert!(
        stderr.contains("sealed with a key-file key") && stderr.contains("vault.key_file"),
        "{stderr}"
    );
    assert!(
        !without.path().join("state/vault.key").exists(),
        "a vault that exists never gets a new key"
    );
    let wrong = key_file(keys.path(), "wrong.key", &"a5".repeat(32));
    let stderr = failed_start(without.clone(), &fake, Some(&wrong));
    assert!(
        stderr.contains("wrong.key") && stderr.contains("does not open the vault"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(without.path().join("state/blufio.db")).unwrap(),
        before,
        "a refused key changes nothing"
    );

    // A key file others may read is refused, with the reason.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = failed_start(without.clone(), &fake, Some(&key));
    assert!(stderr.contains("0644") && stderr.contains("chmod 600"), "{stderr}");

    // None of the refused starts was recorded as a run: the right key starts cleanly after them.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut daemon = daemon_with_key(without, &fake, Some(&key));
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["previous_run_unclean"], false, "{status}");
    assert!(
        !daemon.stderr().contains("did not shut down cleanly"),
        "{}",
        daemon.stderr()
    );
    daemon.stop();
}

#[test]
fn rekeys_keep_every_secret() {
    let fake = FakeProvider::start();
    let dir = new_dir();
    let mut daemon = daemon_with_key(dir.clone(), &fake, None);
    let generated = dir.path().join("state/vault.key");
    assert!(generated.exists(), "no source: a generated key");
    assert!(daemon.stderr().contains("beside the data"), "{}", daemon.stderr());
    ok(&daemon.ctl_input(&["config", "set-secret", "anthropic"], CANARY.as_bytes()));
    ok(&daemon.ctl(&["config", "set", "provider.api_key", "secret:anthropic"]));
    let old_key = std::fs::read(&generated).unwrap();
    ok(&daemon.ctl(&["vault", "rekey"]));
    assert_ne!(std::fs::read(&generated).unwrap(), old_key, "the key file was replaced");

    // A passphrase rekey waits for the passphrase.
    let passphrase = "a new passphrase for the vault";
    ok(&daemon.ctl_input(&["vault", "rekey", "--new-passphrase"], passphrase.as_bytes()));
    let status = daemon.ctl_json(&["vault", "status"]);
    assert_eq!(status["pending"]["key_source"], "passphrase", "{status}");
    daemon.stop();

    let mut daemon = Daemon::start_with(
        dir.clone(),
        DaemonOptions {
            config: provider_config(&fake),
            env: vec![("BLUFIO_VAULT_PASSPHRASE".into(), passphrase.into())],
            ..DaemonOptions::default()
        },
    );
    let status = daemon.ctl_json(&["vault", "status"]);
    assert_eq!(status["key_source"], "passphrase", "{status}");
    assert!(status.get("pending").is_none_or(serde_json::Value::is_null), "{status}");
    assert!(!generated.exists(), "the key beside the data is gone");
    ok(&daemon.ctl(&["config", "set", "provider.api_key", "secret:anthropic"]));
    fake.push(Script::text("hello", 1));
    ok(&daemon.ctl(&["chat", "hi"]));
    assert_eq!(fake.requests().last().unwrap().header("x-api-key"), Some(CANARY));
    daemon.stop();
}

#[test]
fn a_key_in_clear_in_the_config_file_is_moved_into_the_vault() {
    let fake = FakeProvider::start();
    let mut daemon = blufio_testkit::start_with_fake(&fake, "");
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(text.contains("api_key = \"secret:anthropic\""), "{text}");
    assert!(!text.contains("test-key"), "{text}");
    assert!(
        daemon
            .stderr()
            .contains("moved a secret from the config file into the vault")
    );
    fake.push(Script::text("hello", 1));
    ok(&daemon.ctl(&["chat", "hi"]));
    assert_eq!(fake.requests()[0].header("x-api-key"), Some("test-key"));

    // A secret a key names is not deleted without --force; after a forced delete, the next turn
    // says what to do.
    let refused = daemon.ctl(&["config", "delete-secret", "anthropic"]);
    assert!(!refused.status.success());
    assert!(
        describe(&refused).contains("provider.api_key"),
        "{}",
        describe(&refused)
    );
    ok(&daemon.ctl(&["config", "delete-secret", "anthropic", "--force"]));
    let turn = daemon.ctl(&["chat", "hi again"]);
    assert!(!turn.status.success());
    assert!(
        describe(&turn).contains("config set-secret anthropic"),
        "{}",
        describe(&turn)
    );
    daemon.stop();
}
